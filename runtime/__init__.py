"""Service plumbing shared by the connector and the consent service.

Settings, the participant directory, databases and migrations, logging and
metrics. Kept apart from ``connector`` so that the consent service can use it
without importing the connector (DESIGN.md: one direction of dependency).
"""
