"""The signed transfer log (docs/transfer-log.md).

What other code calls:

- ``store.append_entry(session_or_connection, kind, fields) -> LeafReceipt`` and
  ``store.append_entries(...)``: write entries in the caller's transaction;
  ``entries.register_kind``, ``entries.subject_key`` / ``entries.subject_hash`` for new kinds
  and data subjects.
- ``store.tree_head``, ``store.root_at``, ``store.inclusion_proof``, ``store.consistency_proof``,
  ``store.read_entries``, ``store.index_range_for_time``: reading and proving.
- ``checkpoint.sign_checkpoint``, ``checkpoint.with_cosignatures``: signed checkpoints.
- ``bundle.write_bundle`` and ``audit.verify_bundle``: audit bundles, written and checked offline.
"""
