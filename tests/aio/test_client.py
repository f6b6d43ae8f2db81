"""Signing up and in, keystores, the member directory."""

from __future__ import annotations

import os
import stat

import pytest

import spacenb.aio as aio
from spacenb.exceptions import AuthenticationError, ConnectionLostError


async def test_sign_up_then_sign_in_with_the_same_keystore(server, tmp_path):
    first = await aio.connect(
        server.url, app_key=server.app_key, username="alice", keystore=tmp_path
    )
    fingerprint = first.fingerprint
    assert first.connection.auth.created is True
    await first.close()
    again = await aio.connect(
        server.url, app_key=server.app_key, username="alice", keystore=tmp_path
    )
    assert again.connection.auth.created is False
    assert again.fingerprint == fingerprint
    await again.close()


async def test_keystore_files_are_private(server, tmp_path):
    client = await aio.connect(
        server.url, app_key=server.app_key, username="alice", keystore=tmp_path
    )
    await client.space.create_channel("general")
    await client.close()
    files = [p for p in (tmp_path / "alice").rglob("*") if p.is_file()]
    assert any(p.name == "identity.key" for p in files)
    assert any(p.suffix == ".json" for p in files)
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_username_taken_by_another_key(connect):
    await connect("alice")
    with pytest.raises(AuthenticationError, match="another key"):
        await connect("alice")  # a fresh in-memory keystore: new keys


async def test_wrong_app_key(server):
    with pytest.raises(AuthenticationError):
        await aio.connect(server.url, app_key="wrong", username="alice", keystore=":memory:")


async def test_unreachable_relay():
    with pytest.raises(ConnectionLostError):
        await aio.connect("ws://127.0.0.1:9", app_key="x", username="alice", keystore=":memory:")


async def test_member_directory_returns_published_keys(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    found = await alice.identities(["bob", "nobody"])
    assert set(found) == {"bob"}
    assert found["bob"].signing_key == bob.identity.signing_key
    assert found["bob"].fingerprint == bob.fingerprint
