"""A shard store in a subprocess (``python -m spacenb shard-store``), to run it as a
deployment does and to SIGKILL it for real.

Its output goes to files, not pipes, so it can never block on a full pipe. It listens on
127.0.0.1 on a free port (printed as its URL).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ShardStoreProcess:
    """``spacenb shard-store --data DIR --port 0 ARGS...``; ``url`` once started."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.args = args
        self.url = ""
        self.out = data_dir.parent / f"{data_dir.name}.out"
        self.err = data_dir.parent / f"{data_dir.name}.err"
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "spacenb", "shard-store", "--data", str(self.data_dir),
                "--host", "127.0.0.1", "--port", "0", *self.args]  # fmt: skip

    def start(self, timeout: float = 60.0) -> ShardStoreProcess:
        """Start it and wait until it prints its URL (RuntimeError if it exits first);
        blocking, so that a module-scoped fixture can start stores too."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out, "wb") as stdout, open(self.err, "wb") as stderr:
            self._proc = subprocess.Popen(
                self.command(), stdout=stdout, stderr=stderr, env=env, cwd=ROOT
            )
        deadline = time.monotonic() + timeout
        while not (found := re.search(r"listening on (ws://\S+)", self.out.read_text())):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the store did not start: {self.err.read_text()}")
            time.sleep(0.05)
        self.url = found.group(1)
        return self

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as a crash would."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(30)
            self._proc = None

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit status (None if it was not running)."""
        if self._proc is None:
            return None
        self._proc.terminate()
        try:
            status = self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            status = self._proc.wait(30)
        self._proc = None
        return status
