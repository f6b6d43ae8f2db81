"""A relay that serves a member a state-log head below the one it holds (PROTOCOL.md, "The
fork rule"; RELIABILITY.md, "The relay").

Real clients on loopback, behind :class:`~tests.reliability.evil.EvilRelay`. A relay that
keeps a member below its own head (in the same session, or after a restart, hiding a
removal and a rotation it saw) is a :class:`ForkError` once the client's
``log_lag_grace`` is over, reported through ``on_rejected``; meanwhile the member keeps its
own head. A relay that lags once and then serves the real head, as a relay of the service
that just took over after a failover may, raises nothing. A newcomer the relay put on a
longer fork is flagged at the first sync against the honest log: at once where the honest
log holds another event at a seq the newcomer holds, after the grace where the honest log
is a prefix of the fork.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.exceptions import ForkError, UsageError
from spacenb.protocol import frames
from spacenb.protocol.keys import IdentityKeys
from spacenb.protocol.statelog import SpaceState, StateEvent
from spacenb.server.app import RunningServer
from tests.server.relays import notifications_held, relays

from .conftest import Connect, DirClient
from .evil import EvilRelay, forge_event, keeper_identity
from .helpers import Inbox, wait_until
from .malicious import channel_with_members

pytestmark = pytest.mark.timeout(120)

GRACE = 1.0  # the clients' log_lag_grace here (3 s by default)
IMPOSTOR = IdentityKeys.generate()  # a key the relay made up


# --------------------------------------------------------------------------- fixtures


class RolledBack:
    """Makes ``evil`` serve ``user`` the space's log only up to event ``head`` (in
    ``state_log`` answers and ``subscribe`` heads): for ``times`` answers, or for ever
    (None). Records when each lowered answer went out and what ``watch()`` said then."""

    def __init__(
        self,
        evil: EvilRelay,
        space_id: str,
        user: str,
        head: int,
        *,
        times: int | None = None,
        watch: Callable[[], Any] = lambda: None,
    ) -> None:
        self.head, self.times, self.watch = head, times, watch
        self.served: list[tuple[float, Any]] = []  # (loop time, watch()) per lowered answer

        def lower(conn: Any, req: frames.GetStateLog, page: frames.StateLogPage) -> Any:
            if req.space_id != space_id or not self._lowering():
                return page
            self.served.append((asyncio.get_running_loop().time(), self.watch()))
            return frames.StateLogPage(tuple(e for e in page.events if e.seq <= head), head)

        def subscribed(conn: Any, req: frames.Subscribe, result: frames.SubscribeResult) -> Any:
            if req.space_id != space_id or not self._lowering():
                return result
            return frames.SubscribeResult(result.peers, result.epoch, head)

        evil.rewrite_result(frames.GetStateLog, lower, user=user)
        evil.rewrite_result(frames.Subscribe, subscribed, user=user)

    def _lowering(self) -> bool:
        return self.times is None or len(self.served) < self.times


async def drop(evil: EvilRelay, user: str) -> None:
    """Close ``user``'s connections through the proxy (its client reconnects by itself,
    as it would to another relay of the service)."""
    for conn in list(evil.conns):
        if conn.username == user:
            await conn.down.close()


def from_relay(rejected: Inbox, *words: str) -> list[Any]:
    return [e for e in rejected.items if e.sender == "relay" and all(w in e.reason for w in words)]


def lagged(caplog: pytest.LogCaptureFixture) -> int:
    """How many syncs found the relay below the member's head (the client logs each)."""
    return sum("below event" in r.getMessage() for r in caplog.records)


def heads(space: aio.AsyncSpace) -> bytes:
    return space.core.require_state().head


def log_reads(evil: EvilRelay, user: str) -> int:
    return len(evil.requests(frames.GetStateLog, user=user))


# --------------------------------------------------------------------------- in session


async def test_a_relay_that_keeps_a_member_below_its_head_is_a_fork_after_the_grace(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """bob saw alice's newest event; after a reconnect the relay serves him the log
    without it, and keeps doing so. bob asks again with backoff, never below his own
    head, and once ``log_lag_grace`` is over reports a fork (no sooner); a direct sync
    then raises ForkError. His head is the one he verified all along."""
    alice = await connect(server, "alice")
    bob = await connect(server, "bob", evil.url)
    bob.log_lag_grace = GRACE
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    rejected = Inbox()
    b.on_rejected(rejected)
    await alice.space.set_member_role(a.id, "bob", "editor")
    held = a.core.require_state()
    await wait_until(lambda: b.core.require_state().head == held.head)

    roll = RolledBack(
        evil, a.id, "bob", held.head_seq - 1, watch=lambda: b.core.require_state().head
    )
    await drop(evil, "bob")
    await wait_until(lambda: bool(from_relay(rejected, "rolled this member back")), 30)
    reported_at = asyncio.get_running_loop().time()
    assert reported_at - roll.served[0][0] >= GRACE
    assert len(roll.served) >= 2  # asked again (at once, then with backoff)
    assert {head for _at, head in roll.served} == {held.head}  # never believed the lower one
    assert b.core.require_state().head == held.head
    assert b.core.require_state().role_of("bob") == "editor"

    asked = len(roll.served)
    with pytest.raises(ForkError, match="rolled this member back"):
        await b.sync_log()
    assert len(roll.served) >= asked + 2
    assert b.core.require_state().head == held.head


async def test_a_relay_that_lags_once_then_serves_the_real_head_raises_nothing(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """As after a failover to a relay whose cached head is behind: bob reconnects and is
    served a head below his own twice, then the real one. He waits it out, reports
    nothing, and goes on: alice's next message reaches him, his reaches her."""
    alice = await connect(server, "alice")
    bob = await connect(server, "bob", evil.url)
    bob.log_lag_grace = 10.0  # far more than the lag: no race on a loaded machine
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    a_msgs, b_msgs, rejected = Inbox(), Inbox(), Inbox()
    a.on_message(a_msgs)
    b.on_message(b_msgs)
    b.on_rejected(rejected)
    await alice.space.set_member_role(a.id, "bob", "editor")
    held = a.core.require_state()
    await wait_until(lambda: b.core.require_state().head == held.head)

    roll = RolledBack(
        evil, a.id, "bob", held.head_seq - 1, times=2, watch=lambda: b.core.require_state().head
    )
    reads = log_reads(evil, "bob")
    await drop(evil, "bob")
    await wait_until(lambda: log_reads(evil, "bob") >= reads + 3 and b.is_connected(), 30)
    await b.sync_log()  # the relay serves the real head now
    assert [head for _at, head in roll.served] == [held.head, held.head]

    await a.send_message("after the failover")
    await wait_until(lambda: any(m.message.body == "after the failover" for m in b_msgs.items))
    await b.send_message("bob is still here")
    await wait_until(lambda: any(m.message.body == "bob is still here" for m in a_msgs.items))
    assert from_relay(rejected) == []
    assert b.core.require_state().head == a.core.require_state().head


async def test_a_failover_to_a_relay_whose_cached_head_lags_raises_nothing(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two relays on one PostgreSQL database; relay B has the space cached and is deaf for
    a while (its notifications held back). alice, through A, makes bob an editor; bob, on
    A, holds that event. A stops: bob and alice move to B, whose cached head is one event
    behind theirs. They ask again until B hears of the event, report nothing, and go on:
    carol (on B) and bob exchange messages."""
    caplog.set_level(logging.INFO, logger="spacenb")
    async with relays(tmp_path, postgres_url) as (a, b):
        made: list[aio.AsyncClient] = []

        async def make(name: str, *urls: str) -> aio.AsyncClient:
            client = await aio.connect(
                list(urls),
                app_key=a.app_key,
                username=name,
                keystore=":memory:",
                log_lag_grace=30.0,  # B is deaf until the test lets it hear: no race
            )
            made.append(client)
            return client

        try:
            alice = await make("alice", a.url, b.url)
            bob = await make("bob", a.url, b.url)
            carol = await make("carol", b.url)
            general = await alice.space.create_channel("general")
            bobs = await bob.space.join_channel("general")
            carols = await carol.space.join_channel("general")  # B caches the space
            await wait_until(lambda: heads(bobs) == heads(general) == heads(carols))
            b_msgs, c_msgs, rejected = Inbox(), Inbox(), Inbox()
            bobs.on_message(b_msgs)
            carols.on_message(c_msgs)
            bobs.on_rejected(rejected)
            general.on_rejected(rejected)
            cluster = b.relay.cluster
            assert cluster is not None
            with notifications_held(cluster) as held:
                await alice.space.set_member_role(general.id, "bob", "editor")
                head = general.core.require_state()
                await wait_until(lambda: bobs.core.require_state().head == head.head)
                cached = b.relay.core.cached_state(general.id)
                assert cached is not None and cached.head_seq == head.head_seq - 1
                await a.stop()
                await wait_until(lambda: lagged(caplog) >= 2, 60)  # alice's and bob's syncs
                assert bobs.core.require_state().head == head.head  # its own, not B's
            for note in held:
                cluster._on_notification(note)
            await carols.send_message("from carol, on B")
            await wait_until(
                lambda: [m.message.body for m in b_msgs.items] == ["from carol, on B"], 60
            )
            await bobs.send_message("from bob, moved to B")
            await wait_until(
                lambda: "from bob, moved to B" in [m.message.body for m in c_msgs.items], 60
            )
            assert from_relay(rejected) == []
            assert bobs.core.require_state().role_of("bob") == "editor"
            assert bob.url == alice.url == b.url
        finally:
            for client in made:
                await client.close()


# --------------------------------------------------------------------------- across a restart


async def test_a_restarted_member_is_not_rolled_back_to_before_a_removal(
    server: RunningServer, evil: EvilRelay, dir_client: DirClient
) -> None:
    """bob saw alice remove carol from a rotate channel (a removal, then a rotation) and
    persisted that head. Restarted, he is served the log as it was before the removal:
    his read from scratch stays unsettled (no state, so carol is no member to him and the
    old epoch is not his to seal under) and ends in ForkError after the grace. Served
    the real log again, he reads it and holds the removal."""
    alice = await dir_client(server, "alice", log_lag_grace=GRACE)
    bob = await dir_client(server, "bob", evil.url, log_lag_grace=GRACE)
    a = await alice.space.create_channel("general", history_policy="rotate")
    b = await bob.space.join_channel("general")
    carol = await dir_client(server, "carol", log_lag_grace=GRACE)
    await carol.space.join_channel("general")
    before_removal = a.core.require_state().head_seq
    await alice.space.remove_member(a.id, "carol")
    held = a.core.require_state()
    assert [e.kind for e in held.events[before_removal + 1 :]] == ["remove", "epoch"]
    await wait_until(lambda: b.core.require_state().head == held.head)
    await bob.close()

    RolledBack(evil, a.id, "bob", before_removal)
    bob = await dir_client(server, "bob", evil.url, log_lag_grace=GRACE)
    b = await bob.space.get(a.id)
    rejected = Inbox()
    b.on_rejected(rejected)
    with pytest.raises(ForkError, match="rolled this member back"):
        await b.sync_log()
    assert b.core.state is None
    assert from_relay(rejected, f"below event {held.head_seq}")

    evil.reset()
    await b.sync_log()
    state = b.core.require_state()
    assert state.head == held.head and "carol" not in state.members
    assert state.epoch == held.epoch


# --------------------------------------------------------------------------- a newcomer's fork


def _ghost_add(state: SpaceState, name: str, signer: IdentityKeys) -> StateEvent:
    """An open ``add`` of ``name`` (with ``signer``'s keys) on ``state``'s head, signed by
    ``signer``: made up by the relay, not by the member it names."""
    ghost = IdentityKeys.generate()
    body = {
        "member": name,
        "signing_key": ghost.signing_key,
        "ecdh_key": ghost.ecdh_key,
        "role": "viewer",
        "via": "open",
        "link_id": None,
        "proof": None,
    }
    return forge_event(signer, state, "add", body, actor=name)


def _fork_of(real: list[StateEvent], shape: str, keeper: IdentityKeys) -> list[StateEvent]:
    """The log the relay shows the newcomer: real up to a point, then an add the relay
    made up and the keeper's checkpoint over it (which is what lets the newcomer read
    the made-up add without its signature). ``diverged``: the made-up add replaces the
    real log's last event; ``prefix``: the real log is a prefix of the fork."""
    kept = real[:-1] if shape == "diverged" else list(real)
    state = SpaceState.from_events(kept)
    name = real[-1].actor if shape == "diverged" else "ghost"
    made_up = _ghost_add(state, name, IMPOSTOR)
    state.apply(made_up, verify=False)
    assert state.keeper is not None
    checkpoint = forge_event(keeper, state, "checkpoint", {}, actor=state.keeper)
    state.check(checkpoint)  # genuinely the keeper's signature
    return [*kept, made_up, checkpoint]


@pytest.mark.parametrize("shape", ["diverged", "prefix", "same-length"])
async def test_a_newcomer_on_a_longer_fork_is_flagged_at_the_sync(
    server: RunningServer, connect: Connect, shape: str
) -> None:
    """The operator, holding keeper.key, shows erin (a newcomer) a fork longer than the
    real log: the real log up to some point, an add it made up, its own checkpoint. Then
    the relay serves her the honest log. ``diverged``: the honest log holds another event
    at a seq she holds, a ForkError at once (two reads, no waiting); ``prefix``: the honest
    log is a prefix of her fork, so she waits out the grace, then ForkError;
    ``same-length``: the honest log grew to her head's seq with another event there, a
    ForkError at once. Her head stays the fork's all along."""
    a, _, real = await channel_with_members(server, connect, 3)
    keeper = keeper_identity(server.data_dir)
    fork = _fork_of(real, "prefix" if shape == "prefix" else "diverged", keeper)
    evil = await EvilRelay(server.url).start()
    try:

        def serve(conn: Any, req: frames.GetStateLog, page: frames.StateLogPage) -> Any:
            return frames.StateLogPage(tuple(e for e in fork if e.seq >= req.since), fork[-1].seq)

        evil.rewrite_result(frames.GetStateLog, serve, user="erin")
        erin = await connect(server, "erin", evil.url)
        erin.log_lag_grace = GRACE if shape == "prefix" else 60.0
        e = await erin.space.get(a.id)
        rejected = Inbox()
        e.on_rejected(rejected)
        await e.sync_log()
        forked_head = e.core.require_state().head
        assert forked_head == fork[-1].hash()
        assert e.core.require_state().head_seq == (5 if shape == "prefix" else 4)

        if shape == "same-length":  # the real log grows to seq 4: another event there
            await (await connect(server, "user3")).space.join_channel("general")
            await wait_until(lambda: a.core.require_state().head_seq == 4)
        evil.reset()
        reads = log_reads(evil, "erin")
        if shape == "prefix":
            with pytest.raises(ForkError, match="rolled this member back"):
                await e.sync_log()
            assert log_reads(evil, "erin") >= reads + 2  # asked again, then gave up
        else:
            at = 3 if shape == "diverged" else 4
            with pytest.raises(
                ForkError, match=f"differs from the one verified before at event {at}"
            ):
                await e.sync_log()
            assert log_reads(evil, "erin") - reads == (2 if shape == "diverged" else 1)
        assert e.core.require_state().head == forked_head
        assert from_relay(rejected)
    finally:
        await evil.stop()


@pytest.mark.parametrize("grace", [-1, float("nan"), "3", True, 3600])
async def test_log_lag_grace_is_checked(server: RunningServer, grace: Any) -> None:
    with pytest.raises(UsageError, match="log_lag_grace"):
        await aio.connect(
            server.url, app_key=server.app_key, username="bob", keystore=":memory:",
            log_lag_grace=grace,
        )  # fmt: skip
