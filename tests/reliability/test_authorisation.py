"""The authorisation matrix: every request, and every kind of state event a client may
``append``, tried by every kind of actor, is allowed or refused exactly as PROTOCOL.md
says (its request table, and for events the rules of the state log: who may sign what).

Each operation gets a fresh public ``rotate`` channel owned by ``owner``, with an
``editor`` and a ``viewer``, and a member who sent a message and was then ``removed``
(and the key rotated, as clients do). ``other`` is a member of another space only,
``outsider`` is signed in with the app key but a member of nothing, and ``wrong-key``
holds a wrong app key. Every actor builds its events and envelopes on the room's current
log head (the room is public, so everyone can read the log), so each refusal is the
relay's rule about the actor, not a stale head. The observed matrix is printed into
RELIABILITY.md, and this test checks the copy there is current.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from spacenb.aio.shardlink import ShardLink
from spacenb.exceptions import AuthenticationError, SpacenbError
from spacenb.protocol import crypto, frames
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.keys import IdentityKeys
from spacenb.protocol.manifest import share_name
from spacenb.protocol.statelog import SpaceState, key_commitment, link_keys_from_token
from spacenb.protocol.tickets import issue_ticket
from spacenb.server.app import RunningServer
from tests.server.rawclient import RawClient, entry, user

from .conftest import Figures, StartRelay

RELIABILITY_MD = Path(__file__).resolve().parents[2] / "RELIABILITY.md"
ACTORS = ("owner", "editor", "viewer", "removed", "other", "outsider", "wrong-key")
MEMBERS = ("owner", "editor", "viewer")
SIGNED_IN = ACTORS[:-1]
EVERYONE = ACTORS
# PROTOCOL.md, "Requests" and "The state log": who may do each. Edits are the author's
# only, deletes the author's or the owner's; only the owner invites editors, sets roles,
# removes, mints and revokes links; a removed user comes back only through an invitation
# by the owner or an editor; rotation is the owner's or an editor's; shard reads need only
# a share's name.
WHO: dict[str, tuple[str, ...]] = {
    "send": MEMBERS,
    "send a signal (ephemeral)": MEMBERS,
    "history": MEMBERS,
    "subscribe": MEMBERS,
    "keys": MEMBERS,
    "read the state log (state_log)": SIGNED_IN,
    "edit own message": MEMBERS,
    "edit another's message": (),
    "join with an add via open": ("other", "outsider"),
    "join with an add via an invite link": ("other", "outsider"),
    "admit a newcomer (wrap the current key)": MEMBERS,
    "append invite (as viewer)": MEMBERS,
    "append invite (as editor)": ("owner",),
    "append invite of a removed user": ("owner", "editor"),
    "append role": ("owner",),
    "append remove": ("owner",),
    "append leave": ("editor", "viewer"),
    "append epoch (rotate)": ("owner", "editor"),
    "append link (mint an invite link)": ("owner",),
    "append unlink (revoke a link)": ("owner",),
    "append delete of own message": MEMBERS,
    "append delete of another's message": ("owner",),
    "append add (joining goes through join)": (),
    "upload shards (shard_ticket + store)": MEMBERS,
    "read shards (by share name)": EVERYONE,
}
# Refusals that are not ``forbidden``: the request is malformed for everyone.
REFUSAL = {"append add (joining goes through join)": "bad_frame"}


def expected(op: str, actor: str) -> str:
    if actor in WHO[op]:
        return "yes"
    if actor == "wrong-key" and not op.startswith(("upload", "read shards")):
        return "auth_failed"  # nothing is reachable without signing in
    return REFUSAL.get(op, "forbidden")


class Room:
    """One operation's fresh space, and what the attempts need from it."""

    def __init__(self, space_id: str, rings: dict[str, Keyring], handles: dict[str, int]) -> None:
        self.id = space_id
        self.rings = rings  # the members' keys, and the removed member's old ones
        self.handles = handles  # the owner's, the editor's and the removed member's messages


class Matrix:
    """The actors' connections, and how each of them attempts each operation.

    ``other_space`` is the space ``other`` belongs to; ``share`` is stored on the shard
    stores (by ``other``), for the read attempts.
    """

    def __init__(
        self, server: RunningServer, clients: dict[str, RawClient], other_space: str, share: bytes
    ) -> None:
        self.server = server
        self.clients = clients
        self.owner = clients["owner"]
        self.other_space = other_space
        self.share = share
        self.names = itertools.count()

    async def join(self, client: RawClient, space_id: str) -> None:
        """Join (a signed add on the head) and wait for the keeper's keys."""
        await client.join(space_id)
        await client.event("keys", space_id=space_id)

    def ring(self, actor: str, room: Room, state: SpaceState) -> Keyring:
        """The actor's keys of the room (a made-up current key for a non-member)."""
        if actor in room.rings:
            return room.rings[actor]
        return Keyring(room.id, "rotate", {state.epoch: crypto.random_bytes(32)})

    async def newcomer(self, room: Room) -> str:
        """A fresh member of the room (a target for role, remove and admit)."""
        client = await user(self.server, f"member{next(self.names)}")
        await self.join(client, room.id)
        await client.close()
        return client.me

    async def banned(self, room: Room) -> str:
        """A fresh user who joined the room and was removed from it."""
        name = await self.newcomer(room)
        await self.owner.remove(room.id, name)
        return name

    async def room(self, op: str) -> Room:
        owner = self.owner
        info, ring = await owner.create_space(name=f"room {op}", policy="rotate")
        space_id = info.space_id
        for actor in ("editor", "viewer", "removed"):
            await self.join(self.clients[actor], space_id)
        await owner.set_role(space_id, "editor", "editor")
        removed = self.clients["removed"]
        rings = {"removed": await removed.keyring(space_id)}
        handles = {"removed": await removed.send(rings["removed"], "the removed member's")}
        await owner.remove(space_id, "removed")
        await owner.rotate(space_id, ring)  # what a client does after removing a member
        rings["owner"] = ring
        for actor in ("editor", "viewer"):
            rings[actor] = await self.clients[actor].keyring(space_id)
        handles["owner"] = await owner.send(ring, "the owner's")
        handles["editor"] = await self.clients["editor"].send(rings["editor"], "the editor's")
        return Room(space_id, rings, handles)

    async def attempt(self, op: str, actor: str, room: Room) -> str:
        """Try ``op`` as ``actor``: ``"yes"`` or the refusal's error code."""
        if actor == "wrong-key" and not op.startswith(("upload", "read shards")):
            return await self.wrong_app_key()
        client = self.clients[actor]
        try:
            if actor != "wrong-key":
                await client.sync(room.id)  # a public room: everyone sees the head
            await OPS[op](self, client, actor, room)
        except SpacenbError as exc:
            return exc.code
        return "yes"

    async def wrong_app_key(self) -> str:
        client = await RawClient.open(self.server.url)
        with pytest.raises(AuthenticationError) as refused:
            await client.auth("not-the-app-key", "intruder")
        with pytest.raises(ConnectionClosed):  # the relay closed the connection
            await client.call(frames.Ping)
        return refused.value.code

    # -- requests

    async def send(self, client: RawClient, actor: str, room: Room) -> None:
        await client.send(self.ring(actor, room, client.logs[room.id]), "hello")

    async def ephemeral(self, client: RawClient, actor: str, room: Room) -> None:
        ring = self.ring(actor, room, client.logs[room.id])
        await client.call(frames.SendEphemeral, envelope=client.seal(ring, True, kind="eph"))

    async def history(self, client: RawClient, actor: str, room: Room) -> None:
        await client.call(frames.HistoryRequest, space_id=room.id, before=None, limit=10)

    async def subscribe(self, client: RawClient, actor: str, room: Room) -> None:
        await client.call(frames.Subscribe, space_id=room.id)

    async def keys(self, client: RawClient, actor: str, room: Room) -> None:
        await client.call(frames.FetchKeys, space_id=room.id)

    async def read_log(self, client: RawClient, actor: str, room: Room) -> None:
        await client.read_log(room.id)

    async def edit(self, client: RawClient, actor: str, room: Room, handle: int) -> None:
        ring = self.ring(actor, room, client.logs[room.id])
        await client.call(frames.Edit, handle=handle, envelope=client.seal(ring, "edited"))

    async def own_handle(self, client: RawClient, actor: str, room: Room) -> int:
        """A message of the actor's own: a member sends one now, the removed member has
        the one it sent before its removal; another non-member aims at the owner's."""
        if actor in MEMBERS:
            return await client.send(self.ring(actor, room, client.logs[room.id]), "mine")
        return room.handles.get(actor, room.handles["owner"])

    def another_handle(self, actor: str, room: Room) -> tuple[int, str]:
        author = "editor" if actor == "owner" else "owner"
        return room.handles[author], author

    async def edit_own(self, client: RawClient, actor: str, room: Room) -> None:
        await self.edit(client, actor, room, await self.own_handle(client, actor, room))

    async def edit_another(self, client: RawClient, actor: str, room: Room) -> None:
        await self.edit(client, actor, room, self.another_handle(actor, room)[0])

    async def join_open(self, client: RawClient, actor: str, room: Room) -> None:
        event = client.add_event(client.logs[room.id], via="open", role="viewer")
        await client.call(frames.Join, space_id=room.id, event=event)

    async def join_link(self, client: RawClient, actor: str, room: Room) -> None:
        token = await self.owner.create_link(room.id)  # the actor was given the token
        client.links[room.id] = link_keys_from_token(token)
        event = client.add_event(await client.sync(room.id), token=token)
        await client.call(frames.Join, space_id=room.id, event=event)

    async def admit(self, client: RawClient, actor: str, room: Room) -> None:
        newcomer = await self.newcomer(room)
        state = await client.sync(room.id)
        ring = self.ring(actor, room, state)
        epoch = state.epoch if ring.has(state.epoch) else ring.current_epoch
        key = client.wrap(ring, epoch, entry(state, newcomer))
        await client.call(frames.Admit, space_id=room.id, member=newcomer, keys=(key,))

    # -- state events

    async def invite_viewer(self, client: RawClient, actor: str, room: Room) -> None:
        await client.invite(room.id, f"guest-{actor}")

    async def invite_editor(self, client: RawClient, actor: str, room: Room) -> None:
        await client.invite(room.id, f"deputy-{actor}", "editor")

    async def invite_banned(self, client: RawClient, actor: str, room: Room) -> None:
        await client.invite(room.id, await self.banned(room))

    async def set_role(self, client: RawClient, actor: str, room: Room) -> None:
        await client.set_role(room.id, await self.newcomer(room), "editor")

    async def remove(self, client: RawClient, actor: str, room: Room) -> None:
        await client.remove(room.id, await self.newcomer(room))

    async def leave(self, client: RawClient, actor: str, room: Room) -> None:
        await client.leave(room.id)

    async def rotate(self, client: RawClient, actor: str, room: Room) -> None:
        """Sign the next epoch for every member and oneself, a fresh key wrapped to each."""
        state = await client.sync(room.id)
        epoch = state.epoch + 1
        key = crypto.random_bytes(32)
        names = sorted({*state.members, client.me})
        body = {"epoch": epoch, "recipients": names,
                "key_commitment": key_commitment(room.id, epoch, key)}  # fmt: skip
        fresh = Keyring(room.id, "rotate", {epoch: key})
        recipients = [entry(state, n) if n in state.members else await client.user(n)
                      for n in names]  # fmt: skip
        keys = [client.wrap(fresh, epoch, r) for r in recipients]
        await client.append_event(client.make(room.id, "epoch", body), keys)

    async def create_link(self, client: RawClient, actor: str, room: Room) -> None:
        await client.create_link(room.id)

    async def unlink(self, client: RawClient, actor: str, room: Room) -> None:
        token = await self.owner.create_link(room.id)  # the actor has learnt the token
        await client.unlink(room.id, token)

    async def delete_own(self, client: RawClient, actor: str, room: Room) -> None:
        await client.delete(room.id, await self.own_handle(client, actor, room))

    async def delete_another(self, client: RawClient, actor: str, room: Room) -> None:
        handle, author = self.another_handle(actor, room)
        await client.delete(room.id, handle, author)

    async def append_add(self, client: RawClient, actor: str, room: Room) -> None:
        event = client.add_event(client.logs[room.id], via="open", role="viewer")
        await client.call(frames.Append, space_id=room.id, event=event, keys=())

    # -- shard stores

    async def store(self) -> ShardLink:
        return await ShardLink.open(self.server.shard_urls[0], timeout=15)

    async def upload(self, client: RawClient, actor: str, room: Room) -> None:
        """Get a ticket from the relay and store a share with it. Whoever the relay refuses
        tries the store anyway, with the best ticket it can have: its own space's, or one
        signed with its own key. The store must refuse those too."""
        data = crypto.random_bytes(1000)
        link = await self.store()
        try:
            if actor in MEMBERS:
                ticket = await client.call(frames.ShardTicket, space_id=room.id)
                await link.put(space_id=room.id, ticket=ticket.ticket, name=share_name(data),
                               data=data)  # fmt: skip
                return
            if actor == "other":
                own = (await client.call(frames.ShardTicket, space_id=self.other_space)).ticket
            else:
                assert client.identity is not None
                own = issue_ticket(client.identity, space_id=room.id, username=actor,
                                   expires_at_us=2**52)  # fmt: skip
            with pytest.raises(SpacenbError) as refused:
                await link.put(space_id=room.id, ticket=own, name=share_name(data), data=data)
            assert refused.value.code == "forbidden"
            if actor != "wrong-key":
                await client.call(frames.ShardTicket, space_id=room.id)
            raise refused.value
        finally:
            await link.close()

    async def read(self, client: RawClient, actor: str, room: Room) -> None:
        link = await self.store()
        try:
            assert await link.get(share_name(self.share)) == self.share
        finally:
            await link.close()


OPS: dict[str, Callable[[Matrix, RawClient, str, Room], Awaitable[None]]] = {
    "send": Matrix.send,
    "send a signal (ephemeral)": Matrix.ephemeral,
    "history": Matrix.history,
    "subscribe": Matrix.subscribe,
    "keys": Matrix.keys,
    "read the state log (state_log)": Matrix.read_log,
    "edit own message": Matrix.edit_own,
    "edit another's message": Matrix.edit_another,
    "join with an add via open": Matrix.join_open,
    "join with an add via an invite link": Matrix.join_link,
    "admit a newcomer (wrap the current key)": Matrix.admit,
    "append invite (as viewer)": Matrix.invite_viewer,
    "append invite (as editor)": Matrix.invite_editor,
    "append invite of a removed user": Matrix.invite_banned,
    "append role": Matrix.set_role,
    "append remove": Matrix.remove,
    "append leave": Matrix.leave,
    "append epoch (rotate)": Matrix.rotate,
    "append link (mint an invite link)": Matrix.create_link,
    "append unlink (revoke a link)": Matrix.unlink,
    "append delete of own message": Matrix.delete_own,
    "append delete of another's message": Matrix.delete_another,
    "append add (joining goes through join)": Matrix.append_add,
    "upload shards (shard_ticket + store)": Matrix.upload,
    "read shards (by share name)": Matrix.read,
}
assert set(OPS) == set(WHO)


def render(matrix: dict[str, dict[str, str]]) -> str:
    """The matrix as the Markdown table RELIABILITY.md carries."""
    lines = [
        "| operation | " + " | ".join(ACTORS) + " |",
        "|---|" + "---|" * len(ACTORS),
    ]
    for op, row in matrix.items():
        lines.append(f"| {op} | " + " | ".join(row[a] for a in ACTORS) + " |")
    return "\n".join(lines) + "\n"


async def test_authorisation_matrix(start_relay: StartRelay, figures: Figures) -> None:
    server = await start_relay(shards=2, shards_needed=1)
    clients = {actor: await user(server, actor) for actor in SIGNED_IN}
    clients["wrong-key"] = await RawClient.open(server.url)  # only ever used for stores
    clients["wrong-key"].identity = IdentityKeys.generate()  # to sign a ticket of its own
    other, _ = await clients["other"].create_space(name="elsewhere")
    matrix = Matrix(server, clients, other.space_id, crypto.random_bytes(1000))
    ticket = await clients["other"].call(frames.ShardTicket, space_id=other.space_id)
    uploader = await matrix.store()
    await uploader.put(space_id=other.space_id, ticket=ticket.ticket,
                       name=share_name(matrix.share), data=matrix.share)  # fmt: skip
    await uploader.close()
    observed: dict[str, dict[str, str]] = {}
    for op in OPS:
        room = await matrix.room(op)
        observed[op] = {actor: await matrix.attempt(op, actor, room) for actor in ACTORS}
        figures.add("authorisation.cells", len(ACTORS))
    wanted = {op: {actor: expected(op, actor) for actor in ACTORS} for op in OPS}
    assert observed == wanted
    for client in clients.values():
        await client.close()
    table = render(observed)
    figures.set("authorisation.matrix", table)
    assert table in RELIABILITY_MD.read_text(), "RELIABILITY.md's matrix is out of date:\n" + table


async def test_a_removed_member_is_an_outsider_at_once(
    start_relay: StartRelay, figures: Figures
) -> None:
    """Removed from a private space, a member stops receiving its events at once, every
    request about it is refused although it still holds the key and the current head, and
    it cannot come back by itself: its invitation went with its membership, and the
    removal bans it (an old invite link no longer lets it in). Only a new invitation does.
    """
    server = await start_relay()
    owner, bob = await user(server, "owner"), await user(server, "bob")
    info, ring = await owner.create_space(name="vault", private=True)
    space_id = info.space_id
    token = await owner.create_link(space_id)  # bob will know an old link
    await owner.invite(space_id, "bob")
    await bob.join(space_id)
    bobs_ring = await bob.keyring(space_id, (await bob.event("keys", space_id=space_id)).keys)
    bobs_handle = await bob.send(bobs_ring, "bob's")
    await bob.call(frames.Subscribe, space_id=space_id)
    await owner.remove(space_id, "bob")
    removal = await bob.state_event("remove", member="bob")  # pushed to bob, once
    bob.logs[space_id].apply(removal)  # bob's view is the real head
    await owner.send(ring, "after bob left")
    await bob.no_event("message")
    state = bob.logs[space_id]
    link_id, proof = bob.link_proof(space_id, link_keys_from_token(token))

    def add(**options: Any) -> frames.StateEvent:
        return bob.add_event(state, **options)

    attempts: list[tuple[type[frames.Request[Any]], dict[str, Any], str]] = [
        (frames.Send, {"envelope": bob.seal(bobs_ring, "still here?")}, "forbidden"),
        (frames.SendEphemeral, {"envelope": bob.seal(bobs_ring, 1, kind="eph")}, "forbidden"),
        (frames.Edit, {"handle": bobs_handle, "envelope": bob.seal(bobs_ring, "v2")}, "forbidden"),
        (frames.HistoryRequest, {"space_id": space_id, "before": None, "limit": 10}, "forbidden"),
        (frames.Subscribe, {"space_id": space_id}, "forbidden"),
        (frames.UnsubscribeRequest, {"space_id": space_id}, "forbidden"),
        (frames.FetchKeys, {"space_id": space_id}, "forbidden"),
        (frames.ShardTicket, {"space_id": space_id}, "forbidden"),
        (frames.GetSpaceInfo, {"space_id": space_id}, "not_found"),
        (frames.GetStateLog, {"space_id": space_id, "since": 0, "limit": 10}, "forbidden"),
        (
            frames.Admit,
            {
                "space_id": space_id,
                "member": "owner",
                "keys": (bob.wrap(bobs_ring, 0, entry(state, "owner")),),
            },
            "forbidden",
        ),
        *(
            (
                frames.Append,
                {"space_id": space_id, "event": bob.make(space_id, kind, body), "keys": ()},
                "forbidden",
            )
            for kind, body in [
                (
                    "invite",
                    {"member": "bob", "role": "viewer", "signing_key": None, "ecdh_key": None},
                ),
                ("leave", {"member": "bob"}),
                ("delete", {"handle": bobs_handle, "author": "bob"}),
            ]
        ),
        (frames.Join, {"space_id": space_id, "event": None}, "forbidden"),
        (
            frames.Join,
            {"space_id": space_id, "event": add(via="invite", role="viewer")},
            "forbidden",
        ),
        (frames.Join, {"space_id": space_id, "event": add(via="open")}, "forbidden"),
        (frames.Join, {"space_id": space_id, "event": add(token=token)}, "forbidden"),
    ]
    for cls, fields, code in attempts:
        answer = await bob.request(cls, **fields)
        assert isinstance(answer, frames.ErrorFrame) and answer.code == code, (cls.OP, answer)
        figures.add("authorisation.removed_member_refusals")
    assert (await bob.call(frames.Resolve, name="vault")).space_id is None
    # Like anyone given the token, bob may still read the log (not the messages) through
    # the link until the owner revokes it or it is used up.
    page = await bob.call(frames.GetStateLog, space_id=space_id, since=0, limit=100,
                          link_id=link_id, proof=proof)  # fmt: skip
    assert page.head_seq == state.head_seq
    await owner.invite(space_id, "bob")  # a new invitation lifts the ban
    await bob.join(space_id)
    assert "bob" in (await owner.sync(space_id)).members
