"""The pipeline's asset graph and its health: ``eventpipe lineage`` prints it, ``eventpipe ui``
serves it as a web page."""

from __future__ import annotations

from typing import Annotated, Literal

from cyclopts import Parameter

from eventpipe.cli.common import (
    GRAPHED_PIPELINE,
    console,
    pipeline_to_graph,
    settings_flags,
    settings_or_configured,
)
from eventpipe.exceptions import ConfigError
from eventpipe.settings import Settings

# `--pipeline` is a parameter of its own: a name there is resolved through the configured spec.
# `--stale-minutes` too: here 0 is allowed (everything behind is stale), and `--port`/`--host`
# are the page's, not the embedded Prefect server's.
DATA_SETTINGS = settings_flags("data", "ledger")

GraphedPipeline = Annotated[str | None, Parameter(help=GRAPHED_PIPELINE)]


def check_stale_minutes(stale_minutes: float) -> None:
    if stale_minutes < 0:
        raise ConfigError(f"--stale-minutes must be 0 or more, not {stale_minutes:g}")


def lineage(
    *,
    pipeline: GraphedPipeline = None,
    settings: Annotated[Settings | None, DATA_SETTINGS] = None,
    output_format: Annotated[
        Literal["text", "json", "mermaid", "dot"], Parameter(name="--format")
    ] = "text",
    stale_minutes: float = 60,
) -> None:
    """The pipeline's asset graph, raw -> processed -> analytics, each asset with its key,
    version, last update, rows and health: fresh, stale, failing or missing (never built).

    Parameters
    ----------
    output_format
        text (a table), json, mermaid (a flowchart) or dot (Graphviz source).
    stale_minutes
        An asset older than this is stale when newer files are waiting for it.
    """
    # Imported here: the graph reads parquet metadata; `eventpipe --help` must not load it.
    from eventpipe.ledger import ledger_url
    from eventpipe.ops.formats import render, to_table
    from eventpipe.ops.lineage import read_graph

    check_stale_minutes(stale_minutes)
    resolved = settings_or_configured(settings).resolved()
    graph = read_graph(
        pipeline_to_graph(pipeline, resolved),
        resolved.data,
        stale_minutes=stale_minutes,
        ledger=ledger_url(resolved),
    )
    if output_format == "text":
        console.print(to_table(graph))
    else:
        print(render(graph, output_format), end="")


def ui(
    *,
    pipeline: GraphedPipeline = None,
    settings: Annotated[Settings | None, DATA_SETTINGS] = None,
    port: int = 8787,
    host: str = "127.0.0.1",
    prefect_ui: str = "http://127.0.0.1:4200",
    stale_minutes: float = 60,
) -> None:
    """A read-only web page: the pipeline's lineage graph and freshness table, with links into
    the Prefect UI's events feed. GET /lineage.json gives `eventpipe lineage --format json`.

    Parameters
    ----------
    port
        Port to listen on (0: any free port).
    host
        Address to bind (default 127.0.0.1: this machine only).
    prefect_ui
        Base URL of the Prefect UI the asset links point to.
    stale_minutes
        An asset older than this is stale when newer files are waiting for it.
    """
    # Imported here: the page builds on the lineage graph, which `eventpipe --help` must not load.
    from eventpipe.ledger import ledger_url
    from eventpipe.ops.webui import serve

    check_stale_minutes(stale_minutes)
    resolved = settings_or_configured(settings).resolved()
    server = serve(
        pipeline_to_graph(pipeline, resolved),
        resolved.data,
        host=host,
        port=port,
        prefect_ui=prefect_ui,
        stale_minutes=stale_minutes,
        ledger=ledger_url(resolved),
    )
    address, bound = server.server_address[:2]
    console.print(f"eventpipe ui on http://{address!s}:{bound}  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
