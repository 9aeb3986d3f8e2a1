"""Participant identity shared by connectors and the consent service.

Keys (Ed25519), ``did:web`` identifiers and documents, and the self-issued
tokens every peer request carries. Nothing here knows about HTTP routing or
databases, so both services can depend on it without depending on each other.
"""
