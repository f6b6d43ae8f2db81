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


def test_exclusive_creates_but_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "service.key"
    write_private(target, "first", exclusive=True)
    assert (target.read_text(), mode(target)) == ("first", 0o600)
    with pytest.raises(FileExistsError):
        write_private(target, "second", exclusive=True)
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["service.key"]


def test_a_public_file_keeps_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "relay.pub"
    write_private(target, "sig.key\n", mode=0o644)
    assert (target.read_text(), mode(target)) == ("sig.key\n", 0o644)


def test_the_partial_file_is_made_in_tmp_dir(tmp_path: Path) -> None:
    staging = tmp_path / "tmp"
    staging.mkdir()
    target = tmp_path / "ab" / "abcdef"
    with open_private(target, tmp_dir=staging) as out:
        out.write(b"share")
        assert [p.suffix for p in staging.iterdir()] == [".part"]
        assert not target.parent.exists() or list(target.parent.iterdir()) == []
    assert target.read_bytes() == b"share"
    assert list(staging.iterdir()) == []
