"""``binder/start``: starts a relay in the background, exports where it is, runs the command.

Each test runs the script as Binder would, ``binder/start COMMAND...``, with a command
that prints the environment it was given, in its own session so that the relay left
running in the background can be found and stopped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import spacenb

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "binder" / "start"
VARIABLES = (
    "SPACENB_URL",
    "SPACENB_APP_KEY",
    "SPACENB_DATA_DIR",
    "SPACENB_RELAY_PID",
    "SPACENB_RELAY_LOG",
)
PRINT_ENV = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {VARIABLES!r}}}))"

pytestmark = [
    pytest.mark.skipif(shutil.which("bash") is None, reason="binder/start is a bash script"),
    pytest.mark.timeout(90),
]


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel directly
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def stopped_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Started:
    """One run of ``binder/start``: what the command saw, and the session to clean up."""

    def __init__(self, tmp_path: Path, **extra_env: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPACENB_")}
        env.update(
            PYTHONPATH=str(ROOT),
            SPACENB_PYTHON=sys.executable,
            TMPDIR=str(tmp_path),
            SPACENB_DATA_DIR=str(tmp_path / "relay"),
            SPACENB_START_TIMEOUT="30",
        )
        env.update(extra_env)
        self.proc = subprocess.Popen(
            ["bash", str(START), sys.executable, "-c", PRINT_ENV],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
            start_new_session=True,  # the relay joins this process group
        )
        out, self.stderr = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, self.stderr
        self.env: dict[str, str | None] = json.loads(out.strip().splitlines()[-1])

    def stop_session(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[type[Started]]:
    runs: list[Started] = []

    class Run(Started):
        def __init__(self, **extra_env: str) -> None:
            super().__init__(tmp_path, **extra_env)
            runs.append(self)

    yield Run
    for run in runs:  # never leave a relay behind, even when a test fails
        run.stop_session()
        pid = run.env.get("SPACENB_RELAY_PID")
        if pid and not stopped_within(int(pid), 10):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)


def test_start_runs_a_relay_the_command_can_use(start, tmp_path):
    run = start()
    env = run.env
    assert env["SPACENB_URL"] and env["SPACENB_URL"].startswith("ws://127.0.0.1:")
    assert env["SPACENB_APP_KEY"]
    assert env["SPACENB_DATA_DIR"] == str(tmp_path / "relay")
    pid = int(env["SPACENB_RELAY_PID"] or 0)
    assert running(pid), "the relay should outlive the start script"

    client = spacenb.connect(
        env["SPACENB_URL"],
        app_key=env["SPACENB_APP_KEY"],
        username="binder-check",
        keystore=":memory:",
        timeout=20,
    )
    try:
        channel = client.space.create_channel("binder-check")
        channel.send_message("hello from the test")
        assert list(channel.history().body) == ["hello from the test"]
    finally:
        client.close()
    assert (tmp_path / "relay" / "spacenb.sqlite3").exists()

    run.stop_session()
    assert stopped_within(pid, 20), "the relay did not stop on SIGTERM"
    assert "stopping" in Path(env["SPACENB_RELAY_LOG"] or "").read_text()


def test_a_relay_that_cannot_start_leaves_the_command_running_without_it(start):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        run = start(SPACENB_PORT=str(taken.getsockname()[1]))
    assert run.env["SPACENB_URL"] is None
    assert run.env["SPACENB_APP_KEY"] is None
    assert "did not start" in run.stderr


def test_an_existing_relay_setting_is_kept(start):
    run = start(SPACENB_URL="ws://relay.example:8765", SPACENB_APP_KEY="given")
    assert run.env["SPACENB_URL"] == "ws://relay.example:8765"
    assert run.env["SPACENB_APP_KEY"] == "given"
    assert run.env["SPACENB_RELAY_PID"] is None
