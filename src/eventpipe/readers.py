"""Read a raw file into a DataFrame by its extension; anything unreadable is a `RejectedInput`."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from eventpipe.exceptions import RejectedInput

SUFFIXES = (".csv.gz", ".csv", ".jsonl", ".json", ".parquet")


def suffix_of(name: str) -> str | None:
    """The supported suffix of ``name`` (lower-cased), or None."""
    lower = name.lower()
    return next((s for s in SUFFIXES if lower.endswith(s)), None)


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, encoding="utf-8", encoding_errors="strict")


def _csv_gz(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, compression="gzip", encoding="utf-8", encoding_errors="strict")


def _json(path: Path) -> pd.DataFrame:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise RejectedInput("JSON must be an object or a list of objects (one per row)")
    return pd.DataFrame.from_records(data)


def _jsonl(path: Path) -> pd.DataFrame:
    return pd.read_json(path, lines=True, dtype=False, encoding="utf-8")


def _parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    ".csv": _csv,
    ".csv.gz": _csv_gz,
    ".json": _json,
    ".jsonl": _jsonl,
    ".parquet": _parquet,
}


def read_frame(path: Path, suffix: str) -> pd.DataFrame:
    """Read ``path`` as the format its ``suffix`` names.

    Raises:
        RejectedInput: empty, malformed, badly encoded or unsupported input, with the reason.
    """
    reader = _READERS.get(suffix)
    if reader is None:
        raise RejectedInput(f"unsupported file type; use one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise RejectedInput("file is empty")
    if suffix in (".csv", ".json", ".jsonl"):
        with path.open("rb") as fh:
            if b"\x00" in fh.read(65536):
                raise RejectedInput("binary data (NUL bytes) in a text file")
    try:
        frame = reader(path)
    except RejectedInput:
        raise
    except UnicodeDecodeError as exc:
        raise RejectedInput(f"not valid UTF-8 text ({_decode_error(path, suffix, exc)})") from exc
    except (ValueError, pd.errors.ParserError, pa.ArrowException, OSError, EOFError) as exc:
        raise RejectedInput(f"cannot parse as {suffix}: {_first_line(exc)}") from exc
    if frame.columns.empty:
        raise RejectedInput("file has no columns")
    return frame


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _decode_error(path: Path, suffix: str, exc: UnicodeDecodeError) -> str:
    """Where the first invalid byte is: pandas reports offsets into its own buffer."""
    data = gzip.decompress(path.read_bytes()) if suffix == ".csv.gz" else path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as full:
        return f"{full.reason} at byte {full.start}"
    return exc.reason
