"""Events: ``build`` makes every event eventpipe sends; ``outbox`` delivers them from the
ledger's outbox to Prefect's events API, exactly once acknowledged."""
