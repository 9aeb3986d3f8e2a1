"""The auditor side of the transfer log: read-only accounts, their sessions, and the audit pages."""
