"""Asset keys and partition names: deterministic, reversible escaping.

Prefect asset keys must look like ``scheme://...``, stay under 512 characters and must not
contain a set of reserved characters (space, ``#``, ``%``, quotes, brackets, ...). Real file
names contain them, so every reserved character and the escape character ``~`` itself are
written as ``~XX`` (the hex of each UTF-8 byte). Other unicode is kept as it is, so keys stay
readable in the UI.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

MAX_KEY_LENGTH = 512
_SCHEME = re.compile(r"[a-z0-9]+")
_RESERVED = frozenset("\n\r\t\0 #?&%\"'<>[]{}|\\^`~")


def escape_key_text(text: str) -> str:
    """Escape ``text`` so that it is valid inside a Prefect asset key."""
    out: list[str] = []
    for char in text:
        if char in _RESERVED or ord(char) < 0x20 or ord(char) == 0x7F:
            out.extend(f"~{byte:02X}" for byte in char.encode())
        else:
            out.append(char)
    return "".join(out)


def unescape_key_text(text: str) -> str:
    """Invert :func:`escape_key_text`."""
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "~" and _is_hex(text[i + 1 : i + 3]):
            raw.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(text[i].encode())
            i += 1
    return raw.decode()


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in "0123456789ABCDEF" for c in pair)


def asset_key(uri: str) -> str:
    """The Prefect asset key for a storage URI such as ``file:///data/x.parquet`` or ``s3://b/k``.

    Keys longer than Prefect allows keep their head and end in ``~~`` plus a digest of the
    whole URI, so they stay unique and deterministic (the ledger keeps the full URI).
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ValueError(f"not a storage URI with a lowercase scheme: {uri!r}")
    key = f"{scheme}://{escape_key_text(rest)}"
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha256(uri.encode()).hexdigest()[:24]
        key = key[: MAX_KEY_LENGTH - 26].rstrip("~") + "~~" + digest
    return key


def key_to_uri(key: str) -> str:
    """Invert :func:`asset_key` (for keys that were not shortened)."""
    scheme, _, rest = key.partition("://")
    return f"{scheme}://{unescape_key_text(rest)}"


def file_uri(path: Path) -> str:
    """``file://`` URI of an absolute path, unescaped (:func:`asset_key` escapes)."""
    return "file://" + str(path.resolve())


def partition_name(relative: str) -> str:
    """File-system-safe, reversible partition name for a file's path relative to its source root.

    ``sales/2024 jan.csv`` becomes ``sales%2F2024 jan.csv``: only ``%`` and ``/`` are escaped.
    """
    return relative.replace("%", "%25").replace("/", "%2F")


def partition_relative(partition: str) -> str:
    """Invert :func:`partition_name`."""
    return partition.replace("%2F", "/").replace("%25", "%")
