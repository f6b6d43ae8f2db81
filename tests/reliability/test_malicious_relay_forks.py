"""A malicious relay that hides a state event, forks the log between members, or shows a
newcomer a log its checkpoint does not cover (forged checkpoints, events slipped under
one, the operator's own keeper checkpoint over a made-up past): detected, reported and
refused, across restarts too. The attacks of issue 12 are split by family: see
:mod:`tests.reliability.malicious`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.exceptions import ForkError, IntegrityError
from spacenb.protocol import frames
from spacenb.protocol.member import Rejected
from spacenb.protocol.statelog import SpaceState
from spacenb.server.app import RunningServer
from spacenb.server.limits import Limits

from .conftest import Connect, DirClient, StartRelay
from .evil import EvilRelay, forge_event, keeper_identity
from .helpers import wait_until
from .malicious import (
    GHOST,
    IMPOSTOR,
    _add_body,
    bodies,
    channel_with_members,
    reported,
    stored,
    watch,
)

pytestmark = pytest.mark.timeout(90)


async def test_a_hidden_state_event_is_reported_not_silently_ignored(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """The relay hides alice's newest state event from bob (neither pushed nor served):
    alice's messages bound to it are reported as withheld or forked and not delivered.
    Once the relay serves the event, bob verifies and delivers her next messages."""
    alice = await connect(server, "alice", evil.url)
    bob = await connect(server, "bob", evil.url)
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    a_msgs, _ = watch(a)
    b_msgs, b_rej = watch(b)
    hidden_at = a.core.require_state().head_seq + 1
    evil.fork_log(a.id, "bob", hidden_at, [])
    await alice.space.set_member_role(a.id, "bob", "editor")
    assert a.core.require_state().head_seq == hidden_at
    await a.send_message("bound to the hidden event")
    why = await reported(b_rej, "withheld or forked", sender="alice")
    assert why.handle is not None
    assert b.core.require_state().head_seq == hidden_at - 1
    assert b.core.require_state().role_of("bob") == "viewer"
    await b.send_message("bob, on the older head")  # a head alice shares: delivered
    await wait_until(lambda: any(m.sender == "bob" for m in a_msgs.items))

    evil.reset()
    await a.send_message("after the relay gave in")
    await wait_until(lambda: bool(b_msgs.items) and b_msgs.items[-1].sender == "alice")
    assert [m.message.body for m in b_msgs.items if m.sender == "alice"] == [
        "after the relay gave in"
    ]
    assert b.core.require_state().role_of("bob") == "editor"


async def test_a_forked_log_is_detected_by_both_sides_and_across_restarts(
    server: RunningServer, evil: EvilRelay, dir_client: DirClient
) -> None:
    """At seq N the relay shows alice her own event and bob his (it answers bob's append
    itself and keeps the real event from him). Each side's messages are bound to its own
    event N, so neither verifies for the other: both report a fork, nothing is delivered.
    Shown the other event N in the same session, bob reports it; and after a restart
    (directory keystores), bob served the real log and alice served bob's event both raise
    ForkError."""
    alice = await dir_client(server, "alice", evil.url)
    bob = await dir_client(server, "bob", evil.url)
    await dir_client(server, "dave")  # whom bob invites
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    a_msgs, a_rej = watch(a)
    b_msgs, b_rej = watch(b)
    fork_at = b.core.require_state().head_seq + 1
    bobs_view: list[Any] = []
    evil.fork_log(a.id, "bob", fork_at, bobs_view)

    def accept(conn: Any, req: frames.Append) -> frames.AppendResult:
        bobs_view.append(req.event)
        return frames.AppendResult(req.event.seq)

    evil.answer(frames.Append, accept, user="bob")
    fake_handles = iter(range(2**52, 2**53))

    async def deliver_to_alice(conn: Any, req: frames.Send) -> frames.HandleResult:
        handle = next(fake_handles)
        await evil.inject(frames.MessagePushed(handle, req.envelope), to="alice")
        return frames.HandleResult(handle)

    evil.answer(frames.Send, deliver_to_alice, user="bob")

    await b.invite("dave")  # bob's event N, accepted by the proxy alone
    await alice.space.set_member_role(a.id, "bob", "editor")  # alice's event N, real
    theirs, ours = b.core.require_state(), a.core.require_state()
    assert theirs.head_seq == ours.head_seq == fork_at
    assert theirs.head != ours.head
    assert theirs.events[-1].kind == "invite" and ours.events[-1].kind == "role"

    await a.send_message("from alice")
    await b.send_message("from bob")
    why_b = await reported(b_rej, "fork", sender="alice")
    why_a = await reported(a_rej, "fork", sender="bob")
    assert why_a.handle is not None and why_b.handle is not None
    assert bodies(b_msgs) == [] and [m.sender for m in a_msgs.items] == ["alice"]

    await evil.inject(frames.StatePushed(a.id, ours.events[-1]), to="bob")
    await reported(b_rej, "differs from the one verified before", sender="relay")
    assert b.core.require_state().head == theirs.head

    await alice.close()
    await bob.close()
    evil.reset()
    # bob, restarted, now served the real log (where alice's event is N):
    bob = await dir_client(server, "bob")
    with pytest.raises(ForkError):
        await bob.space.join_channel("general")
    # alice, restarted, served bob's event N by a relay that now forks her instead:
    evil.fork_log(a.id, "alice", fork_at, list(bobs_view))
    alice = await dir_client(server, "alice", evil.url)
    with pytest.raises(ForkError):
        await alice.space.join_channel("general")


def _checkpoint_forgeries() -> dict[str, tuple[str, Callable[[list[Any]], list[Any]]]]:
    """name -> (what the newcomer's error says, rewrite(real log) -> the log served).
    The real log: genesis, three adds, the keeper's checkpoint (seq 4), one more add."""

    def impostor(log: list[Any]) -> list[Any]:
        forged = IMPOSTOR.sign(log[4].signed_bytes())  # the keeper's checkpoint, re-signed
        return [*log[:4], dataclasses.replace(log[4], signature=forged)]

    def by_a_member(log: list[Any]) -> list[Any]:
        state = SpaceState.from_events(log)
        return [*log, forge_event(IMPOSTOR, state, "checkpoint", {}, actor="user0")]

    def ghost_under(log: list[Any], relink: bool) -> list[Any]:
        before = SpaceState.from_events(log[:2])
        ghost = forge_event(GHOST, before, "add", _add_body("ghost", GHOST, "open"), actor="ghost")
        forged = [*log[:2], ghost, *log[3:]]
        for i in range(3, len(forged) if relink else 3):
            forged[i] = dataclasses.replace(forged[i], prev=forged[i - 1].hash())
        return forged

    return {
        "checkpoint-by-an-impostor": ("does not verify", impostor),
        "checkpoint-by-a-member": ("no entitled member could sign", by_a_member),
        "event-under-the-checkpoint-relinked": ("does not verify",
                                                lambda log: ghost_under(log, True)),
        "event-under-the-checkpoint": ("hash of the event before it",
                                       lambda log: ghost_under(log, False)),
    }  # fmt: skip


CHECKPOINT_FORGERIES = _checkpoint_forgeries()


@pytest.mark.parametrize("name", sorted(CHECKPOINT_FORGERIES))
async def test_a_newcomer_refuses_a_log_its_checkpoint_does_not_cover(
    start_relay: StartRelay, connect: Connect, name: str
) -> None:
    """The keeper checkpoints every 3 events; a newcomer then checks the signature of the
    checkpoint only, not of the events under it. The relay serves it a forged checkpoint,
    a checkpoint by a member who may not sign one, or a made-up add under the real
    checkpoint (with the chain after it re-linked, or not): each is refused before the
    newcomer signs anything on it, and the honest log then lets it in."""
    words, rewrite = CHECKPOINT_FORGERIES[name]
    server = await start_relay(limits=Limits(checkpoint_every=3))
    evil = await EvilRelay(server.url).start()
    try:
        a, _, real = await channel_with_members(server, connect, 4, head=5)  # a checkpoint
        assert [e.kind for e in real] == ["genesis", "add", "add", "add", "checkpoint", "add"]
        served = rewrite(real)

        def serve(conn: Any, req: Any, page: frames.StateLogPage) -> frames.StateLogPage:
            events = tuple(e for e in served if e.seq >= req.since)
            return frames.StateLogPage(events, served[-1].seq)

        evil.rewrite_result(frames.GetStateLog, serve, user="erin")
        erin = await connect(server, "erin", evil.url)
        with pytest.raises(IntegrityError, match=words):
            await erin.space.join_channel("general")
        assert evil.requests(frames.Join, user="erin") == []
        assert "erin" not in [m.member_id for m in await a.client.space.members(a.id)]
        evil.reset()
        e = await erin.space.join_channel("general")
        assert e.core.require_state().events[: len(real)] == real
        assert "ghost" not in e.core.require_state().members
    finally:
        await evil.stop()


async def _served_to_erin(
    server: RunningServer, connect: Connect, served: list[Any]
) -> tuple[EvilRelay, aio.AsyncSpace]:
    """A proxy that serves ``erin`` the log ``served``, and erin's handle on the space,
    read from scratch through it (a newcomer: she holds none of the log)."""
    evil = await EvilRelay(server.url).start()

    def serve(conn: Any, req: Any, page: frames.StateLogPage) -> frames.StateLogPage:
        events = tuple(e for e in served if e.seq >= req.since)
        return frames.StateLogPage(events, served[-1].seq)

    evil.rewrite_result(frames.GetStateLog, serve, user="erin")
    erin = await connect(server, "erin", evil.url)
    return evil, await erin.space.get(served[0].space_id)


@pytest.mark.parametrize("kind", ["role", "remove"])
async def test_a_governance_event_under_the_keepers_own_checkpoint_is_refused(
    start_relay: StartRelay, connect: Connect, kind: str
) -> None:
    """The operator takes the relay's own keeper.key and signs, over the real log, an
    event in the owner's name (making user0 an editor, or removing user1) and a keeper
    checkpoint on top. A newcomer verifies every event but the adds under a keeper
    checkpoint: the log is refused and nothing is believed; the honest log is read."""
    server = await start_relay()
    _, _, real = await channel_with_members(server, connect, 3)
    state = SpaceState.from_events(real)
    keeper = keeper_identity(server.data_dir)
    assert state.keeper is not None
    body = {"member": "user0", "role": "editor"} if kind == "role" else {"member": "user1"}
    forged = forge_event(keeper, state, kind, body, actor="alice")
    state.apply(forged, verify=False)
    checkpoint = forge_event(keeper, state, "checkpoint", {}, actor=state.keeper)
    state.check(checkpoint)  # genuinely the keeper's signature
    evil, e = await _served_to_erin(server, connect, [*real, forged, checkpoint])
    try:
        with pytest.raises(IntegrityError, match="does not verify"):
            await e.sync_log()
        assert e.core.state is None
        evil.reset()
        await e.sync_log()
        assert e.core.require_state().events == real
    finally:
        await evil.stop()


async def test_a_fake_add_under_the_keepers_own_checkpoint_is_a_fork(
    start_relay: StartRelay, connect: Connect
) -> None:
    """The keeper's checkpoint stands for the adds under it, so the operator, with
    keeper.key, can show a newcomer a made-up past of adds: here the real log up to
    user1, then an add of user2 that user2 never signed, then its own checkpoint. The
    newcomer's read verifies, but it holds a fork: alice's message, bound to the real
    head, is refused as one, and the real log, once served (and past the fork's head),
    raises ForkError."""
    server = await start_relay()
    a, (*_, user2), real = await channel_with_members(server, connect, 3)
    assert real[3].kind == "add" and real[3].actor == "user2"
    await a.send_message("bound to the real head")
    await wait_until(lambda: len(stored(server, a.id)) == 1)
    (message,) = stored(server, a.id)
    assert message.envelope.head_seq == 3 and message.envelope.head == real[3].hash()

    before = SpaceState.from_events(real[:3])
    body = _add_body("user2", user2.identity, "open")
    fake = forge_event(IMPOSTOR, before, "add", body, actor="user2")  # not user2's signature
    before.apply(fake, verify=False)
    assert before.keeper is not None
    keeper = keeper_identity(server.data_dir)
    checkpoint = forge_event(keeper, before, "checkpoint", {}, actor=before.keeper)
    evil, e = await _served_to_erin(server, connect, [*real[:3], fake, checkpoint])
    try:
        await e.sync_log()  # the fake add is attested by the keeper's checkpoint
        held = e.core.require_state()
        assert held.head == checkpoint.hash() and held.hash_at(3) == fake.hash()
        verdict = e.core.open_message(message.envelope, message.handle)
        assert isinstance(verdict, Rejected) and "a fork" in verdict.reason
        for i in (3, 4):  # the real log grows past the fork's head (seq 4)
            await (await connect(server, f"user{i}")).space.join_channel("general")
        await wait_until(lambda: a.core.require_state().head_seq == 5)
        evil.reset()
        with pytest.raises(ForkError, match="does not follow the head"):
            await e.sync_log()
        assert e.core.require_state().head == checkpoint.hash()
    finally:
        await evil.stop()
