"""Helpers for tests and tutorials of the sync facade: bounded waiting, pytest fixtures.

:func:`wait_until` polls a condition with a deadline, never a fixed sleep, so a test is
as fast as the system allows and fails with a clear message when something never
happens. The fixtures start a real relay on 127.0.0.1 (port 0) and sign users in; import
them into a ``conftest.py`` (``from spacenb.sync.testing import local_server, make_client``).
Importing the fixtures needs pytest.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

__all__ = ["local_server", "make_client", "run_script", "script_env", "wait_until"]

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``predicate()`` until it returns something truthy, and return that.

    Raises ``AssertionError`` (naming ``what``) if it is still falsy after ``timeout``
    seconds. Exceptions from ``predicate`` propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def script_env(**extra: str) -> dict[str, str]:
    """This process's environment, with this copy of spacenb first on ``PYTHONPATH``."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_script(code: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a fresh interpreter; output is captured as text.

    Raises ``subprocess.TimeoutExpired`` if it runs longer than ``timeout`` seconds (a
    hang at exit shows up this way).
    """
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=script_env(),
        check=False,
    )


try:
    import pytest
except ImportError:  # pragma: no cover - fixtures need pytest; wait_until does not
    pass
else:
    from .client import Client, connect
    from .server import LocalServer, serve

    @pytest.fixture(scope="session")
    def local_server() -> Iterator[LocalServer]:
        """One embedded relay for the whole test session."""
        with serve() as server:
            yield server

    _names = itertools.count()

    @pytest.fixture
    def make_client(local_server: LocalServer) -> Iterator[Callable[[str], Client]]:
        """``make_client("alice")`` signs in a fresh, uniquely named user (in-memory keys);
        every client is closed after the test."""
        clients: list[Client] = []

        def make(name: str) -> Client:
            username = f"{name}-{next(_names)}"
            client = connect(
                local_server.url,
                app_key=local_server.app_key,
                username=username,
                keystore=":memory:",
                timeout=30.0,
            )
            clients.append(client)
            return client

        yield make
        for client in clients:
            client.close()
