"""A relay that misbehaves on purpose, against real clients on loopback (issue 12, "Why").

Every test runs the real relay and puts :class:`~tests.reliability.evil.EvilRelay`, a
rewriting, injecting, answering proxy, between it and some clients; the relay's operator
also holds the data directory, so the keeper's key. Each attack of the issue is performed
and must be detected, reported (``on_rejected`` and/or a raised
:class:`IntegrityError`/:class:`ForkError`/:class:`IdentityChangedError`) and never
delivered, while the honest members go on working. What an honest client *sends* is
checked too (no ``admit`` to a made-up user, no key to a removed member).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.exceptions import (
    ForkError,
    IdentityChangedError,
    IntegrityError,
    PermissionDeniedError,
    SpacenbError,
    SpacenbTimeoutError,
)
from spacenb.protocol import frames
from spacenb.protocol.encoding import b64e
from spacenb.protocol.envelope import Envelope, new_session_id, open_envelope, seal_envelope
from spacenb.protocol.keyring import HistoryPolicy
from spacenb.protocol.keys import IdentityKeys, decode_public_key
from spacenb.protocol.member import Rejected
from spacenb.protocol.statelog import (
    SpaceState,
    key_commitment,
    link_id_of_key,
    link_keys_from_token,
    link_proof_bytes,
    new_link_token,
)
from spacenb.protocol.wrap import WrappedKey, wrap_group_key
from spacenb.server.app import RunningServer
from spacenb.server.keeper import Keeper
from spacenb.server.limits import Limits
from spacenb.server.relay import LocalMember

from .conftest import Connect, StartRelay
from .evil import EvilKeeperPort, EvilRelay, forge_event, keeper_identity
from .helpers import Inbox, wait_until

pytestmark = pytest.mark.timeout(90)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def server(start_relay: StartRelay) -> RunningServer:
    return await start_relay()


@pytest.fixture
async def evil(server: RunningServer) -> AsyncIterator[EvilRelay]:
    proxy = await EvilRelay(server.url).start()
    yield proxy
    await proxy.stop()


DirClient = Callable[..., Awaitable[aio.AsyncClient]]


@pytest.fixture
async def dir_client(tmp_path: Path) -> AsyncIterator[DirClient]:
    """``await dir_client(server, username, url)``: a client whose keystore is a
    directory (under ``tmp_path``), so it remembers pins, marks and log heads across a
    restart; every client made here is closed at the end."""
    made: list[aio.AsyncClient] = []

    async def make(server: RunningServer, username: str, url: str = "") -> aio.AsyncClient:
        client = await aio.connect(
            url or server.url,
            app_key=server.app_key,
            username=username,
            keystore=tmp_path / "keystores",
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def watch(space: aio.AsyncSpace) -> tuple[Inbox, Inbox]:
    """Inboxes of a space's delivered messages and of its rejections."""
    messages, rejected = Inbox(), Inbox()
    space.on_message(messages)
    space.on_rejected(rejected)
    return messages, rejected


def bodies(inbox: Inbox) -> list[Any]:
    return [event.message.body for event in inbox.items]


async def reported(rejected: Inbox, *words: str, sender: str | None = None) -> Any:
    """Wait for a rejection whose reason contains every word (case-insensitive)."""

    def match() -> Any:
        for event in rejected.items:
            reason = event.reason.lower()
            if all(w.lower() in reason for w in words) and sender in (None, event.sender):
                return event
        return None

    await wait_until(lambda: match() is not None)
    return match()


def stored(server: RunningServer, space_id: str) -> list[frames.StoredMessage]:
    """The messages the relay stores for a space, oldest first (what it holds on disk)."""
    items, _cursor = server.relay.storage.history(space_id, None, frames.MAX_HISTORY_LIMIT)
    return items


def signer_of(space: aio.AsyncSpace, name: str) -> Any:
    state = space.core.require_state()
    key = state.verify_key_at(name, state.head_seq)
    assert key is not None
    return key


def wrap_as(
    wrapper: str, identity: IdentityKeys, key: bytes, space: aio.AsyncSpace, epoch: int, to: str
) -> WrappedKey:
    """``key`` wrapped by ``wrapper`` for member ``to`` (their key from the log)."""
    state = space.core.require_state()
    return wrap_group_key(
        key,
        space_id=space.id,
        epoch=epoch,
        recipient=to,
        recipient_ecdh=decode_public_key(state.members[to].ecdh_key, "dh"),
        wrapper=wrapper,
        wrapper_identity=identity,
    )


def admits(evil: EvilRelay, member: str) -> list[frames.Admit]:
    """Every ``admit`` frame a client behind the proxy sent for ``member``."""
    return [r for r in evil.requests(frames.Admit) if r.member == member]


def _add_body(
    member: str,
    identity: IdentityKeys,
    via: str,
    *,
    link_id: str | None = None,
    proof: str | None = None,
) -> dict[str, Any]:
    """The body of ``member``'s own ``add`` event (which ``identity`` signs)."""
    return {
        "member": member,
        "signing_key": identity.signing_key,
        "ecdh_key": identity.ecdh_key,
        "role": "viewer",
        "via": via,
        "link_id": link_id,
        "proof": proof,
    }


async def admit_on_request(space: aio.AsyncSpace) -> None:
    """Make ``space``'s owner admit by hand whoever asks (a manual-admit space)."""

    async def admit(request: Any) -> None:
        await space.admit(request.member_id, request.identity_ecdh_pub)

    space.on_join_request(admit)


# --------------------------------------------------------------------------- 1. keeper key


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


# --------------------------------------------------------------------------- 2. made-up joiners


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


# --------------------------------------------------------------------------- 3. forged events

IMPOSTOR = IdentityKeys.generate()  # a key the relay made up, in a member's name
GHOST = IdentityKeys.generate()  # a user the relay made up


def _forgeries() -> dict[str, tuple[HistoryPolicy, bool, Callable[..., Any]]]:
    """name -> (policy, private, build(state, handle, keeper, mallory) -> forged event)."""

    def delete(signer: str) -> Callable[..., Any]:
        def build(state: Any, handle: int, keeper: IdentityKeys, mallory: IdentityKeys) -> Any:
            key, actor = {
                "impostor": (IMPOSTOR, "alice"),
                "keeper": (keeper, "keeper"),
                "outsider": (mallory, "mallory"),
            }[signer]
            return forge_event(key, state, "delete", {"handle": handle, "author": "alice"},
                               actor=actor)  # fmt: skip

        return build

    def add(via: str) -> Callable[..., Any]:
        def build(state: Any, handle: int, keeper: IdentityKeys, mallory: IdentityKeys) -> Any:
            return forge_event(GHOST, state, "add", _add_body("ghost", GHOST, via), actor="ghost")

        return build

    def by(kind: str, body: dict[str, Any], signer: str) -> Callable[..., Any]:
        def build(state: Any, handle: int, keeper: IdentityKeys, mallory: IdentityKeys) -> Any:
            fields = dict(body)
            if kind == "epoch":
                fields = {"epoch": state.epoch + 1, "recipients": sorted(state.members),
                          "key_commitment": key_commitment(state.space_id, state.epoch + 1,
                                                           os.urandom(32))}  # fmt: skip
            key, actor = (keeper, "keeper") if signer == "keeper" else (IMPOSTOR, signer)
            return forge_event(key, state, kind, fields, actor=actor)

        return build

    link_key = link_keys_from_token(new_link_token()).link_key
    link = {"link_id": link_id_of_key(link_key), "link_key": link_key, "role": "editor",
            "max_uses": None, "expires_at_us": None}  # fmt: skip
    return {
        "delete-by-impostor": ("static", False, delete("impostor")),
        "delete-by-keeper": ("static", False, delete("keeper")),
        "delete-by-outsider": ("static", False, delete("outsider")),
        "add-into-private": ("static", True, add("open")),
        "add-without-invitation": ("static", True, add("invite")),
        "role-by-impostor": ("static", False, by("role", {"member": "bob", "role": "editor"},
                                                 "alice")),
        "role-by-keeper": ("static", False, by("role", {"member": "bob", "role": "editor"},
                                               "keeper")),
        "remove-by-impostor": ("static", False, by("remove", {"member": "bob"}, "alice")),
        "remove-by-keeper": ("static", False, by("remove", {"member": "bob"}, "keeper")),
        "leave-by-impostor": ("static", False, by("leave", {"member": "bob"}, "bob")),
        "epoch-by-impostor": ("rotate", False, by("epoch", {}, "alice")),
        "epoch-by-keeper": ("rotate", False, by("epoch", {}, "keeper")),
        "link-by-impostor": ("static", True, by("link", link, "alice")),
        "link-by-keeper": ("static", True, by("link", link, "keeper")),
        "invite-editor-by-keeper": ("static", True, by(
            "invite", {"member": "ghost", "role": "editor", "signing_key": None,
                       "ecdh_key": None}, "keeper")),
    }  # fmt: skip


FORGERIES = _forgeries()


@pytest.mark.parametrize("route", ["pushed", "served"])
@pytest.mark.parametrize("name", sorted(FORGERIES))
async def test_forged_state_events_are_not_believed(
    server: RunningServer, evil: EvilRelay, connect: Connect, name: str, route: str
) -> None:
    """A forged delete, add, role, remove, leave, epoch, link or invite, pushed as a
    ``state`` event or served at the head of the log: refused and reported; bob's members,
    roles, epoch and deletions stay what the signed log says, the message the forged
    delete names stays delivered and in history, and alice and bob go on talking."""
    policy, private, build = FORGERIES[name]
    alice = await connect(server, "alice")
    mallory = await connect(server, "mallory")
    bob = await connect(server, "bob", evil.url)
    a = await alice.space.create_channel("general", history_policy=policy, private=private)
    if private:
        await a.invite("bob")
    b = await bob.space.join_channel("general")
    b_msgs, b_rej = watch(b)
    deleted = Inbox()
    b.on_message_deleted(deleted)
    handle = await a.send_message("keep me")
    await wait_until(lambda: bool(b_msgs.items))
    before = b.core.require_state()
    members_before = await bob.space.members(b.id)
    head, epoch = before.head, before.epoch
    forged = build(before, handle, keeper_identity(server.data_dir), mallory.identity)

    if route == "pushed":
        await evil.inject(frames.StatePushed(b.id, forged), to="bob")
        why = await reported(b_rej, "no entitled member could sign", sender="relay")
    else:

        def serve(conn: Any, req: Any, page: frames.StateLogPage) -> frames.StateLogPage:
            extra = (forged,) if req.since <= forged.seq else ()
            return frames.StateLogPage(page.events + extra, forged.seq)

        evil.rewrite_result(frames.GetStateLog, serve, user="bob")
        with pytest.raises(IntegrityError, match="no entitled member could sign") as raised:
            await bob.space.members(b.id)
        why = await reported(b_rej, "no entitled member could sign", sender="relay")
        assert why.reason == str(raised.value)
        evil.reset()
    assert f"({forged.kind} by {forged.actor!r})" in why.reason

    state = b.core.require_state()
    assert (state.head, state.epoch, state.deleted) == (head, epoch, {})
    assert await bob.space.members(b.id) == members_before
    assert "ghost" not in state.members and "ghost" not in state.invitations
    assert not state.links
    assert b.keyring is not None and not b.keyring.has(epoch + 1)
    assert [m.message.body for m in (await b.history()).messages] == ["keep me"]
    assert [m.handle for m in stored(server, b.id)] == [handle]
    await a.send_message("still here")
    await b.send_message("me too")
    await wait_until(lambda: len(b_msgs.items) >= 3)
    assert bodies(b_msgs) == ["keep me", "still here", "me too"]
    assert deleted.items == []
    assert [r.sender for r in b_rej.items] == ["relay"]


async def test_forged_presence_of_non_members_is_ignored(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """The relay says mallory (a registered non-member) and a made-up user came online:
    bob's peers are only members the log knows."""
    alice = await connect(server, "alice")
    await connect(server, "mallory")
    bob = await connect(server, "bob", evil.url)
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    presence = Inbox()
    b.on_presence(presence)
    await evil.inject(frames.Presence(a.id, ("mallory", "ghost", "alice"), ()), to="bob")
    await wait_until(lambda: bool(presence.items))
    for event in presence.items:
        assert not {"mallory", "ghost"} & set(event.peers)
    assert "mallory" not in b.peers() and "ghost" not in b.peers()
    assert set(b.peers()) <= set(b.core.require_state().members)
    members = {m.member_id for m in await bob.space.roster(a.id)}
    assert members == {"alice", "bob", "keeper"}


async def test_rotation_after_a_removal_skips_the_member_the_relay_keeps_showing(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """alice removes carol from a rotate channel. The relay keeps showing carol (online in
    subscribe answers and presence; v2 has no relay-answered member list left to lie in)
    and even pushes carol's own signed re-add: alice's roster and the epoch she mints
    leave carol out (the keys her rotate sends go to alice, bob and the keeper only), and
    so does every later rotation; carol never holds the new key."""
    alice = await connect(server, "alice", evil.url)
    bob = await connect(server, "bob")
    carol = await connect(server, "carol")
    a = await alice.space.create_channel("ops", history_policy="rotate")
    b = await bob.space.join_channel("ops")
    c = await carol.space.join_channel("ops")
    _, a_rej = watch(a)
    b_msgs, _ = watch(b)
    c_msgs, _ = watch(c)

    def keep_carol(conn: Any, req: Any, result: frames.SubscribeResult) -> Any:
        return frames.SubscribeResult(
            tuple(sorted({*result.peers, "carol"})), result.epoch, result.head_seq
        )

    evil.rewrite_result(frames.Subscribe, keep_carol, user="alice")
    evil.drop_events(
        lambda conn, f: not (f.get("ev") == "presence" and "carol" in f.get("left", ()))
    )
    await alice.space.remove_member(a.id, "carol")
    await evil.inject(frames.Presence(a.id, ("carol",), ()), to="alice")

    (append,) = [r for r in evil.requests(frames.Append, user="alice") if r.event.kind == "epoch"]
    minted = append.event.fields()
    assert minted["recipients"] == ["alice", "bob", "keeper"]
    assert sorted(k.recipient for k in append.keys) == ["alice", "bob", "keeper"]

    # The relay, colluding with carol, pushes her signed re-add (she was banned).
    state = a.core.require_state()
    readd = forge_event(
        carol.identity,
        state,
        "add",
        _add_body("carol", carol.identity, "open"),
        actor="carol",
    )
    await evil.inject(frames.StatePushed(a.id, readd), to="alice")
    why = await reported(a_rej, "no entitled member could sign", sender="relay")
    assert "removed" in why.reason
    assert "carol" not in a.core.require_state().members
    assert [m.member_id for m in await alice.space.roster(a.id)] == ["alice", "bob", "keeper"]

    assert await a.rotate() == 2
    epochs = [r for r in evil.requests(frames.Append, user="alice") if r.event.kind == "epoch"]
    assert [e.event.fields()["recipients"] for e in epochs] == [["alice", "bob", "keeper"]] * 2
    for request in epochs:
        assert "carol" not in {k.recipient for k in request.keys}
    with pytest.raises(PermissionDeniedError, match="carol"):
        await a.rotate(["bob", "carol"])
    assert admits(evil, "carol") == []
    assert {k.epoch for k in server.relay.storage.keys_for(a.id, "carol")} == {0}

    await wait_until(lambda: b.keyring is not None and b.keyring.has(2))
    await a.send_message("carol is gone")
    await wait_until(lambda: bool(b_msgs.items))
    assert bodies(b_msgs) == ["carol is gone"]
    assert c.keyring is not None and c.keyring.epochs == [0]
    assert c_msgs.items == []


# --------------------------------------------------------------------------- 4. false keys


def _false_keys(evil: EvilRelay, user: str, victim: str, false: IdentityKeys) -> None:
    """Make the relay's directory answer ``user`` with ``false`` keys for ``victim``."""

    def lie(conn: Any, req: Any, result: frames.UserKeysResult) -> frames.UserKeysResult:
        return frames.UserKeysResult(
            tuple(
                frames.UserEntry(u.username, false.signing_key, false.ecdh_key)
                if u.username == victim
                else u
                for u in result.users
            )
        )

    evil.rewrite_result(frames.UserKeys, lie, user=user)


def _forged_from(
    space: aio.AsyncSpace, false: IdentityKeys, group_key: bytes, body: Any
) -> Envelope:
    """A message "from bob" signed by the false key, sealed under the real group key (the
    strongest relay: it even knows the key) and bound to the receiver's own head."""
    state = space.core.require_state()
    envelope, _ = seal_envelope(
        false,
        group_key,
        source="bob",
        target=space.id,
        subject="default",
        epoch=state.epoch,
        content_type=None,
        body=body,
        head_seq=state.head_seq,
        head=state.head,
        seq=2**62,
        sid=new_session_id(),
    )
    return envelope


async def test_a_false_signing_key_does_not_let_the_relay_speak_for_bob(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """In carol's fresh session the relay's directory serves a false key for bob, and it
    pushes a message "from bob" signed by that key: refused (the log records bob's real
    key, and carol pins that one); the directory's lie raises IdentityChangedError; the
    real bob's messages are delivered."""
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    false = IdentityKeys.generate()
    _false_keys(evil, "carol", "bob", false)
    carol = await connect(server, "carol", evil.url)
    c = await carol.space.join_channel("general")
    c_msgs, c_rej = watch(c)
    assert a.keyring is not None

    last = stored(server, a.id)[-1].handle if stored(server, a.id) else 0
    forged = _forged_from(c, false, a.keyring.key(0), "forged")
    await evil.inject(frames.MessagePushed(last + 1, forged), to="carol")
    await reported(c_rej, "signature does not verify", sender="bob")
    history_forgery = _forged_from(c, false, a.keyring.key(0), "forged in history")

    def add(conn: Any, req: Any, page: frames.HistoryPage) -> frames.HistoryPage:
        return frames.HistoryPage((*page.items, frames.StoredMessage(last + 2,
                                   history_forgery)), page.next_cursor)  # fmt: skip

    evil.rewrite_result(frames.HistoryRequest, add, user="carol")
    page = await c.history()
    assert page.unreadable == 1 and [m.message.body for m in page.messages] == []

    assert await carol.fingerprint_of("bob") == bob.fingerprint
    with pytest.raises(IdentityChangedError):
        await carol.identities(["bob"])
    with pytest.raises(IdentityChangedError):
        await carol.verify_identity("bob", false.fingerprint)
    await carol.verify_identity("bob", bob.fingerprint)

    await b.send_message("the real bob")
    await wait_until(lambda: bool(c_msgs.items))
    assert bodies(c_msgs) == ["the real bob"]
    assert all(m.sender == "bob" for m in c_msgs.items)


async def test_a_false_key_pinned_first_is_a_reported_conflict_never_a_forgery(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """Trust on first use: carol asks the directory about bob before she ever sees the
    space's log, so she pins the relay's false key. The log then records bob's real key: a
    conflict carol's client reports (and an out-of-band fingerprint check raises on), and
    neither the forgery nor anything "from bob" is delivered until it is resolved."""
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    false = IdentityKeys.generate()
    _false_keys(evil, "carol", "bob", false)
    carol = await connect(server, "carol", evil.url)
    assert await carol.fingerprint_of("bob") == false.fingerprint  # pinned: TOFU
    c = await carol.space.join_channel("general")
    c_msgs, c_rej = watch(c)
    assert "bob" in c.core.distrusted
    with pytest.raises(IdentityChangedError):
        await carol.verify_identity("bob", bob.fingerprint)
    assert a.keyring is not None

    last = stored(server, a.id)[-1].handle if stored(server, a.id) else 0
    await evil.inject(
        frames.MessagePushed(last + 1, _forged_from(c, false, a.keyring.key(0), "forged")),
        to="carol",
    )
    await b.send_message("the real bob")
    await a.send_message("alice")
    await wait_until(lambda: bool(c_msgs.items))
    await wait_until(lambda: len([r for r in c_rej.items if r.sender == "bob"]) >= 2)
    assert bodies(c_msgs) == ["alice"]
    for event in c_rej.items:
        assert event.sender == "bob"
    assert any("pinned" in r.reason for r in c_rej.items)


# --------------------------------------------------------------------------- 5. replays


async def test_an_old_message_replayed_after_a_restart_is_refused(
    server: RunningServer, evil: EvilRelay, connect: Connect, dir_client: DirClient
) -> None:
    """carol (a directory keystore) receives two messages, closes and comes back. The relay
    re-serves the first one at a new handle, pushed live and inside history: refused and
    reported both times. A fresh client reading history from the start refuses the
    replayed copy too, and delivers the original once."""
    alice = await connect(server, "alice")
    a = await alice.space.create_channel("general")
    carol = await dir_client(server, "carol", evil.url)
    c = await carol.space.join_channel("general")
    c_msgs, _ = watch(c)
    h1 = await a.send_message("first")
    h2 = await a.send_message("second")
    await wait_until(lambda: len(c_msgs.items) >= 2)
    assert bodies(c_msgs) == ["first", "second"]
    original = next(item for item in stored(server, a.id) if item.handle == h1)
    await carol.close()

    carol = await dir_client(server, "carol", evil.url)
    c = await carol.space.join_channel("general")
    c_msgs, c_rej = watch(c)
    replay_at = h2 + 1
    await evil.inject(frames.MessagePushed(replay_at, original.envelope), to="carol")
    why = await reported(c_rej, "replayed", sender="alice")
    assert why.handle == replay_at

    def alone(conn: Any, req: Any, page: frames.HistoryPage) -> frames.HistoryPage:
        return frames.HistoryPage((frames.StoredMessage(replay_at, original.envelope),), h2)

    evil.rewrite_result(frames.HistoryRequest, alone, user="carol")
    only = await c.history(limit=1)  # a page holding just the replayed copy
    assert only.messages == () and only.unreadable == 1
    assert len([r for r in c_rej.items if r.handle == replay_at]) == 2
    evil.reset()

    def replay(conn: Any, req: Any, page: frames.HistoryPage) -> frames.HistoryPage:
        if req.space_id != a.id or req.before is not None:
            return page
        return frames.HistoryPage(
            (*page.items, frames.StoredMessage(replay_at, original.envelope)), page.next_cursor
        )

    evil.rewrite_result(frames.HistoryRequest, replay)
    page = await c.history()
    assert [(m.handle, m.message.body) for m in page.messages] == [(h1, "first"), (h2, "second")]
    assert page.unreadable == 1
    assert len([r for r in c_rej.items if r.handle == replay_at]) == 3

    dave = await connect(server, "dave", evil.url)
    d = await dave.space.join_channel("general")
    d_msgs, d_rej = watch(d)
    page = await d.history()
    assert [(m.handle, m.message.body) for m in page.messages] == [(h1, "first"), (h2, "second")]
    assert page.unreadable == 1
    why = await reported(d_rej, "replayed", sender="alice")
    assert why.handle == replay_at

    await a.send_message("third")
    await wait_until(lambda: bool(c_msgs.items) and bool(d_msgs.items))
    assert bodies(c_msgs) == bodies(d_msgs) == ["third"]


# --------------------------------------------------------------------------- 6. bans hold


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


# --------------------------------------------------------------------------- 7. forks


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
        alice = await connect(server, "alice")
        a = await alice.space.create_channel("general")
        for i in range(4):
            await (await connect(server, f"user{i}")).space.join_channel("general")
        await wait_until(lambda: a.core.require_state().head_seq == 5)
        real = list(a.core.require_state().events)
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
        assert "erin" not in [m.member_id for m in await alice.space.members(a.id)]
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
    alice = await connect(server, "alice")
    a = await alice.space.create_channel("general")
    for i in range(3):
        await (await connect(server, f"user{i}")).space.join_channel("general")
    await wait_until(lambda: a.core.require_state().head_seq == 3)
    real = list(a.core.require_state().events)
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
    alice = await connect(server, "alice")
    a = await alice.space.create_channel("general")
    user2 = None
    for i in range(3):
        user2 = await connect(server, f"user{i}")
        await user2.space.join_channel("general")
    await wait_until(lambda: a.core.require_state().head_seq == 3)
    real = list(a.core.require_state().events)
    assert real[3].kind == "add" and real[3].actor == "user2" and user2 is not None
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
