"""The data plane: sources, the personal-data gate, pushing, data tokens and the public data endpoint."""
