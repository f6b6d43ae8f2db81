"""The one private-file writer: whole or never, owner-only."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from spacenb.privatefile import open_private, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_text_and_bytes_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "identity.key"
    write_private(target, "secret")
    assert target.read_text() == "secret"
    assert mode(target) == 0o600
    assert mode(target.parent) == 0o700
    write_private(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["identity.key"]


def test_replaces_a_file_that_others_could_read(tmp_path: Path) -> None:
    target = tmp_path / "pins.json"
    target.write_text("old")
    target.chmod(0o644)
    write_private(target, "new")
    assert (target.read_text(), mode(target)) == ("new", 0o600)


def test_a_failed_stream_leaves_the_old_file_and_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "download.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), open_private(target) as out:
        out.write(b"half of the new")
        raise RuntimeError("the download failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["download.bin"]


def test_a_stream_commits_when_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "download.bin"
    with open_private(target) as out:
        for part in (b"a", b"b", b"c"):
            out.write(part)
        assert not target.exists()  # nothing shows before the commit
    assert target.read_bytes() == b"abc"
    assert mode(target) == 0o600
