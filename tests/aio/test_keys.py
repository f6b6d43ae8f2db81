"""Rotation, removal, static vs rotate history."""

from __future__ import annotations

import pytest

from spacenb.exceptions import IntegrityError, KeyUnavailableError, PermissionDeniedError
from spacenb.protocol import frames
from spacenb.protocol.envelope import open_envelope

from .conftest import Inbox, wait_until


async def test_static_newcomer_reads_all_history(connect):
    alice = await connect("alice")
    a = await alice.space.create_channel("general")
    await a.send_message("before bob")
    bob = await connect("bob")
    b = await bob.space.join_channel("general")
    page = await b.history()
    assert [m.message.body for m in page.messages] == ["before bob"]
    assert page.unreadable == 0


async def test_rotate_newcomer_cannot_read_earlier_epochs(connect):
    alice = await connect("alice")
    a = await alice.space.create_channel("ops", history_policy="rotate")
    await a.send_message("epoch 0")
    assert await a.rotate() == 1
    await a.send_message("epoch 1")
    bob = await connect("bob")
    b = await bob.space.join_channel("ops")
    assert b.keyring.epochs == [1]
    page = await b.history()
    assert [(m.epoch, m.message.body) for m in page.messages] == [(1, "epoch 1")]
    assert page.unreadable == 1
    assert [m.message.body for m in (await a.history()).messages] == ["epoch 0", "epoch 1"]


async def test_rotation_reaches_online_members(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    a = await alice.space.create_channel("ops", history_policy="rotate")
    b = await bob.space.join_channel("ops")
    inbox = Inbox()
    b.on_message(inbox)
    epoch = await a.rotate()
    await a.send_message("new epoch")
    (ev,) = await inbox.wait(1)
    assert ev.epoch == epoch and ev.message.body == "new epoch"
    assert b.keyring.epochs == [0, 1]


async def test_static_space_cannot_rotate(connect):
    alice = await connect("alice")
    a = await alice.space.create_channel("general")
    with pytest.raises(Exception, match="rotate"):
        await a.rotate()


async def test_removed_member_cannot_read_later_epochs(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    carol = await connect("carol")
    a = await alice.space.create_channel("ops", history_policy="rotate")
    b = await bob.space.join_channel("ops")
    c = await carol.space.join_channel("ops")
    await alice.space.remove_member(a.id, "bob")
    assert a.keyring.current_epoch == 1
    await wait_until(lambda: c.keyring.has(1))
    await a.send_message("after bob")
    assert not b.keyring.has(1)
    with pytest.raises(PermissionDeniedError):
        await b.history()
    # Even given the stored envelope, bob's keys do not open it.
    page = await a.client.request(
        frames.HistoryRequest(frames.UNSENT, space_id=a.id, before=None, limit=10)
    )
    latest = page.items[-1].envelope
    with pytest.raises(KeyUnavailableError):
        b.keyring.key(latest.epoch)
    with pytest.raises(IntegrityError):
        open_envelope(latest, b.keyring.key(0), alice.identity.public("alice").signing_public_key())
    assert [m.message.body for m in (await c.history()).messages][-1] == "after bob"


async def test_only_owner_removes(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    a = await alice.space.create_channel("ops", history_policy="rotate")
    await bob.space.join_channel("ops")
    with pytest.raises(PermissionDeniedError):
        await bob.space.remove_member(a.id, "alice")


async def test_member_leaves(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    await b.leave()
    assert [m.member_id for m in await alice.space.members(a.id)] == ["alice", "keeper"] or {
        m.member_id for m in await alice.space.members(a.id)
    } == {"alice", "keeper"}


async def test_remove_without_the_keys_refuses_before_removing(server, tmp_path):
    """An owner on a device that lacks the space's keys cannot rotate, so it must not
    remove either (the removed member would keep reading what follows)."""
    import shutil

    import spacenb.aio as aio

    alice = await aio.connect(
        server.url, app_key=server.app_key, username="alice", keystore=tmp_path / "laptop"
    )
    bob = await aio.connect(server.url, app_key=server.app_key, username="bob", keystore=":memory:")
    try:
        a = await alice.space.create_channel("ops", history_policy="rotate")
        await bob.space.join_channel("ops")
        phone = tmp_path / "phone" / "alice"
        phone.mkdir(parents=True)
        for name in ("keystore.json", "identity.key"):
            shutil.copy(tmp_path / "laptop" / "alice" / name, phone / name)
        alice_phone = await aio.connect(
            server.url, app_key=server.app_key, username="alice", keystore=tmp_path / "phone"
        )
        with pytest.raises(KeyUnavailableError, match="holds none of its keys"):
            await alice_phone.space.remove_member(a.id, "bob")
        await alice_phone.close()
        assert "bob" in {m.member_id for m in await alice.space.members(a.id)}
    finally:
        await alice.close()
        await bob.close()


async def test_a_viewer_cannot_rotate_but_an_editor_can(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    a = await alice.space.create_channel("ops", history_policy="rotate")
    b = await bob.space.join_channel("ops")
    with pytest.raises(PermissionDeniedError, match="owner or an editor"):
        await b.rotate()
    await alice.space.set_member_role(a.id, "bob", "editor")
    assert await b.rotate() == 1
    await wait_until(lambda: a.keyring.has(1))
