"""Reading landed files: every supported format becomes a frame; anything else is rejected
with a reason a person can act on."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from eventpipe.core.readers import SUFFIXES, read_frame, suffix_of
from eventpipe.exceptions import RejectedInput

ROWS = [
    {"order_id": 1, "region": "eu", "amount": 12.5},
    {"order_id": 2, "region": "us", "amount": 3.0},
]


def records(frame: pd.DataFrame) -> list[dict[str, object]]:
    return frame.to_dict(orient="records")


# -- formats that are read ---------------------------------------------------------------------


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order_id,region,amount\n1,eu,12.5\n2,us,3.0\n", encoding="utf-8")

    frame = read_frame(path, ".csv")

    assert records(frame) == ROWS


def test_csv_with_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "clients.csv"
    path.write_text("name,city\nJosé,Zürich\n佐藤,東京\n", encoding="utf-8")

    assert records(read_frame(path, ".csv")) == [
        {"name": "José", "city": "Zürich"},
        {"name": "佐藤", "city": "東京"},
    ]


def test_gzipped_csv(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("order_id,region,amount\n1,eu,12.5\n2,us,3.0\n")

    assert records(read_frame(path, ".csv.gz")) == ROWS


def test_json_list_of_objects(tmp_path: Path) -> None:
    path = tmp_path / "orders.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")

    assert records(read_frame(path, ".json")) == ROWS


def test_json_single_object_is_one_row(tmp_path: Path) -> None:
    path = tmp_path / "order.json"
    path.write_text(json.dumps(ROWS[0]), encoding="utf-8")

    assert records(read_frame(path, ".json")) == [ROWS[0]]


def test_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")

    assert records(read_frame(path, ".jsonl")) == ROWS


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "orders.parquet"
    pd.DataFrame(ROWS).to_parquet(path, index=False)

    frame = read_frame(path, ".parquet")

    assert records(frame) == ROWS
    assert str(frame["order_id"].dtype) == "int64"


# -- rejections --------------------------------------------------------------------------------

HALF_A_GZIP = gzip.compress(b"order_id\n" + b"".join(b"%d\n" % i for i in range(5000)))[:2000]
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06"


@pytest.mark.parametrize(
    ("name", "content", "suffix", "reason"),
    [
        ("orders.csv", b"", ".csv", "file is empty"),
        ("orders.json", b"", ".json", "file is empty"),
        ("orders.csv", b"\n\n", ".csv", "cannot parse as .csv"),
        ("orders.json", b'{"order_id": 1, "region": ', ".json", "cannot parse as .json"),
        ("orders.json", b"[1, 2, 3]", ".json", "JSON must be an object or a list of objects"),
        ("orders.json", b'"just a string"', ".json", "JSON must be an object or a list of objects"),
        ("orders.json", b'[{"a": 1}, 2]', ".json", "JSON must be an object or a list of objects"),
        ("orders.json", b"[]", ".json", "file has no columns"),
        ("orders.jsonl", b'{"a": 1}\n{oops\n', ".jsonl", "cannot parse as .jsonl: line 2"),
        ("orders.jsonl", b'{"a": 1}\n[1, 2]\n', ".jsonl", "JSONL line 2 is not an object"),
        ("orders.csv", b"a,b\n1,2,3\n4,5,6\n", ".csv", "first row has more fields than the header"),
        ("orders.csv", b'a,b\n1,2\n"3,4\n', ".csv", "cannot parse as .csv"),
        ("photo.csv", PNG_HEADER, ".csv", "binary data (NUL bytes)"),
        ("clients.csv", "name\nJosé\n".encode("latin-1"), ".csv", "not valid UTF-8 at byte 8"),
        ("clients.json", '{"name": "José"}'.encode("latin-1"), ".json", "not valid UTF-8"),
        ("clients.jsonl", '{"name": "José"}\n'.encode("latin-1"), ".jsonl", "not valid UTF-8"),
        ("orders.csv.gz", b"order_id\n1\n", ".csv.gz", "not intact gzip data"),
        ("orders.csv.gz", HALF_A_GZIP, ".csv.gz", "the file is truncated"),
        ("orders.parquet", b"PAR1 but not really", ".parquet", "cannot parse as .parquet"),
    ],
)
def test_unreadable_input_is_rejected_with_a_reason(
    tmp_path: Path, name: str, content: bytes, suffix: str, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(RejectedInput) as info:
        read_frame(path, suffix)

    assert reason in info.value.reason
    assert str(info.value) == info.value.reason
    assert len(info.value.reason.splitlines()) == 1


LATIN1_DEEP_IN_THE_FILE = {
    ".csv": ("name\n" + "".join(f"row {i}\n" for i in range(2000))).encode() + b"Jos\xe9\n",
    ".json": ("[" + "".join(f'{{"name": "row {i}"}}, ' for i in range(2000))).encode()
    + b'{"name": "Jos\xe9"}]',
    ".jsonl": "".join(f'{{"name": "row {i}"}}\n' for i in range(2000)).encode()
    + b'{"name": "Jos\xe9"}\n',
}


@pytest.mark.parametrize("suffix", sorted(LATIN1_DEEP_IN_THE_FILE))
def test_an_encoding_error_names_the_offset_of_the_bad_byte(tmp_path: Path, suffix: str) -> None:
    """One Latin-1 row after thousands of good ones: the reason says where to look."""
    content = LATIN1_DEEP_IN_THE_FILE[suffix]
    path = tmp_path / f"export{suffix}"
    path.write_bytes(content)

    with pytest.raises(RejectedInput, match="not valid UTF-8") as info:
        read_frame(path, suffix)

    assert f"at byte {content.index(0xE9)}" in info.value.reason


@pytest.mark.parametrize("suffix", [".xlsx", ".txt", ".csv.bak", ""])
def test_an_unsupported_suffix_is_rejected_and_the_supported_ones_are_named(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"orders{suffix}"
    path.write_text("order_id\n1\n")

    with pytest.raises(RejectedInput, match="unsupported file type") as info:
        read_frame(path, suffix)

    assert all(s in info.value.reason for s in SUFFIXES)


# -- suffixes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("orders.csv", ".csv"),
        ("ORDERS.CSV", ".csv"),
        ("orders.csv.gz", ".csv.gz"),
        ("Orders.CSV.GZ", ".csv.gz"),
        ("events.json", ".json"),
        ("events.JSONL", ".jsonl"),
        ("snapshot.Parquet", ".parquet"),
        ("my.data.v2.csv", ".csv"),
        ("notes.txt", None),
        ("archive.gz", None),
        ("orders.csv.bak", None),
        ("orders.csv.tmp", None),
        ("csv", None),
        ("", None),
    ],
)
def test_suffix_of(name: str, suffix: str | None) -> None:
    assert suffix_of(name) == suffix
