"""Which filesystem layer eventpipe's storage should use on object storage: pyarrow's own
``pyarrow.fs.S3FileSystem`` or fsspec's ``s3fs``, side by side against one ``moto_server`` over
HTTP on 127.0.0.1, with ``pyarrow.fs.LocalFileSystem`` as the reference.

Each layer runs in a few settings (pyarrow: its defaults, then ``allow_delayed_open`` with and
without ``background_writes``; s3fs: ``default_cache_type="none"`` and its default read-ahead
cache, both with ``skip_instance_cache`` and no listings cache, so every call asks the server).
Per file: write the object (pyarrow ``open_output_stream``, s3fs ``pipe_file``; the parquet
bytes are made once beforehand, the same for every layer), read it back into a pandas DataFrame
(``pq.read_table(path, filesystem=fs).to_pandas()``, and, as ``read_bytes``, the whole object in
one call parsed from memory), stat it (size and mtime); per round, list the prefix holding the
N small objects; then delete each file. N small parquet files (10 rows,
like a processed partition) and a few of about 5 MB. The layers are interleaved: for each file
(and each listing round) every layer takes its turn, in an order rotated from one file to the
next. Before timing, a census counts the HTTP requests each layer makes for each operation (from
moto_server's request log): it shows which write is one PUT and what a read costs in requests.

    .venv/bin/python bench/fs_layer.py [--quick] [--files N] [--large N] [--list-rounds N]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import harness

NAME = "fs_layer"
BUCKET = "fs-layer-bench"
OPS = ("write", "read", "read_bytes", "stat", "list", "delete")
TOTALLED = ("write", "read", "stat", "list", "delete")
"""The operations a layer's total adds up (``read_bytes`` is the other way to read, not a
second read)."""
SMALL_ROWS = 10
LARGE_BYTES = 5 * 1024 * 1024
"""About this much parquet for a large file (random floats, so it does not compress away)."""


# -- the layers --------------------------------------------------------------------------------


@dataclass
class Layer:
    """One filesystem layer in one setting, and the five operations on it. ``root`` is where its
    objects go: ``bucket/<name>`` on S3, a temporary directory on the local disk."""

    name: str
    library: str
    settings: dict[str, Any]
    fs: Any
    root: str
    write: Callable[[str, bytes], None]
    read: Callable[[str], Any]
    read_bytes: Callable[[str], Any]
    stat: Callable[[str], tuple[int, float]]
    listing: Callable[[str], int]
    delete: Callable[[str], None]

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def do(self, op: str, path: str, data: bytes = b"") -> Any:
        """One operation: ``path`` is the prefix for ``list``, ``data`` is for ``write``."""
        if op == "write":
            return self.write(path, data)
        calls: dict[str, Callable[[str], Any]] = {
            "read": self.read,
            "read_bytes": self.read_bytes,
            "stat": self.stat,
            "list": self.listing,
            "delete": self.delete,
        }
        return calls[op](path)


def from_bytes(data: bytes) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data)).to_pandas()


def arrow_layer(name: str, fs: Any, root: str, settings: dict[str, Any]) -> Layer:
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    def write(path: str, data: bytes) -> None:
        with fs.open_output_stream(path) as out:
            out.write(data)

    def read(path: str) -> Any:
        return pq.read_table(path, filesystem=fs).to_pandas()

    def read_bytes(path: str) -> Any:
        with fs.open_input_file(path) as file:  # one ranged GET of its size (a stream reads
            return from_bytes(file.read())  # in 256 KiB GETs: 19 of them for 5 MB)

    def stat(path: str) -> tuple[int, float]:
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(path)
        return info.size, info.mtime.timestamp()

    def listing(prefix: str) -> int:
        return len(fs.get_file_info(pafs.FileSelector(prefix, recursive=False)))

    library = "pyarrow.fs" if name != "local" else "pyarrow.fs (local)"
    return Layer(
        name, library, settings, fs, root, write, read, read_bytes, stat, listing, fs.delete_file
    )


def s3fs_layer(name: str, fs: Any, root: str, settings: dict[str, Any]) -> Layer:
    import pyarrow.parquet as pq

    def write(path: str, data: bytes) -> None:
        fs.pipe_file(path, data)

    def read(path: str) -> Any:
        return pq.read_table(path, filesystem=fs).to_pandas()

    def read_bytes(path: str) -> Any:
        return from_bytes(fs.cat_file(path))

    def stat(path: str) -> tuple[int, float]:
        info = fs.info(path)
        return int(info["size"]), info["LastModified"].timestamp()

    def listing(prefix: str) -> int:
        return len(fs.ls(prefix, detail=True, refresh=True))

    return Layer(
        name, "s3fs", settings, fs, root, write, read, read_bytes, stat, listing, fs.rm_file
    )


ARROW_SETTINGS: dict[str, dict[str, bool]] = {
    "pyarrow": {"background_writes": True, "allow_delayed_open": False},  # the defaults
    "pyarrow_delayed": {"background_writes": True, "allow_delayed_open": True},
    "pyarrow_delayed_no_bg": {"background_writes": False, "allow_delayed_open": True},
}
"""pyarrow's settings compared. ``allow_delayed_open`` lets a small object go up in one PUT
at close; without it ``open_output_stream`` starts a multipart upload at open (the census shows
it: 3 requests, and on S3 a multipart completion can notify twice)."""


def make_layers(endpoint: str, local_root: Path) -> list[Layer]:
    import s3fs  # type: ignore[import-untyped, unused-ignore]
    from pyarrow import fs as pafs

    host = endpoint.removeprefix("http://")
    key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    layers = [arrow_layer("local", pafs.LocalFileSystem(), str(local_root), {})]
    for name, options in ARROW_SETTINGS.items():
        settings = {**options, "scheme": "http", "region": "us-east-1"}
        fs = pafs.S3FileSystem(
            access_key=key, secret_key=secret, endpoint_override=host, **settings
        )
        layers.append(arrow_layer(name, fs, f"{BUCKET}/{name}", settings))
    for cache in ("none", "readahead"):
        settings = {
            "default_cache_type": cache,
            "skip_instance_cache": True,
            "use_listings_cache": False,
        }
        fs = s3fs.S3FileSystem(
            key=key,
            secret=secret,
            endpoint_url=endpoint,
            client_kwargs={"region_name": "us-east-1"},
            **settings,
        )
        name = "s3fs" if cache == "none" else "s3fs_readahead"
        layers.append(s3fs_layer(name, fs, f"{BUCKET}/{name}", settings))
    return layers


# -- the data ----------------------------------------------------------------------------------


def parquet_bytes(rows: int, seed: int) -> bytes:
    """A processed partition's parquet: the demo's columns, ``rows`` rows."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "order_id": np.arange(seed * rows, (seed + 1) * rows, dtype="int64"),
            "day": pd.to_datetime("2026-05-01") + pd.to_timedelta(rng.integers(0, 28, rows), "D"),
            "region": rng.choice(["north", "south", "east", "west"], rows),
            "amount": rng.random(rows) * 100,
            "score": rng.random(rows),
        }
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def large_rows() -> int:
    """Rows that make a parquet file of about :data:`LARGE_BYTES`."""
    per_row = len(parquet_bytes(100_000, 0)) / 100_000
    return int(LARGE_BYTES / per_row)


# -- the request census ------------------------------------------------------------------------

REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


class RequestLog:
    """moto_server's request log: what each operation sent, counted by kind. The server logs a
    request just after answering it, so both ends wait until the log stops growing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def settled_size(self) -> int:
        size, deadline = -1, time.monotonic() + 3.0
        while time.monotonic() < deadline:
            now = self.path.stat().st_size if self.path.exists() else 0
            if now == size:
                break
            size = now
            time.sleep(0.1)
        return size

    def mark(self) -> None:
        self.offset = self.settled_size()

    def since_mark(self) -> Counter[str]:
        end = self.settled_size()
        with self.path.open("rb") as log:
            log.seek(self.offset)
            lines = log.read(end - self.offset).decode(errors="replace").splitlines()
        return Counter(kind(match) for line in lines if (match := REQUEST.search(line)))


def kind(match: re.Match[str]) -> str:
    method, target, status = match.groups()
    query = target.partition("?")[2]
    if "uploads" in query.split("&"):
        what = "create multipart"
    elif "uploadId=" in query:
        what = "upload part" if method == "PUT" else "multipart " + method.lower()
    elif "list-type" in query or (method == "GET" and target.rstrip("/").count("/") <= 1):
        what = "list"
    else:
        what = {"GET": "get", "PUT": "put", "HEAD": "head", "DELETE": "delete"}.get(method, method)
    return f"{what} {status}"


def census(
    layers: list[Layer], log: RequestLog, small: bytes, large: bytes
) -> dict[str, dict[str, dict[str, int]]]:
    """The HTTP requests each S3 layer sends for one operation of each kind."""
    counted: dict[str, dict[str, dict[str, int]]] = {}
    for layer in layers:
        if layer.name == "local":
            continue
        seen: dict[str, dict[str, int]] = {}
        for label, data in (("small", small), ("large", large)):
            path = layer.path("census", f"{label}.parquet")
            for op in ("write", "read", "read_bytes", "stat", "list", "delete"):
                log.mark()
                layer.do(op, layer.path("census") if op == "list" else path, data)
                seen[f"{label} {op}"] = dict(sorted(log.since_mark().items()))
        if layer.library == "s3fs":  # the other way to write: open(path, "wb")
            path = layer.path("census", "opened.parquet")
            log.mark()
            with layer.fs.open(path, "wb") as out:
                out.write(small)
            seen["small write via open('wb')"] = dict(sorted(log.since_mark().items()))
            layer.delete(path)
        counted[layer.name] = seen
    return counted


# -- the measurement ---------------------------------------------------------------------------

Times = dict[str, dict[str, list[float]]]
"""Layer -> operation -> seconds of each call."""


def timed(times: Times, layer: Layer, op: str, path: str, data: bytes = b"") -> Any:
    started = time.perf_counter()
    result = layer.do(op, path, data)
    times[layer.name][op].append(time.perf_counter() - started)
    return result


def rotated(layers: list[Layer], turn: int) -> list[Layer]:
    shift = turn % len(layers)
    return layers[shift:] + layers[:shift]


def part(index: int) -> str:
    return f"part-{index:05d}.parquet"


def per_file_rounds(layers: list[Layer], prefix: str, blobs: list[bytes], times: Times) -> None:
    """Write, read back (both ways) and stat each file, every layer in turn (the order rotated
    from file to file); checks what comes back."""
    for index, data in enumerate(blobs):
        for layer in rotated(layers, index):
            path = layer.path(prefix, part(index))
            timed(times, layer, "write", path, data)
            frames = [timed(times, layer, op, path) for op in ("read", "read_bytes")]
            size, _mtime = timed(times, layer, "stat", path)
            if size != len(data) or any(len(f) != len(frames[0]) or f.empty for f in frames):
                raise RuntimeError(f"{layer.name}: {path} came back wrong ({size} bytes)")


def listing_rounds(layers: list[Layer], prefix: str, count: int, rounds: int, times: Times) -> None:
    for turn in range(rounds):
        for layer in rotated(layers, turn):
            found = timed(times, layer, "list", layer.path(prefix))
            if found != count:
                raise RuntimeError(f"{layer.name}: listed {found} objects, not {count}")


def delete_rounds(layers: list[Layer], prefix: str, count: int, times: Times) -> None:
    for index in range(count):
        for layer in rotated(layers, index):
            timed(times, layer, "delete", layer.path(prefix, part(index)))


def warm_up(layers: list[Layer], small: bytes) -> None:
    """Connections, imports, first-call costs: paid once before anything is timed."""
    for layer in layers:
        for index in range(3):
            path = layer.path("warm", f"w{index}.parquet")
            for op in OPS:
                layer.do(op, layer.path("warm") if op == "list" else path, small)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * 0.95) - 1)]


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per operation: count, median, p95 and total, in milliseconds."""
    out: dict[str, dict[str, float]] = {}
    for op in OPS:
        values = times.get(op) or []
        if values:
            out[op] = {
                "n": len(values),
                "median_ms": round(statistics.median(values) * 1000, 3),
                "p95_ms": round(p95(values) * 1000, 3),
                "total_s": round(sum(values), 4),
            }
    out["all"] = {"total_s": round(sum(sum(times.get(op) or []) for op in TOTALLED), 4)}
    return out


def new_times(layers: list[Layer]) -> Times:
    return {layer.name: {op: [] for op in OPS} for layer in layers}


@contextmanager
def s3_endpoint(log_file: Path) -> Iterator[str]:
    from eventpipe.testing import moto_s3

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    with moto_s3(log_file=log_file) as endpoint:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint


def keys_left(endpoint: str, prefix: str) -> list[str]:
    """What the bucket still holds under ``prefix`` (every file there was deleted)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    found = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(str(item["Key"]) for item in found)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 small files, 3 large")
    parser.add_argument("--files", type=int, default=None, help="small files (default 300)")
    parser.add_argument("--large", type=int, default=None, help="~5 MB files (default 10)")
    parser.add_argument("--list-rounds", type=int, default=None, help="listings (default 30)")
    parser.add_argument("--out", type=Path, default=None, help="result file")
    args = parser.parse_args(argv)
    args.files = args.files or (50 if args.quick else 300)
    args.large = args.large or (3 if args.quick else 10)
    args.list_rounds = args.list_rounds or (10 if args.quick else 30)
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse(argv)
    at_start = harness.start_state()
    root = Path(tempfile.mkdtemp(prefix="eventpipe-fs-layer-")).resolve()
    log = RequestLog(root / "moto.log")
    small = [parquet_bytes(SMALL_ROWS, seed) for seed in range(args.files)]
    rows = large_rows()
    large = [parquet_bytes(rows, 10_000 + seed) for seed in range(args.large)]
    print(
        f"{args.files} small files of ~{len(small[0])} B, {args.large} large of "
        f"~{len(large[0]) / 2**20:.1f} MiB ({rows} rows)",
        flush=True,
    )
    try:
        with s3_endpoint(log.path) as endpoint:
            for prefix in ("warm", "census", "small", "large"):  # S3 has no directories
                (root / "local" / prefix).mkdir(parents=True)
            layers = make_layers(endpoint, root / "local")
            warm_up(layers, small[0])
            requests = census(layers, log, small[0], large[0])
            left = keys_left(endpoint, "")
            print("census done; timing, the layers interleaved", flush=True)
            started = time.monotonic()
            small_times, large_times = new_times(layers), new_times(layers)
            per_file_rounds(layers, "small", small, small_times)
            listing_rounds(layers, "small", args.files, args.list_rounds, small_times)
            delete_rounds(layers, "small", args.files, small_times)
            per_file_rounds(layers, "large", large, large_times)
            delete_rounds(layers, "large", args.large, large_times)
            timed_s = time.monotonic() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
    body = report(args, layers, {"small": small_times, "large": large_times})
    body["config"] |= {
        "small_bytes": len(small[0]),
        "large_bytes": len(large[0]),
        "large_rows": rows,
        "timed_seconds": round(timed_s, 1),
    }
    body["requests_per_op"] = requests
    body["keys_left_after_census_deletes"] = left
    facts = {name: installed(name) for name in PACKAGES}
    out = args.out if args.out is not None else NAME
    return harness.write_results(
        out, harness.recorded(body, at_start, note=NOTE, machine_facts=facts)
    )


PACKAGES = ("pyarrow", "s3fs", "fsspec", "aiobotocore", "botocore", "boto3", "moto", "pandas")

PER_FILE = ("write", "read", "stat", "delete")
"""What one processed partition costs a layer: written, read back, stat'ed, deleted."""


def report(
    args: argparse.Namespace, layers: list[Layer], times: dict[str, Times]
) -> dict[str, Any]:
    """The summaries, the tables printed, and the suite's figures."""
    results: dict[str, Any] = {}
    for layer in layers:
        results[layer.name] = {"library": layer.library, "settings": layer.settings}
        for size, by_layer in times.items():
            got = summary(by_layer[layer.name])
            got["all"]["per_file_median_ms"] = round(
                sum(got[op]["median_ms"] for op in PER_FILE), 3
            )
            results[layer.name][size] = got
    for size in times:
        ops = [op for op in OPS if op in results["local"][size]]
        print(
            f"\n{size} files: median / p95 ms per call; per file (sum of medians of "
            f"{'+'.join(PER_FILE)}); total s of {'+'.join(o for o in TOTALLED if o in ops)}"
        )
        headers = ["layer", *ops, "per file ms", "total s"]
        table_rows: list[list[object]] = []
        for name, got in results.items():
            cells = [
                f"{got[size][op]['median_ms']:.2f} / {got[size][op]['p95_ms']:.2f}" for op in ops
            ]
            table_rows.append(
                [name, *cells, got[size]["all"]["per_file_median_ms"], got[size]["all"]["total_s"]]
            )
        print(harness.table(headers, table_rows))

    def best(library: str) -> str:
        names = [layer.name for layer in layers if layer.library == library]
        return min(names, key=lambda n: results[n]["small"]["all"]["total_s"])

    arrow, fsspec = best("pyarrow.fs"), best("s3fs")
    a, f, local = results[arrow], results[fsspec], results["local"]
    ratio_total = f["small"]["all"]["total_s"] / a["small"]["all"]["total_s"]
    ratio_file = f["small"]["all"]["per_file_median_ms"] / a["small"]["all"]["per_file_median_ms"]

    def versus(size: str, op: str) -> str:
        if op == "per file":
            x, y = (r[size]["all"]["per_file_median_ms"] for r in (a, f))
        else:
            x, y = (r[size][op]["median_ms"] for r in (a, f))
        return f"{x:.1f} ms vs {y:.1f} ms"

    figures = [
        {
            "figure": f"small parquet on S3 (moto), per file ({'+'.join(PER_FILE)}), median: "
            f"pyarrow.fs ({arrow}) vs s3fs ({fsspec})",
            "value": f"{versus('small', 'per file')} "
            f"(local {local['small']['all']['per_file_median_ms']:.1f} ms)",
            "goal": "-",
            "met": None,
        },
        {
            "figure": f"list {args.files} objects, median: pyarrow.fs vs s3fs",
            "value": versus("small", "list"),
            "goal": "-",
            "met": None,
        },
        {
            "figure": "~5 MB parquet read (pq.read_table), median: pyarrow.fs vs s3fs",
            "value": versus("large", "read"),
            "goal": "-",
            "met": None,
        },
    ]
    print(f"\nbest pyarrow setting: {arrow}; best s3fs setting: {fsspec}")
    print(f"s3fs / pyarrow: small-file total x{ratio_total:.2f}, per file x{ratio_file:.2f}")
    return {
        "name": NAME,
        "measure": "seconds per filesystem call against moto_server over HTTP on 127.0.0.1 "
        "(local disk for `local`): write uploads pre-made parquet bytes (the same for every "
        "layer) as one object; read is pq.read_table(path, filesystem=fs).to_pandas(); "
        "read_bytes is the whole object in one call, parsed from memory; stat is size and "
        "mtime; list is one non-recursive listing of the prefix holding the N small objects; "
        "delete removes one object. Layers interleaved per file and per listing round, the "
        "order rotated; warm-up and request census untimed",
        "config": {
            "quick": args.quick,
            "small_files": args.files,
            "small_rows": SMALL_ROWS,
            "large_files": args.large,
            "list_rounds": args.list_rounds,
        },
        "best": {"pyarrow.fs": arrow, "s3fs": fsspec},
        "ratio_s3fs_over_pyarrow": {
            "small_total": round(ratio_total, 3),
            "small_per_file": round(ratio_file, 3),
        },
        "layers": results,
        "figures": figures,
        "samples_s": {size: rounded(by_layer) for size, by_layer in times.items()},
    }


NOTE = (
    f"{harness.SHARED_MACHINE}. moto_server is a Python process on the same 2 cores: its own "
    "time per request is in every S3 figure, so differences between layers are client-side "
    "cost and request count; real S3 adds tens of ms of latency per request, which makes the "
    "request counts (requests_per_op) weigh more there. s3fs comes from the project's `bench` "
    "extra (the lock's versions)"
)


def rounded(times: Times) -> Times:
    return {
        name: {op: [round(v, 5) for v in values] for op, values in by_op.items() if values}
        for name, by_op in times.items()
    }


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main(sys.argv[1:])
