"""Intake: where files come from. The folder watcher and the bucket source find complete
files; ``record`` puts each sighting into the ledger with its event."""
