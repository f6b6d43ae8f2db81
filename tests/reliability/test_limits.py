"""What spacenb does *not* protect, pinned so RELIABILITY.md's threat model stays honest
(each next to the guarantee it is the limit of).

- A removed member of a ``static`` space keeps the one key: given the ciphertext (from
  the relay, or anyone storing it), it still reads what is sent after its removal. In a
  ``rotate`` space the removal rotates the key and it cannot.
- The relay sees the routing metadata of every envelope: who, which space and channel,
  content type, epoch, when (the handle is a timestamp) and how big.
- Removal from a public channel is not a ban: anyone signed in may join it again.
- Replay detection lasts one client session: a client that restarts accepts an old
  genuine message the relay delivers again.
- The relay is the directory of public keys: a member that admits whoever a join
  request names wraps the group key for the relay if the relay lies about the key.
- A data directory holds the keeper's identity key and the keys wrapped to the keeper: who
  has the directory can read every channel the keeper belongs to. Spaces the keeper is not
  in (unnamed spaces, channels created without it) stay closed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.exceptions import KeyUnavailableError
from spacenb.protocol import frames
from spacenb.protocol.envelope import Envelope, open_envelope
from spacenb.protocol.keyring import HistoryPolicy
from spacenb.protocol.keys import IdentityKeys
from spacenb.protocol.wrap import unwrap_group_key
from spacenb.server.app import KEEPER_KEY_FILE, RunningServer, load_or_create_identity
from spacenb.server.handlers import HANDLERS
from spacenb.server.sqlite import SQLiteStorage

from .conftest import Connect, Figures, StartRelay
from .helpers import Inbox, event_json, wait_until


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
    assert (first.source, first.target, first.subject, first.content_type, first.epoch) == (
        "alice", space.id, "plans", "text/plain", 0
    )  # fmt: skip
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


async def test_limit_replay_detection_lasts_one_session(
    relay: RunningServer, connect: Connect, mitm: Any, tmp_path: Path, figures: Figures
) -> None:
    """Within a session a client refuses a message id it has seen (test_verification.py);
    a client that restarts has no memory of them, so a relay can deliver an old genuine
    message to it again, as new."""
    proxy = await mitm(relay.url)
    alice = await connect(relay, "alice")
    general = await alice.space.create_channel("general")
    delivered = []
    for session in range(2):
        bob = await aio.connect(proxy.url, app_key=relay.app_key, username="bob",
                                keystore=tmp_path / "bob")  # fmt: skip
        try:
            space = await bob.space.join_channel("general")
            inbox = Inbox()
            space.on_message(inbox)
            if session == 0:
                await general.send_message("sent once")
            else:
                old = next(f for f in proxy.seen if f.get("ev") == "message")
                await proxy.inject({**old, "handle": old["handle"] + 10**6})
            (message,) = await inbox.wait(1)
            delivered.append((message.message.id, message.message.body))
        finally:
            await bob.close()
    assert delivered[0] == delivered[1]  # the same message, delivered as new twice
    figures.add("limits.pinned")


async def test_limit_removal_from_a_public_channel_is_not_a_ban(
    relay: RunningServer, connect: Connect, figures: Figures
) -> None:
    """Anyone signed in may join a public channel, so a removed member may join it again
    and the keeper admits it (with the current key of a rotate channel). A private space
    keeps it out: test_authorisation.py::test_a_removed_member_is_an_outsider_at_once."""
    alice, bob = await connect(relay, "alice"), await connect(relay, "bob")
    space = await alice.space.create_channel("open door", history_policy="rotate")
    await bob.space.join_channel("open door")
    await alice.space.remove_member(space.id, "bob")
    again = await bob.space.join_channel("open door")
    assert again.keyring is not None and again.keyring.has(1)
    figures.add("limits.pinned")


async def test_limit_the_relay_is_the_key_directory(
    relay: RunningServer, connect: Connect, mitm: Any, monkeypatch: Any, figures: Figures
) -> None:
    """Users' public keys come from the relay (sign-up binds them there; join requests and
    ``user_keys`` hand them out). A member that admits whoever a join request names, with
    the key the request carries, wraps the group key for the relay if the relay lies.
    Here, in an unnamed space that admits automatically, a relay pushes a join request for
    a user it made up: the space's key reaches it. Comparing fingerprints out of band is
    the defence; spacenb shows them but does not enforce it."""
    proxy = await mitm(relay.url)
    alice = await connect(relay, "alice", url=proxy.url)
    space = await alice.space.create_space()  # no keeper: online members admit
    admitted: list[frames.Admit] = []
    admit = HANDLERS["admit"]

    def spy(relay_: Any, session: Any, request: frames.Admit) -> Any:
        admitted.append(request)
        return admit(relay_, session, request)

    monkeypatch.setitem(HANDLERS, "admit", spy)
    impostor = IdentityKeys.generate()
    lie = frames.JoinRequested(space.id, "eve", impostor.signing_key, impostor.ecdh_key, "viewer")
    await proxy.inject(event_json(lie))
    await wait_until(lambda: bool(admitted))
    (wrapped,) = admitted[0].keys
    signer = alice.identity.public("alice").signing_public_key()
    assert space.keyring is not None
    assert unwrap_group_key(wrapped, impostor, signer) == space.keyring.key(0)
    figures.add("limits.pinned")
