"""The plain building blocks every layer shares: asset keys and partition names, the frozen
values passed between layers, reading raw files, the data dir's layout with its one atomic-write
API, and the names eventpipe gives events and flows. Nothing here imports Prefect."""
