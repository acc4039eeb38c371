"""``eventpipe.core.fs.DataStore`` on a local directory and in a bucket (the session's
``moto_server`` over HTTP): every operation, path checks, one PUT per write, whole objects for
readers during rewrites, and no directory markers in listings."""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from pydantic import SecretStr

from eventpipe.core.fs import (
    BucketStore,
    Credentials,
    DataStore,
    LocalStore,
    Stat,
    credentials_from,
    parse_data,
)
from eventpipe.exceptions import ConfigError

PREFIX = "team/data"
REL = "processed/sales/cleaned/2026-01-01.csv.parquet"


def _s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _new_bucket(endpoint: str) -> str:
    name = "fs-" + uuid.uuid4().hex[:12]
    _s3(endpoint).create_bucket(Bucket=name)
    return name


def _bucket_store(endpoint: str, **options: Any) -> BucketStore:
    return DataStore.bucket(
        f"s3://{_new_bucket(endpoint)}/{PREFIX}",
        endpoint_url=endpoint,
        region="us-east-1",
        credentials=Credentials("testing", "testing"),
        **options,
    )


@pytest.fixture(params=["local", "bucket"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> DataStore:
    if request.param == "local":
        return DataStore.local(tmp_path / "data")
    return _bucket_store(request.getfixturevalue("moto_endpoint"))


@pytest.fixture
def bucket_store(moto_endpoint: str) -> BucketStore:
    return _bucket_store(moto_endpoint)


def _keys(store: BucketStore) -> list[str]:
    """Every key in the store's bucket, markers included (boto3, not the store)."""
    found = _s3(str(store.endpoint_url)).list_objects_v2(Bucket=store.bucket_name)
    return sorted(item["Key"] for item in found.get("Contents", []))


def _frame(rows: int, gen: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "gen": [gen] * rows,
            "v": range(rows),
            "label": [f"row {i} of generation {gen}" for i in range(rows)],
        }
    )


# -- the request census: moto_server's own log ---------------------------------------------------

_REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


@dataclass
class Requests:
    """What the session's ``moto_server`` answered, from its request log (the ``moto_endpoint``
    fixture writes it to ``<basetemp>/moto*/moto.log``). The server, not the client, counts: no
    botocore or pyarrow hook is involved, so the count holds whatever the client library does."""

    log: Path
    offset: int = 0

    def _settled(self) -> int:  # the server logs just after answering: wait for the log to settle
        size, deadline = -1, time.monotonic() + 3
        while time.monotonic() < deadline:
            now = self.log.stat().st_size
            if now == size:
                break
            size = now
            time.sleep(0.1)
        return size

    def mark(self) -> None:
        self.offset = self._settled()

    def since_mark(self, bucket: str) -> list[str]:
        """``METHOD /bucket/key?query`` of each request to ``bucket`` since :meth:`mark`."""
        end = self._settled()
        with self.log.open("rb") as fh:
            fh.seek(self.offset)
            text = fh.read(end - self.offset).decode(errors="replace")
        found = (_REQUEST.search(line) for line in text.splitlines())
        return [
            f"{m[1]} {m[2]}"
            for m in found
            if m and (m[2] == f"/{bucket}" or m[2].startswith((f"/{bucket}/", f"/{bucket}?")))
        ]


@pytest.fixture
def requests(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Requests:
    found = tmp_path_factory.getbasetemp().glob("moto*/moto.log")  # and pytest's motocurrent link
    logs = sorted({log.resolve() for log in found})
    assert len(logs) == 1, f"the moto_endpoint fixture's request log, not {logs}"
    return Requests(logs[0])


# -- every operation, on both stores -------------------------------------------------------------


def test_bytes_round_trip_and_stat(store: DataStore) -> None:
    data = b"x" * 3700
    written = store.write_bytes(REL, data)
    assert written.size == len(data)
    assert store.read_bytes(REL) == data
    assert store.stat(REL) == written
    assert store.exists(REL)
    assert abs(written.mtime_ns - time.time_ns()) < 60 * 10**9
    if isinstance(store, BucketStore):
        assert written.etag == hashlib.md5(data).hexdigest()
    else:
        assert written.etag is None

    replaced = store.write_bytes(REL, b"shorter")
    assert store.read_bytes(REL) == b"shorter"
    assert replaced.size == 7
    assert store.stat(REL) == replaced


def test_frames_round_trip_with_their_digest(store: DataStore) -> None:
    frame = _frame(25)
    stat, digest = store.write_frame(REL, frame)
    data = store.read_bytes(REL)
    assert digest == hashlib.sha256(data).hexdigest()
    assert stat.size == len(data)
    pd.testing.assert_frame_equal(store.read_frame(REL), frame)
    pd.testing.assert_frame_equal(store.read_frame(REL, columns=["v"]), frame[["v"]])


def test_missing_objects(store: DataStore) -> None:
    store.write_bytes("processed/sales/cleaned/a.parquet", b"a")
    for missing in ("processed/sales/cleaned/nope.parquet", "nothing/here"):
        assert store.stat(missing) is None
        assert not store.exists(missing)
        with pytest.raises(FileNotFoundError):
            store.read_bytes(missing)
        store.delete(missing)  # nothing to do: no error
        with pytest.raises(FileNotFoundError):
            store.copy(missing, "versions/x.parquet")
    assert store.stat("processed/sales") is None  # a directory is not an object
    assert not store.exists("processed/sales/cleaned")
    assert store.list("nothing") == []


def test_list_is_by_directory_and_sorted(store: DataStore) -> None:
    paths = [
        "processed/sales/cleaned/b.parquet",
        "processed/sales/cleaned/a.parquet",
        "processed/sales/other/deep/c.parquet",
        "processed/salesforce/x/d.parquet",
        "analytics/sales/revenue.parquet",
    ]
    for path in paths:
        store.write_bytes(path, path.encode())
    assert store.list() == sorted(paths)
    assert store.list("processed/sales") == sorted(paths[:3])
    assert store.list("processed/sales/cleaned") == sorted(paths[:2])
    assert store.list("processed/sal") == []  # a directory, not a string prefix


def test_delete_leaves_nothing_listed(store: DataStore) -> None:
    paths = ["processed/sales/cleaned/a.parquet", "processed/sales/cleaned/b.parquet", "top.json"]
    for path in paths:
        store.write_bytes(path, b"1")
    store.delete(paths[0])
    assert store.list() == paths[1:]
    for path in paths[1:]:
        store.delete(path)
    assert store.list() == []
    assert store.list("processed") == []
    if isinstance(store, BucketStore):  # boto3's DeleteObject left no `prefix/` markers at all
        assert _keys(store) == []


def test_pyarrow_deletes_put_markers_that_are_never_listed(moto_endpoint: str) -> None:
    store = _bucket_store(moto_endpoint, deletes="pyarrow")
    store.write_bytes("processed/sales/cleaned/a.parquet", b"1")
    store.write_bytes("processed/sales/keep.parquet", b"2")
    store.delete("processed/sales/cleaned/a.parquet")
    markers = [key for key in _keys(store) if key.endswith("/")]
    assert markers == [f"{PREFIX}/processed/sales/cleaned/"], "pyarrow's marker, documented"
    assert store.list() == ["processed/sales/keep.parquet"]
    store.delete("processed/sales/keep.parquet")
    assert store.list() == []
    assert store.list("processed/sales/cleaned") == []
    assert store.stat("processed/sales/cleaned") is None


def test_copy(store: DataStore) -> None:
    frame = _frame(7)
    store.write_frame("versions/sales/cleaned/abc.parquet", frame)
    stat = store.copy("versions/sales/cleaned/abc.parquet", REL)
    assert store.stat(REL) == stat
    assert store.read_bytes(REL) == store.read_bytes("versions/sales/cleaned/abc.parquet")
    pd.testing.assert_frame_equal(store.read_frame(REL), frame)
    store.write_frame("versions/sales/cleaned/def.parquet", _frame(3))
    store.copy("versions/sales/cleaned/def.parquet", REL)  # over an existing object
    assert len(store.read_frame(REL)) == 3


def test_uri(store: DataStore, tmp_path: Path) -> None:
    rel = "processed/sales/cleaned/sales%2F2024 jan.csv.parquet"  # a partition name, unescaped
    if isinstance(store, LocalStore):
        assert store.uri(rel) == f"file://{(tmp_path / 'data').resolve()}/{rel}"
    else:
        assert isinstance(store, BucketStore)
        assert store.uri(rel) == f"s3://{store.bucket_name}/{PREFIX}/{rel}"
        assert store.root_uri == f"s3://{store.bucket_name}/{PREFIX}/"
    assert parse_data(store.uri("x").removesuffix("/x")).uri(rel) == store.uri(rel)


ESCAPING = [
    "",
    "/etc/passwd",
    "../outside",
    "processed/../../outside",
    "processed/..",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    "a\0b",
]


@pytest.mark.parametrize("bad", ESCAPING)
def test_escaping_paths_raise(store: DataStore, bad: str) -> None:
    store.write_bytes("ok/file", b"1")
    calls = [
        lambda: store.write_bytes(bad, b"x"),
        lambda: store.write_frame(bad, _frame(1)),
        lambda: store.read_bytes(bad),
        lambda: store.read_frame(bad),
        lambda: store.stat(bad),
        lambda: store.exists(bad),
        lambda: store.delete(bad),
        lambda: store.uri(bad),
        lambda: store.copy("ok/file", bad),
        lambda: store.copy(bad, "ok/other"),
    ]
    if bad:  # list("") is everything
        calls.append(lambda: store.list(bad))
    for call in calls:
        with pytest.raises(ValueError):  # noqa: PT011 - the message names the path
            call()
    assert store.list() == ["ok/file"]


def test_a_backslash_is_part_of_a_name(store: DataStore) -> None:
    rel = "processed/sales/cleaned/..\\..\\x.csv.parquet"  # a legal POSIX file name
    store.write_bytes(rel, b"1")
    assert store.list() == [rel]
    assert store.read_bytes(rel) == b"1"
    if isinstance(store, LocalStore):
        assert (store.root / "processed" / "sales" / "cleaned" / "..\\..\\x.csv.parquet").exists()


def test_local_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "data"
    root.mkdir()
    (root / "processed").symlink_to(outside)
    store = DataStore.local(root)
    with pytest.raises(ValueError, match="escapes"):
        store.write_bytes("processed/x.parquet", b"1")
    assert list(outside.iterdir()) == []


def test_local_write_is_temp_fsync_rename(tmp_path: Path) -> None:
    store = DataStore.local(tmp_path)
    store.write_bytes("a/b.bin", b"old")
    (tmp_path / "a" / ".tmp-leftover.bin").write_bytes(b"half")  # a crashed write's temp file
    assert store.list() == ["a/b.bin"]  # in-progress temp files are not data
    inode = (tmp_path / "a" / "b.bin").stat().st_ino
    store.write_bytes("a/b.bin", b"new")
    assert (tmp_path / "a" / "b.bin").stat().st_ino != inode  # replaced by a rename, not rewritten


# -- a write in a bucket is one PUT ---------------------------------------------------------------


def test_a_small_write_is_one_put(bucket_store: BucketStore, requests: Requests) -> None:
    frame = _frame(60)
    data = frame.to_parquet(index=False)
    assert 1000 < len(data) < 10_000
    key = f"/{bucket_store.bucket_name}/{PREFIX}/{REL}"
    for write in (
        lambda: bucket_store.write_bytes(REL, data),
        lambda: bucket_store.write_frame(REL, frame),
    ):
        requests.mark()
        write()
        sent = requests.since_mark(bucket_store.bucket_name)
        # One PUT of the whole object (no multipart: no POST ?uploads, no ?partNumber), then the
        # HEAD that gives the Stat; no directory markers, no listing.
        assert sent == [f"PUT {key}", f"HEAD {key}"]

    requests.mark()
    bucket_store.copy(REL, "versions/sales/cleaned/abc.parquet")
    sent = requests.since_mark(bucket_store.bucket_name)
    copied = f"/{bucket_store.bucket_name}/{PREFIX}/versions/sales/cleaned/abc.parquet"
    assert sent == [f"PUT {copied}", f"HEAD {copied}"]  # CopyObject: the bytes never come here

    requests.mark()
    bucket_store.delete(REL)
    assert requests.since_mark(bucket_store.bucket_name) == [f"DELETE {key}"]


# -- readers during rewrites ----------------------------------------------------------------------


def _rows(gen: int) -> int:
    return 1 + (gen * 7919) % 4000  # sizes from ~1 KB to ~60 KB, in no order


def test_readers_see_a_whole_old_or_new_object_during_rewrites(store: DataStore) -> None:
    store.write_frame(REL, _frame(_rows(0), 0))
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not done.is_set():
                frame = store.read_frame(REL)
                gen = int(frame["gen"].iloc[0])
                expected = _frame(_rows(gen), gen)
                pd.testing.assert_frame_equal(frame, expected)
                seen.append(gen)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for gen in range(1, 51):
            store.write_frame(REL, _frame(_rows(gen), gen))
            time.sleep(0.002)
    finally:
        done.set()
        for thread in readers:
            thread.join(30)
    assert not errors, errors[0]
    assert len(seen) >= 50
    assert len(set(seen)) > 5, "the readers overlapped the rewrites"
    pd.testing.assert_frame_equal(store.read_frame(REL), _frame(_rows(50), 50))


class _RacedFile:
    """A file opened (HEAD done) whose GET happens only after ``rewrite`` replaced the object."""

    def __init__(self, file: Any, rewrite: Any, got: list[bytes]) -> None:
        self.file, self.rewrite, self.got = file, rewrite, got

    def __enter__(self) -> _RacedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def metadata(self) -> Any:
        return self.file.metadata()

    def size(self) -> int:
        return int(self.file.size())

    def read(self) -> bytes:
        self.rewrite()
        data = bytes(self.file.read())
        self.got.append(data)
        return data


class _RacingFileSystem:
    """``pyarrow.fs.S3FileSystem`` whose first read races a rewrite; the rest is passed on."""

    def __init__(self, fs: Any, rewrite: Any) -> None:
        self.fs, self.rewrite = fs, rewrite
        self.got: list[bytes] = []
        self.raced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def open_input_file(self, path: str) -> Any:
        file = self.fs.open_input_file(path)
        if self.raced:
            return file
        self.raced = True
        return _RacedFile(file, self.rewrite, self.got)


def test_a_read_racing_a_rewrite_is_read_again(bucket_store: BucketStore) -> None:
    """S3 has no rename and pyarrow reads with a HEAD (size) then a ranged GET: an object replaced
    in between comes back as the start of the new one. The store sees that and reads again."""
    old, new = _frame(10, 1).to_parquet(index=False), _frame(3000, 2).to_parquet(index=False)
    bucket_store.write_bytes(REL, old)
    s3 = _s3(str(bucket_store.endpoint_url))

    def rewrite() -> None:
        s3.put_object(Bucket=bucket_store.bucket_name, Key=bucket_store.key(REL), Body=new)

    racing = _RacingFileSystem(bucket_store.filesystem, rewrite)
    bucket_store.filesystem = racing
    assert bucket_store.read_bytes(REL) == new
    assert racing.got[0] == new[: len(old)], "the raced GET got a truncated mix"
    pd.testing.assert_frame_equal(bucket_store.read_frame(REL), _frame(3000, 2))


# -- choosing a store, credentials ----------------------------------------------------------------


def test_parse_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for value in ("data", tmp_path / "data", f"file://{tmp_path}/data"):
        local = parse_data(value)
        assert isinstance(local, LocalStore)
        assert local.root == tmp_path / "data"
    assert parse_data(f"file://localhost{tmp_path}").root == tmp_path  # type: ignore[attr-defined]
    bucket = parse_data("s3://my-bucket/a/b/", endpoint_url="http://127.0.0.1:9", region="x")
    assert isinstance(bucket, BucketStore)
    assert (bucket.bucket_name, bucket.prefix, bucket.region) == ("my-bucket", "a/b/", "x")
    assert parse_data("s3://my-bucket", endpoint_url="http://127.0.0.1:9").uri("k") == (
        "s3://my-bucket/k"
    )
    for bad in ("gs://b/x", "file://otherhost/x", "s3://b/../x", "s3://", "s3://b/x?y=1"):
        with pytest.raises(ConfigError):
            parse_data(bad, endpoint_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="endpoint"):
        parse_data("s3://my-bucket", endpoint_url="127.0.0.1:9")


def test_endpoint_from_the_environment_as_boto3_reads_it(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _new_bucket(moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    store = DataStore.bucket(f"s3://{name}/p", region="us-east-1")  # keys: the environment's
    assert store.endpoint_url == moto_endpoint
    store.write_bytes("a", b"via env")
    assert _s3(moto_endpoint).get_object(Bucket=name, Key="p/a")["Body"].read() == b"via env"


class _FakeAwsCredentialsBlock:
    """What eventpipe reads of a prefect-aws ``AwsCredentials`` block (no Prefect import)."""

    def __init__(self, key: str, secret: str) -> None:
        self.aws_access_key_id = key
        self.aws_secret_access_key = SecretStr(secret)

    def get_boto3_session(self) -> Any:
        return boto3.Session(
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key.get_secret_value(),
        )


@dataclass
class _FakeS3BucketBlock:
    bucket_name: str
    credentials: Any


def test_credentials_from_objects_and_keys(moto_endpoint: str) -> None:
    plain = Credentials("AKIA", "s3cret", "tok")
    assert credentials_from(plain) is plain
    assert "s3cret" not in repr(plain)
    session = boto3.Session(aws_access_key_id="k1", aws_secret_access_key="s1")
    assert credentials_from(session) == Credentials("k1", "s1")
    assert credentials_from(session.get_credentials()) == Credentials("k1", "s1")
    block = _FakeAwsCredentialsBlock("k2", "s2")
    assert credentials_from(block) == Credentials("k2", "s2")
    assert credentials_from(_FakeS3BucketBlock("b", block)) == Credentials("k2", "s2")
    with pytest.raises(ConfigError, match="not both"):
        credentials_from(type("Half", (), {"access_key": "k", "secret_key": None})())

    uri = f"s3://{_new_bucket(moto_endpoint)}"
    with pytest.raises(ValueError, match="not both"):
        DataStore.bucket(uri, endpoint_url=moto_endpoint, credentials=plain, access_key="k")
    with pytest.raises(ValueError, match="together"):
        DataStore.bucket(uri, endpoint_url=moto_endpoint, access_key="k")
    keyed = DataStore.bucket(
        uri, endpoint_url=moto_endpoint, access_key="testing", secret_key="testing"
    )
    assert keyed.credentials == Credentials("testing", "testing")
    assert keyed.write_bytes("k", b"1") == keyed.stat("k")
    from_block = DataStore.bucket(uri, endpoint_url=moto_endpoint, credentials=block)
    assert from_block.read_bytes("k") == b"1"
    assert isinstance(from_block.stat("k"), Stat)


def test_credentials_from_prefect_aws_blocks() -> None:
    """The real block classes (built in memory, not saved): read without core importing Prefect."""
    prefect_aws = pytest.importorskip("prefect_aws")
    block = prefect_aws.AwsCredentials(
        aws_access_key_id="k3", aws_secret_access_key="s3", aws_session_token="t3"
    )
    assert credentials_from(block) == Credentials("k3", "s3", "t3")
    bucket = prefect_aws.S3Bucket(bucket_name="b", credentials=block)
    assert credentials_from(bucket) == Credentials("k3", "s3", "t3")
