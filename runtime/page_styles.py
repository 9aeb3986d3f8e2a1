"""The stylesheet a service serves with its pages: the look all Tessera pages share, then its own rules.

The operator, auditor and citizen pages share colours, layout, type, forms and
buttons (``runtime/static/pages-base.css``); each service adds what only its
pages have. One file per concern, one response per page load.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

BASE = "pages-base.css"


@cache
def page_stylesheet(package: str, name: str) -> bytes:
    """``runtime/static/pages-base.css`` followed by ``<package>/static/<name>``."""
    base = (resources.files("runtime") / "static" / BASE).read_bytes()
    own = (resources.files(package) / "static" / name).read_bytes()
    return base + b"\n" + own
