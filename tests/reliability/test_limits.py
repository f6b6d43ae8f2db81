"""What spacenb does *not* protect, pinned so RELIABILITY.md's threat model stays honest
(each next to the guarantee it is the limit of), and three limits of version 1 that
protocol v2 fixed, pinned the other way round.

Limits (``test_limit_*``):

- A removed member of a ``static`` space keeps the one key: given the ciphertext (from
  the relay, or anyone storing it), it still reads what is sent after its removal. In a
  ``rotate`` space the removal rotates the key and it cannot.
- The relay sees the routing metadata of every envelope: who, which space and channel,
  content type, epoch, the state-log event it is bound to, when (the handle is a
  timestamp) and how big.
- A data directory holds the keeper's identity key and the keys wrapped to the keeper: who
  has the directory can read every channel the keeper belongs to. Spaces the keeper is not
  in (unnamed spaces, channels created without it) stay closed.
- Shard stores check tickets, not the log: a removed member keeps uploading (ciphertext)
  with a ticket it got before its removal until the ticket expires (ten minutes).

Fixed by protocol v2:

- Replay detection lasts across restarts (the replay marks are in the keystore): a
  restarted client refuses an old genuine message re-served at a new handle.
- Removal is a ban in every space: a removed member cannot join a public channel again
  or redeem a link until an owner or editor invites it.
- The relay is no longer the key directory: keys come from each member's signed ``add``
  event and are pinned; a false key served by the relay is detected, and nothing signed
  with it, or wrapped to it, is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.aio.shardlink import ShardLink
from spacenb.exceptions import (
    IdentityChangedError,
    IntegrityError,
    KeyUnavailableError,
    PermissionDeniedError,
)
from spacenb.protocol import crypto, frames
from spacenb.protocol.envelope import Envelope, open_envelope
from spacenb.protocol.keyring import HistoryPolicy
from spacenb.protocol.keys import IdentityKeys
from spacenb.protocol.manifest import share_name
from spacenb.protocol.wrap import unwrap_group_key
from spacenb.server.app import KEEPER_KEY_FILE, RunningServer, load_or_create_identity
from spacenb.server.handlers import REQUEST_TABLE, with_handler
from spacenb.server.sqlite import SQLiteStorage
from tests.server.rawclient import user

from .conftest import Connect, Figures, StartRelay
from .helpers import Inbox, event_json, forged_envelope, wait_until


def stored_envelopes(server: RunningServer, space_id: str) -> list[Envelope]:
    """What the relay stores for a space, as its operator would read it."""
    items, _cursor = server.relay.storage.history(space_id, None, 1000)
    return [item.envelope for item in items]


async def removed_member_reads(
    server: RunningServer, connect: Connect, policy: HistoryPolicy
) -> str:
    """bob is removed from a space; alice then posts. Returns what bob's old keys make of
    the stored ciphertext of that post."""
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    space = await alice.space.create_channel(f"{policy} room", history_policy=policy)
    bobs = await bob.space.join_channel(f"{policy} room")
    await alice.space.remove_member(space.id, "bob")
    await space.send_message("after bob left")
    envelope = stored_envelopes(server, space.id)[-1]
    assert bobs.keyring is not None
    key = bobs.keyring.key(envelope.epoch)  # KeyUnavailableError: no key for this epoch
    message = open_envelope(envelope, key, alice.identity.public("alice").signing_public_key())
    return str(message.body)


async def test_limit_a_static_space_cannot_cut_off_a_removed_member(
    relay: RunningServer, connect: Connect, figures: Figures
) -> None:
    assert await removed_member_reads(relay, connect, "static") == "after bob left"
    figures.add("limits.pinned")


async def test_a_rotate_space_cuts_off_a_removed_member(
    relay: RunningServer, connect: Connect
) -> None:
    with pytest.raises(KeyUnavailableError):
        await removed_member_reads(relay, connect, "rotate")


async def test_limit_the_relay_sees_routing_metadata(
    relay: RunningServer, connect: Connect, figures: Figures
) -> None:
    alice = await connect(relay, "alice")
    space = await alice.space.create_channel("general")
    short = await space.send_message("x" * 10, channel="plans", content_type="text/plain")
    long = await space.send_message("x" * 1010, channel="plans", content_type="text/plain")
    stored = {e.ciphertext: e for e in stored_envelopes(relay, space.id)}
    first, second = stored.values()
    state = space.core.require_state()
    assert (first.source, first.target, first.subject, first.content_type, first.epoch) == (
        "alice", space.id, "plans", "text/plain", 0
    )  # fmt: skip
    assert (first.head_seq, first.head) == (state.head_seq, state.head)  # which state
    assert len(second.ciphertext) - len(first.ciphertext) == 1000  # sizes are not padded
    assert long > short  # handles are the relay's microsecond clock: when each was sent
    figures.add("limits.pinned")


async def test_limit_a_data_dir_opens_the_keepers_channels_but_no_other_space(
    start_relay: StartRelay, connect: Connect, figures: Figures
) -> None:
    server = await start_relay()
    alice = await connect(server, "alice")
    channel = await alice.space.create_channel("general")
    await channel.send_message("read by whoever holds the data dir")
    unnamed = await alice.space.create_space()
    await unnamed.send_message("closed to the data dir")
    await server.stop()

    keeper = load_or_create_identity(server.data_dir / KEEPER_KEY_FILE)
    storage = SQLiteStorage.in_dir(server.data_dir)
    try:
        (wrapped,) = storage.keys_for(channel.id, server.keeper_username)
        signer = alice.identity.public("alice").signing_public_key()  # published, public
        group_key = unwrap_group_key(wrapped, keeper, signer)
        (envelope,) = [i.envelope for i in storage.history(channel.id, None, 10)[0]]
        assert open_envelope(envelope, group_key, signer).body == (
            "read by whoever holds the data dir"
        )
        assert storage.keys_for(unnamed.id, server.keeper_username) == []
    finally:
        storage.close()
    figures.add("limits.pinned")


async def test_replay_detection_lasts_across_restarts(
    relay: RunningServer, connect: Connect, mitm: Any, tmp_path: Path, figures: Figures
) -> None:
    """Within a session a client refuses a message whose sequence number it has seen
    (test_verification.py). A client with a directory keystore keeps the newest
    ``(handle, seq)`` of each sender session (its replay marks) across a restart, so a relay
    that re-serves an old genuine message at a new handle to the restarted client has it
    refused; a genuine new message still arrives. (Version 1 accepted it as new.)"""
    proxy = await mitm(relay.url)
    alice = await connect(relay, "alice")
    general = await alice.space.create_channel("general")
    for session in range(2):
        bob = await aio.connect(proxy.url, app_key=relay.app_key, username="bob",
                                keystore=tmp_path / "bob")  # fmt: skip
        try:
            space = await bob.space.join_channel("general")
            inbox, rejected = Inbox(), Inbox()
            space.on_message(inbox)
            space.on_rejected(rejected)
            if session == 0:
                await general.send_message("sent once")
                (message,) = await inbox.wait(1)
                assert message.message.body == "sent once"
                continue
            old = next(f for f in proxy.seen if f.get("ev") == "message")
            await proxy.inject({**old, "handle": old["handle"] + 10**6})
            (refused,) = await rejected.wait(1)
            assert (refused.sender, refused.handle) == ("alice", old["handle"] + 10**6)
            assert "replayed" in refused.reason, refused.reason
            handle = await general.send_message("sent after the restart")
            (message,) = await inbox.wait(1)
            assert (message.handle, message.message.body) == (handle, "sent after the restart")
        finally:
            await bob.close()
    figures.add("limits.fixed_in_v2")


async def test_removal_is_a_ban_in_every_space(
    relay: RunningServer, connect: Connect, figures: Figures
) -> None:
    """A ``remove`` event bans, in a public channel too: the removed member cannot join
    it again, nor redeem the link it came in by, and a viewer cannot invite it back; an
    editor (or the owner) can, and then it joins and the keeper admits it with the current
    key only. (Version 1 let a removed member simply join a public channel again.)"""
    alice, bob = await connect(relay, "alice"), await connect(relay, "bob")
    carol, dave = await connect(relay, "carol"), await connect(relay, "dave")
    space = await alice.space.create_channel("open door", history_policy="rotate")
    link = await alice.space.create_invite_link(space.id)
    assert link.token is not None
    await bob.space.join_by_invite(space.id, link.token)
    carols = await carol.space.join_channel("open door")
    await dave.space.join_channel("open door")
    await alice.space.set_member_role(space.id, "dave", "editor")
    await alice.space.remove_member(space.id, "bob")  # bans bob, rotates to epoch 1
    with pytest.raises(PermissionDeniedError, match="removed"):
        await bob.space.join_channel("open door")
    with pytest.raises(PermissionDeniedError, match="removed"):
        await bob.space.join_by_invite(space.id, link.token)
    with pytest.raises(PermissionDeniedError, match="removed"):
        await carols.invite("bob")  # a viewer
    state = await alice.space.state_log(space.id)
    assert "bob" not in {m.member_id for m in await alice.space.members(space.id)}
    davids = dave.live_space(space.id)
    assert davids is not None
    await davids.invite("bob")  # an editor lifts the ban
    again = await bob.space.join_channel("open door")
    assert again.keyring is not None and again.keyring.has(1)
    assert [e.kind for e in state][-2:] == ["remove", "epoch"]
    figures.add("limits.fixed_in_v2")


async def test_keys_come_from_the_log_not_from_the_relay(
    start_relay: StartRelay, connect: Connect, mitm: Any, figures: Figures
) -> None:
    """A member's keys are those of its own signed ``add`` event (or genesis), pinned on
    first sight; the relay's ``user_keys`` answers and ``join_request`` events are not
    believed. Here a relay serves alice a false key for bob: the lie is caught against
    the pin (:class:`IdentityChangedError`), the pinned fingerprint stays bob's real one, a
    message signed with the false key in bob's name is rejected, a join request naming the
    false key gets the group key wrapped to bob's real key only, and one for a user the
    log does not have gets nothing. (Version 1 trusted the relay's directory: a member
    wrapped the group key to whatever key a join request carried.)"""
    admitted: list[frames.Admit] = []
    spying: list[bool] = []  # the admits from the forged join requests on, not bob's own
    admit = REQUEST_TABLE["admit"].handler

    def spy(core: Any, session: Any, request: frames.Admit) -> Any:
        if spying:
            admitted.append(request)
        return admit(core, session, request)

    relay = await start_relay(table=with_handler("admit", spy))
    proxy = await mitm(relay.url)
    alice = await connect(relay, "alice", url=proxy.url)
    bob = await connect(relay, "bob")
    space = await alice.space.create_space()  # no keeper: online members admit
    messages, rejected = Inbox(), Inbox()
    space.on_message(messages)
    space.on_rejected(rejected)
    bobs = await bob.space.join_space(space.id)
    await bobs.send_message("hi from bob")
    await messages.wait(1)
    assert await alice.fingerprint_of("bob") == bob.fingerprint  # pinned from bob's add

    impostor = IdentityKeys.generate()

    def lie(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("t") == "res" and "users" in frame.get("result", {}):
            for entry in frame["result"]["users"]:
                entry.update(signing_key=impostor.signing_key, ecdh_key=impostor.ecdh_key)
        return frame

    proxy.rewrite = lie
    with pytest.raises(IdentityChangedError):
        await alice.identities(["bob"])
    assert await alice.fingerprint_of("bob") == bob.fingerprint
    await alice.verify_identity("bob", bob.fingerprint)

    state = space.core.require_state()
    assert space.keyring is not None
    forged = forged_envelope(impostor, space.keyring.key(0), state, "not bob", source="bob")
    await proxy.inject({"t": "evt", "ev": "message", "handle": 2**52, "envelope": forged})
    (refused,) = await rejected.wait(1)
    assert refused.sender == "bob"

    spying.append(True)
    for name in ("eve", "bob"):
        request = frames.JoinRequested(
            space.id, name, impostor.signing_key, impostor.ecdh_key, "viewer"
        )
        await proxy.inject(event_json(request))
    await rejected.wait(2)  # eve is not in the log
    assert rejected.items[1].sender == "eve"
    await wait_until(lambda: bool(admitted))
    (wrapped,) = admitted[0].keys
    signer = alice.identity.public("alice").signing_public_key()
    assert wrapped.recipient == "bob"
    assert unwrap_group_key(wrapped, bob.identity, signer) == space.keyring.key(0)
    with pytest.raises(IntegrityError):
        unwrap_group_key(wrapped, impostor, signer)
    assert [m.message.body for m in messages.items] == ["hi from bob"]
    figures.add("limits.fixed_in_v2")


async def test_limit_a_removed_member_keeps_its_shard_ticket_until_it_expires(
    start_relay: StartRelay, figures: Figures
) -> None:
    """Shard stores check a ticket's signature and expiry, not the space's log: a member
    who got a ticket before its removal can still upload shares of that space for the
    rest of the ticket's ten minutes (ciphertext only; a new ticket is refused at once)."""
    server = await start_relay(shards=1, shards_needed=1)
    owner, bob = await user(server, "owner"), await user(server, "bob")
    info, _ = await owner.create_space(name="room")
    await bob.join(info.space_id)
    ticket = await bob.call(frames.ShardTicket, space_id=info.space_id)
    await owner.remove(info.space_id, "bob")
    with pytest.raises(PermissionDeniedError):
        await bob.call(frames.ShardTicket, space_id=info.space_id)
    data = crypto.random_bytes(1000)
    store = await ShardLink.open(server.shard_urls[0], timeout=15)
    try:
        await store.put(space_id=info.space_id, ticket=ticket.ticket, name=share_name(data),
                        data=data)  # fmt: skip
        assert await store.get(share_name(data)) == data
    finally:
        await store.close()
    await owner.close()
    await bob.close()
    figures.add("limits.pinned")
