"""A malicious relay that forges state events (deletes, adds, roles, removals, epochs,
links, invites: pushed or served in the log), presence, or a removed member's re-add:
each is refused and reported, and the signed log alone decides who is a member. The
attacks of issue 12 are split by family: see :mod:`tests.reliability.malicious`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from spacenb.exceptions import IntegrityError, PermissionDeniedError
from spacenb.protocol import frames
from spacenb.protocol.keyring import HistoryPolicy
from spacenb.protocol.keys import IdentityKeys
from spacenb.protocol.statelog import (
    key_commitment,
    link_id_of_key,
    link_keys_from_token,
    new_link_token,
)
from spacenb.server.app import RunningServer

from .conftest import Connect
from .evil import EvilRelay, forge_event, keeper_identity
from .helpers import Inbox, wait_until
from .malicious import GHOST, IMPOSTOR, _add_body, admits, bodies, reported, stored, watch

pytestmark = pytest.mark.timeout(90)


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
