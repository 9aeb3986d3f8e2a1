"""Start-up errors: each is printed as one line and the process exits non-zero."""


class StartupError(Exception):
    """Something an operator must fix before the service can run."""
