"use strict";
// Progressive enhancement of the switches. Without this script a switch posts its form and the page
// comes back with the confirmation. With it, the switch changes in place and keeps the focus, and the
// confirmation is written into the live region (role=status), so screen readers announce it.
(function () {
  const region = document.getElementById("confirmation");
  if (!region || !window.fetch || !window.DOMParser || !window.URLSearchParams) {
    return;
  }

  function sync(current, fresh) {
    const button = current.querySelector("button[role=switch]");
    const freshButton = fresh.querySelector("button[role=switch]");
    button.setAttribute("aria-checked", freshButton.getAttribute("aria-checked"));
    button.querySelector(".switch-state").textContent = freshButton.querySelector(".switch-state").textContent;
    current.querySelector("input[name=on]").value = fresh.querySelector("input[name=on]").value;
    current.querySelector(".note").textContent = fresh.querySelector(".note").textContent;
  }

  async function change(form) {
    const response = await fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin",
    });
    if (!response.ok || !response.redirected) {
      return false; // refused or failed: the form is sent the plain way and the server's page says why
    }
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const forms = document.querySelectorAll("form.choice");
    const freshForms = page.querySelectorAll("form.choice");
    const freshRegion = page.getElementById("confirmation");
    if (!freshRegion || forms.length !== freshForms.length) {
      window.location.assign(response.url); // the choices themselves changed: show the new page
      return true;
    }
    forms.forEach((current, index) => sync(current, freshForms[index]));
    document.title = page.title;
    window.history.replaceState(null, "", response.url + "#" + form.id);
    // Emptied first, so that the same words said twice are announced twice.
    region.textContent = "";
    window.setTimeout(() => {
      region.innerHTML = freshRegion.innerHTML;
    }, 50);
    return true;
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("choice")) {
      return;
    }
    event.preventDefault();
    if (form.dataset.busy === "true") {
      return;
    }
    form.dataset.busy = "true";
    change(form)
      .catch(() => false)
      .then((done) => {
        form.dataset.busy = "false";
        if (!done) {
          form.submit();
        }
      });
  });
})();
