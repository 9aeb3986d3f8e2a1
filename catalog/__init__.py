"""Assets and their DCAT / JSON-LD form, catalog queries and the federated catalog cache.

Empty until the catalog issue lands; the package exists so the layout of
DESIGN.md is stable for everything that follows.
"""
