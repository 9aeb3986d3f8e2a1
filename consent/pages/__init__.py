"""The citizen self-service pages (``/citizen``): server-rendered, no JavaScript needed."""
