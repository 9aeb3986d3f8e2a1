"""Errors raised by identity code; each names what was wrong."""


class IdentityError(Exception):
    """A key, identifier or document could not be used."""


class KeyFileError(IdentityError):
    """A key file is missing, unreadable or not an Ed25519 key."""


class DidError(IdentityError):
    """A DID or DID document is malformed or does not match where it came from."""


class TokenRejected(IdentityError):
    """A peer token failed verification.

    ``reason`` is a short machine-readable code (used as a metric label);
    the message is the human explanation returned to the caller.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
