"""The flows that Prefect deployments point at: ``eventpipe.flows.materialize_pipeline``
(deployment ``materialize/<pipeline>``) and ``eventpipe.flows.fetch_source`` (deployment
``fetch/<pipeline>-<fetch>``). These two entrypoints are public and stay put whatever moves
inside the package; their code is in ``eventpipe.run``."""

from eventpipe.run.fetch import fetch_source
from eventpipe.run.flow import materialize_pipeline

__all__ = ["fetch_source", "materialize_pipeline"]
