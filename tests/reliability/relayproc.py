"""A relay in a subprocess (``python -m spacenb serve``), to kill it for real and to
read its memory, CPU time and file descriptors from /proc.

Its output goes to files, not pipes, so a chatty relay can never block on a full pipe.
It listens on 127.0.0.1; the first start picks a free port, every restart reuses it.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class RelayProcess:
    """``spacenb serve --data DIR`` in a child process; ``url`` and ``app_key`` once
    started. Use :meth:`kill` (SIGKILL: no clean-up at all) and :meth:`start` again.

    ``limits`` are ``NAME=VALUE`` settings, each given as ``--limit``; ``nofile`` is a low
    soft RLIMIT_NOFILE for the relay to start from (it raises the limit itself)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        shards: int = 0,
        database: str | None = None,
        service_key: str | None = None,
        limits: Sequence[str] = (),
        nofile: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.limits = tuple(limits)
        self.nofile = nofile
        self.shards = shards
        self.database = database  # serve this PostgreSQL database (with service_key)
        self.service_key = service_key
        self.port = 0
        self.url = ""
        self.app_key = ""
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 60.0) -> None:
        """Start (or restart, on the same port) and wait until it prints its URL."""
        assert self._proc is None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = self.data_dir.parent / f"{self.data_dir.name}.out{self.starts}"
        err = self.data_dir.parent / f"{self.data_dir.name}.err{self.starts}"
        self.starts += 1
        command = [
            sys.executable, "-m", "spacenb", "serve", "--data", str(self.data_dir),
            "--host", "127.0.0.1", "--port", str(self.port), "--shards", str(self.shards),
            "--shards-needed", str(min(self.shards, 1)),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if self.database is not None:
            command += ["--database", self.database]
        if self.service_key is not None:
            env["SPACENB_SERVICE_KEY"] = self.service_key
        for setting in self.limits:
            command += ["--limit", setting]
        preexec = None if self.nofile is None else _soft_nofile_of(self.nofile)
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            self._proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=ROOT,
                                          preexec_fn=preexec)  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            text = out.read_text(errors="replace")
            url = re.search(r"listening on (ws://\S+)", text)
            key = re.search(r"app key:\s+(\S+)", text)
            if url and key:
                break
            if self._proc.poll() is not None or loop.time() > deadline:
                self.kill()
                raise RuntimeError(f"the relay did not start: {err.read_text(errors='replace')}")
            await asyncio.sleep(0.05)
        self.url, self.app_key = url.group(1), key.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def rss_bytes(self) -> int:
        """The relay's resident memory now (VmRSS from /proc)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None
        return int(match.group(1)) * 1024

    def cpu_seconds(self) -> float:
        """User plus system CPU time the relay has used."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_files(self) -> int:
        """How many file descriptors the relay has open."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def soft_nofile(self) -> int:
        """The relay's soft open-file limit now."""
        text = Path(f"/proc/{self.pid}/limits").read_text()
        match = re.search(r"^Max open files\s+(\d+)", text, re.MULTILINE)
        assert match is not None
        return int(match.group(1))

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no flush, no clean shutdown."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(30)
            self._proc = None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL if it does not exit in time); the exit status (0 for
        a clean shutdown), or None if it was not running."""
        if self._proc is None:
            return None
        self._proc.send_signal(signal.SIGTERM)
        try:
            status = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            status = self._proc.wait(30)
        self._proc = None
        return status

    def error_output(self) -> str:
        """What the latest start wrote to stderr (for an assertion's message)."""
        err = self.data_dir.parent / f"{self.data_dir.name}.err{self.starts - 1}"
        return err.read_text(errors="replace") if err.exists() else ""


def _soft_nofile_of(nofile: int) -> Callable[[], None]:
    """What a child runs before ``exec``: set its soft RLIMIT_NOFILE to ``nofile``."""

    def lower_nofile() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    return lower_nofile
