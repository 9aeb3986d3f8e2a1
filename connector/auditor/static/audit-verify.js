// Checks, in the auditor's browser, what the audit page shows: the signed checkpoint and every entry's
// inclusion proof. Nothing here trusts the server's verdict: the leaf hash is recomputed from the entry
// (RFC 8785 canonical JSON, RFC 9162 leaf prefix 0x00), the audit path is folded up to a root
// (RFC 9162 section 2.1.3.2) and compared with the root in the checkpoint, whose Ed25519 signature
// (C2SP signed note) is checked with WebCrypto against this connector's public key.
"use strict";

const encoder = new TextEncoder();

function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// RFC 8785: object members sorted by UTF-16 code units, ECMAScript number and string forms.
function canonical(value) {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
  return "{" + Object.keys(value).sort().map((k) => JSON.stringify(k) + ":" + canonical(value[k])).join(",") + "}";
}

const leafHash = async (data) => sha256(concat(new Uint8Array([0]), data));
const nodeHash = async (left, right) => sha256(concat(new Uint8Array([1]), left, right));

// RFC 9162 2.1.3.2: the root an audit path leads to, or an Error saying why there is none.
async function rootFromPath(index, size, leaf, path) {
  if (index >= size) throw new Error(`index ${index} is outside a tree of ${size} entries`);
  let fn = index;
  let sn = size - 1n;
  let r = leaf;
  for (const p of path) {
    if (sn === 0n) throw new Error("the audit path is too long");
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error("the audit path is too short");
  return r;
}

// A C2SP signed note: the text up to the blank line, then "— name base64(keyid || signature)" lines.
function parseNote(note) {
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new Error("the checkpoint note has no signatures");
  const text = note.slice(0, split + 1);
  const signatures = note
    .slice(split + 2)
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => {
      const match = /^\u2014 (\S+) (\S+)$/.exec(line);
      if (!match) throw new Error("a signature line of the checkpoint is malformed");
      const data = fromBase64(match[2]);
      return { name: match[1], keyId: data.slice(0, 4), signature: data.slice(4) };
    });
  const lines = text.split("\n");
  if (lines.length < 4) throw new Error("the checkpoint does not have an origin, a size and a root");
  return { text, signatures, origin: lines[0], size: BigInt(lines[1]), root: fromBase64(lines[2]) };
}

async function checkCheckpointSignature(parsed, publicKey) {
  const keyId = (await sha256(concat(encoder.encode(parsed.origin + "\n"), new Uint8Array([1]), publicKey))).slice(0, 4);
  const ours = parsed.signatures.find((s) => s.name === parsed.origin && equal(s.keyId, keyId));
  if (!ours) return { ok: false, text: "FAILED: the checkpoint carries no signature by this connector's key" };
  let key;
  try {
    key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
  } catch (error) {
    return { ok: null, text: "not checked: this browser's WebCrypto has no Ed25519" };
  }
  const valid = await crypto.subtle.verify({ name: "Ed25519" }, key, ours.signature, encoder.encode(parsed.text));
  return valid
    ? { ok: true, text: "verified: signed by this connector's key" }
    : { ok: false, text: "FAILED: the checkpoint's signature does not verify" };
}

// tlog-cosignature/v1: key ID over (name, 0x04, key); the signature covers "cosignature/v1\ntime T\n" + text.
async function checkCosignature(parsed, name, publicKey) {
  const keyId = (await sha256(concat(encoder.encode(name + "\n"), new Uint8Array([4]), publicKey))).slice(0, 4);
  const line = parsed.signatures.find((s) => s.name === name && equal(s.keyId, keyId));
  if (!line) return { ok: false, text: "FAILED: no cosignature by the key this connector pins for it" };
  if (line.signature.length !== 72) return { ok: false, text: "FAILED: the cosignature is not 72 bytes" };
  let time = 0n;
  for (const byte of line.signature.slice(0, 8)) time = (time << 8n) | BigInt(byte);
  let key;
  try {
    key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
  } catch (error) {
    return { ok: null, text: "not checked: this browser's WebCrypto has no Ed25519" };
  }
  const message = encoder.encode(`cosignature/v1\ntime ${time}\n` + parsed.text);
  const valid = await crypto.subtle.verify({ name: "Ed25519" }, key, line.signature.slice(8), message);
  const when = new Date(Number(time) * 1000).toISOString().replace(".000Z", "Z");
  return valid ? { ok: true, text: `verified: cosigned ${when}` } : { ok: false, text: "FAILED: the cosignature does not verify" };
}

async function checkWitnesses(parsed) {
  for (const item of document.querySelectorAll("[data-witness]")) {
    const status = item.querySelector("[data-cosignature-status]");
    if (!item.dataset.publicKey) continue;
    if (!parsed) {
      show(status, "failed", "FAILED: the checkpoint could not be read");
      continue;
    }
    const result = await checkCosignature(parsed, item.dataset.witness, fromBase64(item.dataset.publicKey));
    show(status, result.ok === true ? "verified" : result.ok === null ? "unchecked" : "failed", result.text);
  }
}

async function checkEntry(item, checkpoint) {
  const text = item.querySelector("[data-entry]").textContent;
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new Error("the entry is not JSON");
  }
  if (canonical(parsed) !== text) throw new Error("the entry is not in canonical (RFC 8785) form");
  const leaf = await leafHash(encoder.encode(text));
  const output = item.querySelector("[data-leaf-hash]");
  if (output) output.textContent = toHex(leaf);
  const pathText = item.dataset.proof.trim();
  const path = pathText === "" ? [] : pathText.split(" ").map(fromBase64);
  const root = await rootFromPath(BigInt(item.dataset.index), checkpoint.size, leaf, path);
  if (!equal(root, checkpoint.root)) throw new Error("the proof leads to a different root than the checkpoint's");
}

function show(element, state, text) {
  element.textContent = text;
  element.dataset.state = state;
}

async function verifyPage() {
  const summary = document.getElementById("verification-summary");
  const source = document.getElementById("checkpoint");
  const signatureStatus = document.getElementById("checkpoint-signature");
  const items = Array.from(document.querySelectorAll("[data-proof]"));
  if (!source) {
    show(summary, "none", "There is no signed checkpoint to check the entries against.");
    return;
  }
  let checkpoint;
  let signature;
  try {
    checkpoint = parseNote(document.getElementById("checkpoint-note").textContent);
    signature = await checkCheckpointSignature(checkpoint, fromBase64(source.dataset.publicKey));
  } catch (error) {
    checkpoint = null;
    signature = { ok: false, text: "FAILED: " + error.message };
  }
  show(signatureStatus, signature.ok === true ? "verified" : signature.ok === null ? "unchecked" : "failed", signature.text);
  await checkWitnesses(checkpoint);
  let verified = 0;
  let failed = 0;
  let unchecked = 0;
  for (const item of items) {
    const status = item.querySelector("[data-proof-status]");
    if (item.dataset.inCheckpoint !== "true") {
      unchecked += 1;
      show(status, "unchecked", "not checked: newer than the signed checkpoint");
      continue;
    }
    try {
      if (!checkpoint || signature.ok === false) throw new Error("the checkpoint itself did not verify");
      await checkEntry(item, checkpoint);
      verified += 1;
      show(status, "verified", signature.ok ? "verified" : "verified against the root (signature not checked)");
    } catch (error) {
      failed += 1;
      show(status, "failed", "FAILED: " + error.message);
    }
  }
  const newer = unchecked ? ` ${unchecked} newer than the signed checkpoint, not checked.` : "";
  let outcome;
  if (failed) outcome = `FAILED: ${failed} of ${items.length} entries on this page did not verify; ${verified} verified.${newer}`;
  else if (unchecked) outcome = `${verified} entries on this page verified against the signed checkpoint;${newer}`;
  else outcome = `All ${verified} entries on this page verified against the signed checkpoint.`;
  show(summary, failed || signature.ok === false ? "failed" : unchecked ? "unchecked" : "verified", outcome);
  document.body.dataset.verification = "done";
}

verifyPage().catch((error) => {
  const summary = document.getElementById("verification-summary");
  if (summary) show(summary, "failed", "FAILED: the check could not run: " + error.message);
  document.body.dataset.verification = "done";
});
