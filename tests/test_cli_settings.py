"""The command line is driven by Settings: its flags, their help and their precedence come from
the fields, the webhook stays secret, and the read-only commands take a pipeline by its name.

Real files and a real ledger (recorded by `scan_once`, what `eventpipe run` does first); no
Prefect server is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eventpipe.cli import app
from eventpipe.exceptions import ConfigError
from eventpipe.settings import Settings
from eventpipe.testing import drop_file
from tests.pipelines import write_pipeline

WEBHOOK = "https://hooks.example.com/services/T0KEN-s3cr3t"


def eventpipe(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventpipe.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "1000", **env},  # wide: help lines are not wrapped
        check=False,
    )


def parsed_settings(*argv: str) -> Settings | None:
    """The Settings a command would get from ``argv`` (None: no settings flag was given)."""
    _, bound, _ = app.parse_args(list(argv))
    settings: Settings | None = bound.arguments.get("settings")
    return settings


@pytest.fixture
def flights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project dir whose ledger knows pipeline 'flights' (one file landed, not yet run)."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("EVENTPIPE_"):
            monkeypatch.delenv(name)
    write_pipeline("totals", tmp_path / "p.py", "flights")
    drop_file(tmp_path / "inbox", "a.csv", "amount\n1\n2\n")
    from eventpipe.intake.record import scan_once

    assert scan_once(Settings(pipeline="p.py:pipeline")) == 1
    return tmp_path


def lineage_document(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    app(["lineage", "--format", "json", *args], result_action="return_value", exit_on_error=False)
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


def test_help_is_the_settings_descriptions_and_only_those_a_command_uses(tmp_path: Path) -> None:
    fields = Settings.model_fields
    up = eventpipe("up", "--help", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    for name in ("pipeline", "inbox", "data", "api_url", "notify_webhook", "task_runner", "runs"):
        flag = "--" + name.replace("_", "-")
        description = fields[name].description
        assert description is not None
        assert flag in up.stdout
        assert description.replace("`", "") in up.stdout, name  # help renders `code` plain
    assert "--samples" in up.stdout
    assert "--verbose" in up.stdout

    status = eventpipe("status", "--help", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert fields["data"].description in status.stdout
    assert "--json" in status.stdout
    assert "--pipeline" in status.stdout
    assert "as eventpipe status prints it" in status.stdout
    for unused in ("--inbox", "--api-url", "--task-runner", "--notify-webhook"):
        assert unused not in status.stdout
    unknown = eventpipe("status", "--inbox", "x", cwd=tmp_path)
    assert unknown.returncode != 0
    assert "--inbox" in unknown.stderr + unknown.stdout


def test_a_flag_beats_the_environment_which_beats_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVENTPIPE_DATA", raising=False)
    monkeypatch.delenv("EVENTPIPE_INBOX", raising=False)
    (tmp_path / "eventpipe.toml").write_text('data = "from-toml"\ninbox = "inbox-toml"\n')

    assert parsed_settings("run") is None  # nothing given: the command reads Settings() itself
    assert Settings().data_dir == Path("from-toml")
    monkeypatch.setenv("EVENTPIPE_DATA", "from-env")
    given = parsed_settings("run", "--port", "0")
    assert given is not None
    assert (given.port, given.data_dir, given.inbox) == (0, Path("from-env"), Path("inbox-toml"))
    flagged = parsed_settings("run", "--data", "from-flag")
    assert flagged is not None
    assert (flagged.data_dir, flagged.inbox) == (Path("from-flag"), Path("inbox-toml"))


def test_the_webhook_is_never_printed() -> None:
    settings = Settings(notify_webhook=WEBHOOK)
    assert "T0KEN" not in repr(settings)
    assert "T0KEN" not in str(settings)
    assert "T0KEN" not in settings.model_dump_json()
    assert "T0KEN" not in repr(settings.resolved())
    assert settings.notify_webhook is not None
    assert settings.notify_webhook.get_secret_value() == WEBHOOK

    flagged = parsed_settings("up", "--notify-webhook", WEBHOOK)
    assert flagged is not None
    assert "T0KEN" not in repr(flagged)
    assert flagged.notify_webhook is not None
    assert flagged.notify_webhook.get_secret_value() == WEBHOOK


def test_status_takes_a_pipeline_by_its_name(flights: Path) -> None:
    named = eventpipe("status", "--pipeline", "flights", "--json", cwd=flights)
    assert named.returncode == 0, named.stderr
    report = json.loads(named.stdout)
    assert list(report) == ["flights"]
    assert [f["file"] for f in report["flights"]["files"]] == ["a.csv"]

    by_spec = eventpipe("status", "--pipeline", "p.py:pipeline", "--json", cwd=flights)
    assert by_spec.returncode == 0, by_spec.stderr
    assert json.loads(by_spec.stdout) == report

    unknown = eventpipe("status", "--pipeline", "trains", cwd=flights)
    assert unknown.returncode == 2
    message = " ".join(unknown.stderr.split())
    assert "no pipeline 'trains'" in message
    assert "it knows: flights" in message


def test_lineage_takes_a_pipeline_by_its_name_when_the_configured_one_has_it(
    flights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (flights / "eventpipe.toml").write_text('pipeline = "p.py:pipeline"\n')

    document = lineage_document(capsys, "--pipeline", "flights")
    assert document["pipeline"] == "flights"
    names = {n["name"] for n in document["nodes"]}
    assert {"a.csv", "cleaned", "total"} <= names
    by_spec = lineage_document(capsys, "--pipeline", "p.py:pipeline")
    assert (by_spec["pipeline"], by_spec["edges"]) == (document["pipeline"], document["edges"])

    with pytest.raises(ConfigError, match=r"no pipeline 'trains'.*it knows: flights"):
        app(["lineage", "--pipeline", "trains"], result_action="return_value")


def test_a_name_the_configured_pipeline_does_not_have_asks_for_its_spec(
    flights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No eventpipe.toml: the configured pipeline is the demo, not 'flights'.
    with pytest.raises(ConfigError, match=r"knows pipeline 'flights' but not where.*'path/file"):
        app(["lineage", "--pipeline", "flights"], result_action="return_value")

    shown = eventpipe("lineage", "--pipeline", "flights", cwd=flights)
    assert shown.returncode == 2
    message = " ".join(shown.stderr.split())
    assert "configured pipeline 'eventpipe.demo:pipeline'" in message
    assert "must look like" not in message
