"""The folder source on a real directory: which files it takes, which it refuses, and that the
watcher sees a file dropped into a brand-new nested folder."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from eventpipe.core.keys import file_uri
from eventpipe.core.models import Landed
from eventpipe.intake.local import FolderSource, Rejected


class Inbox:
    """A real inbox folder plus everything the source reported about it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.landed: list[Landed] = []
        self.rejected: list[Rejected] = []
        self.source = FolderSource(
            root, self.landed.append, self.rejected.append, settle_seconds=0.02
        )

    def drop(self, relative: str, content: bytes | str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
        return path

    def scan(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Scan once; what was newly taken and newly refused (relative names)."""
        taken, refused = len(self.landed), len(self.rejected)
        self.source.scan()
        return (
            sorted(f.relative for f in self.landed[taken:]),
            sorted((r.relative, r.reason) for r in self.rejected[refused:]),
        )


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    return Inbox(tmp_path / "inbox")


def test_complete_files_are_taken_once(inbox: Inbox) -> None:
    orders = inbox.drop("orders.csv", "order_id,amount\n1,9.5\n")
    inbox.drop("refunds.json", '[{"order_id": 1}]')

    assert inbox.scan() == (["orders.csv", "refunds.json"], [])
    assert inbox.scan() == ([], [])

    [landed] = [f for f in inbox.landed if f.relative == "orders.csv"]
    assert landed == Landed(
        uri=file_uri(orders),
        relative="orders.csv",
        size=len(b"order_id,amount\n1,9.5\n"),
        fingerprint=hashlib.sha256(b"order_id,amount\n1,9.5\n").hexdigest(),
        source="local",
        local_path=str(orders.resolve()),
    )


def test_dotfiles_and_partial_downloads_are_ignored(inbox: Inbox) -> None:
    inbox.drop(".hidden.csv", "a\n1\n")
    inbox.drop(".git/objects/data.csv", "a\n1\n")
    inbox.drop("2024/.staging/orders.csv", "a\n1\n")
    inbox.drop("upload.csv.tmp", "a\n1\n")
    inbox.drop("big.parquet.part", b"PAR1")
    inbox.drop("export.csv.crdownload", "a\n1\n")
    inbox.drop("orders.csv", "a\n1\n")

    assert inbox.scan() == (["orders.csv"], [])


def test_an_unsupported_file_is_refused_once_with_a_reason(inbox: Inbox) -> None:
    inbox.drop("notes.txt", "remember the milk")
    inbox.drop("orders.csv", "a\n1\n")

    taken, refused = inbox.scan()

    assert taken == ["orders.csv"]
    [(relative, reason)] = refused
    assert relative == "notes.txt"
    assert "unsupported file type" in reason
    assert ".csv" in reason
    assert inbox.scan() == ([], [])


def test_a_symlink_pointing_outside_the_inbox_is_refused(inbox: Inbox, tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere" / "secrets.csv"
    secret.parent.mkdir()
    secret.write_text("user,password\nroot,hunter2\n")
    (inbox.root / "innocent.csv").symlink_to(secret)

    [(relative, reason)] = inbox.scan()[1]
    assert relative == "innocent.csv"
    assert reason.startswith("symlink points outside the inbox; copy the file in")
    assert inbox.landed == []


def test_a_refused_symlink_is_not_reported_again_on_every_rescan(
    inbox: Inbox, tmp_path: Path
) -> None:
    secret = tmp_path / "elsewhere" / "secrets.csv"
    secret.parent.mkdir()
    secret.write_text("user,password\nroot,hunter2\n")
    (inbox.root / "innocent.csv").symlink_to(secret)
    inbox.scan()

    assert inbox.scan() == ([], [])


def test_a_symlink_inside_the_inbox_is_taken_once(inbox: Inbox) -> None:
    inbox.drop("archive/orders.csv", "a\n1\n")
    (inbox.root / "latest.csv").symlink_to(inbox.root / "archive" / "orders.csv")

    assert inbox.scan() == (["archive/orders.csv", "latest.csv"], [])
    assert inbox.scan() == ([], [])


def test_nested_folders_are_walked(inbox: Inbox) -> None:
    inbox.drop("2024/01/sales.csv", "a\n1\n")
    inbox.drop("eu/fr/paris/ventes.jsonl", '{"a": 1}\n')
    inbox.drop("top.parquet", b"PAR1")

    taken, _ = inbox.scan()

    assert taken == ["2024/01/sales.csv", "eu/fr/paris/ventes.jsonl", "top.parquet"]
    [nested] = [f for f in inbox.landed if f.relative == "2024/01/sales.csv"]
    assert nested.uri == file_uri(inbox.root / "2024" / "01" / "sales.csv")


def test_names_with_spaces_and_unicode_are_taken(inbox: Inbox) -> None:
    names = ["Q1 report (final).csv", "café 日本 🎉.json", "résumé/données #1.csv"]
    for name in names:
        inbox.drop(name, '{"a": 1}' if name.endswith(".json") else "a\n1\n")

    taken, refused = inbox.scan()

    assert taken == sorted(names)
    assert refused == []
    assert all(f.uri == file_uri(inbox.root / f.relative) for f in inbox.landed)


def test_a_file_whose_content_changed_is_taken_again(inbox: Inbox) -> None:
    inbox.drop("orders.csv", "order_id\n1\n")
    inbox.scan()

    inbox.drop("orders.csv", "order_id\n1\n2\n3\n")

    assert inbox.scan() == (["orders.csv"], [])
    first, second = inbox.landed
    assert first.fingerprint != second.fingerprint
    assert second.fingerprint == hashlib.sha256(b"order_id\n1\n2\n3\n").hexdigest()
    assert inbox.scan() == ([], [])


def test_the_watcher_sees_a_file_in_a_freshly_created_nested_folder(inbox: Inbox) -> None:
    arrived = threading.Event()
    target = "deep/nested/folder/orders.csv"

    def on_landed(landed: Landed) -> None:
        inbox.landed.append(landed)
        if landed.relative == target:
            arrived.set()

    inbox.source.on_landed = on_landed
    inbox.drop("already-there.csv", "a\n1\n")
    stop = threading.Event()
    watcher = threading.Thread(target=inbox.source.run, args=(stop,), name="test-watch")
    watcher.start()
    try:
        assert inbox.source.ready.wait(10), "the source never became ready"
        assert [f.relative for f in inbox.landed] == ["already-there.csv"]

        (inbox.root / "deep" / "nested" / "folder").mkdir(parents=True)
        (inbox.root / target).write_text("order_id\n1\n")

        assert arrived.wait(10), f"no on_landed for {target}; got {inbox.landed}"
    finally:
        stop.set()
        watcher.join(10)
    assert not watcher.is_alive()
    assert [f.relative for f in inbox.landed] == ["already-there.csv", target]


def test_the_watcher_and_the_scans_share_one_filter(tmp_path: Path) -> None:
    """Names watchfiles' own defaults drop (``flycheck_*``, ``node_modules/``) are data here:
    the watcher takes them at once, long before a rescan; temp and dot-names never."""
    root = tmp_path / "inbox"
    root.mkdir()
    landed: list[Landed] = []
    seen = threading.Condition()

    def on_landed(file: Landed) -> None:
        with seen:
            landed.append(file)
            seen.notify_all()

    source = FolderSource(root, on_landed, settle_seconds=0.02, rescan_seconds=3600)
    stop = threading.Event()
    watcher = threading.Thread(target=source.run, args=(stop,), name="test-watch")
    watcher.start()
    try:
        assert source.ready.wait(10), "the source never became ready"
        for name in ("flycheck_a.csv", ".x.csv", "a.csv.tmp", ".hidden/a.csv"):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("a\n1\n")
        (root / "node_modules").mkdir()
        (root / "node_modules" / "a.csv").write_text("a\n1\n")
        (root / "last.csv").write_text("a\n1\n")  # written after the ignored ones
        wanted = {"flycheck_a.csv", "node_modules/a.csv", "last.csv"}
        with seen:
            assert seen.wait_for(lambda: wanted <= {f.relative for f in landed}, 10), landed
    finally:
        stop.set()
        watcher.join(10)
    assert sorted(f.relative for f in landed) == sorted(wanted)
    assert source.filter.takes(root / "flycheck_a.csv")
    assert not source.filter.takes(root / ".hidden" / "a.csv")
    assert not source.filter.takes(root / "A.CSV.PART")
    assert not source.filter.takes(tmp_path / "elsewhere.csv")
