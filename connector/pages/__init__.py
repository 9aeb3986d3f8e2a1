"""The operator pages (``/ui``): server-rendered, accessible HTML over the connector's own data."""
