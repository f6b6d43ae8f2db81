"""Fixtures and helpers for the tests of the sync facade and the widgets.

The fixtures start a real relay on 127.0.0.1 (port 0) and sign users in; a test package
imports them into its ``conftest.py``. :func:`run_script` runs code in a fresh interpreter
that imports this checkout of spacenb.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spacenb.sync import Client, LocalServer, connect, serve

__all__ = ["local_server", "make_client", "run_script", "script_env"]

REPO = Path(__file__).resolve().parents[1]


def script_env(**extra: str) -> dict[str, str]:
    """This process's environment, with this copy of spacenb first on ``PYTHONPATH``."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
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
