"""A malicious relay whose operator holds the keeper's key (keeper.key, in the data
directory) uses it on a space the keeper was never admitted to: forged keeper epochs and
keeper-wrapped keys are refused and reported, and the members keep the real key.
The attacks of issue 12 are split by family: see :mod:`tests.reliability.malicious`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.exceptions import IntegrityError
from spacenb.protocol import frames
from spacenb.protocol.envelope import open_envelope
from spacenb.protocol.keyring import HistoryPolicy
from spacenb.protocol.keys import IdentityKeys, decode_public_key
from spacenb.protocol.statelog import key_commitment
from spacenb.protocol.wrap import wrap_group_key
from spacenb.server.app import RunningServer

from .conftest import Connect
from .evil import EvilRelay, forge_event, keeper_identity
from .helpers import Inbox, wait_until
from .malicious import bodies, reported, signer_of, stored, watch, wrap_as

pytestmark = pytest.mark.timeout(90)


async def admit_on_request(space: aio.AsyncSpace) -> None:
    """Make ``space``'s owner admit by hand whoever asks (a manual-admit space)."""

    async def admit(request: Any) -> None:
        await space.admit(request.member_id, request.identity_ecdh_pub)

    space.on_join_request(admit)


async def _gated_space(
    kind: str, policy: HistoryPolicy, alice: aio.AsyncClient, bob: aio.AsyncClient
) -> tuple[aio.AsyncSpace, aio.AsyncSpace]:
    """alice's space the keeper was never admitted to, with bob a member."""
    if kind == "space":
        a = await alice.space.create_space(history_policy=policy)
        b = await bob.space.join_space(a.id)  # alice, online, admits him
    else:
        a = await alice.space.create_channel("gated", history_policy=policy, auto_admit=False)
        await admit_on_request(a)
        b = await bob.space.join_channel("gated")
    assert a.state is not None and a.state.keeper is None
    return a, b


@pytest.mark.parametrize("policy", ["static", "rotate"])
@pytest.mark.parametrize("kind", ["space", "manual-channel"])
async def test_keeper_key_cannot_take_over_a_space_it_was_never_admitted_to(
    server: RunningServer, evil: EvilRelay, connect: Connect, kind: str, policy: HistoryPolicy
) -> None:
    """The relay holds keeper.key and pushes a keeper-signed epoch event plus keeper-wrapped
    keys of its own: both members refuse both and keep sealing under the real key."""
    alice = await connect(server, "alice", evil.url)
    bob = await connect(server, "bob", evil.url)
    a, b = await _gated_space(kind, policy, alice, bob)
    a_msgs, a_rej = watch(a)
    b_msgs, b_rej = watch(b)
    keeper = keeper_identity(server.data_dir)
    assert keeper.signing_key == (await alice.identities(["keeper"]))["keeper"].signing_key

    attacker_key = os.urandom(32)
    state = a.core.require_state()
    epoch = state.epoch + 1
    forged = forge_event(
        keeper,
        state,
        "epoch",
        {
            "epoch": epoch,
            "recipients": ["alice", "bob", "keeper"],
            "key_commitment": key_commitment(a.id, epoch, attacker_key),
        },
        actor="keeper",
    )
    await evil.inject(frames.StatePushed(a.id, forged))
    for who, space in (("alice", a), ("bob", b)):
        keys = tuple(wrap_as("keeper", keeper, attacker_key, space, e, who) for e in (0, epoch))
        await evil.inject(frames.KeysPushed(a.id, keys), to=who)

    for rejected in (a_rej, b_rej):
        await reported(rejected, "no entitled member could sign", sender="relay")
        await reported(rejected, "key refused", sender="keeper")
    for space in (a, b):
        assert space.core.require_state().epoch == epoch - 1
        assert space.core.require_state().head == state.head
        assert space.keyring is not None and not space.keyring.has(epoch)
        assert space.keyring.key(0) != attacker_key

    await a.send_message("after the attack")
    await b.send_message("bob too")
    await wait_until(lambda: len(b_msgs.items) >= 2 and len(a_msgs.items) >= 2)
    assert bodies(b_msgs) == bodies(a_msgs) == ["after the attack", "bob too"]
    assert a.keyring is not None
    for item in stored(server, a.id):
        assert item.envelope.epoch == epoch - 1
        signer = signer_of(a, item.envelope.source)
        with pytest.raises(IntegrityError):
            open_envelope(item.envelope, attacker_key, signer)
        open_envelope(item.envelope, a.keyring.key(item.envelope.epoch), signer)

    if policy == "rotate":  # a real rotation still works afterwards
        assert await a.rotate() == epoch
        await wait_until(lambda: b.keyring is not None and b.keyring.has(epoch))
        await a.send_message("real epoch")
        await wait_until(lambda: len(b_msgs.items) >= 3)
        assert bodies(b_msgs)[-1] == "real epoch"
        assert b.keyring is not None and b.keyring.key(epoch) != attacker_key


async def test_a_keeper_epoch_served_in_every_log_answer_is_reported_not_adopted(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """The same forgery, but the relay also keeps serving the keeper's epoch event at the
    head of every log answer (and with every key fetch the keeper-wrapped key): each time
    the client looks it reports the event, never adopts the key, and raises only where it
    was asked to sync; in the background nothing fails and the members go on talking."""
    alice = await connect(server, "alice", evil.url)
    bob = await connect(server, "bob", evil.url)
    a, b = await _gated_space("space", "rotate", alice, bob)
    a_msgs, a_rej = watch(a)
    b_msgs, b_rej = watch(b)
    keeper = keeper_identity(server.data_dir)
    attacker_key = os.urandom(32)
    state = a.core.require_state()
    forged = forge_event(
        keeper,
        state,
        "epoch",
        {
            "epoch": 1,
            "recipients": ["alice", "bob", "keeper"],
            "key_commitment": key_commitment(a.id, 1, attacker_key),
        },
        actor="keeper",
    )

    def serve(conn: Any, req: Any, page: frames.StateLogPage) -> frames.StateLogPage:
        extra = (forged,) if req.since <= forged.seq else ()
        return frames.StateLogPage(page.events + extra, forged.seq)

    def offer(conn: Any, req: Any, result: frames.KeysResult) -> frames.KeysResult:
        space = a if conn.username == "alice" else b
        return frames.KeysResult(
            (*result.keys, wrap_as("keeper", keeper, attacker_key, space, 1, conn.username))
        )

    evil.rewrite_result(frames.GetStateLog, serve)
    evil.rewrite_result(frames.FetchKeys, offer)
    await evil.inject(frames.StatePushed(a.id, forged))
    for who, space in (("alice", a), ("bob", b)):
        key = wrap_as("keeper", keeper, attacker_key, space, 1, who)
        await evil.inject(frames.KeysPushed(a.id, (key,)), to=who)
    ghost = IdentityKeys.generate()
    await evil.inject(
        frames.JoinRequested(a.id, "ghost", ghost.signing_key, ghost.ecdh_key, "viewer")
    )
    for rejected in (a_rej, b_rej):
        await reported(rejected, "no entitled member could sign", sender="relay")
    with pytest.raises(IntegrityError, match="no entitled member could sign"):
        await bob.space.members(b.id)
    await a.send_message("still sealed under epoch 0")
    await wait_until(lambda: bool(b_msgs.items) and bool(a_msgs.items))
    assert bodies(b_msgs) == ["still sealed under epoch 0"]
    for space in (a, b):
        assert space.keyring is not None and space.keyring.epochs == [0]
        assert space.core.require_state().head == state.head
    assert [item.envelope.epoch for item in stored(server, a.id)] == [0]


@pytest.mark.parametrize("kind", ["space", "channel"])
async def test_newcomer_to_a_manual_admit_space_refuses_a_keeper_wrapped_key(
    server: RunningServer, evil: EvilRelay, connect: Connect, kind: str
) -> None:
    """Joining a manual-admit static space, bob is offered an epoch-0 key wrapped by the
    keeper (with the relay's key inside): refused in the join answer, in key fetches and
    pushed; he waits until alice really admits him, then holds the real key."""
    alice = await connect(server, "alice")
    bob = await connect(server, "bob", evil.url)
    if kind == "space":
        a = await alice.space.create_space(auto_admit=False)
    else:
        a = await alice.space.create_channel("gated", auto_admit=False)
    await a.send_message("history")
    keeper = keeper_identity(server.data_dir)
    attacker_key = os.urandom(32)
    bogus = wrap_group_key(
        attacker_key,
        space_id=a.id,
        epoch=0,
        recipient="bob",
        recipient_ecdh=decode_public_key(bob.identity.ecdh_key, "dh"),
        wrapper="keeper",
        wrapper_identity=keeper,
    )
    release = asyncio.Event()

    async def offer(conn: Any, req: Any, result: frames.JoinResult) -> frames.JoinResult:
        await release.wait()  # until the test watches bob's space
        return frames.JoinResult(result.space, result.role, (bogus, *result.keys), False)

    evil.rewrite_result(frames.Join, offer, user="bob")
    evil.rewrite_result(
        frames.FetchKeys, lambda c, q, r: frames.KeysResult((bogus, *r.keys)), user="bob"
    )
    joining = asyncio.create_task(bob.space.join_space(a.id, timeout=60))
    await wait_until(lambda: bob.live_space(a.id) is not None)
    b_rej = Inbox()
    watched = bob.live_space(a.id)
    assert watched is not None
    watched.on_rejected(b_rej)
    release.set()
    why = await reported(b_rej, "key refused", "keeper", sender="keeper")
    assert "may not hand out" in why.reason
    assert not joining.done()  # still waiting: the bogus key admitted nobody
    await evil.inject(frames.KeysPushed(a.id, (bogus,)), to="bob")

    await a.admit("bob", bob.identity.ecdh_key)  # the owner admits by hand
    b = await joining
    assert a.keyring is not None and b.keyring is not None
    assert b.keyring.key(0) == a.keyring.key(0) != attacker_key
    history = await b.history()
    assert [m.message.body for m in history.messages] == ["history"]
    b_msgs, _ = watch(b)
    await a.send_message("welcome")
    await wait_until(lambda: bool(b_msgs.items))
    assert bodies(b_msgs) == ["welcome"]
    assert all(r.sender == "keeper" for r in b_rej.items)
