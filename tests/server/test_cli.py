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


def spacenb(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
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


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_a_port_out_of_range_is_a_one_line_error(port, capsys):
    assert main(["serve", "--port", port, "--shards", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("spacenb serve: error: port: must be 0 to 65535"), err


def test_limits_are_set_on_the_command_line(capsys):
    assert main(["serve", "--port", "0", "--shards", "0", "--limit", "no_such_limit=1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_limit: no such limit" in err, err
    assert main(["serve", "--port", "0", "--shards", "0", "--limit", "message_rate=fast"]) == 1
    assert "message_rate: not a number" in capsys.readouterr().err


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


def read_banner(proc: subprocess.Popen[str]) -> list[str]:
    """The lines ``serve`` prints before it waits."""
    lines = []
    while not lines or "Press Ctrl+C" not in lines[-1]:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, proc.stderr.read()  # type: ignore[union-attr]
        lines.append(line.rstrip("\n"))
    return lines


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


async def test_serve_on_a_database_says_where_its_service_key_is(tmp_path, postgres_url):
    first = spacenb("serve", "--database", postgres_url, "--data", str(tmp_path / "a"),
                    "--port", "0", "--shards", "0")  # fmt: skip
    try:
        banner = read_banner(first)
        assert f"  database: {postgres_url}" in banner
        key_file = tmp_path / "a" / "service.key"
        assert f"  service key: {key_file} (every relay of this database needs it)" in banner
        assert not any("WARNING" in line for line in banner)
        app_key = re.search(r"app key:\s+(\S+)", banner[1]).group(1)
        # a second relay is given the key in its environment: the same service
        env = {"SPACENB_SERVICE_KEY": key_file.read_text().strip()}
        second = spacenb("serve", "--database", postgres_url, "--port", "0", "--shards", "0",
                         env=env)  # fmt: skip
        try:
            banner = read_banner(second)
            assert re.search(r"app key:\s+(\S+)", banner[1]).group(1) == app_key
            assert "  service key: SPACENB_SERVICE_KEY (every relay of this database needs it)" in (
                banner
            )
            url = re.search(r"ws://\S+", banner[0]).group(0)
            client = await RawClient.open(url)
            assert (await client.auth(app_key, "alice")).created
            await client.close()
        finally:
            stop(second)
    finally:
        stop(first)


async def test_serve_on_a_database_warns_when_its_service_key_would_be_lost(postgres_url):
    proc = spacenb("serve", "--database", postgres_url, "--port", "0", "--shards", "0")
    try:
        assert any("WARNING: the service key is in a temporary directory" in line
                   for line in read_banner(proc))  # fmt: skip
    finally:
        stop(proc)


def test_a_database_must_be_a_postgresql_url(capsys, tmp_path):
    assert main(["serve", "--port", "0", "--database", str(tmp_path / "x.sqlite3")]) == 1
    assert "postgresql://" in capsys.readouterr().err
