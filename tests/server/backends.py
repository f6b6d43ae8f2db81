"""Where a test's relay or storage keeps its data: SQLite in the data directory, or a
PostgreSQL database of its own (the ``backend`` fixture of conftest.py picks one)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from spacenb.server.postgres import PostgresStorage
from spacenb.server.sqlite import SQLiteStorage
from spacenb.server.storage import DB_FILENAME, Storage

BACKENDS = ["sqlite", "postgresql"]


class Backend:
    """Where a test's storage lives: ``spacenb.sqlite3`` in the test's data directory, or
    a PostgreSQL database of its own (``database``)."""

    def __init__(
        self, name: str, data_dir: Path, database: str | None, cluster: Path | None = None
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.database = database
        self.cluster = cluster  # the PostgreSQL data directory, when the tests run the server
        self._opened: list[Storage] = []

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    def open(self) -> Storage:
        """A new storage object on this test's database (the same one each time), closed
        after the test."""
        storage: Storage
        if self.database is None:
            storage = SQLiteStorage(self.data_dir / DB_FILENAME)
        else:
            storage = PostgresStorage(self.database)
        self._opened.append(storage)
        return storage

    def close(self) -> None:
        for storage in self._opened:
            storage.close()

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every committed row of every table, read through a second connection."""
        if self.database is None:
            with sqlite3.connect(self.data_dir / DB_FILENAME) as db:
                query = "SELECT name FROM sqlite_master WHERE type='table'"
                tables = [r[0] for r in db.execute(query)]
                return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
        with psycopg.connect(self.database) as pg:
            query = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            tables = [r[0] for r in pg.execute(query)]
            return {t: sorted(pg.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}

    def row_counts(self) -> dict[str, int]:
        """Rows per table, committed."""
        return {table: len(rows) for table, rows in self.dump().items()}

    def stored_bytes(self) -> Iterator[tuple[str, bytes]]:
        """Everything at rest, as ``(where, data)``: each file of the data directory and,
        on PostgreSQL, every committed value of every row and, when the tests run the
        server, each file of its cluster after a checkpoint (WAL included)."""
        for path in sorted(p for p in self.data_dir.rglob("*") if p.is_file()):
            yield str(path.relative_to(self.data_dir)), path.read_bytes()
        if self.database is None:
            return
        for table, rows in self.dump().items():
            for row in rows:
                for value in row:
                    data = value if isinstance(value, bytes) else str(value).encode()
                    yield f"table {table}", data
        if self.cluster is not None:
            with psycopg.connect(self.database, autocommit=True) as pg:
                pg.execute("CHECKPOINT")
            for path in sorted(p for p in self.cluster.rglob("*") if p.is_file()):
                with contextlib.suppress(OSError):  # files come and go while it runs
                    yield f"cluster {path.relative_to(self.cluster)}", path.read_bytes()


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every committed row of every table (and the tables there are)."""
    with psycopg.connect(url) as db:
        query = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        tables = [r[0] for r in db.execute(query)]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}


def sql(url: str, statement: str) -> None:
    """Run one statement on the database at ``url``, committed at once."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(statement)
