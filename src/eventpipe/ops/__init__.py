"""What on-call reads: the lineage graph with each asset's health, its formats (table, JSON,
mermaid, dot) and the read-only web page of ``eventpipe ui``."""
