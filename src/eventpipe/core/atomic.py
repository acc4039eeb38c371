"""The one way eventpipe writes a local file readers may see: temp name in the target's
directory, fsync, rename (:func:`write_atomic`); and the checks that keep a name inside its
directory (:func:`inside`)."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing any ``relative`` that would leave ``root`` (lexically or
    through a symlink).

    Resolving a path costs an ``lstat`` per component, and a file through the pipeline is
    resolved a dozen times, mostly in the same few directories; so the directory part of a
    plain relative path is resolved once per process and only the last component is looked
    at each time (a symlink there is resolved in full). A directory of the data dir swapped
    for a symlink while eventpipe runs is not noticed: whoever can do that can already write
    anything the data dir holds."""
    parent, _, name = relative.rpartition("/")
    plain = not relative.startswith("/") and all(
        part not in ("", ".", "..") for part in relative.split("/")
    )
    if plain:
        base, directory = _resolved_dir(root, parent)
        target = directory / name
        if target.is_symlink():
            target = target.resolve()
    else:
        base = root.resolve()
        target = (base / relative).resolve()
    if target == base or not target.is_relative_to(base):
        raise ValueError(f"{relative!r} escapes {base}")
    return target


@functools.lru_cache(maxsize=4096)
def _resolved_dir(root: Path, parent: str) -> tuple[Path, Path]:
    """``root`` resolved, and its subdirectory ``parent`` (``""``: itself) resolved."""
    base = root.resolve()
    return base, (base / parent).resolve() if parent else base


T = TypeVar("T")


def write_atomic(
    directory: Path,
    write: Callable[[Path], T],
    name: str | Callable[[T], str],
    *,
    suffix: str = "",
    keep_existing: bool = False,
    durable: bool = True,
) -> tuple[Path, T]:
    """The one way eventpipe writes a file that readers may see.

    ``write(tmp)`` fills a temp file in ``directory``; it is fsynced, then renamed to ``name``
    (or to ``name(result)``, for a file named after its content), so readers see the old file
    or the whole new one, never a part. With ``keep_existing`` an existing target (the same
    content under a content-derived name) is kept and the temp file dropped. On any failure
    the temp file is removed. Without ``durable`` no fsync: for a copy that can be made
    again from what it copies (a crash may leave it short, never partly visible). Returns the
    final path and what ``write`` returned."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        result = write(tmp)
        target = directory / (name if isinstance(name, str) else name(result))
        if keep_existing and target.exists():
            tmp.unlink()
            return target, result
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target, result


def write_bytes_atomic(target: Path, content: bytes) -> Path:
    """Write ``content`` to ``target`` atomically (see :func:`write_atomic`)."""
    path, _ = write_atomic(target.parent, lambda tmp: tmp.write_bytes(content), target.name)
    return path


def atomic_copy(source: Path, target: Path, *, durable: bool = True) -> None:
    """Copy ``source`` to ``target`` so that readers see either the old or the whole new file
    (``durable``: as :func:`write_atomic`)."""
    write_atomic(
        target.parent, lambda tmp: shutil.copyfile(source, tmp), target.name, durable=durable
    )


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
