"""The ``spacenb`` command: ``serve`` until a signal, ``demo`` end to end, bad arguments."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from spacenb import __version__ as spacenb_version
from spacenb.cli import main
from tests.server.rawclient import RawClient

ROOT = Path(__file__).resolve().parents[2]


def spacenb(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "spacenb.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip


async def test_serve_prints_url_and_app_key_and_stops_on_sigterm(tmp_path):
    proc = spacenb("serve", "--data", str(tmp_path), "--port", "0", "--shards", "2",
                   "--shards-needed", "1")  # fmt: skip
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        url = re.search(r"ws://\S+", lines[0]).group(0)
        app_key = re.search(r"app key:\s+(\S+)", lines[1]).group(1)
        client = await RawClient.open(url)
        assert (await client.auth(app_key, "alice")).created
        await client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopping" in out
    assert (tmp_path / "spacenb.sqlite3").exists()


def test_demo_runs_end_to_end():
    proc = spacenb("demo")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "demo ok: 3 messages" in out
    assert "bob: hi alice!" in out


def test_bad_shard_counts_are_an_error(capsys):
    assert main(["serve", "--port", "0", "--shards", "2", "--shards-needed", "3"]) == 1
    assert "shards_needed" in capsys.readouterr().err


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "COMMAND" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"spacenb {spacenb_version}"


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in ("(default: 127.0.0.1)", "(default: 8765)", "(default: 5)", "(default: 3)",
                  "(default: a temporary one, deleted on exit)"):  # fmt: skip
        assert shown in out
