"""Namespace IRIs of the vocabularies Tessera reads and writes (no dependencies: cheap to import)."""

EDC_NS = "https://w3id.org/edc/v0.0.1/ns/"
ODRL_NS = "http://www.w3.org/ns/odrl/2/"
DCT_NS = "http://purl.org/dc/terms/"
DCAT_NS = "http://www.w3.org/ns/dcat#"
TESSERA_NS = "https://w3id.org/tessera/v1/ns/"
DSPACE_CONTEXT_URL = "https://w3id.org/dspace/2025/1/context.jsonld"
DSP_PROTOCOL = "dataspace-protocol-http:2025-1"
