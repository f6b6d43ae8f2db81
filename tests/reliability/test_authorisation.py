"""The authorisation matrix: every operation, tried by every kind of actor, is allowed or
refused exactly as PROTOCOL.md's request table says ("who": any, member, owner, author).

Each operation gets a fresh ``rotate`` channel owned by ``owner``, with an ``editor`` and
a ``viewer``; ``other`` is a member of another space only, ``outsider`` is signed in with
the app key but a member of nothing, and ``wrong-key`` holds a wrong app key. The observed
matrix is printed into RELIABILITY.md, and this test checks the copy there is current.
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
from spacenb.protocol.tickets import issue_ticket
from spacenb.server.app import RunningServer
from tests.server.rawclient import RawClient, user

from .conftest import Figures, StartRelay

RELIABILITY_MD = Path(__file__).resolve().parents[2] / "RELIABILITY.md"
ACTORS = ("owner", "editor", "viewer", "other", "outsider", "wrong-key")
MEMBERS = ("owner", "editor", "viewer")
EVERYONE = ACTORS
# PROTOCOL.md, "Requests": who may call each op. Edits and deletes are the author's only;
# rotation is the owner's or an editor's (of a rotate space); shard reads need only a
# share's name.
WHO: dict[str, tuple[str, ...]] = {
    "send": MEMBERS,
    "history": MEMBERS,
    "edit own message": MEMBERS,
    "edit another's message": (),
    "delete own message": MEMBERS,
    "delete another's message": (),
    "invite": MEMBERS,
    "create_link": ("owner",),
    "list_links": ("owner",),
    "revoke_link": ("owner",),
    "set_role": ("owner",),
    "rotate": ("owner", "editor"),
    "remove_member": ("owner",),
    "upload shards (shard_ticket + store)": MEMBERS,
    "read shards (by share name)": EVERYONE,
}


def expected(op: str, actor: str) -> str:
    if actor in WHO[op]:
        return "yes"
    if actor == "wrong-key" and not op.startswith(("upload", "read")):
        return "auth_failed"  # nothing is reachable without signing in
    return "forbidden"


class Room:
    """One operation's fresh space, and what the attempts need from it."""

    def __init__(self, info: frames.SpaceInfo, handles: dict[str, int]) -> None:
        self.info = info
        self.id = info.space_id
        self.handles = handles  # the owner's and the editor's messages


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
        self.other_space = other_space
        self.share = share
        self.names = itertools.count()

    async def join(self, client: RawClient, space_id: str) -> None:
        await client.call(frames.Join, space_id=space_id)
        await client.event("keys", space_id=space_id)

    async def ring(self, actor: str, space_id: str) -> Keyring:
        """The actor's keys of a space (a made-up key for a non-member)."""
        client = self.clients[actor]
        info = await client.call(frames.GetSpaceInfo, space_id=space_id)
        if actor in MEMBERS:
            return await client.keyring(info)
        return Keyring(space_id, "rotate", {info.epoch: crypto.random_bytes(32)})

    async def newcomer(self, room: Room) -> str:
        """A fresh member of the room (a target for set_role and remove_member)."""
        client = await user(self.server, f"member{next(self.names)}")
        await self.join(client, room.id)
        await client.close()
        assert client.username is not None
        return client.username

    async def room(self, op: str) -> Room:
        owner = self.clients["owner"]
        info, ring = await owner.create_space(name=f"room {op}", policy="rotate")
        for actor in ("editor", "viewer"):
            await self.join(self.clients[actor], info.space_id)
        await owner.call(frames.SetRole, space_id=info.space_id, member="editor", role="editor")
        editor_ring = await self.ring("editor", info.space_id)
        handles = {
            "owner": await owner.send(ring, "the owner's"),
            "editor": await self.clients["editor"].send(editor_ring, "the editor's"),
        }
        return Room(info, handles)

    async def attempt(self, op: str, actor: str, room: Room) -> str:
        """Try ``op`` as ``actor``: ``"yes"`` or the refusal's error code."""
        if actor == "wrong-key" and not op.startswith(("upload", "read")):
            return await self.wrong_app_key()
        try:
            await OPS[op](self, self.clients[actor], actor, room)
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

    # -- the operations

    async def send(self, client: RawClient, actor: str, room: Room) -> None:
        await client.send(await self.ring(actor, room.id), "hello")

    async def history(self, client: RawClient, actor: str, room: Room) -> None:
        await client.call(frames.History, space_id=room.id, before=None, limit=10)

    async def edit(self, client: RawClient, actor: str, room: Room, handle: int) -> None:
        ring = await self.ring(actor, room.id)
        await client.call(frames.Edit, handle=handle, envelope=client.seal(ring, "edited"))

    async def own_handle(self, client: RawClient, actor: str, room: Room) -> int:
        """A message of the actor's own (a non-member has none: it aims at the owner's)."""
        if actor not in MEMBERS:
            return room.handles["owner"]
        return await client.send(await self.ring(actor, room.id), "mine")

    def another_handle(self, actor: str, room: Room) -> int:
        return room.handles["editor" if actor == "owner" else "owner"]

    async def edit_own(self, client: RawClient, actor: str, room: Room) -> None:
        await self.edit(client, actor, room, await self.own_handle(client, actor, room))

    async def edit_another(self, client: RawClient, actor: str, room: Room) -> None:
        await self.edit(client, actor, room, self.another_handle(actor, room))

    async def delete_own(self, client: RawClient, actor: str, room: Room) -> None:
        handle = await self.own_handle(client, actor, room)
        await client.call(frames.Delete, space_id=room.id, handle=handle)

    async def delete_another(self, client: RawClient, actor: str, room: Room) -> None:
        handle = self.another_handle(actor, room)
        await client.call(frames.Delete, space_id=room.id, handle=handle)

    async def invite(self, client: RawClient, actor: str, room: Room) -> None:
        await client.call(frames.Invite, space_id=room.id, username=f"guest-{actor}")

    async def create_link(self, client: RawClient, actor: str, room: Room) -> None:
        await client.call(
            frames.CreateLink, space_id=room.id, expires_in_sec=None, max_uses=None, role="viewer"
        )

    async def list_links(self, client: RawClient, actor: str, room: Room) -> None:
        await client.call(frames.ListLinks, space_id=room.id)

    async def revoke_link(self, client: RawClient, actor: str, room: Room) -> None:
        link = await self.clients["owner"].call(
            frames.CreateLink, space_id=room.id, expires_in_sec=None, max_uses=None, role="viewer"
        )  # the actor has learnt a token; may it revoke the link?
        await client.call(frames.RevokeLink, space_id=room.id, token=link.token)

    async def set_role(self, client: RawClient, actor: str, room: Room) -> None:
        member = await self.newcomer(room)
        await client.call(frames.SetRole, space_id=room.id, member=member, role="editor")

    async def rotate(self, client: RawClient, actor: str, room: Room) -> None:
        owner = self.clients["owner"]
        epoch = (await owner.call(frames.GetSpaceInfo, space_id=room.id)).epoch + 1
        roster = (await owner.call(frames.Roster, space_id=room.id)).members
        fresh = Keyring(room.id, "rotate", {epoch: crypto.random_bytes(32)})
        keys = tuple(
            client.wrap(fresh, epoch, frames.UserEntry(m.member_id, m.signing_key, m.ecdh_key))
            for m in roster
        )
        await client.call(frames.Rotate, space_id=room.id, epoch=epoch, keys=keys)

    async def remove_member(self, client: RawClient, actor: str, room: Room) -> None:
        member = await self.newcomer(room)
        await client.call(frames.RemoveMember, space_id=room.id, member=member)

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
    "history": Matrix.history,
    "edit own message": Matrix.edit_own,
    "edit another's message": Matrix.edit_another,
    "delete own message": Matrix.delete_own,
    "delete another's message": Matrix.delete_another,
    "invite": Matrix.invite,
    "create_link": Matrix.create_link,
    "list_links": Matrix.list_links,
    "revoke_link": Matrix.revoke_link,
    "set_role": Matrix.set_role,
    "rotate": Matrix.rotate,
    "remove_member": Matrix.remove_member,
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
    clients = {actor: await user(server, actor) for actor in ACTORS if actor != "wrong-key"}
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
    assert table in RELIABILITY_MD.read_text(), "RELIABILITY.md's matrix is out of date:\n" + table


async def test_a_removed_member_is_an_outsider_at_once(
    start_relay: StartRelay, figures: Figures
) -> None:
    """Removed from a private space, a member stops receiving its events at once, every
    request about it is refused, and it cannot simply join again (its invitation went with
    its membership)."""
    server = await start_relay()
    owner, bob = await user(server, "owner"), await user(server, "bob")
    info, ring = await owner.create_space(name="vault", private=True)
    await owner.call(frames.Invite, space_id=info.space_id, username="bob")
    await bob.call(frames.Join, space_id=info.space_id)
    bobs_ring = await bob.keyring(info, (await bob.event("keys")).keys)
    await bob.call(frames.Subscribe, space_id=info.space_id)
    await owner.call(frames.RemoveMember, space_id=info.space_id, member="bob")
    await bob.event("member", member_id="bob", role=None)
    await owner.send(ring, "after bob left")
    await bob.no_event("message")
    attempts: list[tuple[type[frames.Request], dict[str, Any]]] = [
        (frames.Send, {"envelope": bob.seal(bobs_ring, "still here?")}),
        (frames.History, {"space_id": info.space_id, "before": None, "limit": 10}),
        (frames.Subscribe, {"space_id": info.space_id}),
        (frames.FetchKeys, {"space_id": info.space_id}),
        (frames.Members, {"space_id": info.space_id}),
        (frames.Invite, {"space_id": info.space_id, "username": "bob"}),
        (frames.Join, {"space_id": info.space_id}),
    ]
    for cls, fields in attempts:
        answer = await bob.request(cls, **fields)
        assert isinstance(answer, frames.ErrorFrame) and answer.code == "forbidden", cls.OP
        figures.add("authorisation.removed_member_refusals")
