"""ODRL policies: model, validation, compilation to Casbin, and the decision point.

Empty until the negotiation issue lands; the package exists so the layout of
DESIGN.md is stable for everything that follows.
"""
