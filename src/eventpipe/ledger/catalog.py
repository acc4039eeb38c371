"""The asset catalog: each asset's current version and every version ever written."""

from __future__ import annotations

import json

from eventpipe.ledger.db import Database
from eventpipe.ledger.rows import (
    _ASSET_COLUMNS,
    AssetRow,
    VersionRow,
)


class Catalog(Database):
    """Current and past versions of assets."""

    # -- asset catalog -------------------------------------------------------------------------

    def asset(self, pipeline: str, name: str, partition: str = "") -> AssetRow | None:
        return next(iter(self.assets(pipeline, name, partition)), None)

    def assets(
        self, pipeline: str, name: str | None = None, partition: str | None = None
    ) -> list[AssetRow]:
        sql, args = f"SELECT {_ASSET_COLUMNS} FROM assets WHERE pipeline=?", [pipeline]
        if name is not None:
            sql, args = sql + " AND name=?", [*args, name]
        if partition is not None:
            sql, args = sql + " AND partition=?", [*args, partition]
        # Plain tuples in field order: a run reads every partition's row several times, and
        # sqlite3.Row + dict + keywords cost twice the query itself at 1000 partitions.
        cursor = self._conn().cursor()
        cursor.row_factory = None
        return [AssetRow(*r) for r in cursor.execute(sql + " ORDER BY name, partition", args)]

    def publish(
        self, row: AssetRow, version_path: str, sources: list[str], run_id: str | None
    ) -> None:
        """Make ``row`` the current version of its asset and remember the version."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO assets VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row.pipeline,
                    row.name,
                    row.partition,
                    row.kind,
                    row.key,
                    row.version,
                    row.path,
                    row.rows,
                    row.size,
                    row.mtime_ns,
                    row.code_version,
                    row.input_fingerprint,
                    row.updated_at,
                ),
            )
            db.execute(
                "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (key, version)"
                " DO UPDATE SET current_at=excluded.current_at, run_id=excluded.run_id",
                (
                    row.key,
                    row.version,
                    row.pipeline,
                    row.name,
                    row.partition,
                    version_path,
                    row.rows,
                    json.dumps(sources),
                    run_id,
                    row.updated_at,
                    row.updated_at,
                ),
            )

    def touch_asset(self, row: AssetRow) -> None:
        """Record the size/mtime of a current output after it was restored."""
        with self._tx() as db:
            db.execute(
                "UPDATE assets SET size=?, mtime_ns=? WHERE pipeline=? AND name=? AND partition=?",
                (row.size, row.mtime_ns, row.pipeline, row.name, row.partition),
            )

    def versions(self, pipeline: str, name: str, partition: str | None = None) -> list[VersionRow]:
        sql, args = "SELECT * FROM versions WHERE pipeline=? AND name=?", [pipeline, name]
        if partition is not None:
            sql, args = sql + " AND partition=?", [*args, partition]
        rows = self._conn().execute(sql + " ORDER BY created_at, partition", args)
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
        rows = self._conn().execute(
            "SELECT pipeline FROM files UNION SELECT pipeline FROM assets ORDER BY 1"
        )
        return [r[0] for r in rows]
