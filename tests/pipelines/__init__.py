"""Pipelines the tests share. Each is a module a test copies under its own name (and, where
it matters, its own pipeline name) into a temp dir, so every test's runs, assets and ledger
are its own; ``write_pipeline`` does that."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def write_pipeline(module: str, target: Path, name: str) -> Path:
    """Copy ``tests/pipelines/<module>.py`` to ``target`` as pipeline ``name``."""
    source = (HERE / f"{module}.py").read_text()
    default = f'Pipeline("{module}")'
    assert default in source, f"{module}.py must define pipeline = {default}"
    target.write_text(source.replace(default, f'Pipeline("{name}")'))
    return target
