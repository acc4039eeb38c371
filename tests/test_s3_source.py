"""Bucket keys and notification bodies, read the way S3 writes them."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from eventpipe.core.atomic import inside
from eventpipe.exceptions import ConfigError
from eventpipe.intake.aws import BucketLocation
from eventpipe.intake.s3 import ObjectNotice, parse_notification, relative_key


def notification(*keys: str, event: str = "ObjectCreated:Put") -> str:
    records = [
        {
            "eventName": event,
            "s3": {
                "bucket": {"name": "b"},
                "object": {"key": quote_plus(key), "size": 3, "eTag": "abc"},
            },
        }
        for key in keys
    ]
    return json.dumps({"Records": records})


def test_locations_parse_with_and_without_prefix() -> None:
    assert BucketLocation.parse("s3://sales") == BucketLocation("sales", "")
    assert BucketLocation.parse("s3://sales/in") == BucketLocation("sales", "in/")
    assert BucketLocation.parse("s3://sales/in/").uri("in/a.csv") == "s3://sales/in/a.csv"
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        BucketLocation.parse("/local/folder")


def test_keys_are_decoded_with_unquote_plus() -> None:
    body = notification("in/ventes d'été+1.csv", "in/a&b=c?.csv")
    assert parse_notification(body) == [
        ObjectNotice("in/ventes d'été+1.csv", "abc", 3),
        ObjectNotice("in/a&b=c?.csv", "abc", 3),
    ]


def test_test_events_and_foreign_messages_name_no_object_and_removals_are_told_apart() -> None:
    assert parse_notification(json.dumps({"Event": "s3:TestEvent", "Bucket": "b"})) is None
    assert parse_notification("not json") is None
    assert parse_notification(notification("in/a.csv", event="ObjectRemoved:Delete")) == [
        ObjectNotice("in/a.csv", "abc", 3, removed=True)
    ]
    assert parse_notification(notification("in/a.csv", event="ObjectRestore:Post")) == []


@pytest.mark.parametrize(
    ("key", "relative"),
    [
        ("in/a.csv", "a.csv"),
        ("in/2026/01/a.csv", "2026/01/a.csv"),
        ("in/../escape.csv", "%2E%2E/escape.csv"),
        ("in/../../etc/passwd.csv", "%2E%2E/%2E%2E/etc/passwd.csv"),
        ("in//abs.csv", "%/abs.csv"),
        ("in/./a.csv", "%2E/a.csv"),
        ("in/100%.csv", "100%25.csv"),
        ("in/odd #?&[]{}|\\^`.csv", "odd #?&[]{}|\\^`.csv"),
    ],
)
def test_relative_keys_stay_inside_any_directory(key: str, relative: str, tmp_path: Path) -> None:
    assert relative_key("in/", key) == relative
    assert inside(tmp_path / "root", relative).is_relative_to(tmp_path / "root")


def test_keys_outside_the_prefix_and_folder_markers_are_not_files() -> None:
    assert relative_key("in/", "other/a.csv") is None
    assert relative_key("in/", "in/folder/") is None
    assert relative_key("", "a.csv") == "a.csv"


def test_distinct_keys_keep_distinct_relative_paths() -> None:
    keys = ["in/a/b.csv", "in/a//b.csv", "in/a/./b.csv", "in/a/%2E/b.csv", "in/%/b.csv"]
    assert len({relative_key("in/", k) for k in keys}) == len(keys)


def test_a_path_that_leaves_its_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="escapes"):
        inside(tmp_path, "../x.csv")
    with pytest.raises(ValueError, match="escapes"):
        inside(tmp_path, "/etc/passwd")
