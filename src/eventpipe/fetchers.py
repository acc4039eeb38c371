"""Built-in fetch helpers: call them inside a ``@pipeline.fetch`` function.

``http_json`` / ``http_csv`` (httpx) make conditional requests (the ETag and Last-Modified of
the last recorded response go out as If-None-Match / If-Modified-Since; a 304 replays the
stored body, so an unchanged endpoint costs one round trip and ends as a skip) and follow a
pagination hook. ``sql_query`` (SQLAlchemy) runs a query, optionally incrementally: only rows
whose ``incremental`` column is past the cursor of the last recorded fetch. Retries with
backoff come from the fetch's Prefect task (``retries=`` of ``@pipeline.fetch``): helpers raise
``FetchError`` saying whether a retry can help. Secrets are named (``from_block``,
``from_env``), resolved at run time and masked in every error message.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import httpx
import pandas as pd

from eventpipe.events.outbox import ssl_context
from eventpipe.exceptions import ConfigError, FetchError
from eventpipe.run.credentials import (
    SecretRef,
    from_block,
    from_env,
    guard_logger,
    redact,
    remember,
    reveal,
)
from eventpipe.run.fetch import FetchContext, Fetched, NotModified, current

__all__ = [
    "FetchError",
    "Fetched",
    "NotModified",
    "SecretRef",
    "from_block",
    "from_env",
    "http_csv",
    "http_json",
    "sql_query",
]

Paginate = Callable[[httpx.Response], "httpx.Request | str | None"]
"""Given a page's response, the next page's request (or URL), or None after the last page."""

for _name in ("httpx", "httpcore"):
    guard_logger(_name)

_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_PAGES = 10_000


def http_json(
    url: str | SecretRef,
    *,
    params: Mapping[str, str | int | float] | None = None,
    headers: Mapping[str, str | SecretRef] | None = None,
    records: str | None = None,
    paginate: Paginate | None = None,
    timeout: float = 10.0,
    conditional: bool = True,
) -> pd.DataFrame:
    """GET ``url`` and return its JSON as a DataFrame, one row per object.

    ``records`` is a dotted path to the list of rows inside the body (``"data.items"``);
    without it the body must be an object or a list of objects. ``paginate`` is called with
    each page's response and returns the next request (or URL), or None. ``headers`` values
    may be secrets (``from_block(...)``, ``from_env(...)``).
    """
    pages = _get(url, params, headers, paginate, timeout, conditional, "json")
    rows: list[Any] = []
    for number, body in enumerate(pages, 1):
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FetchError(
                f"page {number} is not valid JSON ({_gist(exc)}); the endpoint sent "
                "something else than it should",
                retryable=False,
            ) from None
        found = _dig(document, records, number)
        rows.extend(found if isinstance(found, list) else [found])
    if not all(isinstance(row, dict) for row in rows):
        raise FetchError(
            "the JSON rows must be objects" + (f" (at {records!r})" if records else ""),
            retryable=False,
        )
    return pd.DataFrame.from_records(rows)


def http_csv(
    url: str | SecretRef,
    *,
    params: Mapping[str, str | int | float] | None = None,
    headers: Mapping[str, str | SecretRef] | None = None,
    paginate: Paginate | None = None,
    timeout: float = 10.0,
    conditional: bool = True,
) -> pd.DataFrame:
    """GET ``url`` and return its CSV (with a header line; every page has one) as a DataFrame."""
    pages = _get(url, params, headers, paginate, timeout, conditional, "csv")
    frames = []
    for number, body in enumerate(pages, 1):
        try:
            frames.append(pd.read_csv(io.BytesIO(body), encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise FetchError(
                f"page {number} is not valid CSV ({_gist(exc)})", retryable=False
            ) from None
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _dig(document: Any, path: str | None, page: int) -> Any:
    for part in path.split(".") if path else ():
        if not isinstance(document, dict) or part not in document:
            raise FetchError(
                f"page {page} has no {path!r} in its JSON (missing {part!r})", retryable=False
            )
        document = document[part]
    return document


def _gist(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _get(
    url: str | SecretRef,
    params: Mapping[str, str | int | float] | None,
    headers: Mapping[str, str | SecretRef] | None,
    paginate: Paginate | None,
    timeout: float,
    conditional: bool,
    kind: str,
) -> list[bytes]:
    """The bodies of every page. The first request is conditional (when allowed and there is
    no pagination); a 304 gives back the stored body of the last recorded response."""
    plain_url = reveal(url)
    plain_headers = {name: reveal(value) for name, value in (headers or {}).items()}
    context = current()
    key = "http:" + hashlib.sha256(f"{kind}\n{plain_url}\n{params}".encode()).hexdigest()[:16]
    cache = _BodyCache(context, key) if context and conditional and not paginate else None
    first_headers = {**plain_headers, **(cache.validators() if cache else {})}
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True, verify=ssl_context()) as client:
            response = client.get(plain_url, params=params, headers=first_headers)
            if response.status_code == 304 and cache is not None:
                stored = cache.body()
                if stored is not None:
                    _note(context, status=304)
                    return [stored]
                response = client.get(plain_url, params=params, headers=plain_headers)
            _check(response)
            bodies = [response.content]
            if cache is not None:
                cache.stage(response)
            while paginate is not None:
                follow = paginate(response)
                if follow is None:
                    break
                if len(bodies) >= _MAX_PAGES:
                    raise FetchError(f"more than {_MAX_PAGES} pages; does paginate ever stop?")
                if isinstance(follow, str):
                    response = client.get(follow, headers=plain_headers)
                else:
                    for name, value in plain_headers.items():
                        follow.headers.setdefault(name, value)
                    response = client.send(follow)
                _check(response)
                bodies.append(response.content)
    except httpx.TimeoutException as exc:
        raise FetchError(f"timed out after {timeout:g} s ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise FetchError(redact(f"cannot reach the server: {type(exc).__name__}: {exc}")) from None
    _note(context, status=response.status_code, pages=len(bodies))
    return bodies


def _check(response: httpx.Response) -> None:
    if response.is_success:
        return
    status = response.status_code
    raise FetchError(
        f"HTTP {status} {response.reason_phrase} from {response.url.host}",
        retryable=status in _RETRYABLE_STATUS,
    )


def _note(context: FetchContext | None, **facts: Any) -> None:
    if context is not None:
        context.notes.setdefault("http", {}).update(facts)


class _BodyCache:
    """The ETag / Last-Modified and the body of the last recorded response of one URL.

    The validators live in the fetch's state in the ledger (committed once the result is
    recorded); the body in the data dir's ``fetched/<pipeline>/.cache/`` under its sha256.
    """

    def __init__(self, context: FetchContext, key: str) -> None:
        self.context = context
        self.key = key
        self.kept = context.remembered(key)

    def validators(self) -> dict[str, str]:
        out = {}
        if self.kept.get("etag"):
            out["If-None-Match"] = str(self.kept["etag"])
        if self.kept.get("last_modified"):
            out["If-Modified-Since"] = str(self.kept["last_modified"])
        return out

    def body(self) -> bytes | None:
        digest = self.kept.get("body")
        if not digest:
            return None
        try:
            content = self.context.store.read_bytes(self.context.body_path(str(digest)))
        except FileNotFoundError:
            return None
        return content if hashlib.sha256(content).hexdigest() == digest else None

    def stage(self, response: httpx.Response) -> None:
        etag = response.headers.get("etag")
        modified = response.headers.get("last-modified")
        if not etag and not modified:
            return
        digest = hashlib.sha256(response.content).hexdigest()
        path = self.context.body_path(digest)
        if not self.context.store.exists(path):  # named after its content: written once
            self.context.store.write_bytes(path, response.content)
        self.context.keep(self.key, {"etag": etag, "last_modified": modified, "body": digest})


# -- SQL ---------------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def sql_query(
    url: str | SecretRef,
    query: str,
    *,
    params: Mapping[str, Any] | None = None,
    incremental: str | None = None,
) -> pd.DataFrame:
    """Run ``query`` on the database at ``url`` (a SQLAlchemy URL; ``postgresql://`` uses
    psycopg: ``pip install 'eventpipe[sql]'``) and return the rows.

    With ``incremental="column"`` only rows whose column is greater than the largest value
    of the last recorded fetch are taken (all rows the first time), so declare the fetch with
    ``append=True``: each fetch adds a partition with the new rows.
    """
    # Lazy: SQLAlchemy (and a database driver) only for pipelines that query a database.
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    context = current()
    plain = reveal(url)
    try:
        parsed = make_url(plain)
    except ArgumentError:
        raise ConfigError("the database URL is not a SQLAlchemy URL") from None
    if parsed.password:
        remember(str(parsed.password))
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    bind: dict[str, Any] = dict(params or {})
    sql = query.strip().rstrip(";")
    key = ""
    if incremental is not None:
        if not _IDENTIFIER.match(incremental):
            raise ConfigError(f"incremental column {incremental!r} must be a plain column name")
        if context is not None and not context.fetch.append:
            raise ConfigError(
                f"fetch {context.fetch.name!r} reads incrementally: declare it with "
                "@pipeline.fetch(..., append=True) so each fetch adds a partition of new rows"
            )
        key = "sql:" + hashlib.sha256(f"{plain}\n{query}\n{incremental}".encode()).hexdigest()[:16]
        cursor = _decode(context.remembered(key).get("cursor")) if context else None
        where = f" WHERE q.{incremental} > :eventpipe_cursor" if cursor is not None else ""
        sql = f"SELECT * FROM ({sql}) AS q{where} ORDER BY q.{incremental}"
        if cursor is not None:
            bind["eventpipe_cursor"] = cursor
    try:
        engine = create_engine(parsed, poolclass=NullPool)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise ConfigError(
            f"no database driver for {parsed.drivername!r} ({exc}); for PostgreSQL: "
            "pip install 'eventpipe[sql]'"
        ) from None
    try:
        with engine.connect() as connection:
            frame = pd.read_sql_query(text(sql), connection, params=bind)
    except DBAPIError as exc:
        retryable = exc.connection_invalidated or type(exc).__name__ in (
            "OperationalError",
            "InterfaceError",
        )
        raise FetchError(redact(f"query failed: {_gist(exc)}"), retryable=retryable) from None
    except SQLAlchemyError as exc:
        raise FetchError(redact(f"query failed: {_gist(exc)}"), retryable=False) from None
    finally:
        engine.dispose()
    if context is not None:
        context.notes["rows"] = len(frame)
        if incremental is not None and not frame.empty:
            if incremental not in frame.columns:
                raise FetchError(
                    f"incremental column {incremental!r} is not in the query's result",
                    retryable=False,
                )
            newest = frame[incremental].max()
            context.keep(key, {"cursor": _encode(newest)})
            context.notes["cursor"] = _encode(newest)
    return frame


def _encode(value: Any) -> Any:
    """A cursor value as JSON (datetimes tagged, so they come back as datetimes)."""
    if isinstance(value, pd.Timestamp | datetime):
        return {"datetime": pd.Timestamp(value).isoformat()}
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "datetime" in value:
        return pd.Timestamp(value["datetime"]).to_pydatetime()
    return value
