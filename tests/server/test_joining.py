"""Joining and the state log: open, private, invitations, invite links, the keeper, manual
admission, rotation, roles and removal, and the relay's checks of every signed event."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from spacenb.clock import FixedClock
from spacenb.exceptions import (
    ChannelNotFoundError,
    IntegrityError,
    InviteError,
    KeyUnavailableError,
    PermissionDeniedError,
    ProtocolError,
    StaleStateError,
)
from spacenb.protocol import frames
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair
from spacenb.protocol.statelog import (
    SpaceState,
    key_commitment,
    link_keys_from_token,
    link_proof_bytes,
    new_link_token,
)
from spacenb.server.limits import Limits
from tests.server.rawclient import entry, member, running, user

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and PostgreSQL


async def test_join_public_channel_keeper_hands_over_the_key(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="general")
        sid = info.space_id
        await alice.call(frames.Subscribe, space_id=sid)
        bob = await user(srv, "bob")
        joined = await bob.join(sid)
        assert (joined.role, joined.pending, joined.keys) == ("viewer", True, ())
        assert joined.space == dataclasses.replace(info, head_seq=1)
        pushed = await bob.event("keys", space_id=sid)
        assert [(k.epoch, k.wrapper, k.recipient) for k in pushed.keys] == [(0, "keeper", "bob")]
        assert (await bob.keyring(sid, pushed.keys)).key(0) == ring.key(0)
        # alice is pushed bob's signed add; its join request went to the keeper only
        add = await alice.state_event("add", member="bob")
        assert add == bob.logs[sid].events[1]
        alice.logs[sid].apply(add)  # it verifies on alice's copy of the log
        assert alice.logs[sid].members["bob"].signing_key == bob.identity.signing_key
        await alice.no_event("join_request")
        again = await bob.join(sid)  # a member: no event, learn one's keys
        assert again.pending is False and len(again.keys) == 1
        assert again.space.head_seq == 1


async def test_join_unknown_space(tmp_path):
    async with running(tmp_path) as srv:
        bob = await user(srv, "bob")
        with pytest.raises(ChannelNotFoundError):
            await bob.call(frames.Join, space_id=SpaceKeyPair.generate().space_id, event=None)
        with pytest.raises(ChannelNotFoundError):
            await bob.read_log(SpaceKeyPair.generate().space_id)


async def test_join_takes_the_callers_own_add(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="general")
        sid = info.space_id
        bob, carol = await user(srv, "bob"), await user(srv, "carol")
        state = await bob.sync(sid)
        with pytest.raises(ProtocolError, match="own 'add'"):  # carol relaying bob's add
            await carol.call(frames.Join, space_id=sid, event=bob.add_event(state))
        leave = bob.make(sid, "leave", {"member": "bob"})
        with pytest.raises(ProtocolError, match="own 'add'"):
            await bob.call(frames.Join, space_id=sid, event=leave)
        add = bob.add_event(state)
        with pytest.raises(ProtocolError, match="create_space and join"):
            await bob.call(frames.Append, space_id=sid, event=add, keys=())
        # an add with keys bob did not sign in with, self-signed by them
        other = IdentityKeys.generate()
        with pytest.raises(PermissionDeniedError, match="signed in with"):
            await bob.call(frames.Join, space_id=sid, event=bob.add_event(state, identity=other))
        forged = dataclasses.replace(add, signature=other.sign(add.signed_bytes()))
        with pytest.raises(IntegrityError):
            await bob.call(frames.Join, space_id=sid, event=forged)
        for body in (b'{"member":"bob"}', add.body + b" "):
            with pytest.raises(ProtocolError, match=r"event\.body"):
                await bob.call(frames.Join, space_id=sid, event=dataclasses.replace(add, body=body))
        with pytest.raises(PermissionDeniedError, match="viewer"):
            await bob.call(frames.Join, space_id=sid, event=bob.add_event(state, role="editor"))
        with pytest.raises(ProtocolError, match="via"):
            await bob.call(frames.Join, space_id=sid, event=bob.add_event(state, via="magic"))
        with pytest.raises(ProtocolError, match="only a link add"):
            bad = bob.add_event(state, token=new_link_token(), via="open")
            await bob.call(frames.Join, space_id=sid, event=bad)
        assert (await alice.read_log(sid)).head_seq == 0  # nothing was appended
        assert (await bob.call(frames.Join, space_id=sid, event=add)).pending
        with pytest.raises(StaleStateError):  # the same add twice
            await bob.call(frames.Join, space_id=sid, event=add)
        with pytest.raises(PermissionDeniedError, match="already a member"):
            await bob.call(frames.Join, space_id=sid, event=bob.add_event(await bob.sync(sid)))
        # the owner and the keeper cannot join again
        with pytest.raises(PermissionDeniedError, match="already a member"):
            await alice.call(
                frames.Join, space_id=sid, event=alice.add_event(await alice.sync(sid))
            )


async def test_private_space_refuses_then_admits_the_invited(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="secret", private=True)
        sid = info.space_id
        bob = await user(srv, "bob")
        with pytest.raises(PermissionDeniedError, match="private"):
            await bob.read_log(sid)
        bob.logs[sid] = SpaceState.from_events(alice.logs[sid].events)  # told out of band
        with pytest.raises(PermissionDeniedError, match="private"):
            await bob.call(frames.Join, space_id=sid, event=bob.add_event(bob.logs[sid]))
        with pytest.raises(PermissionDeniedError, match="no invitation"):
            await bob.call(
                frames.Join, space_id=sid, event=bob.add_event(bob.logs[sid], via="invite")
            )
        with pytest.raises(PermissionDeniedError):  # only members may invite
            body = {"member": "bob", "role": "viewer", "signing_key": None, "ecdh_key": None}
            await bob.call(
                frames.Append, space_id=sid, event=bob.make(sid, "invite", body), keys=()
            )
        await alice.invite(sid, "bob")
        joined = await bob.join(sid)
        assert joined.pending and joined.role == "viewer"
        keys = (await bob.event("keys")).keys
        assert (await bob.keyring(sid, keys)).key(0) == ring.key(0)
        assert "bob" not in bob.logs[sid].invitations  # the invitation is used up


async def test_invitation_roles_and_pinned_keys(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="club", private=True)
        sid = info.space_id
        bob, _ = await member(srv, alice, sid, "bob")
        assert bob.logs[sid].members["bob"].role == "viewer"
        # a viewer may invite viewers, only the owner invites editors
        with pytest.raises(PermissionDeniedError, match="owner invites editors"):
            await bob.invite(sid, "carol", "editor")
        with pytest.raises(ProtocolError, match="role"):
            await alice.invite(sid, "carol", "owner")
        with pytest.raises(PermissionDeniedError, match="already a member"):
            await alice.invite(sid, "bob")
        with pytest.raises(PermissionDeniedError, match="keeper"):
            await alice.invite(sid, "keeper")
        await bob.invite(sid, "carol")
        # an invitation may pin the invitee's keys: other keys are refused
        carol, dave = await user(srv, "carol"), await user(srv, "dave")
        await alice.invite(sid, "dave", "editor", pin=await alice.user("carol"))
        with pytest.raises(PermissionDeniedError, match="other identity keys"):
            await dave.join(sid)
        with pytest.raises(PermissionDeniedError, match="role 'editor'"):
            await dave.join(sid, role="viewer")
        await alice.invite(sid, "dave", "editor", pin=await alice.user("dave"))
        joined = await dave.join(sid)
        assert joined.role == "editor"
        assert (await carol.join(sid)).role == "viewer"


async def test_invite_links_roles_max_uses_revocation(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="club", private=True)
        sid = info.space_id
        token = await alice.create_link(sid, max_uses=2, role="editor")
        link_id = alice.link_body(token)["link_id"]
        assert len(link_id) == 16
        link = alice.logs[sid].links[link_id]
        assert (link.uses, link.max_uses, link.role) == (0, 2, "editor")
        assert token not in (await alice.read_log(sid)).events[-1].body.decode()
        for name in ("carol", "dave"):
            guest = await user(srv, name)
            joined = await guest.join(sid, token)
            assert joined.role == "editor" and joined.pending
            await guest.event("keys")
        eve = await user(srv, "eve")
        with pytest.raises(InviteError, match="used 2 of 2"):  # reading the log already says so
            await eve.join(sid, token)
        eve.logs[sid] = SpaceState.from_events((await alice.read_log(sid)).events)  # out of band
        with pytest.raises(InviteError, match="used 2 of 2"):
            await eve.call(
                frames.Join, space_id=sid, event=eve.add_event(eve.logs[sid], token=token)
            )
        made_up = new_link_token()
        with pytest.raises(InviteError, match="unknown"):
            await eve.call(
                frames.Join, space_id=sid, event=eve.add_event(eve.logs[sid], token=made_up)
            )
        assert (await alice.sync(sid)).links[link_id].uses == 2
        open_token = await alice.create_link(sid, role="viewer")
        await alice.unlink(sid, open_token)
        eve.logs[sid] = SpaceState.from_events((await alice.read_log(sid)).events)
        with pytest.raises(InviteError, match="revoked"):
            await eve.call(
                frames.Join, space_id=sid, event=eve.add_event(eve.logs[sid], token=open_token)
            )
        with pytest.raises(InviteError, match="already revoked"):
            await alice.unlink(sid, open_token)
        with pytest.raises(InviteError, match="unknown"):
            await alice.unlink(sid, made_up)
        members = {n: m.role for n, m in (await alice.sync(sid)).members.items()}
        assert members == {"alice": "owner", "keeper": "editor", "carol": "editor",
                           "dave": "editor"}  # fmt: skip


async def test_invite_link_rules(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="club", private=True)
        other, _ = await alice.create_space(name="other", private=True)
        sid = info.space_id
        bob, _ = await member(srv, alice, sid, "bob")
        token = new_link_token()
        with pytest.raises(PermissionDeniedError, match="owner"):
            await bob.append(sid, "link", bob.link_body(token))
        for body, match in [
            (alice.link_body(token, role="owner"), "role"),
            (alice.link_body(token, max_uses=0), "max_uses"),
            (alice.link_body(token, expires_at_us=1), "expires"),
            ({**alice.link_body(token), "link_id": "0" * 16}, "link_id"),
            ({**alice.link_body(token), "link_key": bob.identity.signing_key}, "link_key"),
        ]:
            with pytest.raises(ProtocolError, match=match):
                await alice.append(sid, "link", body)
        await alice.append(sid, "link", alice.link_body(token))
        with pytest.raises(ProtocolError, match="already exists"):
            await alice.append(sid, "link", alice.link_body(token))
        with pytest.raises(PermissionDeniedError, match="owner"):
            await bob.unlink(sid, token)
        carol = await user(srv, "carol")
        # a link only opens its own space: the other space's log does not know it
        with pytest.raises(PermissionDeniedError, match="private"):
            await carol.join(other.space_id, token)
        carol.logs[other.space_id] = SpaceState.from_events(alice.logs[other.space_id].events)
        with pytest.raises(InviteError, match="unknown"):
            await carol.call(
                frames.Join,
                space_id=other.space_id,
                event=carol.add_event(carol.logs[other.space_id], token=token),
            )


async def test_link_proofs_bind_the_member_and_the_head(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="club", private=True)
        sid = info.space_id
        token = await alice.create_link(sid, role="editor")
        keys = link_keys_from_token(token)
        carol = await user(srv, "carol")
        carol.links[sid] = keys
        state = await carol.sync(sid)
        wrong = [
            keys.sign(link_proof_bytes(sid, "dave", state.head)),  # another member's proof
            keys.sign(link_proof_bytes(sid, "carol", state.events[0].hash())),  # an older head
            link_keys_from_token(new_link_token()).sign(
                link_proof_bytes(sid, "carol", state.head)
            ),  # another link's key
        ]
        for proof in wrong:
            with pytest.raises(IntegrityError):
                await carol.call(
                    frames.Join,
                    space_id=sid,
                    event=carol.add_event(state, token=token, proof=proof),
                )
        with pytest.raises(PermissionDeniedError, match="role 'editor'"):
            await carol.call(
                frames.Join, space_id=sid, event=carol.add_event(state, token=token, role="viewer")
            )
        no_proof = carol.add_event(state, token=token)
        body = {**no_proof.fields(), "proof": None}
        unproved = carol.make(sid, "add", body)
        with pytest.raises(ProtocolError, match="proof"):
            await carol.call(frames.Join, space_id=sid, event=unproved)
        assert (await carol.join(sid, token)).role == "editor"


async def test_private_log_is_served_to_members_invited_and_link_holders_only(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="club", private=True)
        sid = info.space_id
        token = await alice.create_link(sid)
        keys = link_keys_from_token(token)
        bob = await user(srv, "bob")
        with pytest.raises(PermissionDeniedError, match="private"):
            await bob.read_log(sid)
        link_id, proof = bob.link_proof(sid, keys)
        assert (await bob.read_log(sid, link_id=link_id, proof=proof)).head_seq == 1
        # the proof is bound to the connection's nonce, the user and the space
        other = await user(srv, "bob", identity=bob.identity)
        carol = await user(srv, "carol")
        wrong = [
            (link_id, None),
            (None, proof),
            ("0" * 16, proof),
            (link_id, b"\0" * 64),
            (link_id, link_keys_from_token(new_link_token()).sign(
                frames.log_read_signed_bytes(sid, "bob", bob.hello.nonce))),
            (link_id, keys.sign(frames.log_read_signed_bytes(sid, "carol", bob.hello.nonce))),
            (link_id, keys.sign(frames.log_read_signed_bytes(sid, "bob", other.hello.nonce))),
        ]  # fmt: skip
        for lid, sig in wrong:
            with pytest.raises(PermissionDeniedError, match="private"):
                await bob.read_log(sid, link_id=lid, proof=sig)
        with pytest.raises(PermissionDeniedError):  # replayed on another connection
            await other.read_log(sid, link_id=link_id, proof=proof)
        with pytest.raises(PermissionDeniedError):  # replayed by another user
            await carol.read_log(sid, link_id=link_id, proof=proof)
        # members and invited users read without a proof
        await alice.invite(sid, "carol")
        assert (await carol.read_log(sid)).head_seq == 2
        assert (await carol.call(frames.GetSpaceInfo, space_id=sid)).head_seq == 2
        # a revoked link no longer opens the log, and its holder is told why
        await alice.unlink(sid, token)
        link_id, proof = bob.link_proof(sid, keys)
        with pytest.raises(InviteError, match="revoked"):
            await bob.read_log(sid, link_id=link_id, proof=proof)
        with pytest.raises(PermissionDeniedError, match="private"):  # unproven: not told
            await bob.read_log(sid, link_id=link_id, proof=b"\0" * 64)
        # nor does a removal: the removed member's pending invitation goes too
        carol_joined = await carol.join(sid)
        assert carol_joined.pending
        await alice.remove(sid, "carol")
        with pytest.raises(PermissionDeniedError, match="private"):
            await carol.read_log(sid)
        assert (await alice.read_log(sid)).head_seq == 5


async def test_invite_link_expiry(tmp_path):
    clock = FixedClock()
    async with running(tmp_path, clock=clock) as srv:
        alice = await user(srv, "alice")
        alice.clock = clock
        info, _ = await alice.create_space(name="club", private=True)
        sid = info.space_id
        expires = clock.now_us() + 60_000_000
        token = await alice.create_link(sid, expires_at_us=expires)
        assert alice.logs[sid].links[alice.link_body(token)["link_id"]].expires_at_us == expires
        bob, carol, dave = [await user(srv, n) for n in ("bob", "carol", "dave")]
        for guest in (bob, carol, dave):
            guest.clock = clock
        clock.advance(59)
        await bob.join(sid, token)
        clock.advance(1)
        with pytest.raises(InviteError, match="expired"):  # reading the log says so
            await carol.join(sid, token)
        carol.logs[sid] = SpaceState.from_events((await alice.read_log(sid)).events)
        with pytest.raises(InviteError, match="expired"):  # the add is signed too late
            await carol.call(frames.Join, space_id=sid,
                             event=carol.add_event(carol.logs[sid], token=token))  # fmt: skip
        # an add claiming to be signed in time is still refused: the relay's own clock has
        # passed the link's expiry
        dave.logs[sid] = SpaceState.from_events((await alice.read_log(sid)).events)
        backdated = dave.add_event(dave.logs[sid], token=token, at_us=expires - 1)
        with pytest.raises(InviteError, match="expired"):
            await dave.call(frames.Join, space_id=sid, event=backdated)
        assert set((await alice.sync(sid)).members) == {"alice", "keeper", "bob"}


async def test_a_one_use_link_raced_by_several_joiners_admits_exactly_one(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="club", private=True)
        sid = info.space_id
        token = await alice.create_link(sid, max_uses=1)
        guests = [await user(srv, f"guest{i}") for i in range(5)]
        for guest in guests:
            guest.links[sid] = link_keys_from_token(token)
            await guest.sync(sid)  # every one signs its add on the same head
        adds = [g.add_event(g.logs[sid], token=token) for g in guests]
        answers = await asyncio.gather(
            *(
                g.request(frames.Join, space_id=sid, event=a)
                for g, a in zip(guests, adds, strict=True)
            )
        )
        won = [g for g, a in zip(guests, answers, strict=True) if isinstance(a, frames.Response)]
        lost = [
            (g, a) for g, a in zip(guests, answers, strict=True) if isinstance(a, frames.ErrorFrame)
        ]
        assert len(won) == 1
        assert {a.code for _, a in lost} == {"stale_state"}
        # a loser does what a client does on stale_state: refetch and sign again
        for guest, _ in lost:
            with pytest.raises(InviteError, match="used 1 of 1"):
                await guest.join(sid, token)
        (winner,) = won
        keys = (await winner.event("keys")).keys
        assert (await winner.keyring(sid, keys)).key(0) == ring.key(0)
        state = await alice.sync(sid)
        assert set(state.members) == {"alice", "keeper", winner.username}
        assert state.links[alice.link_body(token)["link_id"]].uses == 1
        for guest, _ in lost:
            await guest.no_event("keys")


async def test_manual_admit_waits_for_a_member(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="gated", manual_admit=True)
        assert info.keeper is None and info.manual_admit
        sid = info.space_id
        bob = await user(srv, "bob")
        await bob.join(sid)
        await srv.keeper.idle()
        await bob.no_event("keys")
        # bob may subscribe while he waits; he is not told of his own request
        assert (await bob.call(frames.Subscribe, space_id=sid)).peers == ("bob",)
        await bob.no_event("join_request")
        # alice comes online later and is told of the waiting request, with the keys of
        # bob's signed add
        await alice.call(frames.Subscribe, space_id=sid)
        request = await alice.event("join_request", member_id="bob")
        assert (request.signing_key, request.ecdh_key, request.role) == (
            bob.identity.signing_key,
            bob.identity.ecdh_key,
            "viewer",
        )
        # asking again (a join without an event) announces the open request again
        again = await bob.join(sid)
        assert (again.pending, again.keys, again.role) == (True, (), "viewer")
        assert (await alice.event("join_request")).member_id == "bob"
        wrapped = alice.wrap(
            ring, 0, frames.UserEntry("bob", request.signing_key, request.ecdh_key)
        )
        carol = await user(srv, "carol")
        with pytest.raises(PermissionDeniedError):  # not a member: may not admit
            await carol.call(frames.Admit, space_id=sid, member="bob", keys=(wrapped,))
        with pytest.raises(PermissionDeniedError, match="must join"):
            await alice.call(frames.Admit, space_id=sid, member="carol", keys=(wrapped,))
        with pytest.raises(PermissionDeniedError, match="'alice'"):  # addressed to someone else
            await alice.call(frames.Admit, space_id=sid, member="bob",
                             keys=(alice.wrap(ring, 0, await alice.user("alice")),))  # fmt: skip
        with pytest.raises(ProtocolError, match="at least one"):
            await alice.call(frames.Admit, space_id=sid, member="bob", keys=())
        await alice.call(frames.Admit, space_id=sid, member="bob", keys=(wrapped,))
        keys = (await bob.event("keys")).keys
        assert (await bob.keyring(sid, keys)).key(0) == ring.key(0)
        # the request is closed: a new subscriber is not told again
        again = await user(srv, "alice", identity=alice.identity)
        await again.call(frames.Subscribe, space_id=sid)
        await again.no_event("join_request")
        # a subscriber online when someone joins hears of it at once (no keeper here)
        dave = await user(srv, "dave")
        await dave.join(sid)
        assert (await again.event("join_request")).member_id == "dave"


async def test_rotate_keeper_gives_only_the_current_epoch(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="rot", policy="rotate")
        sid = info.space_id
        bob = await user(srv, "bob")
        await bob.join(sid)
        assert [k.epoch for k in (await bob.event("keys")).keys] == [0]
        await bob.call(frames.Subscribe, space_id=sid)
        assert await alice.rotate(sid, ring) == 1
        await bob.call(frames.Ping)  # the state event comes before the keys it introduces
        pushed_kinds = [e.EV for e in bob.events if e.EV in ("state", "keys")]
        assert pushed_kinds == ["state", "keys"]
        event = await bob.state_event("epoch", epoch=1)
        assert event.fields()["recipients"] == ["alice", "bob", "keeper"]
        assert event.fields()["key_commitment"] == key_commitment(sid, 1, ring.key(1))
        assert [k.epoch for k in (await bob.event("keys")).keys] == [1]
        carol = await user(srv, "carol")
        joined = await carol.join(sid)
        assert (joined.space.epoch, joined.space.head_seq) == (1, 3)
        pushed = (await carol.event("keys")).keys
        assert [k.epoch for k in pushed] == [1]
        assert (await carol.keyring(sid, pushed)).key(1) == ring.key(1)


async def test_rotate_rules(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="rot", policy="rotate")
        static, _ = await alice.create_space(name="static")
        sid = info.space_id
        bob, _ = await member(srv, alice, sid, "bob")
        state = await alice.sync(sid)
        ring.mint_next()
        commitment = key_commitment(sid, 1, ring.key(1))

        def body(epoch=1, recipients=("alice", "bob", "keeper")):
            return {"epoch": epoch, "recipients": list(recipients), "key_commitment": commitment}

        def wraps(*names, epoch=1):
            return tuple(alice.wrap(ring, epoch, entry(state, n), key=ring.key(1)) for n in names)

        good = wraps("alice", "bob", "keeper")
        zed = await user(srv, "zed")
        for event_body, keys, error, match in [
            (body(epoch=2), good, ProtocolError, "rotate to 1"),
            (body(recipients=("alice", "bob")), good[:2], ProtocolError, "keeper"),
            (body(recipients=("bob", "keeper")), good[1:], ProtocolError, "rotating member"),
            (body(recipients=("bob", "alice", "keeper")), good, ProtocolError, "sorted"),
            (body(recipients=("alice", "bob", "keeper", "zed")),
             (*good, alice.wrap(ring, 1, await alice.user("zed"))), PermissionDeniedError,
             "not members"),
            (body(), good[1:], ProtocolError, "the caller's own"),
            (body(), (*good[:2], *wraps("keeper", epoch=0)), PermissionDeniedError, "epoch 0"),
            (body(), (*good, *wraps("bob")), ProtocolError, "duplicate"),
            (body(), (), ProtocolError, "at least one"),
            ({**body(), "key_commitment": "short"}, good, ProtocolError, "commitment"),
        ]:  # fmt: skip
            with pytest.raises(error, match=match):
                await alice.call(
                    frames.Append,
                    space_id=sid,
                    event=alice.make(sid, "epoch", event_body),
                    keys=keys,
                )
        await zed.sync(sid)
        with pytest.raises(PermissionDeniedError):
            await zed.call(
                frames.Append, space_id=sid, event=zed.make(sid, "epoch", body()), keys=good
            )
        with pytest.raises(PermissionDeniedError, match="owner or an editor"):  # bob is a viewer
            await bob.call(
                frames.Append, space_id=sid, event=bob.make(sid, "epoch", body()), keys=()
            )
        await alice.sync(static.space_id)
        with pytest.raises(PermissionDeniedError, match="rotate"):
            await alice.call(
                frames.Append, space_id=static.space_id,
                event=alice.make(static.space_id, "epoch", body(recipients=("alice", "keeper"))),
                keys=(),
            )  # fmt: skip
        with pytest.raises(ProtocolError, match="only an 'epoch' event carries keys"):
            await alice.call(
                frames.Append, space_id=sid,
                event=alice.make(sid, "role", {"member": "bob", "role": "editor"}), keys=good,
            )  # fmt: skip
        assert (await alice.read_log(sid)).head_seq == state.head_seq  # nothing appended
        await alice.append_event(alice.make(sid, "epoch", body()), good)
        with pytest.raises(StaleStateError):  # the same event again
            await alice.call(
                frames.Append, space_id=sid, event=alice.logs[sid].events[-1], keys=good
            )
        with pytest.raises(ProtocolError, match="rotate to 2"):  # the same epoch twice
            await alice.call(
                frames.Append, space_id=sid, event=alice.make(sid, "epoch", body()), keys=good
            )
        got = await alice.call(frames.FetchKeys, space_id=sid)
        assert [k.epoch for k in got.keys] == [0, 1]
        # an editor may rotate too
        await alice.set_role(sid, "bob", "editor")
        bring = await bob.keyring(sid)
        assert await bob.rotate(sid, bring) == 2


async def test_stale_and_malformed_events_are_refused(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="team")
        sid = info.space_id
        bob, _ = await member(srv, alice, sid, "bob")
        state = await alice.sync(sid)
        role = {"member": "bob", "role": "editor"}
        for event in (
            alice.make(sid, "role", role, seq=state.head_seq + 2),  # a gap
            alice.make(sid, "role", role, seq=state.head_seq),  # an old seq
            alice.make(sid, "role", role, prev=b"\7" * 32),  # another prev
            alice.make(
                sid, "role", role, seq=state.head_seq, prev=state.hash_at(state.head_seq - 1)
            ),
        ):
            with pytest.raises(StaleStateError):
                await alice.call(frames.Append, space_id=sid, event=event, keys=())
        good = alice.make(sid, "role", role)

        def resigned(event, **changes):
            unsigned = dataclasses.replace(event, signature=b"", **changes)
            return dataclasses.replace(
                unsigned, signature=alice.identity.sign(unsigned.signed_bytes())
            )

        with pytest.raises(PermissionDeniedError, match="signed by the caller"):
            await bob.call(frames.Append, space_id=sid, event=good, keys=())  # relayed
        for bad, error, match in [
            (dataclasses.replace(good, kind="promote"), ProtocolError, "kind"),
            (dataclasses.replace(good, kind="genesis"), ProtocolError, "genesis"),
            (dataclasses.replace(good, body=b'{"role":"editor"}'), ProtocolError, "event.body"),
            (dataclasses.replace(good, body=good.body.replace(b"editor", b"viewer")),
             IntegrityError, None),
            (dataclasses.replace(good, signature=b"\0" * 64), IntegrityError, None),
            (alice.make(sid, "role", role, signer=bob.identity), IntegrityError, None),
            (alice.make(sid, "role", role, actor="Alice"), PermissionDeniedError, "caller"),
            (resigned(good, body=b'{"member":"\\udc80","role":"editor"}'), ProtocolError,
             "Unicode"),  # a lone surrogate, validly signed: could not be stored as UTF-8
            (resigned(good, body=b'{"member":"bob","role":"editor","x":1}'), ProtocolError,
             "exactly the fields"),
            (resigned(good, kind="role", body=b'{"member":"bob","role":"owner"}'), ProtocolError,
             "role"),
        ]:  # fmt: skip
            with pytest.raises(error, match=match):
                await alice.call(frames.Append, space_id=sid, event=bad, keys=())
        head = state.head_seq
        assert (await alice.read_log(sid)).head_seq == head
        assert await alice.append_event(good) == head + 1


async def test_roles_removal_and_leaving(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="team")
        sid = info.space_id
        bob, _ = await member(srv, alice, sid, "bob")
        carol, _ = await member(srv, alice, sid, "carol")
        await alice.call(frames.Subscribe, space_id=sid)
        await bob.call(frames.Subscribe, space_id=sid)
        with pytest.raises(PermissionDeniedError, match="owner"):
            await bob.set_role(sid, "carol", "editor")
        with pytest.raises(PermissionDeniedError, match="fixed"):
            await alice.set_role(sid, "alice", "viewer")
        with pytest.raises(ProtocolError, match="role"):
            await alice.set_role(sid, "bob", "owner")
        with pytest.raises(PermissionDeniedError, match="not a member"):
            await alice.set_role(sid, "zed", "editor")
        await alice.set_role(sid, "bob", "editor")
        assert (await bob.state_event("role", member="bob")).fields()["role"] == "editor"
        with pytest.raises(PermissionDeniedError, match="owner"):  # an editor may not remove
            await bob.remove(sid, "carol")
        with pytest.raises(PermissionDeniedError, match="owner cannot be removed"):
            await alice.remove(sid, "alice")
        with pytest.raises(PermissionDeniedError, match="cannot leave"):
            await alice.leave(sid)
        with pytest.raises(PermissionDeniedError, match="by itself"):
            await bob.append(sid, "leave", {"member": "carol"})
        await alice.remove(sid, "bob")
        assert (await bob.state_event("remove", member="bob")).actor == "alice"
        assert (await alice.event("presence", left=("bob",))).joined == ()
        assert srv.relay.online(sid) == ("alice",)
        with pytest.raises(PermissionDeniedError, match="not a member"):
            await bob.send(ring, "still here?")
        with pytest.raises(PermissionDeniedError, match="not a member"):
            await bob.call(frames.Subscribe, space_id=sid)
        # bob's connection no longer gets the space's events
        await alice.send(ring, "after bob")
        await carol.leave(sid)
        assert (await alice.state_event("leave", member="carol")).actor == "carol"
        await bob.no_event("message")
        await bob.no_event("state")
        assert sorted((await alice.sync(sid)).members) == ["alice", "keeper"]
        assert (await alice.call(frames.GetSpaceInfo, space_id=sid)).head_seq == 5


async def test_keys_and_subscriptions_need_membership(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="team")
        bob = await user(srv, "bob")
        for cls in (frames.FetchKeys, frames.Subscribe, frames.UnsubscribeRequest):
            with pytest.raises(PermissionDeniedError, match="not a member"):
                await bob.call(cls, space_id=info.space_id)
        with pytest.raises(PermissionDeniedError, match="not a member"):
            await bob.append(info.space_id, "leave", {"member": "bob"})
        subscribed = await alice.call(frames.Subscribe, space_id=info.space_id)
        assert (subscribed.peers, subscribed.epoch, subscribed.head_seq) == (("alice",), 0, 0)


async def test_subscribers_are_pushed_every_state_event_in_order(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="team", policy="rotate")
        sid = info.space_id
        watcher = await user(srv, "alice", identity=alice.identity)  # alice's second connection
        watcher.logs[sid] = SpaceState.from_events(alice.logs[sid].events)
        await watcher.call(frames.Subscribe, space_id=sid)
        bob, _ = await member(srv, alice, sid, "bob")
        await alice.invite(sid, "carol")
        await alice.set_role(sid, "bob", "editor")
        token = await alice.create_link(sid)
        await alice.unlink(sid, token)
        await alice.rotate(sid, ring)
        handle = await bob.send(await bob.keyring(sid), "x")
        await bob.delete(sid, handle)
        await bob.leave(sid)
        state = watcher.logs[sid]
        for kind in ("add", "invite", "role", "link", "unlink", "epoch", "delete", "leave"):
            pushed = await watcher.event("state", space_id=sid)
            assert pushed.event.kind == kind
            state.apply(pushed.event)  # each verifies and follows the one before
        assert state.head == (await alice.sync(sid)).head
        await watcher.no_event("state")


async def test_removed_members_need_a_new_invitation(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="club", private=True)
        sid = info.space_id
        token = await alice.create_link(sid)
        bob, _ = await member(srv, alice, sid, "bob")
        carol, _ = await member(srv, alice, sid, "carol")
        await alice.remove(sid, "bob")
        with pytest.raises(PermissionDeniedError, match="private"):
            await bob.read_log(sid)
        bob.logs[sid] = SpaceState.from_events((await alice.read_log(sid)).events)
        for add in (bob.add_event(bob.logs[sid], via="invite", role="viewer"),
                    bob.add_event(bob.logs[sid])):  # fmt: skip
            with pytest.raises(PermissionDeniedError):
                await bob.call(frames.Join, space_id=sid, event=add)
        with pytest.raises(PermissionDeniedError, match="old link"):  # a link does not let him back
            await bob.join(sid, token)
        # carol (a viewer) may not invite a removed member back; the owner may
        with pytest.raises(PermissionDeniedError, match="only the owner or an editor"):
            await carol.invite(sid, "bob")
        await alice.invite(sid, "bob")
        assert (await bob.join(sid)).pending
        # leaving used the invitation up: coming back takes a new one
        await carol.leave(sid)
        with pytest.raises(PermissionDeniedError, match="private"):
            await carol.read_log(sid)
        carol.logs[sid] = SpaceState.from_events((await alice.read_log(sid)).events)
        add = carol.add_event(carol.logs[sid], via="invite", role="viewer")
        with pytest.raises(PermissionDeniedError, match="no invitation"):
            await carol.call(frames.Join, space_id=sid, event=add)
        await alice.invite(sid, "carol")
        assert (await carol.join(sid)).pending


async def test_a_removed_member_cannot_rejoin_an_open_space(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="open")
        sid = info.space_id
        bob, _ = await member(srv, alice, sid, "bob")
        await alice.remove(sid, "bob")
        with pytest.raises(PermissionDeniedError, match="was removed"):
            await bob.join(sid)
        await alice.invite(sid, "bob")  # the owner lets him back
        assert (await bob.join(sid)).pending
        await bob.event("keys")


async def test_keeper_without_the_key_it_should_hold_says_so(tmp_path):
    """The epoch-0 key wrapped to the keeper is not the one genesis committed to (the
    relay cannot tell): the keeper refuses it and then reports the missing key."""
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        pair = SpaceKeyPair.generate()
        ring = Keyring.fresh(pair.space_id, "static")
        me, keeper = await alice.user("alice"), await alice.user("keeper")
        genesis = alice.genesis(pair, ring, name="c", keeper=keeper)
        wrong = alice.wrap(ring, 0, keeper, key=b"\1" * 32)
        await alice.call(frames.CreateSpace, genesis=genesis, keys=(alice.wrap(ring, 0, me), wrong))
        await srv.keeper.stop()  # admit by hand below, not from the queue
        bob = await user(srv, "bob")
        await bob.join(pair.space_id)
        with pytest.raises(KeyUnavailableError, match="no key for epoch 0"):
            srv.keeper.admit(pair.space_id, "bob")
        await bob.no_event("keys")


async def test_without_the_keeper_join_requests_go_to_the_subscribers(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="team", policy="rotate")
        sid = info.space_id
        bob, _ = await member(srv, alice, sid, "bob")
        await alice.call(frames.Subscribe, space_id=sid)
        await alice.remove(sid, "keeper")  # the owner may remove the keeper like anyone
        assert (await alice.call(frames.GetSpaceInfo, space_id=sid)).keeper is None
        # a rotation no longer wraps to the keeper, nor to bob once he is removed
        await alice.remove(sid, "bob")
        await alice.rotate(sid, ring)
        assert alice.logs[sid].epochs[1].recipients == {"alice"}
        await bob.no_event("keys")
        with pytest.raises(PermissionDeniedError, match="not a member"):
            await bob.call(frames.FetchKeys, space_id=sid)
        carol = await user(srv, "carol")
        assert (await carol.join(sid)).pending
        request = await alice.event("join_request", member_id="carol")
        assert request.role == "viewer"
        await srv.keeper.idle()
        await carol.no_event("keys")
        assert not srv.keeper.admit(sid, "carol")  # no longer the keeper's to admit
        # alice admits by hand with the epoch current at carol's add
        carol_keys = entry(await alice.sync(sid), "carol")
        with pytest.raises(PermissionDeniedError, match="epoch 0"):  # before carol's time
            await alice.call(
                frames.Admit, space_id=sid, member="carol", keys=(alice.wrap(ring, 0, carol_keys),)
            )
        await alice.call(
            frames.Admit, space_id=sid, member="carol", keys=(alice.wrap(ring, 1, carol_keys),)
        )
        assert [k.epoch for k in (await carol.event("keys")).keys] == [1]


async def test_a_removal_closes_the_join_request(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="gated", manual_admit=True)
        sid = info.space_id
        bob, carol = await user(srv, "bob"), await user(srv, "carol")
        await bob.join(sid)
        await carol.join(sid)
        assert [p.username for p in srv.relay.storage.join_requests(sid)] == ["bob", "carol"]
        await alice.remove(sid, "bob")
        await carol.leave(sid)
        assert srv.relay.storage.join_requests(sid) == []
        await alice.call(frames.Subscribe, space_id=sid)
        await alice.no_event("join_request")


async def test_any_add_uses_the_invitation_up(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="open")
        sid = info.space_id
        await alice.invite(sid, "bob", "editor")
        bob = await user(srv, "bob")
        joined = await bob.join(sid, via="open", role="viewer")  # joins without using it
        assert joined.role == "viewer"
        state = await alice.sync(sid)
        assert "bob" not in state.invitations and state.members["bob"].role == "viewer"
        await bob.leave(sid)
        with pytest.raises(PermissionDeniedError, match="no invitation"):
            await bob.join(sid, via="invite", role="editor")


async def test_the_keeper_checkpoints_every_k_events_and_the_relay_checks_the_signer(tmp_path):
    """With ``checkpoint_every=3`` the keeper signs a checkpoint after the join that
    brings three events since the last one; the relay takes one from the owner and
    refuses one from anyone else, or one not signed by the owner's key."""
    async with running(tmp_path, limits=Limits(checkpoint_every=3)) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="general")
        sid = info.space_id
        joined = [(await member(srv, alice, sid, f"user{i}"))[0] for i in range(6)]
        state = await alice.sync(sid)
        kinds = [(e.kind, e.actor) for e in state.events]
        assert kinds == [
            ("genesis", "alice"), ("add", "user0"), ("add", "user1"), ("add", "user2"),
            ("checkpoint", "keeper"), ("add", "user3"), ("add", "user4"), ("add", "user5"),
            ("checkpoint", "keeper"),
        ]  # fmt: skip
        assert state.checkpoint_seq == 8
        user0 = joined[0]
        await user0.sync(sid)
        with pytest.raises(PermissionDeniedError, match="owner or the keeper"):
            await user0.append(sid, "checkpoint", {})
        await alice.sync(sid)
        with pytest.raises(IntegrityError):
            await alice.append_event(alice.make(sid, "checkpoint", {}, signer=user0.keys))
        assert await alice.append(sid, "checkpoint", {}) == 9
        assert (await user0.sync(sid)).checkpoint_seq == 9


async def test_no_checkpoints_when_the_keeper_is_told_not_to(tmp_path):
    async with running(tmp_path, limits=Limits(checkpoint_every=0)) as srv:
        alice = await user(srv, "alice")
        info, _ = await alice.create_space(name="general")
        for i in range(3):
            await member(srv, alice, info.space_id, f"user{i}")
        state = await alice.sync(info.space_id)
        assert [e.kind for e in state.events] == ["genesis", "add", "add", "add"]
