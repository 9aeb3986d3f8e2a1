"""Contract negotiation state machines, offers, agreements and their signatures.

Empty until the negotiation issue lands; the package exists so the layout of
DESIGN.md is stable for everything that follows.
"""
