"""The Management API v3, compatible with Eclipse Dataspace Components' clients."""
