"""Creating spaces and the channel directory: create, exists, resolve, list, visibility."""

from __future__ import annotations

import pytest

from spacenb.exceptions import (
    ChannelExistsError,
    ChannelNotFoundError,
    IntegrityError,
    InvalidKeyError,
    PermissionDeniedError,
    ProtocolError,
    ServerError,
)
from spacenb.protocol import frames
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair, decode_public_key
from spacenb.protocol.tickets import verify_ticket
from spacenb.server.handlers import HANDLERS
from tests.server.rawclient import running, user


async def test_create_channel_resolve_list(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="general")
        assert info.owner == "alice"
        assert (info.name, info.policy, info.epoch, info.keeper) == (
            "general",
            "static",
            0,
            "keeper",
        )
        assert not info.private and not info.manual_admit
        bob = await user(srv, "bob")
        assert (await bob.call(frames.Resolve, name="general")).space_id == info.space_id
        assert (await bob.call(frames.Resolve, name="nope")).space_id is None
        await alice.create_space(name="alpha")
        listed = (await bob.call(frames.ListChannels)).channels
        assert [c.name for c in listed] == ["alpha", "general"]
        assert (await bob.call(frames.GetSpaceInfo, space_id=info.space_id)) == info
        members = (await alice.call(frames.Members, space_id=info.space_id)).members
        assert members == (
            frames.MemberEntry("alice", "owner"),
            frames.MemberEntry("keeper", "editor"),
        )


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
        bob = await user(srv, "bob")
        assert (await bob.call(frames.ListChannels)).channels == ()
        assert (await bob.call(frames.Resolve, name="secret")).space_id is None
        with pytest.raises(ChannelNotFoundError):
            await bob.call(frames.GetSpaceInfo, space_id=info.space_id)
        assert (await alice.call(frames.Resolve, name="secret")).space_id == info.space_id
        await alice.call(frames.Invite, space_id=info.space_id, username="bob")
        assert (await bob.call(frames.Resolve, name="secret")).space_id == info.space_id
        assert (await bob.call(frames.GetSpaceInfo, space_id=info.space_id)).private


async def test_unnamed_space_without_keeper(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(keeper=False)
        assert info.name is None and info.keeper is None
        assert (await alice.call(frames.ListChannels)).channels == ()


async def test_create_space_needs_the_space_key_signature(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        pair, other = SpaceKeyPair.generate(), SpaceKeyPair.generate()
        ring = Keyring.fresh(pair.space_id, "static")
        me = await alice.user("alice")
        signed = frames.create_space_signed_bytes(
            pair.space_id, "alice", "static", False, False, None
        )
        fields = dict(space_id=pair.space_id, policy="static", private=False, manual_admit=False,
                      name=None, keys=(alice.wrap(ring, 0, me),))  # fmt: skip
        with pytest.raises(IntegrityError):
            await alice.call(frames.CreateSpace, signature=other.sign(signed), **fields)
        # signed for another owner: refused as well
        bobs = frames.create_space_signed_bytes(pair.space_id, "bob", "static", False, False, None)
        with pytest.raises(IntegrityError):
            await alice.call(frames.CreateSpace, signature=pair.sign(bobs), **fields)
        with pytest.raises(InvalidKeyError):
            await alice.call(
                frames.CreateSpace, signature=pair.sign(signed), **{**fields, "space_id": "spc.x"}
            )
        info = await alice.call(frames.CreateSpace, signature=pair.sign(signed), **fields)
        with pytest.raises(ChannelExistsError):
            await alice.call(frames.CreateSpace, signature=pair.sign(signed), **fields)
        assert info.space_id == pair.space_id


async def test_create_space_key_rules(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        bob = await user(srv, "bob")
        pair = SpaceKeyPair.generate()
        ring = Keyring.fresh(pair.space_id, "static")
        me, other, keeper = [await alice.user(n) for n in ("alice", "bob", "keeper")]
        signed = frames.create_space_signed_bytes(
            pair.space_id, "alice", "static", False, False, "c"
        )
        base = dict(space_id=pair.space_id, policy="static", private=False, manual_admit=False,
                    name="c", signature=pair.sign(signed))  # fmt: skip
        for keys, match in [
            ((), "at least one"),
            ((alice.wrap(ring, 0, keeper),), "to itself"),
            ((alice.wrap(ring, 0, me), alice.wrap(ring, 0, other)), "recipient"),
            ((alice.wrap(ring, 0, me), alice.wrap(ring, 0, me)), "duplicate"),
        ]:
            with pytest.raises(ProtocolError, match=match):
                await alice.call(frames.CreateSpace, keys=keys, **base)
        forged = bob.wrap(Keyring(pair.space_id, "static", {0: ring.key(0)}), 0, me)
        with pytest.raises(ProtocolError, match="wrapper"):
            await alice.call(frames.CreateSpace, keys=(forged,), **base)
        assert (await alice.call(frames.Resolve, name="c")).space_id is None  # nothing stored


@pytest.mark.parametrize("name", ["", " padded", "a" * 101, "tab\there"])
async def test_bad_channel_names(tmp_path, name):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        with pytest.raises(ProtocolError, match="name"):
            await alice.create_space(name=name)


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
        relay_key = IdentityKeys.from_text((tmp_path / "relay.key").read_text().strip())
        ticket = verify_ticket(
            result.ticket,
            decode_public_key(relay_key.signing_key, "sig"),
            space_id=info.space_id,
            now_us=result.expires_at_us - 1,
        )
        assert ticket.username == "alice" and ticket.expires_at_us == result.expires_at_us
        assert (tmp_path / "shards" / "002").is_dir()


def test_every_request_in_the_protocol_has_a_handler():
    assert set(HANDLERS) == set(frames.REQUESTS)


async def test_member_only_requests_refuse_outsiders(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="team")
        sid = info.space_id
        handle = await alice.send(ring, "hello")
        zed = await user(srv, "zed")
        signal = zed.seal(ring, "psst", kind="eph")
        refused = [
            (frames.SendEphemeral, {"envelope": signal}),
            (frames.Send, {"envelope": zed.seal(ring, "hi")}),
            (frames.Edit, {"handle": handle, "envelope": zed.seal(ring, "hi")}),
            (frames.Delete, {"space_id": sid, "handle": handle}),
            (frames.History, {"space_id": sid, "before": None, "limit": 5}),
            (frames.Invite, {"space_id": sid, "username": "zed"}),
            (frames.ShardTicket, {"space_id": sid}),
            (frames.Rotate, {"space_id": sid, "epoch": 1, "keys": ()}),
            (frames.Admit, {"space_id": sid, "member": "zed", "keys": ()}),
            (frames.CreateLink,
             {"space_id": sid, "expires_in_sec": None, "max_uses": None, "role": "viewer"}),
            (frames.ListLinks, {"space_id": sid}),
            (frames.RevokeLink, {"space_id": sid, "token": "x"}),
            (frames.SetRole, {"space_id": sid, "member": "alice", "role": "viewer"}),
            (frames.RemoveMember, {"space_id": sid, "member": "alice"}),
        ]  # fmt: skip
        for cls, fields in refused:
            with pytest.raises(PermissionDeniedError):
                await zed.call(cls, **fields)
        assert (await zed.call(frames.GetSpaceInfo, space_id=sid)).name == "team"  # public
