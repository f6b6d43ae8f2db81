"""Signing up and in, keystores, the member directory."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

import spacenb.aio as aio
from spacenb.exceptions import AuthenticationError, ConnectionLostError
from spacenb.protocol import frames


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


async def test_requests_are_built_unsent_and_the_connection_numbers_them(connect):
    alice = await connect("alice")
    room = await alice.space.create_channel("room")
    ask = frames.Resolve(frames.UNSENT, name="room")
    # The same request object twice: each send gets its own id, and its own answer.
    first, second = await asyncio.gather(alice.request(ask), alice.request(ask))
    assert first == second == frames.ResolveResult(space_id=room.id)
    assert ask.id == frames.UNSENT  # frozen: the connection stamps a copy
    with pytest.raises(TypeError, match="keyword"):
        await alice.request(ask, name="other")  # type: ignore[call-overload]


async def test_the_old_request_form_still_works_deprecated(connect):
    alice = await connect("alice")
    room = await alice.space.create_channel("room")
    with pytest.warns(DeprecationWarning, match="build the request"):
        found = await alice.request(frames.Resolve, name="room")
    assert found == frames.ResolveResult(space_id=room.id)
