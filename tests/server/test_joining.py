"""Joining: public, private, allowlist, invite links, the keeper, manual admission,
rotation, roles and removal (PROTOCOL.md, "Joining")."""

from __future__ import annotations

import pytest

from spacenb.clock import FixedClock
from spacenb.exceptions import (
    ChannelNotFoundError,
    InviteError,
    KeyUnavailableError,
    PermissionDeniedError,
    ProtocolError,
)
from spacenb.protocol import frames
from spacenb.protocol.keys import SpaceKeyPair
from tests.server.rawclient import running, user


async def test_join_public_channel_keeper_hands_over_the_key(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="general")
        await alice.call(frames.Subscribe, space_id=info.space_id)
        bob = await user(srv, "bob")
        joined = await bob.call(frames.Join, space_id=info.space_id)
        assert (joined.role, joined.pending, joined.keys) == ("viewer", True, ())
        assert joined.space == info
        pushed = await bob.event("keys", space_id=info.space_id)
        assert [(k.epoch, k.wrapper, k.recipient) for k in pushed.keys] == [(0, "keeper", "bob")]
        assert (await bob.keyring(info, pushed.keys)).key(0) == ring.key(0)
        # alice saw the newcomer; its join request went to the keeper only, which admits
        assert (await alice.event("member")).member_id == "bob"
        await alice.call(frames.Ping)
        await alice.no_event("join_request")
        again = await bob.call(frames.Join, space_id=info.space_id)
        assert again.pending is False and len(again.keys) == 1


async def test_join_unknown_space(tmp_path):
    async with running(tmp_path) as srv:
        bob = await user(srv, "bob")
        with pytest.raises(ChannelNotFoundError):
            await bob.call(frames.Join, space_id=SpaceKeyPair.generate().space_id)


async def test_private_space_refuses_then_admits_allowlisted(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="secret", private=True)
        bob = await user(srv, "bob")
        with pytest.raises(PermissionDeniedError, match="private"):
            await bob.call(frames.Join, space_id=info.space_id)
        with pytest.raises(PermissionDeniedError):  # only members may invite
            await bob.call(frames.Invite, space_id=info.space_id, username="bob")
        await alice.call(frames.Invite, space_id=info.space_id, username="bob")
        assert (await bob.call(frames.Join, space_id=info.space_id)).pending
        keys = (await bob.event("keys")).keys
        assert (await bob.keyring(info, keys)).key(0) == ring.key(0)


async def test_invite_links_roles_max_uses_revocation(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="club", private=True)
        sid = info.space_id
        link = await alice.call(
            frames.CreateLink, space_id=sid, expires_in_sec=None, max_uses=2, role="editor"
        )
        assert link.token and len(link.link_id) == 16 and link.uses == 0
        for name in ("carol", "dave"):
            guest = await user(srv, name)
            joined = await guest.call(frames.Join, space_id=sid, token=link.token)
            assert joined.role == "editor" and joined.pending
            await guest.event("keys")
        eve = await user(srv, "eve")
        with pytest.raises(InviteError, match="used 2 of 2"):
            await eve.call(frames.Join, space_id=sid, token=link.token)
        with pytest.raises(InviteError, match="unknown"):
            await eve.call(frames.Join, space_id=sid, token="made-up")
        (listed,) = (await alice.call(frames.ListLinks, space_id=sid)).links
        assert (listed.link_id, listed.uses, listed.token) == (link.link_id, 2, None)
        open_link = await alice.call(
            frames.CreateLink, space_id=sid, expires_in_sec=None, max_uses=None, role="viewer"
        )
        await alice.call(frames.RevokeLink, space_id=sid, token=open_link.token)
        with pytest.raises(InviteError, match="revoked"):
            await eve.call(frames.Join, space_id=sid, token=open_link.token)
        with pytest.raises(InviteError):
            await alice.call(frames.RevokeLink, space_id=sid, token="made-up")
        members = {
            m.member_id: m.role for m in (await alice.call(frames.Members, space_id=sid)).members
        }
        assert members == {
            "alice": "owner",
            "keeper": "editor",
            "carol": "editor",
            "dave": "editor",
        }


async def test_invite_link_rules(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="club", private=True)
        other, _ = await alice.create_space(name="other", private=True)
        bob = await user(srv, "bob")
        await alice.call(frames.Invite, space_id=info.space_id, username="bob")
        await bob.call(frames.Join, space_id=info.space_id)
        args = dict(space_id=info.space_id, expires_in_sec=None, max_uses=None)
        with pytest.raises(PermissionDeniedError, match="owner"):
            await bob.call(frames.CreateLink, role="viewer", **args)
        with pytest.raises(PermissionDeniedError):
            await bob.call(frames.ListLinks, space_id=info.space_id)
        with pytest.raises(ProtocolError, match="role"):
            await alice.call(frames.CreateLink, role="owner", **args)
        with pytest.raises(ProtocolError, match="max_uses"):
            await alice.call(frames.CreateLink, role="viewer", **{**args, "max_uses": 0})
        link = await alice.call(frames.CreateLink, role="viewer", **args)
        carol = await user(srv, "carol")
        with pytest.raises(InviteError):  # a link only opens its own space
            await carol.call(frames.Join, space_id=other.space_id, token=link.token)


async def test_invite_link_expiry(tmp_path):
    clock = FixedClock()
    async with running(tmp_path, clock=clock) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="club", private=True)
        link = await alice.call(
            frames.CreateLink,
            space_id=info.space_id,
            expires_in_sec=60,
            max_uses=None,
            role="viewer",
        )
        assert link.expires_at_us == link.created_at_us + 60_000_000
        bob = await user(srv, "bob")
        clock.advance(59)
        await bob.call(frames.Join, space_id=info.space_id, token=link.token)
        clock.advance(1)
        carol = await user(srv, "carol")
        with pytest.raises(InviteError, match="expired"):
            await carol.call(frames.Join, space_id=info.space_id, token=link.token)


async def test_manual_admit_waits_for_a_member(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="gated", manual_admit=True)
        bob = await user(srv, "bob")
        await bob.call(frames.Join, space_id=info.space_id)
        await srv.keeper.idle()
        await bob.no_event("keys")
        # alice comes online later and is told of the waiting request
        await alice.call(frames.Subscribe, space_id=info.space_id)
        request = await alice.event("join_request", member_id="bob")
        wrapped = alice.wrap(
            ring, 0, frames.UserEntry("bob", request.signing_key, request.ecdh_key)
        )
        carol = await user(srv, "carol")
        with pytest.raises(PermissionDeniedError):  # not a member: may not admit
            await carol.call(frames.Admit, space_id=info.space_id, member="bob", keys=(wrapped,))
        with pytest.raises(PermissionDeniedError, match="must join"):
            await alice.call(frames.Admit, space_id=info.space_id, member="carol", keys=(wrapped,))
        await alice.call(frames.Admit, space_id=info.space_id, member="bob", keys=(wrapped,))
        keys = (await bob.event("keys")).keys
        assert (await bob.keyring(info, keys)).key(0) == ring.key(0)
        # the request is closed: a new subscriber is not told again
        again = await user(srv, "alice", identity=alice.identity)
        await again.call(frames.Subscribe, space_id=info.space_id)
        await again.no_event("join_request")


async def test_rotate_keeper_gives_only_the_current_epoch(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="rot", policy="rotate")
        sid = info.space_id
        bob = await user(srv, "bob")
        await bob.call(frames.Join, space_id=sid)
        assert [k.epoch for k in (await bob.event("keys")).keys] == [0]
        await bob.call(frames.Subscribe, space_id=sid)
        epoch = ring.mint_next()
        recipients = [await alice.user(n) for n in ("alice", "bob", "keeper")]
        keys = tuple(alice.wrap(ring, epoch, r) for r in recipients)
        assert (await alice.call(frames.Rotate, space_id=sid, epoch=1, keys=keys)).epoch == 1
        assert (await bob.event("epoch")).epoch == 1
        assert [k.epoch for k in (await bob.event("keys")).keys] == [1]
        carol = await user(srv, "carol")
        joined = await carol.call(frames.Join, space_id=sid)
        assert joined.space.epoch == 1
        pushed = (await carol.event("keys")).keys
        assert [k.epoch for k in pushed] == [1]
        assert (await carol.keyring(joined.space, pushed)).key(1) == ring.key(1)


async def test_rotate_rules(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="rot", policy="rotate")
        static, sring = await alice.create_space(name="static")
        sid = info.space_id
        me, keeper = await alice.user("alice"), await alice.user("keeper")
        ring.mint_next()
        good = (alice.wrap(ring, 1, me), alice.wrap(ring, 1, keeper))
        with pytest.raises(KeyUnavailableError):
            await alice.call(frames.Rotate, space_id=sid, epoch=2, keys=good)
        with pytest.raises(ProtocolError, match="keeper"):
            await alice.call(frames.Rotate, space_id=sid, epoch=1, keys=good[:1])
        stranger = await user(srv, "zed")
        with pytest.raises(ProtocolError, match="recipient"):
            await alice.call(
                frames.Rotate, space_id=sid, epoch=1,
                keys=(*good, alice.wrap(ring, 1, await alice.user("zed"))),
            )  # fmt: skip
        with pytest.raises(PermissionDeniedError):
            await stranger.call(frames.Rotate, space_id=sid, epoch=1, keys=good)
        with pytest.raises(PermissionDeniedError, match="rotate"):
            await alice.call(
                frames.Rotate, space_id=static.space_id, epoch=1, keys=(alice.wrap(sring, 0, me),)
            )
        await alice.call(frames.Rotate, space_id=sid, epoch=1, keys=good)
        with pytest.raises(KeyUnavailableError):  # the same epoch twice
            await alice.call(frames.Rotate, space_id=sid, epoch=1, keys=good)
        got = await alice.call(frames.FetchKeys, space_id=sid)
        assert [k.epoch for k in got.keys] == [0, 1]


async def test_roles_removal_and_leaving(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="team")
        sid = info.space_id
        bob, carol = await user(srv, "bob"), await user(srv, "carol")
        for guest in (bob, carol):
            await guest.call(frames.Join, space_id=sid)
            await guest.event("keys")
        await alice.call(frames.Subscribe, space_id=sid)
        await bob.call(frames.Subscribe, space_id=sid)
        with pytest.raises(PermissionDeniedError, match="owner"):
            await bob.call(frames.SetRole, space_id=sid, member="carol", role="editor")
        with pytest.raises(PermissionDeniedError, match="fixed"):
            await alice.call(frames.SetRole, space_id=sid, member="alice", role="viewer")
        with pytest.raises(ProtocolError):
            await alice.call(frames.SetRole, space_id=sid, member="bob", role="owner")
        with pytest.raises(ChannelNotFoundError):
            await alice.call(frames.SetRole, space_id=sid, member="zed", role="editor")
        await alice.call(frames.SetRole, space_id=sid, member="bob", role="editor")
        assert (await bob.event("member", role="editor")).member_id == "bob"
        with pytest.raises(PermissionDeniedError):
            await bob.call(frames.RemoveMember, space_id=sid, member="carol")
        with pytest.raises(PermissionDeniedError):
            await alice.call(frames.RemoveMember, space_id=sid, member="alice")
        with pytest.raises(PermissionDeniedError, match="cannot leave"):
            await alice.call(frames.Leave, space_id=sid)
        await alice.call(frames.RemoveMember, space_id=sid, member="bob")
        assert (await bob.event("member", member_id="bob")).role is None
        with pytest.raises(PermissionDeniedError):  # no longer a member
            await bob.send(ring, "still here?")
        # bob's connection no longer gets the space's events
        await alice.send(ring, "after bob")
        await bob.no_event("message")
        await carol.call(frames.Leave, space_id=sid)
        assert (await alice.event("member", member_id="carol")).role is None
        members = [m.member_id for m in (await alice.call(frames.Members, space_id=sid)).members]
        assert members == ["alice", "keeper"]


async def test_keys_members_roster_need_membership(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="team")
        bob = await user(srv, "bob")
        for cls in (frames.FetchKeys, frames.Members, frames.Roster, frames.Subscribe,
                    frames.Unsubscribe, frames.Leave):  # fmt: skip
            with pytest.raises(PermissionDeniedError, match="not a member"):
                await bob.call(cls, space_id=info.space_id)
        await alice.call(frames.Subscribe, space_id=info.space_id)
        roster = (await alice.call(frames.Roster, space_id=info.space_id)).members
        assert [(r.member_id, r.online) for r in roster] == [("alice", True), ("keeper", False)]
        assert roster[0].signing_key == alice.identity.signing_key


async def test_a_removed_member_cannot_rejoin_a_private_space(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="club", private=True)
        sid = info.space_id
        bob, carol = await user(srv, "bob"), await user(srv, "carol")
        for guest in (bob, carol):
            await alice.call(frames.Invite, space_id=sid, username=guest.username)
            await guest.call(frames.Join, space_id=sid)
            await guest.event("keys")
        await alice.call(frames.RemoveMember, space_id=sid, member="bob")
        with pytest.raises(PermissionDeniedError, match="private"):
            await bob.call(frames.Join, space_id=sid)
        await carol.call(frames.Leave, space_id=sid)  # leaving keeps the invitation
        assert (await carol.call(frames.Join, space_id=sid)).pending
