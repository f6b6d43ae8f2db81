"""Shared by the browser tests: Debian's chromium through Playwright, and a Jupyter server.

``playwright install`` is not used (its browser download does not work here): Playwright
drives ``/usr/bin/chromium`` with the flags below. The tests skip, saying so, only when
that chromium is missing; everything else they need comes with the ``test`` extra.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spacenb.sync.testing import wait_until
from tests.facade import script_env

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NO_CHROMIUM = f"{CHROMIUM} not installed (apt-get install chromium)"


def require_chromium() -> None:
    """Skip the calling test module when Debian's chromium is not installed."""
    if not Path(CHROMIUM).exists():
        pytest.skip(NO_CHROMIUM, allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    """A headless chromium (Playwright's Browser), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


class JupyterServer:
    """``jupyter lab`` on 127.0.0.1 serving ``root``: JupyterLab at /lab, Notebook 7 at
    /notebooks. Kernels it starts inherit ``env``."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        home = root.parent / "jupyter-home"
        for sub in ("config", "data", "runtime", "settings", "workspaces"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        news = home / "settings" / "@jupyterlab" / "apputils-extension"
        news.mkdir(parents=True, exist_ok=True)  # no "Would you like news?" toast
        (news / "notification.jupyterlab-settings").write_text(
            '{"fetchNews": "false", "checkForUpdates": false}'
        )
        self.log_path = root.parent / "jupyter.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}",
             "--ServerApp.ip=127.0.0.1", "--allow-root", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=root, stdout=self._log, stderr=subprocess.STDOUT,
            env=script_env(
                **env,
                JUPYTER_CONFIG_DIR=str(home / "config"),
                JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
                JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
            ),
        )  # fmt: skip
        wait_until(self._ready, timeout=120, interval=0.5, what="the Jupyter server")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"jupyter lab exited: {self.log_path.read_text()[-3000:]}")
        if not listening(self.port):
            return False
        try:
            with urllib.request.urlopen(self.url("api/status"), timeout=5) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def settle(page: Any, frames: int = 2) -> None:
    """Let ``frames`` animation frames pass (the chat applies changes once per frame)."""
    page.evaluate(
        "n => new Promise(done => { const step = k => k ? requestAnimationFrame(() => step(k - 1))"
        " : done(); step(n); })",
        frames,
    )


def screenshot(locator: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    locator.screenshot(path=str(path))
    assert path.stat().st_size > 0
    return path


def wait_for(predicate: Any, what: str, timeout: float = 30) -> Any:
    return wait_until(predicate, timeout=timeout, interval=0.1, what=what)


__all__ = [
    "ARTIFACTS", "CHROMIUM", "JupyterServer", "browser", "free_port", "listening",
    "require_chromium", "screenshot", "settle", "time", "wait_for",
]  # fmt: skip
