"""The Dataspace Protocol 2025-1 layer: vendored schemas and contexts, message validation."""
