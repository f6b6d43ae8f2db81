"""A PostgreSQL server for the tests, and a fresh database on it for each test.

Either the server that ``SPACENB_TEST_DATABASE`` names (a ``postgresql://`` URL of a role
that may create databases), or a throwaway cluster that :meth:`PostgresServer.start`
makes with ``initdb`` in a temporary directory and runs with ``pg_ctl`` on a free loopback
port (as the ``postgres`` user under root: ``initdb`` refuses to run as root), stopped and
removed at the end of the session. Without either, the PostgreSQL tests skip, saying why;
with ``SPACENB_REQUIRE_POSTGRES`` set (``.ci/run`` sets it) they fail instead.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

ENV_URL = "SPACENB_TEST_DATABASE"
ENV_REQUIRED = "SPACENB_REQUIRE_POSTGRES"
_SEARCHED = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")


def find_bin_dir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    found = []
    for pattern in _SEARCHED:
        found += [p for p in Path("/").glob(pattern.lstrip("/")) if (p / "initdb").exists()]

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in path.parent.name.split(".") if x.isdigit()) or (0,)

    return max(found, key=version) if found else None


def unavailable_reason() -> str | None:
    """Why no PostgreSQL server can be had here, or None if one can."""
    if os.environ.get(ENV_URL):
        return None
    if find_bin_dir() is None:
        return (
            f"PostgreSQL tests need PostgreSQL's initdb and pg_ctl (apt-get install "
            f"postgresql) or {ENV_URL}=postgresql://... naming a server"
        )
    if os.geteuid() == 0 and not _has_user("postgres"):
        return "initdb refuses to run as root, and there is no postgres user to run it as"
    return None


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A server the tests may create databases on; ``admin_url`` names its maintenance
    database."""

    def __init__(self, admin_url: str, cluster: Path | None = None) -> None:
        self.admin_url = admin_url
        self.cluster = cluster  # the data directory of a cluster these tests started
        self._names = itertools.count(1)
        self._bin = find_bin_dir()

    @classmethod
    def from_environment(cls) -> PostgresServer:
        """The server of ``SPACENB_TEST_DATABASE``, or a new cluster (see the module)."""
        url = os.environ.get(ENV_URL)
        if url:
            return cls(url)
        return cls.start()

    @classmethod
    def start(cls, *, durable: bool = False) -> PostgresServer:
        """initdb a cluster in a temporary directory and start it on a free port; with
        fsync off unless ``durable`` (tests need no durability across a power cut, and
        benchmarks of a deployment do)."""
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        root = Path(tempfile.mkdtemp(prefix="spacenb-pg-"))
        as_postgres = os.geteuid() == 0
        if as_postgres:
            shutil.chown(root, "postgres", "postgres")
        data = root / "data"
        _run(as_postgres, bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "spacenb",
             "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        for attempt in range(3):
            port = _free_port()
            options = (
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
                + ("" if durable else " -c fsync=off -c full_page_writes=off")
            )
            try:
                _run(as_postgres, bin_dir / "pg_ctl", "-D", data, "-o", options,
                     "-l", root / "log", "-w", "-t", "30", "start")  # fmt: skip
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    log = (root / "log").read_text(errors="replace")[-2000:]
                    shutil.rmtree(root, ignore_errors=True)
                    raise RuntimeError(f"PostgreSQL did not start:\n{log}") from None
        return cls(f"postgresql://spacenb@127.0.0.1:{port}/postgres", cluster=data)

    def stop(self) -> None:
        """Stop a cluster these tests started and remove it (a no-op for an outside one)."""
        if self.cluster is None or self._bin is None:
            return
        with contextlib.suppress(subprocess.CalledProcessError):
            _run(os.geteuid() == 0, self._bin / "pg_ctl", "-D", self.cluster, "-m", "fast",
                 "-w", "stop")  # fmt: skip
        shutil.rmtree(self.cluster.parent, ignore_errors=True)
        self.cluster = None

    def _admin(self):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(self.admin_url, autocommit=True)

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        name = f"spacenb_test_{os.getpid()}_{next(self._names)}"
        with self._admin() as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}"')
            db.execute(f'CREATE DATABASE "{name}"')
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(parts._replace(path="/" + name))

    def drop_database(self, url: str) -> None:
        """Drop a database :meth:`new_database` made, closing its connections first."""
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        with self._admin() as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(as_postgres: bool, *argv: object) -> None:
    command = [str(a) for a in argv]
    if as_postgres:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, capture_output=True, cwd="/", timeout=120)
