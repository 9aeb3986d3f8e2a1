"""Plain words for the citizen pages: purposes, DPV states, retention periods, who is who."""

from __future__ import annotations

import re
from dataclasses import dataclass

from consent.service import OrganisationView

STATE_WORDS = {
    "ConsentUnknown": "Not decided",
    "ConsentGiven": "You said yes",
    "RenewedConsentGiven": "You said yes again",
    "ConsentRefused": "You said no",
    "ConsentWithdrawn": "You withdrew your yes",
    "ConsentExpired": "Your yes expired",
    "ConsentInvalidated": "The notice changed: decide again",
}
_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?$")
_UNITS = ("year", "month", "week", "day")


def purpose_words(purpose: str) -> str:
    """``traffic-planning`` → ``traffic planning``."""
    return re.sub(r"[-_.:]+", " ", purpose).strip()


def category_words(category: str) -> str:
    """``dpv:TravelHistory`` → ``travel history``; ``card-number`` → ``card number``."""
    name = category.rsplit(":", 1)[-1]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("-", " ").replace("_", " ").lower()


def state_words(state: str) -> str:
    return STATE_WORDS.get(state, state)


def duration_words(iso: str) -> str:
    """``P1Y6M`` → ``1 year and 6 months``; anything else unchanged."""
    match = _DURATION.match(iso)
    if not match:
        return iso
    parts = [
        f"{int(count)} {unit}{'' if int(count) == 1 else 's'}"
        for count, unit in zip(match.groups(), _UNITS, strict=True)
        if count
    ]
    if not parts:
        return iso
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def lawful_basis_words(basis: str) -> str:
    return {"dpv:Consent": "your consent", "dpv:ExplicitConsent": "your explicit consent"}.get(basis, basis)


@dataclass(frozen=True)
class Names:
    """Names of the organisations (controllers and recipients) a citizen's pages mention, by DID."""

    by_did: dict[str, str]

    @classmethod
    def of(cls, organisations: list[OrganisationView]) -> Names:
        names: dict[str, str] = {}
        for organisation in organisations:
            for agreement in organisation.agreements:
                for switch in agreement.switches:
                    names.setdefault(switch.recipient_did, switch.recipient_name)
        for organisation in organisations:
            names[organisation.did] = organisation.name
        return cls(names)

    def __call__(self, did: str) -> str:
        return self.by_did.get(did, did)
