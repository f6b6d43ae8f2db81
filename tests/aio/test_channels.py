"""Channels and spaces: create, list, resolve, join, private channels, get."""

from __future__ import annotations

import asyncio

import pytest

import spacenb.aio as aio
from spacenb.exceptions import (
    ChannelExistsError,
    ChannelNotFoundError,
    KeyUnavailableError,
    PermissionDeniedError,
    ProtocolError,
    SpacenbTimeoutError,
)
from spacenb.protocol import crypto
from spacenb.server.app import start_server
from spacenb.server.limits import Limits

from .conftest import Inbox, wait_until


async def test_create_list_resolve_join(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    general = await alice.space.create_channel("general")
    assert general.id.startswith("spc.")
    assert general.keyring is not None and general.keyring.epochs == [0]
    assert [(c.name, c.space_id) for c in await bob.space.list_channels()] == [
        ("general", general.id)
    ]
    assert await bob.space.resolve_channel("general") == general.id
    assert await bob.space.resolve_channel("nope") is None
    joined = await bob.space.join_channel("general")
    assert joined.id == general.id
    assert joined.keyring.key(0) == general.keyring.key(0)
    members = {m.member_id: m.role for m in await alice.space.members(general.id)}
    assert members["alice"] == "owner" and members["bob"] == "viewer"


async def test_channel_name_taken(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.space.create_channel("general")
    with pytest.raises(ChannelExistsError):
        await bob.space.create_channel("general")


async def test_join_unknown_channel(connect):
    bob = await connect("bob")
    with pytest.raises(ChannelNotFoundError):
        await bob.space.join_channel("nowhere")


async def test_bad_policy_is_refused(connect):
    alice = await connect("alice")
    with pytest.raises(ProtocolError):
        await alice.space.create_channel("x", history_policy="sometimes")


async def test_join_by_raw_space_id(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    general = await alice.space.create_channel("general")
    joined = await bob.space.join_channel(general.id)
    assert joined.keyring.key(0) == general.keyring.key(0)


async def test_private_channel_is_hidden_and_gated(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    carol = await connect("carol")
    secret = await alice.space.create_channel("secret", private=True)
    assert await bob.space.list_channels() == []
    with pytest.raises((PermissionDeniedError, ChannelNotFoundError)):
        await bob.space.join_space(secret.id, timeout=2)
    await secret.invite("bob")
    joined = await bob.space.join_space(secret.id)
    assert joined.keyring.key(0) == secret.keyring.key(0)
    # A member (not only the owner) may invite to a private channel.
    await joined.invite("carol")
    await carol.space.join_space(secret.id)


async def test_outsider_cannot_invite(connect):
    alice = await connect("alice")
    mallory = await connect("mallory")
    secret = await alice.space.create_channel("secret", private=True)
    handle = await mallory.space.get(secret.id)
    with pytest.raises(PermissionDeniedError):
        await handle.invite("mallory")


async def test_unnamed_space_admitted_by_an_online_member(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    space = await alice.space.create_space()
    joined = await bob.space.join_space(space.id)
    assert joined.keyring.key(0) == space.keyring.key(0)


async def test_unnamed_space_with_nobody_online_times_out(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    space = await alice.space.create_space()
    await space.disconnect()
    await alice.close()
    with pytest.raises(SpacenbTimeoutError) as info:
        await bob.space.join_space(space.id, timeout=0.5)
    assert isinstance(info.value, TimeoutError)


async def test_manual_admission(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    room = await alice.space.create_channel("gated", auto_admit=False)
    requests = Inbox()
    room.on_join_request(requests)

    async def decide(req):
        if req.member_id == "bob":
            await room.admit(req.member_id, req.identity_ecdh_pub)

    room.on_join_request(decide)
    joined = await bob.space.join_channel("gated", timeout=10)
    assert joined.keyring.key(0) == room.keyring.key(0)
    assert requests.items[0].member_id == "bob"


async def test_get_returns_a_handle_without_connecting(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    general = await alice.space.create_channel("general")
    handle = await bob.space.get(general.id)
    assert handle.id == general.id
    assert not handle.is_connected()
    assert handle.keyring is None
    with pytest.raises(KeyUnavailableError):
        await handle.send_message("hi")


async def test_bad_space_id_is_refused(connect):
    alice = await connect("alice")
    with pytest.raises(ProtocolError):
        await alice.space.join_space("spc.not-a-key")


async def test_a_class_joining_at_once_all_get_in(connect):
    """Thirty members join one channel in the same moment: each signs its add on the head
    it saw, all but one are refused as stale in each round, and each signs again after a
    random backoff until it is in (no one is told the log "kept moving")."""
    owner = await connect("teacher")
    room = await owner.space.create_channel("lecture")
    students = [await connect(f"student{i}") for i in range(30)]
    joined = await asyncio.gather(*(s.space.join_channel("lecture") for s in students))
    assert all(space.id == room.id for space in joined)
    await room.sync_log()
    state = room.state
    assert state is not None
    assert {f"student{i}" for i in range(30)} <= set(state.members)
    assert state.head_seq == 30  # the genesis, then one add each: none twice, none lost


async def test_a_newcomer_verifies_the_log_from_its_last_checkpoint(tmp_path, monkeypatch):
    """The owner's ``checkpoint()`` (and the keeper's, every ``checkpoint_every`` events)
    attests the log before it: a newcomer joining afterwards verifies no signature of
    an event under the last checkpoint, and holds the same log as everyone. A viewer
    may not sign a checkpoint."""
    server = await start_server(
        data_dir=tmp_path / "cp", shards=0, limits=Limits(checkpoint_every=3)
    )
    clients = []
    try:

        async def connect(name):
            client = await aio.connect(
                server.url, app_key=server.app_key, username=name, keystore=":memory:"
            )
            clients.append(client)
            return client

        alice = await connect("alice")
        a = await alice.space.create_channel("general")
        user0 = await connect("user0")
        u = await user0.space.join_channel("general")
        for i in range(1, 4):
            await (await connect(f"user{i}")).space.join_channel("general")
        with pytest.raises(PermissionDeniedError, match="owner"):
            await u.checkpoint()
        await a.sync_log()
        assert [e.kind for e in a.core.require_state().events] == [
            "genesis", "add", "add", "add", "checkpoint", "add",
        ]  # fmt: skip
        seq = await a.checkpoint()
        assert seq == 6 and a.state_log()[-1].kind == "checkpoint"
        assert a.state_log()[-1].actor == "alice"

        events = list(a.core.require_state().events)
        by_bytes = {e.signed_bytes(): e.seq for e in events}
        verified = []
        real = crypto.verify

        def spy(key, signature, data):
            if bytes(data) in by_bytes:
                verified.append(by_bytes[bytes(data)])
            real(key, signature, data)

        monkeypatch.setattr(crypto, "verify", spy)
        erin = await connect("erin")
        e = await erin.space.join_channel("general")
        monkeypatch.undo()
        assert sorted(set(verified)) == [0, 6]  # genesis and alice's checkpoint
        assert e.core.require_state().events[:7] == events
        await wait_until(lambda: len(u.core.require_state().events) == 8)
        assert u.core.require_state().head == e.core.require_state().head
    finally:
        for client in clients:
            await client.close()
        await server.stop()
