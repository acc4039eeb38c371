"""One storage API for the data dir's contents, on a local disk or in a bucket: :class:`DataStore`.

Paths are the outputs contract's relative paths
(``processed/<pipeline>/<step>/<partition>.parquet``, see :mod:`eventpipe.core.storage`),
checked by :func:`check_relative`: never absolute, no ``..``, ``.`` or empty segments, and never
leaving the store's root (on a disk, not through a symlink either). Readers of a path see the
old object or the whole new one, never a part:

- **local** (``DataStore.local(root)``): a write fills a temp file in the target's directory,
  fsyncs and renames it (:func:`eventpipe.core.atomic.write_atomic`); a copy is done the same way.
- **bucket** (``DataStore.bucket("s3://bucket/prefix", ...)``, on ``pyarrow.fs.S3FileSystem``):
  a write is ONE ``PUT`` of the whole object (``allow_delayed_open`` buffers it and sends it at
  close; the default would start a multipart upload even for 3 KB), followed by one ``HEAD`` for the
  :class:`Stat` it returns. An object above pyarrow's part size (10 MiB) goes up as a multipart
  upload, whose completion is atomic too. A copy is one server-side ``CopyObject``. A read is a
  ``HEAD`` (size, ETag) then one ranged ``GET``; the bytes are checked against the ETag (the MD5 of
  a single-PUT object) so a replacement between the two requests is read again, never returned
  as a truncated mix. A delete uses boto3's ``DeleteObject`` when boto3 is installed (one request);
  pyarrow's ``delete_file`` would PUT a ``prefix/`` directory marker whenever a prefix becomes
  empty. Markers, wherever they come from, are never listed as data.

pyarrow ignores ``AWS_ENDPOINT_URL``: the endpoint is taken from ``endpoint_url``, else from
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (what boto3 honours), so both agree. Credentials come
from an object (:func:`credentials_from` reads eventpipe's :class:`Credentials`, botocore's
credentials, a boto3 session, or a prefect-aws ``AwsCredentials`` / ``S3Bucket`` block without
importing Prefect) or from keyword arguments; with neither, pyarrow's default chain (environment,
``~/.aws`` files, instance metadata). Nothing here imports Prefect; boto3 is imported only for
deletes, and only when present.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from eventpipe.core.atomic import atomic_copy, inside, write_bytes_atomic
from eventpipe.exceptions import ConfigError

MAX_KEY_BYTES = 1024
"""S3's limit on the length of a key (prefix + relative path), in UTF-8 bytes."""

UPLOAD_CHUNK = 8 << 20
"""Bytes read from a local file per write while uploading it."""

READ_ATTEMPTS = 8
"""How often a bucket read is tried when the object is replaced while it is being read (with
backoff from 5 ms: 1.3 s in all)."""

TEMP_PREFIX = ".tmp-"
"""Names of in-progress local writes (:func:`~eventpipe.core.atomic.write_atomic`): never data."""


@dataclass(frozen=True)
class Stat:
    """What the ledger records about a stored object: size, modification time (ns since the
    epoch; whole seconds in a bucket) and, in a bucket, the ETag (without quotes)."""

    size: int
    mtime_ns: int
    etag: str | None = None


@dataclass(frozen=True, repr=False)
class Credentials:
    """AWS credentials resolved once (the secret stays out of ``repr``)."""

    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.access_key!r}, secret_key='***')"


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    get = getattr(value, "get_secret_value", None)  # pydantic SecretStr (prefect-aws fields)
    return str(get() if callable(get) else value) or None


def credentials_from(source: Any) -> Credentials | None:
    """:class:`Credentials` from whatever holds them, duck-typed (no Prefect import):

    - :class:`Credentials` itself;
    - botocore ``Credentials`` / ``ReadOnlyCredentials`` (``access_key``, ``secret_key``,
      ``token``);
    - a boto3 ``Session`` (its resolved chain: profile, SSO, role, ...);
    - a prefect-aws ``AwsCredentials`` block (through its ``get_boto3_session()``, so a profile
      or an assumed role works too) or an ``S3Bucket`` block (its ``credentials``).

    Returns None when the source resolves to no credentials (pyarrow's own chain then applies).
    Temporary credentials are frozen as they are now: build the store per run, not per process.
    """
    if source is None or isinstance(source, Credentials):
        return source
    if hasattr(source, "get_boto3_session"):  # prefect-aws AwsCredentials
        return credentials_from(source.get_boto3_session())
    nested = getattr(source, "credentials", None)
    if nested is not None and hasattr(source, "bucket_name"):  # prefect-aws S3Bucket
        return credentials_from(nested)
    if hasattr(source, "get_credentials"):  # boto3 / botocore session
        return credentials_from(source.get_credentials())
    if hasattr(source, "get_frozen_credentials"):  # botocore refreshable credentials
        source = source.get_frozen_credentials()
    key = _secret(getattr(source, "access_key", None) or getattr(source, "aws_access_key_id", None))
    secret = _secret(
        getattr(source, "secret_key", None) or getattr(source, "aws_secret_access_key", None)
    )
    token = _secret(getattr(source, "token", None) or getattr(source, "aws_session_token", None))
    if key is None and secret is None:
        return None
    if key is None or secret is None:
        raise ConfigError(f"{type(source).__name__} has an access key or a secret, not both")
    return Credentials(key, secret, token)


def check_relative(relative: str) -> str:
    """``relative`` if it is a path inside a store: a non-empty POSIX path, not absolute, without
    ``..``, ``.`` or empty segments or NUL; else :class:`ValueError`. A backslash is an ordinary
    character (on POSIX and in S3 keys alike: ``a\\..\\b`` is one name), as file names, and so
    partition names, may hold one."""
    if not isinstance(relative, str):
        raise ValueError(f"a store path is a str, not {type(relative).__name__}: {relative!r}")
    if not relative:
        raise ValueError("empty store path")
    if relative.startswith("/"):
        raise ValueError(f"{relative!r} is absolute; store paths are relative to the root")
    if "\0" in relative:
        raise ValueError(f"{relative!r}: NUL is not allowed in store paths")
    for segment in relative.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"{relative!r} has an empty, '.' or '..' segment; it could escape")
    return relative


class DataStore(ABC):
    """The data dir's objects at relative paths; see the module docstring for the guarantees.

    Build one with :meth:`local`, :meth:`bucket` or :func:`parse_data`. Safe to share between
    threads."""

    filesystem: Any
    """The ``pyarrow.fs`` file system, for callers that stream (``pq.ParquetFile``, datasets)."""

    @staticmethod
    def local(root: Path) -> LocalStore:
        return LocalStore(root)

    @staticmethod
    def bucket(
        uri: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: Any = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        deletes: Literal["auto", "boto3", "pyarrow"] = "auto",
    ) -> BucketStore:
        """A store under ``s3://bucket/prefix``. Credentials: an object (see
        :func:`credentials_from`) or ``access_key``/``secret_key``/``session_token``, not both.
        ``deletes``: ``auto`` uses boto3 when it is installed, else pyarrow (which leaves
        directory markers behind; they are never listed)."""
        resolved = credentials_from(credentials)
        if access_key is not None or secret_key is not None:
            if resolved is not None:
                raise ValueError("pass credentials as an object or as keys, not both")
            if access_key is None or secret_key is None:
                raise ValueError("access_key and secret_key go together")
            resolved = Credentials(access_key, secret_key, session_token)
        elif session_token is not None:
            raise ValueError("session_token without access_key and secret_key")
        return BucketStore(uri, endpoint_url, region, resolved, deletes)

    # -- what each store implements ------------------------------------------------------------

    @abstractmethod
    def uri(self, relative: str) -> str:
        """Where ``relative`` lives: ``file:///abs/path`` (unescaped, as
        :func:`eventpipe.core.keys.file_uri`) or ``s3://bucket/prefix/relative``."""

    @abstractmethod
    def fs_path(self, relative: str) -> str:
        """``relative`` as a path of :attr:`filesystem` (checked like every path here)."""

    @abstractmethod
    def write_bytes(self, relative: str, data: bytes) -> Stat:
        """Replace ``relative`` with ``data`` atomically; returns the new object's :class:`Stat`."""

    @abstractmethod
    def read_bytes(self, relative: str) -> bytes:
        """The whole object, as one consistent version; :class:`FileNotFoundError` if none."""

    @abstractmethod
    def stat(self, relative: str) -> Stat | None:
        """The object's :class:`Stat`, or None when there is none (a directory is none)."""

    @abstractmethod
    def delete(self, relative: str) -> None:
        """Remove ``relative``; nothing happens when it is already gone."""

    @abstractmethod
    def copy(self, source: str, target: str, *, durable: bool = True) -> Stat:
        """Copy ``source`` to ``target`` atomically (server-side in a bucket); returns the
        target's :class:`Stat`. :class:`FileNotFoundError` when ``source`` is missing. Not
        ``durable``: a local copy is not fsynced (see :func:`~eventpipe.core.atomic.write_atomic`;
        an object in a bucket is durable once written)."""

    @abstractmethod
    def upload(self, relative: str, source: Path) -> Stat:
        """Copy the local file ``source`` to ``relative`` (readers see old or whole new)."""

    @abstractmethod
    def _root_fs_path(self) -> str: ...

    def _is_data(self, name: str) -> bool:
        return not name.startswith(TEMP_PREFIX)

    # -- shared --------------------------------------------------------------------------------

    def exists(self, relative: str) -> bool:
        return self.stat(relative) is not None

    def write_frame(self, relative: str, frame: pd.DataFrame) -> tuple[Stat, str]:
        """Write ``frame`` as parquet (no index); returns its :class:`Stat` and the sha256 of the
        bytes written (a content address: ``versions/...`` are named after it)."""
        data = frame.to_parquet(index=False)
        return self.write_bytes(relative, data), hashlib.sha256(data).hexdigest()

    def read_frame(self, relative: str, columns: builtins.list[str] | None = None) -> pd.DataFrame:
        """The parquet at ``relative`` (read whole, once, then parsed from memory)."""
        table = pq.read_table(pa.BufferReader(self.read_bytes(relative)), columns=columns)
        frame: pd.DataFrame = table.to_pandas()
        return frame

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Relative paths of every object under the directory ``prefix`` (all of them for
        ``""``), sorted. Directory markers and in-progress temp files are not data: never listed."""
        base = self.fs_path(prefix) if prefix else self._root_fs_path()
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        root = PurePosixPath(self._root_fs_path())
        found: builtins.list[str] = []
        for info in self.filesystem.get_file_info(selector):
            if info.type != pafs.FileType.File or info.path.endswith("/"):
                continue  # a directory, or a `prefix/` marker object
            relative = PurePosixPath(info.path).relative_to(root).as_posix()
            if self._is_data(PurePosixPath(relative).name):
                found.append(relative)
        return sorted(found)


class LocalStore(DataStore):
    """A :class:`DataStore` on a local directory (``pyarrow.fs.LocalFileSystem`` for reads and
    listings; writes and copies through :func:`~eventpipe.core.atomic.write_atomic`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.filesystem = pafs.LocalFileSystem()

    def __repr__(self) -> str:
        return f"DataStore.local({str(self.root)!r})"

    def path(self, relative: str) -> Path:
        """The absolute path of ``relative``; :class:`ValueError` if it would leave the root
        (lexically or through a symlink, as :func:`~eventpipe.core.atomic.inside`)."""
        return inside(self.root, check_relative(relative))

    def fs_path(self, relative: str) -> str:
        return str(self.path(relative))

    def _root_fs_path(self) -> str:
        return str(self.root)

    def uri(self, relative: str) -> str:
        return "file://" + str(self.path(relative))

    def write_bytes(self, relative: str, data: bytes) -> Stat:
        return _stat_of(write_bytes_atomic(self.path(relative), data))

    def read_bytes(self, relative: str) -> bytes:
        return self.path(relative).read_bytes()  # one open: the old file or the new one

    def stat(self, relative: str) -> Stat | None:
        path = self.path(relative)
        if not path.is_file():
            return None
        try:
            return _stat_of(path)
        except FileNotFoundError:
            return None

    def delete(self, relative: str) -> None:
        self.path(relative).unlink(missing_ok=True)

    def copy(self, source: str, target: str, *, durable: bool = True) -> Stat:
        destination = self.path(target)
        atomic_copy(self.path(source), destination, durable=durable)
        return _stat_of(destination)

    def upload(self, relative: str, source: Path) -> Stat:
        destination = self.path(relative)
        atomic_copy(source, destination)
        return _stat_of(destination)


def _stat_of(path: Path) -> Stat:
    st = path.stat()
    return Stat(st.st_size, st.st_mtime_ns)


class BucketStore(DataStore):
    """A :class:`DataStore` under ``s3://bucket/prefix`` on ``pyarrow.fs.S3FileSystem``."""

    def __init__(
        self,
        uri: str,
        endpoint_url: str | None,
        region: str | None,
        credentials: Credentials | None,
        deletes: Literal["auto", "boto3", "pyarrow"] = "auto",
    ) -> None:
        self.bucket_name, self.prefix = parse_bucket_uri(uri)
        endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.region = region or _region(self.bucket_name, self.endpoint_url)
        self.credentials = credentials
        options: dict[str, Any] = {
            "region": self.region,
            "allow_delayed_open": True,  # a small object goes up in one PUT, at close
            "background_writes": False,  # close() returns once the PUT is answered
        }
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ConfigError(
                    f"endpoint {self.endpoint_url!r}: write it as http(s)://host[:port]"
                )
            options |= {"endpoint_override": parts.netloc, "scheme": parts.scheme}
        if credentials is not None:
            options |= {
                "access_key": credentials.access_key,
                "secret_key": credentials.secret_key,
                "session_token": credentials.session_token,
            }
        self.filesystem = pafs.S3FileSystem(**options)
        if deletes == "auto":
            deletes = "boto3" if _has_boto3() else "pyarrow"
        self.deletes = deletes
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DataStore.bucket({self.root_uri!r})"

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket_name}/{self.prefix}"

    def key(self, relative: str) -> str:
        """The object key of ``relative`` (``prefix/relative``)."""
        key = f"{self.prefix}{check_relative(relative)}"
        if len(key.encode()) > MAX_KEY_BYTES:
            raise ValueError(f"{relative!r}: the key would exceed S3's {MAX_KEY_BYTES} bytes")
        return key

    def fs_path(self, relative: str) -> str:
        return f"{self.bucket_name}/{self.key(relative)}"

    def _root_fs_path(self) -> str:
        return f"{self.bucket_name}/{self.prefix}".rstrip("/")

    def uri(self, relative: str) -> str:
        return f"s3://{self.bucket_name}/{self.key(relative)}"

    def write_bytes(self, relative: str, data: bytes) -> Stat:
        path = self.fs_path(relative)
        with self.filesystem.open_output_stream(path) as out:  # one PUT at close
            out.write(data)
        stat = self._head(path)
        if stat is None:  # pragma: no cover - deleted by someone else at once
            raise FileNotFoundError(f"{self.uri(relative)} vanished right after it was written")
        return stat

    def upload(self, relative: str, source: Path) -> Stat:
        path = self.fs_path(relative)
        # one PUT up to pyarrow's part size; a larger file is a multipart upload, whose
        # completion is atomic too
        with source.open("rb") as data, self.filesystem.open_output_stream(path) as out:
            while chunk := data.read(UPLOAD_CHUNK):
                out.write(chunk)
        stat = self._head(path)
        if stat is None:  # pragma: no cover - deleted by someone else at once
            raise FileNotFoundError(f"{self.uri(relative)} vanished right after it was written")
        return stat

    def read_bytes(self, relative: str) -> bytes:
        path = self.fs_path(relative)
        for attempt in range(READ_ATTEMPTS):
            with self.filesystem.open_input_file(path) as file:  # HEAD: size, ETag
                head = Stat(file.size(), 0, _etag(file.metadata()))
                try:
                    data: bytes = file.read()  # one GET of bytes 0..size-1
                except OSError:  # replaced by a shorter object between the HEAD and the GET
                    data = b""
            if self._whole(path, data, head):
                return data
            time.sleep(0.005 * 2**attempt)  # it is being rewritten right now
        raise OSError(f"{self.uri(relative)} changed during each of {READ_ATTEMPTS} reads")

    def _whole(self, path: str, data: bytes, head: Stat) -> bool:
        """Whether ``data`` (the GET's bytes ``0..head.size-1``) is one whole object.

        S3 has no rename: the object may be replaced between the HEAD and the GET, and the GET
        then returns the start of the new object. The ETag of a single-PUT object is the MD5 of
        its bytes: ``data`` is whole if its MD5 is the ETag the HEAD gave, or the ETag a second
        HEAD gives (the GET read the replacement, whole). An ETag that is no MD5 (multipart,
        SSE-KMS) is trusted when a second HEAD shows the same object as the first (only an
        A -> B -> A rewrite inside that window could fool it)."""
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if len(data) == head.size and md5 == head.etag:
            return True
        again = self._head(path)
        if again is None:
            raise FileNotFoundError(f"{path} was deleted while it was being read")
        if len(data) != again.size:
            return False
        return md5 == again.etag or (again.etag == head.etag and again.size == head.size)

    def stat(self, relative: str) -> Stat | None:
        return self._head(self.fs_path(relative))

    def _head(self, path: str) -> Stat | None:
        try:
            with self.filesystem.open_input_file(path) as file:  # one HEAD, no GET
                metadata = file.metadata()
                size = file.size()
        except (FileNotFoundError, IsADirectoryError):
            return None
        return Stat(size, _mtime_ns(metadata) or self._info_mtime(path), _etag(metadata))

    def _info_mtime(self, path: str) -> int:
        info = self.filesystem.get_file_info(path)
        return int(info.mtime_ns or 0)

    def delete(self, relative: str) -> None:
        key = self.key(relative)
        if self.deletes == "boto3":
            self._boto3_client().delete_object(Bucket=self.bucket_name, Key=key)
            return
        # pyarrow PUTs a `prefix/` marker when this empties the prefix (never listed)
        with contextlib.suppress(FileNotFoundError):
            self.filesystem.delete_file(f"{self.bucket_name}/{key}")

    def copy(self, source: str, target: str, *, durable: bool = True) -> Stat:
        source_path, target_path = self.fs_path(source), self.fs_path(target)
        try:
            self.filesystem.copy_file(source_path, target_path)  # one CopyObject
        except OSError:
            if self._head(source_path) is None:
                raise FileNotFoundError(f"{self.uri(source)} does not exist") from None
            raise
        stat = self._head(target_path)
        if stat is None:  # pragma: no cover - deleted by someone else at once
            raise FileNotFoundError(f"{self.uri(target)} vanished right after the copy")
        return stat

    def _boto3_client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3

                options: dict[str, Any] = {"region_name": self.region}
                if self.endpoint_url:
                    options["endpoint_url"] = self.endpoint_url
                if self.credentials is not None:
                    options |= {
                        "aws_access_key_id": self.credentials.access_key,
                        "aws_secret_access_key": self.credentials.secret_key,
                        "aws_session_token": self.credentials.session_token,
                    }
                self._client = boto3.session.Session().client("s3", **options)
            return self._client


def _has_boto3() -> bool:
    try:
        import boto3  # noqa: F401
    except ImportError:  # pragma: no cover - the dev environment has the s3 extra
        return False
    return True


def _region(bucket: str, endpoint_url: str | None) -> str:
    """The region from the environment; for AWS itself, the bucket's own; else us-east-1."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    if endpoint_url is None:  # pragma: no cover - asks AWS
        return str(pafs.resolve_s3_region(bucket))
    return "us-east-1"


def _meta(metadata: Any, name: str) -> str | None:
    for key, value in dict(metadata or {}).items():
        key_text = key.decode() if isinstance(key, bytes) else str(key)
        if key_text.lower() == name.lower():
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _etag(metadata: Any) -> str | None:
    value = _meta(metadata, "ETag")
    return value.strip('"') if value else None


def _mtime_ns(metadata: Any) -> int | None:
    value = _meta(metadata, "Last-Modified")
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def parse_bucket_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; the prefix is ``""`` or ends in ``/``."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{uri!r} is not a bucket location; write it as s3://bucket/prefix")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            check_relative(prefix)
        except ValueError as exc:
            raise ConfigError(f"{uri!r}: {exc}") from None
        prefix += "/"
    return parts.netloc, prefix


def parse_data(
    value: str | Path,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    credentials: Any = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
) -> DataStore:
    """The store ``--data`` names: a plain path or ``file:///abs/path`` (taken literally, not
    percent-decoded, as :meth:`LocalStore.uri` writes it) is local; ``s3://bucket/prefix`` is a
    bucket (the other arguments are :meth:`DataStore.bucket`'s). Anything else is a
    :class:`~eventpipe.exceptions.ConfigError`."""
    if isinstance(value, Path):
        return DataStore.local(value)
    if value.startswith("s3://"):
        return DataStore.bucket(
            value,
            endpoint_url=endpoint_url,
            region=region,
            credentials=credentials,
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
        )
    if value.startswith("file://"):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"{value!r}: write a local data dir as file:///absolute/path")
        return DataStore.local(Path(value[len("file://") + len(parts.netloc) :]))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
        raise ConfigError(f"{value!r}: the data dir is a path, file:///path or s3://bucket/prefix")
    return DataStore.local(Path(value))
