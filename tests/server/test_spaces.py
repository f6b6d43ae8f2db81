"""Creating spaces from a genesis event and the channel directory: create, exists,
resolve, list, visibility, the genesis and epoch-0 key rules, reading a state log."""

from __future__ import annotations

import dataclasses

import pytest

from spacenb.exceptions import (
    ChannelExistsError,
    ChannelNotFoundError,
    IntegrityError,
    InvalidKeyError,
    LimitExceededError,
    PermissionDeniedError,
    ProtocolError,
    ServerError,
)
from spacenb.protocol import frames
from spacenb.protocol.encoding import canonical_json
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair, decode_public_key
from spacenb.protocol.statelog import SpaceState, make_event
from spacenb.protocol.tickets import verify_ticket
from spacenb.server.handlers import REQUEST_TABLE
from tests.server.rawclient import running, user

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and PostgreSQL


async def test_create_channel_resolve_list(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="general")
        assert info.owner == "alice"
        assert (info.name, info.policy, info.epoch, info.keeper, info.head_seq) == (
            "general",
            "static",
            0,
            "keeper",
            0,
        )
        assert not info.private and not info.manual_admit
        bob = await user(srv, "bob")
        assert (await bob.call(frames.Resolve, name="general")).space_id == info.space_id
        assert (await bob.call(frames.Resolve, name="nope")).space_id is None
        await alice.create_space(name="alpha")
        listed = (await bob.call(frames.ListChannels)).channels
        assert [c.name for c in listed] == ["alpha", "general"]
        assert (await bob.call(frames.GetSpaceInfo, space_id=info.space_id)) == info
        # the log is the genesis alice signed; anyone may read a public space's log
        page = await bob.read_log(info.space_id)
        assert page.head_seq == 0 and page.events == tuple(alice.logs[info.space_id].events)
        state = SpaceState.from_events(page.events)
        assert {n: m.role for n, m in state.members.items()} == {
            "alice": "owner",
            "keeper": "editor",
        }
        assert state.members["alice"].signing_key == alice.identity.signing_key
        keeper = await bob.user("keeper")
        assert state.members["keeper"].ecdh_key == keeper.ecdh_key


async def test_channel_name_taken(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        await alice.create_space(name="general")
        bob = await user(srv, "bob")
        with pytest.raises(ChannelExistsError):
            await bob.create_space(name="general")


async def test_private_channel_is_hidden_from_others(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="secret", private=True)
        sid = info.space_id
        bob = await user(srv, "bob")
        assert (await bob.call(frames.ListChannels)).channels == ()
        assert (await bob.call(frames.Resolve, name="secret")).space_id is None
        with pytest.raises(ChannelNotFoundError):
            await bob.call(frames.GetSpaceInfo, space_id=sid)
        with pytest.raises(PermissionDeniedError, match="private"):
            await bob.read_log(sid)
        assert (await alice.call(frames.Resolve, name="secret")).space_id == sid
        await alice.invite(sid, "bob")
        assert (await bob.call(frames.Resolve, name="secret")).space_id == sid
        seen = await bob.call(frames.GetSpaceInfo, space_id=sid)
        assert seen.private and seen.head_seq == 1
        assert (await bob.sync(sid)).invitations["bob"].role == "viewer"
        assert (await bob.call(frames.ListChannels)).channels == ()  # still never listed


async def test_unnamed_space_without_keeper(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(keeper=False)
        assert info.name is None and info.keeper is None
        assert (await alice.call(frames.ListChannels)).channels == ()
        assert set((await alice.sync(info.space_id)).members) == {"alice"}


async def test_create_space_needs_a_genesis_signed_by_the_space_key(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        pair, other = SpaceKeyPair.generate(), SpaceKeyPair.generate()
        ring = Keyring.fresh(pair.space_id, "static")
        keys = (alice.wrap(ring, 0, await alice.user("alice")),)
        good = alice.genesis(pair, ring)
        # signed by another space key
        forged = dataclasses.replace(good, signature=other.sign(good.signed_bytes()))
        with pytest.raises(IntegrityError):
            await alice.call(frames.CreateSpace, genesis=forged, keys=keys)
        # a changed body no longer matches the signature
        renamed = dataclasses.replace(good, body=good.body.replace(b'"name":null', b'"name":"x"'))
        with pytest.raises(IntegrityError):
            await alice.call(frames.CreateSpace, genesis=renamed, keys=keys)
        with pytest.raises(InvalidKeyError):
            await alice.call(
                frames.CreateSpace, genesis=dataclasses.replace(good, space_id="spc.x"), keys=keys
            )
        # not a genesis: a later seq, another prev, another kind
        for bad in (
            dataclasses.replace(good, seq=1),
            dataclasses.replace(good, prev=b"\1" * 32),
            dataclasses.replace(good, kind="add"),
        ):
            with pytest.raises(ProtocolError, match="genesis"):
                await alice.call(frames.CreateSpace, genesis=bad, keys=keys)
        info = await alice.call(frames.CreateSpace, genesis=good, keys=keys)
        assert info.space_id == pair.space_id and info.head_seq == 0
        with pytest.raises(ChannelExistsError):
            await alice.call(frames.CreateSpace, genesis=good, keys=keys)


async def test_genesis_body_must_be_canonical_and_well_formed(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        pair = SpaceKeyPair.generate()
        ring = Keyring.fresh(pair.space_id, "static")
        keys = (alice.wrap(ring, 0, await alice.user("alice")),)
        good = alice.genesis(pair, ring)
        body = good.fields()

        def signed(data: bytes):
            unsigned = dataclasses.replace(good, body=data, signature=b"")
            return dataclasses.replace(unsigned, signature=pair.sign(unsigned.signed_bytes()))

        spaced = canonical_json(body).replace(b",", b", ")
        with pytest.raises(ProtocolError, match="canonical"):
            await alice.call(frames.CreateSpace, genesis=signed(spaced), keys=keys)
        with pytest.raises(ProtocolError, match="JSON"):
            await alice.call(frames.CreateSpace, genesis=signed(b"{nope"), keys=keys)
        extra = canonical_json({**body, "admin": "mallory"})
        with pytest.raises(ProtocolError, match="exactly the fields"):
            await alice.call(frames.CreateSpace, genesis=signed(extra), keys=keys)
        for field, value in [("policy", "forever"), ("private", "yes"), ("owner", "Alice")]:
            bad = canonical_json({**body, field: value})
            with pytest.raises(ProtocolError, match=field):
                await alice.call(frames.CreateSpace, genesis=signed(bad), keys=keys)
        assert (await alice.call(frames.ListChannels)).channels == ()


async def test_genesis_must_name_the_caller_with_its_keys_as_owner(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        bob = await user(srv, "bob")
        pair = SpaceKeyPair.generate()
        ring = Keyring.fresh(pair.space_id, "static")
        keys = (alice.wrap(ring, 0, await alice.user("alice")),)
        # a genesis making bob the owner, sent by alice
        bobs = alice.genesis(pair, ring, owner="bob", owner_keys=bob.identity)
        with pytest.raises(PermissionDeniedError, match="owner"):
            await alice.call(frames.CreateSpace, genesis=bobs, keys=keys)
        # alice as owner, but with keys she did not sign in with
        other = alice.genesis(pair, ring, owner_keys=IdentityKeys.generate())
        with pytest.raises(PermissionDeniedError, match="owner"):
            await alice.call(frames.CreateSpace, genesis=other, keys=keys)
        assert (await bob.call(frames.UserKeys, usernames=("alice",))).users[0].signing_key == (
            alice.identity.signing_key
        )
        with pytest.raises(ChannelNotFoundError):  # nothing was stored
            await alice.call(frames.GetSpaceInfo, space_id=pair.space_id)


async def test_genesis_names_only_this_relays_keeper(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        bob = await user(srv, "bob")
        me, keeper = await alice.user("alice"), await alice.user("keeper")
        pair = SpaceKeyPair.generate()
        ring = Keyring.fresh(pair.space_id, "static")
        fake = IdentityKeys.generate()
        impostors = [
            frames.UserEntry("keeper", fake.signing_key, fake.ecdh_key),  # a fake keeper
            frames.UserEntry("keeper", keeper.signing_key, fake.ecdh_key),  # half fake
            frames.UserEntry("bob", bob.identity.signing_key, bob.identity.ecdh_key),
        ]
        for impostor in impostors:
            genesis = alice.genesis(pair, ring, name="c", keeper=impostor)
            keys = (alice.wrap(ring, 0, me), alice.wrap(ring, 0, impostor))
            with pytest.raises(PermissionDeniedError, match="keeper"):
                await alice.call(frames.CreateSpace, genesis=genesis, keys=keys)
        # the keeper with manual admission is a contradiction the log itself refuses
        genesis = alice.genesis(pair, ring, name="c", keeper=keeper, manual_admit=True)
        keys = (alice.wrap(ring, 0, me), alice.wrap(ring, 0, keeper))
        with pytest.raises(ProtocolError, match="manual admission"):
            await alice.call(frames.CreateSpace, genesis=genesis, keys=keys)
        assert (await alice.call(frames.Resolve, name="c")).space_id is None
        genesis = alice.genesis(pair, ring, name="c", keeper=keeper)
        info = await alice.call(frames.CreateSpace, genesis=genesis, keys=keys)
        assert info.keeper == "keeper"


async def test_create_space_key_rules(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        bob = await user(srv, "bob")
        pair = SpaceKeyPair.generate()
        ring = Keyring.fresh(pair.space_id, "static")
        me, other, keeper = [await alice.user(n) for n in ("alice", "bob", "keeper")]
        genesis = alice.genesis(pair, ring, name="c", keeper=keeper)
        mine, keepers = alice.wrap(ring, 0, me), alice.wrap(ring, 0, keeper)
        for keys, error, match in [
            ((), ProtocolError, "at least one"),
            ((keepers,), ProtocolError, "owner and to an admitted keeper"),
            ((mine,), ProtocolError, "owner and to an admitted keeper"),
            ((mine, keepers, alice.wrap(ring, 0, other)), PermissionDeniedError, "'bob'"),
            ((mine, mine, keepers), ProtocolError, "duplicate"),
            (
                (mine, alice.wrap(ring, 1, keeper, key=ring.key(0))),
                PermissionDeniedError,
                "epoch 1",
            ),
            (
                (mine, alice.wrap(ring, 0, keeper, space_id=SpaceKeyPair.generate().space_id)),
                ProtocolError,
                "another space",
            ),
            ((mine, dataclasses.replace(keepers, signature=mine.signature)), IntegrityError, None),
        ]:
            with pytest.raises(error, match=match):
                await alice.call(frames.CreateSpace, genesis=genesis, keys=keys)
        forged = bob.wrap(ring, 0, me)  # wrapped and signed by bob
        with pytest.raises(ProtocolError, match="wrapper"):
            await alice.call(frames.CreateSpace, genesis=genesis, keys=(forged, keepers))
        assert (await alice.call(frames.Resolve, name="c")).space_id is None  # nothing stored
        await alice.call(frames.CreateSpace, genesis=genesis, keys=(keepers, mine))
        stored = (await alice.call(frames.FetchKeys, space_id=pair.space_id)).keys
        assert [(k.recipient, k.epoch) for k in stored] == [("alice", 0)]


@pytest.mark.parametrize("name", ["", " padded", "a" * 101, "tab\there"])
async def test_bad_channel_names(tmp_path, name):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        with pytest.raises(ProtocolError, match="name"):
            await alice.create_space(name=name)


async def test_state_log_pages_and_limits(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="c", private=True)
        sid = info.space_id
        for name in ("bob", "carol", "dave", "erin"):
            await alice.invite(sid, name)
        everything = alice.logs[sid].events
        assert len(everything) == 5
        page = await alice.read_log(sid, since=1, limit=2)
        assert (page.events, page.head_seq) == (tuple(everything[1:3]), 4)
        assert (await alice.read_log(sid, since=4)).events == (everything[4],)
        assert (await alice.read_log(sid, since=5)).events == ()
        with pytest.raises(ProtocolError, match="limit"):
            await alice.read_log(sid, limit=0)
        with pytest.raises(LimitExceededError):
            await alice.read_log(sid, limit=frames.MAX_LOG_PAGE + 1)
        assert len((await alice.read_log(sid, limit=frames.MAX_LOG_PAGE)).events) == 5
        with pytest.raises(ChannelNotFoundError):
            await alice.read_log(SpaceKeyPair.generate().space_id)
        # an invited user may read the log: it is how it learns what to sign its add on
        bob = await user(srv, "bob")
        assert (await bob.read_log(sid)).events == tuple(everything)


async def test_user_keys(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        users = (await alice.call(frames.UserKeys, usernames=("zed", "keeper", "alice"))).users
        assert [u.username for u in users] == ["alice", "keeper"]
        assert users[0].signing_key == alice.identity.signing_key


async def test_shard_ticket_needs_stores_and_membership(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="files")
        with pytest.raises(ServerError, match="no shard stores"):
            await alice.call(frames.ShardTicket, space_id=info.space_id)
        bob = await user(srv, "bob")
        with pytest.raises(PermissionDeniedError):
            await bob.call(frames.ShardTicket, space_id=info.space_id)


async def test_shard_ticket_signed_by_the_relay(tmp_path):
    async with running(tmp_path, shards=3, shards_needed=2) as srv:
        assert len(srv.shard_urls) == 3 and all(u.startswith("ws://") for u in srv.shard_urls)
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="files")
        result = await alice.call(frames.ShardTicket, space_id=info.space_id)
        assert result.stores == srv.shard_urls and result.shards_needed == 2
        ticket = verify_ticket(
            result.ticket,
            decode_public_key(srv.relay.core.relay_keys.signing_key, "sig"),
            space_id=info.space_id,
            now_us=result.expires_at_us - 1,
        )
        assert ticket.username == "alice" and ticket.expires_at_us == result.expires_at_us
        assert (tmp_path / "shards" / "002").is_dir()


def test_every_request_in_the_protocol_has_a_handler():
    assert set(REQUEST_TABLE) == set(frames.REQUESTS)
    for removed in ("rotate", "delete", "set_role", "invite", "remove_member", "leave",
                    "create_link", "list_links", "revoke_link", "members", "roster"):  # fmt: skip
        assert removed not in frames.REQUESTS


async def test_member_only_requests_refuse_outsiders(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="team", policy="rotate")
        sid = info.space_id
        handle = await alice.send(ring, "hello")
        zed = await user(srv, "zed")
        await zed.sync(sid)  # a public log: zed knows the head
        signal = zed.seal(ring, "psst", kind="eph")
        refused = [
            (frames.SendEphemeral, {"envelope": signal}),
            (frames.Send, {"envelope": zed.seal(ring, "hi")}),
            (frames.Edit, {"handle": handle, "envelope": zed.seal(ring, "hi")}),
            (frames.HistoryRequest, {"space_id": sid, "before": None, "limit": 5}),
            (frames.ShardTicket, {"space_id": sid}),
            (frames.Admit, {"space_id": sid, "member": "zed", "keys": ()}),
            (frames.FetchKeys, {"space_id": sid}),
            (frames.Subscribe, {"space_id": sid}),
            (frames.UnsubscribeRequest, {"space_id": sid}),
            (frames.Join, {"space_id": sid, "event": None}),
        ]
        for cls, fields in refused:
            with pytest.raises(PermissionDeniedError, match="not a member"):
                await zed.call(cls, **fields)
        # every state event but its own add: refused to a non-member
        bodies = {
            "invite": {"member": "zed", "role": "viewer", "signing_key": None, "ecdh_key": None},
            "role": {"member": "alice", "role": "viewer"},
            "remove": {"member": "alice"},
            "leave": {"member": "zed"},
            "delete": {"handle": handle, "author": "alice"},
            "epoch": {"epoch": 1, "recipients": ["alice", "keeper", "zed"],
                      "key_commitment": "A" * 43},
            "link": zed.link_body("A" * 43),
            "unlink": {"link_id": "0" * 16},
        }  # fmt: skip
        for kind, body in bodies.items():
            with pytest.raises(PermissionDeniedError, match="not a member"):
                await zed.call(
                    frames.Append, space_id=sid, event=zed.make(sid, kind, body), keys=()
                )
        assert (await zed.call(frames.GetSpaceInfo, space_id=sid)).name == "team"  # public
        assert (await zed.read_log(sid)).head_seq == 0  # nothing was appended


async def test_events_for_one_space_are_not_appended_to_another(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        a, _ = await alice.create_space(name="a")
        b, _ = await alice.create_space(name="b")
        event = alice.make(a.space_id, "role", {"member": "keeper", "role": "viewer"})
        with pytest.raises(ProtocolError, match="another space"):
            await alice.call(frames.Append, space_id=b.space_id, event=event, keys=())
        # and an event naming a space nobody created
        other = make_event(
            alice.identity, space_id=SpaceKeyPair.generate().space_id, seq=1, prev=bytes(32),
            kind="leave", actor="alice", at_us=1, body={"member": "alice"},
        )  # fmt: skip
        with pytest.raises(ChannelNotFoundError):
            await alice.call(frames.Append, space_id=other.space_id, event=other, keys=())


async def test_private_channel_names_are_no_oracle(tmp_path):
    """A private channel's name is its owner's: another user creating that name (public
    or private) succeeds, so nobody learns that it exists; members and invited users
    resolve it by name (before the public one of that name), others get the public one."""
    async with running(tmp_path) as srv:
        alice, bob = await user(srv, "alice"), await user(srv, "bob")
        mallory, carol = await user(srv, "mallory"), await user(srv, "carol")
        board, _ = await alice.create_space(name="board", private=True)
        public, _ = await mallory.create_space(name="board")  # no channel_exists: no oracle
        other, _ = await mallory.create_space(name="board", private=True)
        with pytest.raises(ChannelExistsError, match="you own a private channel named 'board'"):
            await alice.create_space(name="board", private=True)
        with pytest.raises(ChannelExistsError):
            await carol.create_space(name="board")  # public names are one namespace
        await alice.invite(board.space_id, "bob")
        resolved = {
            who.me: (await who.call(frames.Resolve, name="board")).space_id
            for who in (alice, bob, mallory, carol)
        }
        assert resolved == {
            "alice": board.space_id, "bob": board.space_id, "mallory": other.space_id,
            "carol": public.space_id,
        }  # fmt: skip
        listed = (await carol.call(frames.ListChannels)).channels
        assert listed == (frames.ChannelEntry("board", public.space_id),)
