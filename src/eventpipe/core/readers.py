"""Read a raw file into a DataFrame by its extension; anything unreadable is a `RejectedInput`."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal

import pandas as pd
import pyarrow as pa

from eventpipe.exceptions import RejectedInput

SUFFIXES = (".csv.gz", ".csv", ".jsonl", ".json", ".parquet")


def suffix_of(name: str) -> str | None:
    """The supported suffix of ``name`` (lower-cased), or None."""
    lower = name.lower()
    return next((s for s in SUFFIXES if lower.endswith(s)), None)


Source = Path | bytes
"""A file to read: a local path, or the bytes of an object read from a bucket."""


def _open(source: Source) -> Path | io.BytesIO:
    return source if isinstance(source, Path) else io.BytesIO(source)


def _bytes(source: Source) -> bytes:
    return source.read_bytes() if isinstance(source, Path) else source


def _csv(path: Source, compression: Literal["gzip"] | None = None) -> pd.DataFrame:
    frame = pd.read_csv(
        _open(path), compression=compression, encoding="utf-8", encoding_errors="strict"
    )
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        # pandas silently turns the first fields into the index when the rows have more fields
        # than the header; the step would never see them. (Row numbers 0, 1, ... are what a
        # header without an index name over an exported index looks like: those are fine.)
        raise RejectedInput(
            f"cannot parse as CSV: the first row has more fields than the header names "
            f"({len(frame.columns)}); fix that row or the header and drop the file again"
        )
    return frame


def _csv_gz(path: Source) -> pd.DataFrame:
    return _csv(path, compression="gzip")


def _json(path: Source) -> pd.DataFrame:
    data = json.loads(_bytes(path).decode("utf-8"))
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise RejectedInput("JSON must be an object or a list of objects (one per row)")
    return pd.DataFrame.from_records(data)


def _jsonl(path: Source) -> pd.DataFrame:
    records = []
    with io.TextIOWrapper(_binary(path), encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RejectedInput(
                    f"cannot parse as .jsonl: line {number}, column {exc.colno}: {exc.msg}; "
                    "fix that line and drop the file again"
                ) from None
            if not isinstance(record, dict):
                raise RejectedInput(
                    f"JSONL line {number} is not an object; each line must be one JSON object"
                )
            records.append(record)
    return pd.DataFrame.from_records(records)


def _binary(source: Source) -> BinaryIO:
    return source.open("rb") if isinstance(source, Path) else io.BytesIO(source)


def _parquet(path: Source) -> pd.DataFrame:
    return pd.read_parquet(_open(path))


_READERS: dict[str, Callable[[Source], pd.DataFrame]] = {
    ".csv": _csv,
    ".csv.gz": _csv_gz,
    ".json": _json,
    ".jsonl": _jsonl,
    ".parquet": _parquet,
}


def read_frame(path: Source, suffix: str) -> pd.DataFrame:
    """Read ``path`` (a local file, or an object's bytes) as the format its ``suffix`` names.

    Raises:
        RejectedInput: empty, malformed, badly encoded or unsupported input, with the reason.
    """
    reader = _READERS.get(suffix)
    if reader is None:
        raise RejectedInput(f"unsupported file type; use one of {', '.join(SUFFIXES)}")
    if (path.stat().st_size if isinstance(path, Path) else len(path)) == 0:
        raise RejectedInput("file is empty; drop it again once it holds data")
    if suffix in (".csv", ".json", ".jsonl"):
        with _binary(path) as fh:
            if b"\x00" in fh.read(65536):
                raise RejectedInput(
                    f"binary data (NUL bytes) in a text file; is it really {suffix}? "
                    f"Export it as {suffix} text and drop it again"
                )
    try:
        frame = reader(path)
    except RejectedInput:
        raise
    except UnicodeDecodeError as exc:
        raise RejectedInput(
            f"not valid UTF-8 {_decode_error(path, suffix, exc)}; save the file as UTF-8"
        ) from exc
    except EOFError as exc:
        raise RejectedInput(
            f"cannot parse as {suffix}: the compressed data ends early, the file is truncated; "
            "drop the complete file again"
        ) from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise RejectedInput(
            f"cannot parse as {suffix}: not intact gzip data ({error_gist(exc, path)}); "
            "compress the CSV with gzip again and drop it"
        ) from exc
    except (ValueError, pd.errors.ParserError, pa.ArrowException, OSError) as exc:
        raise RejectedInput(
            f"cannot parse as {suffix}: {error_gist(exc, path)}; fix the file and drop it again"
        ) from exc
    if frame.columns.empty:
        raise RejectedInput(
            "file has no columns; a CSV needs a header line, JSON needs objects with fields"
        )
    return frame


def error_gist(exc: BaseException, path: Source | None = None) -> str:
    """The first line of a library's error, without pandas' prefix or the snapshot's path."""
    text = str(exc).strip()
    if isinstance(path, Path):
        text = text.replace(str(path), "the file")
    text = text.removeprefix("Error tokenizing data. C error: ")
    lines = text.splitlines()
    return lines[0][:300].rstrip(".") if lines else type(exc).__name__


def _decode_error(path: Source, suffix: str, exc: UnicodeDecodeError) -> str:
    """Where the first invalid byte is: pandas reports offsets into its own buffer."""
    data = gzip.decompress(_bytes(path)) if suffix == ".csv.gz" else _bytes(path)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as full:
        line = data.count(b"\n", 0, full.start) + 1
        return f"at byte {full.start} (line {line}: {full.reason})"
    return f"({exc.reason})"
