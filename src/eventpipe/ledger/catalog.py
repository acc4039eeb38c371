"""The asset catalog: each asset's current version and every version ever written."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

from sqlalchemy import bindparam, text

from eventpipe.ledger.db import Database
from eventpipe.ledger.rows import (
    _ASSET_COLUMNS,
    AssetFailure,
    AssetRow,
    VersionRow,
)

_CHUNK = 500
"""Values per ``IN (...)``: well under SQLite's limit on bound variables."""


class Catalog(Database):
    """Current and past versions of assets."""

    # -- asset catalog -------------------------------------------------------------------------

    def asset(self, pipeline: str, name: str, partition: str = "") -> AssetRow | None:
        return next(iter(self.assets(pipeline, name, partition)), None)

    def assets(
        self, pipeline: str, name: str | None = None, partition: str | None = None
    ) -> list[AssetRow]:
        sql = f"SELECT {_ASSET_COLUMNS} FROM assets WHERE pipeline=:pipeline"
        args = {"pipeline": pipeline}
        if name is not None:
            sql, args = sql + " AND name=:name", {**args, "name": name}
        if partition is not None:
            sql, args = sql + " AND partition=:partition", {**args, "partition": partition}
        # Plain tuples in field order: a run reads every partition's row several times, and
        # mappings + keywords cost twice the query itself at 1000 partitions.
        with self._read() as db:
            rows = db.execute(text(sql + " ORDER BY name, partition"), args)
            return [AssetRow(*r) for r in rows]

    def assets_of(self, pipeline: str, partitions: list[str]) -> list[AssetRow]:
        """The rows of every step's ``partitions`` (a run's files), not the whole catalog."""
        found: list[AssetRow] = []
        sql = text(
            f"SELECT {_ASSET_COLUMNS} FROM assets WHERE pipeline=:pipeline"
            " AND partition IN :partitions"
        ).bindparams(bindparam("partitions", expanding=True))
        with self._read() as db:
            for start in range(0, len(partitions), _CHUNK):
                chunk = partitions[start : start + _CHUNK]
                rows = db.execute(sql, {"pipeline": pipeline, "partitions": chunk})
                found.extend(AssetRow(*r) for r in rows)
        return found

    def outdated(self, pipeline: str, name: str, code_version: str) -> list[str]:
        """The partitions of step ``name`` that older code of the step computed."""
        with self._read() as db:
            rows = db.execute(
                text(
                    "SELECT partition FROM assets WHERE pipeline=:pipeline AND name=:name"
                    " AND code_version != :code_version ORDER BY partition"
                ),
                {"pipeline": pipeline, "name": name, "code_version": code_version},
            )
            return [r[0] for r in rows]

    def publish(
        self, row: AssetRow, version_path: str, sources: list[str], run_id: str | None
    ) -> None:
        """Make ``row`` the current version of its asset and remember the version."""
        self.publish_many([(row, version_path, sources)], run_id)

    def publish_many(
        self, items: list[tuple[AssetRow, str, list[str]]], run_id: str | None
    ) -> None:
        """:meth:`publish` for many assets (a batch of partitions), in one transaction."""
        if not items:
            return
        with self._tx() as db:
            db.execute(_UPSERT_ASSET, [asdict(row) for row, _, _ in items])
            for row, _, _ in items:
                if not row.partition:  # a version that publishes ends its asset's failure
                    db.execute(
                        text("DELETE FROM asset_failures WHERE pipeline=:pipeline AND name=:name"),
                        {"pipeline": row.pipeline, "name": row.name},
                    )
            db.execute(
                text(
                    "INSERT INTO versions (key, version, pipeline, name, partition, path, rows,"
                    " sources, run_id, created_at, current_at) VALUES (:key, :version,"
                    " :pipeline, :name, :partition, :path, :rows, :sources, :run_id, :now, :now)"
                    " ON CONFLICT (key, version)"
                    " DO UPDATE SET current_at=excluded.current_at, run_id=excluded.run_id"
                ),
                [
                    {
                        "key": row.key,
                        "version": row.version,
                        "pipeline": row.pipeline,
                        "name": row.name,
                        "partition": row.partition,
                        "path": version_path,
                        "rows": row.rows,
                        "sources": json.dumps(sources),
                        "run_id": run_id,
                        "now": row.updated_at,
                    }
                    for row, version_path, sources in items
                ],
            )

    # -- failing analytics ---------------------------------------------------------------------

    def record_failure(self, failure: AssetFailure) -> None:
        """Mark an analytics asset failing (replacing an earlier failure of it)."""
        with self._tx() as db:
            db.execute(
                text(
                    "INSERT INTO asset_failures (pipeline, name, reason, run_id, failed_at,"
                    " input_fingerprint, code_version) VALUES (:pipeline, :name, :reason,"
                    " :run_id, :failed_at, :input_fingerprint, :code_version)"
                    " ON CONFLICT (pipeline, name) DO UPDATE SET reason=excluded.reason,"
                    " run_id=excluded.run_id, failed_at=excluded.failed_at,"
                    " input_fingerprint=excluded.input_fingerprint,"
                    " code_version=excluded.code_version"
                ),
                asdict(failure),
            )

    def failures(self, pipeline: str) -> dict[str, AssetFailure]:
        """The failing analytics assets of ``pipeline``, by name."""
        with self._read() as db:
            rows = db.execute(
                text(
                    "SELECT pipeline, name, reason, run_id, failed_at, input_fingerprint,"
                    " code_version FROM asset_failures WHERE pipeline=:pipeline ORDER BY name"
                ),
                {"pipeline": pipeline},
            ).all()
        return {r[1]: AssetFailure(*r) for r in rows}

    def clear_failures(self, pipeline: str, name: str | None = None) -> int:
        """Forget the failures of ``pipeline``'s analytics (of ``name`` only, if given): the
        next run tries them again even with the same inputs and code (``eventpipe retry``).
        How many there were."""
        sql = "DELETE FROM asset_failures WHERE pipeline=:pipeline"
        if name is not None:
            sql += " AND name=:name"
        with self._tx() as db:
            done = db.execute(text(sql), {"pipeline": pipeline, "name": name})
        return int(done.rowcount or 0)

    def touch_asset(self, row: AssetRow) -> None:
        """Record the size/mtime of a current output after it was restored."""
        with self._tx() as db:
            db.execute(
                text(
                    "UPDATE assets SET size=:size, mtime_ns=:mtime_ns"
                    " WHERE pipeline=:pipeline AND name=:name AND partition=:partition"
                ),
                asdict(row),
            )

    def versions(self, pipeline: str, name: str, partition: str | None = None) -> list[VersionRow]:
        sql = "SELECT * FROM versions WHERE pipeline=:pipeline AND name=:name"
        args = {"pipeline": pipeline, "name": name}
        if partition is not None:
            sql, args = sql + " AND partition=:partition", {**args, "partition": partition}
        with self._read() as db:
            rows = db.execute(text(sql + " ORDER BY created_at, partition"), args).mappings().all()
        return [
            VersionRow(
                key=r["key"],
                version=r["version"],
                name=r["name"],
                partition=r["partition"],
                path=r["path"],
                rows=r["rows"],
                sources=json.loads(r["sources"]),
                run_id=r["run_id"],
                created_at=r["created_at"],
                current_at=r["current_at"],
            )
            for r in rows
        ]

    def pipelines(self) -> list[str]:
        with self._read() as db:
            rows = db.execute(
                text("SELECT pipeline FROM files UNION SELECT pipeline FROM assets ORDER BY 1")
            ).all()
        return [r[0] for r in rows]


_UPSERT_ASSET = text(
    f"INSERT INTO assets ({_ASSET_COLUMNS}) VALUES ("
    + ", ".join(f":{f.name}" for f in fields(AssetRow))
    + ") ON CONFLICT (pipeline, name, partition) DO UPDATE SET "
    + ", ".join(
        f"{f.name}=excluded.{f.name}"
        for f in fields(AssetRow)
        if f.name not in ("pipeline", "name", "partition")
    )
)
