"""A malicious relay that tries to get a key to someone who may not hold one: a joiner it
made up, a sybil it signed up, a flipped manual-admit flag, a removed member brought
back through the old link. Nobody honest wraps a key for them, and a join's outcome is
what the verified log says. The attacks of issue 12 are split by family: see
:mod:`tests.reliability.malicious`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import pytest

from spacenb.exceptions import (
    IntegrityError,
    PermissionDeniedError,
    SpacenbError,
    SpacenbTimeoutError,
)
from spacenb.protocol import frames
from spacenb.protocol.encoding import b64e
from spacenb.protocol.envelope import open_envelope
from spacenb.protocol.keys import IdentityKeys
from spacenb.protocol.statelog import link_keys_from_token, link_proof_bytes
from spacenb.protocol.wrap import WrappedKey
from spacenb.server.app import RunningServer
from spacenb.server.keeper import Keeper
from spacenb.server.relay import LocalMember

from .conftest import Connect
from .evil import EvilKeeperPort, EvilRelay, forge_event, keeper_identity
from .helpers import Inbox, wait_until
from .malicious import _add_body, admits, bodies, reported, signer_of, stored, watch

pytestmark = pytest.mark.timeout(90)


# --------------------------------------------------------------------------- made-up joiners


@pytest.mark.parametrize("kind", ["space", "channel"])
async def test_no_key_for_a_joiner_the_relay_made_up(
    server: RunningServer, evil: EvilRelay, connect: Connect, kind: str
) -> None:
    """The relay tells bob (joining a manual-admit space) that admission is automatic,
    then pushes join requests: for a user it made up who is not in the log, and for a
    sybil account it registered and joined for real. Neither bob nor alice (both auto-admit
    clients) wraps a key for either: the flag is read from the signed genesis."""
    alice = await connect(server, "alice", evil.url)
    bob = await connect(server, "bob", evil.url)

    def flip(conn: Any, req: Any, result: Any) -> Any:
        info = result.space if isinstance(result, frames.JoinResult) else result
        lie = dataclasses.replace(info, manual_admit=False, keeper="keeper")
        if isinstance(result, frames.JoinResult):
            return frames.JoinResult(lie, result.role, result.keys, result.pending)
        return lie

    evil.rewrite_result(frames.Join, flip)
    evil.rewrite_result(frames.GetSpaceInfo, flip)
    if kind == "space":
        a = await alice.space.create_space(auto_admit=False)
    else:
        a = await alice.space.create_channel("gated", auto_admit=False)
    joining = asyncio.create_task(bob.space.join_space(a.id))
    await wait_until(lambda: "bob" in a.core.require_state().members or joining.done())
    await a.admit("bob", bob.identity.ecdh_key)
    b = await joining
    assert b.info is not None and b.info.manual_admit is False  # what the relay said
    assert b.core.require_state().manual_admit is True  # what the genesis says
    _, a_rej = watch(a)
    b_msgs, b_rej = watch(b)
    b_requests = Inbox()
    b.on_join_request(b_requests)

    ghost = IdentityKeys.generate()
    await evil.inject(
        frames.JoinRequested(a.id, "ghost", ghost.signing_key, ghost.ecdh_key, "viewer")
    )
    for rejected in (a_rej, b_rej):
        await reported(rejected, "not a member", sender="ghost")

    # The relay signs up a sybil and joins it for real: a valid add (anyone may join a
    # public space); the relay pushes its join request to the members.
    sybil = await connect(server, "sybil")
    with pytest.raises(SpacenbTimeoutError):
        await sybil.space.join_space(a.id, timeout=1.0)
    await wait_until(lambda: any(r.member_id == "sybil" for r in b_requests.items))
    assert evil.pushed("join_request", user="bob")
    await evil.inject(
        frames.JoinRequested(
            a.id, "sybil", sybil.identity.signing_key, sybil.identity.ecdh_key, "viewer"
        )
    )
    await a.send_message("members still talk")  # a round trip after the pushes
    await wait_until(lambda: bool(b_msgs.items))
    assert bodies(b_msgs) == ["members still talk"]
    assert "sybil" in b.core.require_state().members
    assert admits(evil, "ghost") == [] and admits(evil, "sybil") == []
    assert all(r.member == "bob" for r in evil.requests(frames.Admit))
    assert server.relay.storage.keys_for(a.id, "sybil") == []
    assert server.relay.storage.keys_for(a.id, "ghost") == []


async def test_a_flipped_manual_admit_flag_in_the_genesis_does_not_verify(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """The relay rewrites the genesis it serves so that it says manual_admit = false:
    the space key's signature no longer verifies, and the join is refused."""
    alice = await connect(server, "alice")
    bob = await connect(server, "bob", evil.url)
    a = await alice.space.create_space(auto_admit=False)

    def rewrite(conn: Any, req: Any, page: frames.StateLogPage) -> frames.StateLogPage:
        events = list(page.events)
        if events and events[0].seq == 0:
            g = events[0]
            body = g.body.replace(b'"manual_admit":true', b'"manual_admit":false')
            assert body != g.body
            events[0] = type(g)(g.space_id, g.seq, g.prev, g.kind, g.actor, g.at_us, body,
                                g.signature)  # fmt: skip
        return frames.StateLogPage(tuple(events), page.head_seq)

    evil.rewrite_result(frames.GetStateLog, rewrite, user="bob")
    with pytest.raises(IntegrityError, match="genesis does not verify"):
        await bob.space.join_space(a.id, timeout=5)
    assert admits(evil, "bob") == [] and "bob" not in a.core.require_state().members


# --------------------------------------------------------------------------- bans hold


def _pretend_bob_is_back(
    server: RunningServer, evil: EvilRelay, space_id: str
) -> tuple[WrappedKey, ...]:
    """Make the relay turn every refusal to bob into a success (his join worked, here are
    his keys: the ones it still stores for him); returns those keys."""
    state = server.relay.state(space_id)
    assert state is not None
    info = server.relay.core.space_info(state)
    keys = tuple(server.relay.storage.keys_for(space_id, "bob"))
    evil.agree(frames.Join, frames.JoinResult(info, "viewer", keys, False), user="bob")
    evil.agree(frames.Subscribe, frames.SubscribeResult((), info.epoch, info.head_seq), user="bob")
    evil.agree(frames.FetchKeys, frames.KeysResult(keys), user="bob")
    evil.agree(frames.HistoryRequest, frames.HistoryPage((), None), user="bob")
    evil.agree(frames.GetSpaceInfo, info, user="bob")
    return keys


async def test_a_removed_member_cannot_come_back_through_the_old_link(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """bob joined a private rotate channel through a multi-use link and was removed. He
    redeems the same link again: the relay refuses. Then the relay helps him: it turns
    every refusal into a success, pushes his signed re-add and a join request to alice,
    and serves the re-add to its own keeper. alice and the keeper refuse the re-add and
    hand him nothing; he never holds the epoch minted to cut him off, and cannot read what
    is said after his removal; carol, still a member, can."""
    alice = await connect(server, "alice", evil.url)
    bob = await connect(server, "bob", evil.url)
    carol = await connect(server, "carol")
    a = await alice.space.create_channel("secret", history_policy="rotate", private=True)
    link = await alice.space.create_invite_link(a.id, max_uses=5)
    assert link.token is not None
    b = await bob.space.join_by_invite(a.id, link.token)
    c = await carol.space.join_by_invite(a.id, link.token)
    b_msgs, _ = watch(b)
    c_msgs, _ = watch(c)
    _, a_rej = watch(a)
    await alice.space.remove_member(a.id, "bob")
    cut = a.core.require_state().epoch
    assert cut == 1 and "bob" in a.core.require_state().banned
    await wait_until(lambda: c.keyring is not None and c.keyring.has(cut))

    with pytest.raises(PermissionDeniedError, match="removed"):
        await bob.space.join_by_invite(a.id, link.token, timeout=5)

    # The relay now helps bob: every refusal to him becomes a success.
    old_keys = _pretend_bob_is_back(server, evil, a.id)
    assert {k.epoch for k in old_keys} == {0}
    # ... and offers alice and its keeper his signed re-add through the old link.
    real = server.relay.state(a.id)
    assert real is not None
    link_keys = link_keys_from_token(link.token)
    readd = forge_event(
        bob.identity,
        real,
        "add",
        _add_body(
            "bob",
            bob.identity,
            "link",
            link_id=link.link_id,
            proof=b64e(link_keys.sign(link_proof_bytes(a.id, "bob", real.head))),
        ),
        actor="bob",
    )
    admits_before = len(admits(evil, "bob"))
    with contextlib.suppress(SpacenbError):  # see the test after this one
        await bob.space.join_by_invite(a.id, link.token, timeout=3)
    await evil.inject(frames.StatePushed(a.id, readd), to="alice")
    await evil.inject(
        frames.JoinRequested(
            a.id, "bob", bob.identity.signing_key, bob.identity.ecdh_key, "viewer"
        ),
        to="alice",
    )
    why = await reported(a_rej, "no entitled member could sign", sender="relay")
    assert "removed" in why.reason
    await reported(a_rej, "not a member", sender="bob")
    port = EvilKeeperPort(LocalMember(server.relay, "keeper"), [readd])
    tricked = Keeper(keeper_identity(server.data_dir), port)
    assert tricked.admit(a.id, "bob") is False
    assert port.admitted == []

    await a.send_message("said after the removal")
    await wait_until(lambda: bool(c_msgs.items))
    assert bodies(c_msgs) == ["said after the removal"]
    secret = stored(server, a.id)[-1]
    assert secret.envelope.epoch == cut
    await evil.inject(frames.MessagePushed(secret.handle, secret.envelope), to="bob")
    await a.send_message("and again")
    await wait_until(lambda: len(c_msgs.items) >= 2)
    assert len(admits(evil, "bob")) == admits_before
    assert {k.epoch for k in server.relay.storage.keys_for(a.id, "bob")} == {0}
    assert b.keyring is not None and b.keyring.epochs == [0]
    assert "bob" not in b.core.require_state().members
    live = bob.live_space(a.id)  # None: the failed join let go of the space
    assert live is None or "bob" not in live.core.require_state().members
    assert b_msgs.items == []
    with pytest.raises(IntegrityError):  # the only key he holds does not open it
        open_envelope(secret.envelope, b.keyring.key(0), signer_of(a, "alice"))


async def test_a_join_the_verified_log_does_not_record_is_not_reported_as_a_success(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """The relay tells a removed member that his new join through the old link worked (it
    turns every refusal into a success). His verified log has no add for him after the
    removal, so his own client must not report a successful join either: a join's outcome
    is what the log says, never what the relay answers."""
    alice = await connect(server, "alice")
    bob = await connect(server, "bob", evil.url)
    a = await alice.space.create_channel("secret", history_policy="rotate", private=True)
    link = await alice.space.create_invite_link(a.id, max_uses=5)
    assert link.token is not None
    await bob.space.join_by_invite(a.id, link.token)
    await alice.space.remove_member(a.id, "bob")
    _pretend_bob_is_back(server, evil, a.id)
    with pytest.raises((PermissionDeniedError, IntegrityError)):
        space = await bob.space.join_by_invite(a.id, link.token, timeout=3)
        assert "bob" not in space.core.require_state().members  # what it returned
