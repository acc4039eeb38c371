"""Asset keys and partition names: any real file name must become a key Prefect accepts,
and the key must lead back to exactly that file."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventpipe.core.keys import (
    MAX_KEY_LENGTH,
    asset_key,
    file_uri,
    key_to_uri,
    partition_name,
    partition_relative,
)

INBOX = Path("/srv/inbox")

AWKWARD_NAMES = [
    "report 2024.csv",
    "  leading and trailing  .csv",
    "order#42.csv",
    "100%.csv",
    "a%20b.csv",
    "50%25 off.csv",
    "what?.csv",
    "fish&chips.csv",
    'say "hi".csv',
    "it's.csv",
    "[draft] {v2} <final>.csv",
    "a|b^c`d.csv",
    "~tilde~.csv",
    "~7E.csv",
    "~~.csv",
    "back\\slash.csv",
    "café.csv",
    "日本の売上.csv",
    "party 🎉.json",
    "tab\there.csv",
    "new\nline\rcarriage.csv",
    "bell\x07escape\x1bdel\x7f.csv",
    "nested/folder with space/x#1.csv",
]


def check(key: str) -> str:
    """Prefect's own validator for asset keys; raises ValueError on a bad key."""
    from prefect.types.names import validate_valid_asset_key  # imports Prefect: only when used

    return validate_valid_asset_key(key)


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_a_local_file_name_becomes_a_valid_key_that_leads_back_to_the_file(name: str) -> None:
    uri = file_uri(INBOX / name)

    key = asset_key(uri)

    assert check(key) == key
    assert key.startswith("file:///srv/inbox/")
    assert key_to_uri(key) == uri


@pytest.mark.parametrize("relative", ["sales/2024 jan.csv", "eu/fr/100%.csv", "a b.csv"])
def test_the_key_of_a_processed_partition_leads_back_to_its_file(relative: str) -> None:
    """Partition names contain ``%2F``/``%25`` by design; the key must keep them literally."""
    path = Path("/srv/data/processed/sales/orders") / f"{partition_name(relative)}.parquet"
    uri = file_uri(path)

    key = asset_key(uri)

    assert check(key) == key
    assert key_to_uri(key) == uri
    assert Path(key_to_uri(key).removeprefix("file://")) == path


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/raw/2024 jan/orders #1.csv",
        "s3://bucket/100%25/a%20b.csv",
        "s3://bucket/nul\x00byte.csv",
        "s3://bucket/日本/🎉 ~ \\ ' \".jsonl",
        "gs://bucket/plain/path.parquet",
    ],
)
def test_an_object_store_uri_becomes_a_valid_key_that_leads_back_to_it(uri: str) -> None:
    key = asset_key(uri)

    assert check(key) == key
    assert key_to_uri(key) == uri


def test_readable_unicode_is_kept_as_is() -> None:
    key = asset_key(file_uri(INBOX / "café 日本 🎉.csv"))

    assert key == "file:///srv/inbox/café~20日本~20🎉.csv"


def test_different_files_never_share_a_key() -> None:
    uris = [file_uri(INBOX / name) for name in AWKWARD_NAMES]
    uris += [file_uri(INBOX / name) for name in ("a b.csv", "a~20b.csv", "50% off.csv")]

    keys = [asset_key(uri) for uri in uris]

    assert len(set(uris)) == len(uris)
    assert len(set(keys)) == len(keys), "two different files got the same asset key"


def test_keys_are_deterministic() -> None:
    uris = [file_uri(INBOX / name) for name in AWKWARD_NAMES]

    assert [asset_key(u) for u in uris] == [asset_key(u) for u in uris]


def test_a_shortened_key_is_stable_across_processes_and_releases() -> None:
    """The key is the asset's identity in Prefect: it must not depend on the process (no
    ``hash()``) nor change between releases."""
    uri = file_uri(INBOX / ("quarterly sales export " * 30 + "eu.csv"))

    key = asset_key(uri)

    assert key == (
        "file:///srv/inbox/"
        + "quarterly~20sales~20export~20" * 16
        + "quar~~f2de73fcb9d738fa3ab91646"
    )


@pytest.mark.parametrize(
    "stem",
    [
        "x" * 600,
        " " * 300,  # every character expands to three (~20): the cut lands inside escapes
        "~" * 250,
        "日本" * 300,
        "🎉#" * 200,
    ],
)
def test_a_key_too_long_for_prefect_is_shortened_deterministically(stem: str) -> None:
    uri = file_uri(INBOX / f"{stem}.csv")

    key = asset_key(uri)

    assert len(key) <= MAX_KEY_LENGTH
    assert check(key) == key
    assert asset_key(uri) == key
    assert key.startswith("file:///srv/inbox/")


def test_long_keys_that_differ_only_after_the_cut_stay_distinct() -> None:
    head = "quarterly sales export " * 30
    uris = [file_uri(INBOX / f"{head}{tail}.csv") for tail in ("eu", "us", "apac", "eu ")]

    keys = [asset_key(uri) for uri in uris]

    assert all(len(k) <= MAX_KEY_LENGTH and check(k) == k for k in keys)
    assert len(set(keys)) == len(keys)


def test_the_length_limit_is_exact() -> None:
    prefix = asset_key(file_uri(INBOX / "a"))[:-1]
    fits = file_uri(INBOX / ("a" * (MAX_KEY_LENGTH - len(prefix))))
    too_long = file_uri(INBOX / ("a" * (MAX_KEY_LENGTH - len(prefix) + 1)))

    assert len(asset_key(fits)) == MAX_KEY_LENGTH
    assert key_to_uri(asset_key(fits)) == fits
    assert len(asset_key(too_long)) <= MAX_KEY_LENGTH
    assert check(asset_key(too_long))
    assert asset_key(too_long) != asset_key(fits)


@pytest.mark.parametrize(
    "uri",
    ["just/a/path.csv", "://no-scheme", "S3://bucket/key", "s-3://bucket/key", "é3://bucket/key"],
)
def test_something_that_is_not_a_storage_uri_is_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="not a storage URI"):
        asset_key(uri)


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("orders.csv", "orders.csv"),
        ("sales/2024 jan.csv", "sales%2F2024 jan.csv"),
        ("100%/x.csv", "100%25%2Fx.csv"),
    ],
)
def test_partition_name_escapes_only_percent_and_slash(relative: str, expected: str) -> None:
    assert partition_name(relative) == expected


@pytest.mark.parametrize(
    "relative",
    [
        "orders.csv",
        "sales/2024 jan.csv",
        "a%2Fb.csv",
        "a%252Fb.csv",
        "%25",
        "%",
        "%/",
        "a%2/F",
        "a//b",
        "/leading/and/trailing/",
        "日本/é 🎉/x#1.csv",
    ],
)
def test_partition_name_round_trips_and_has_no_slash(relative: str) -> None:
    name = partition_name(relative)

    assert "/" not in name
    assert partition_relative(name) == relative


def test_distinct_relative_paths_get_distinct_partition_names() -> None:
    relatives = ["a/b.csv", "a%2Fb.csv", "a%252Fb.csv", "a%b.csv", "a%25b.csv"]

    assert len({partition_name(r) for r in relatives}) == len(relatives)
