"""Invite links, roles and the owner-only rules."""

from __future__ import annotations

import pytest

from spacenb.exceptions import InviteError, PermissionDeniedError


async def test_invite_link_admits_with_its_role(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    room = await alice.space.create_channel("secret", private=True)
    link = await alice.space.create_invite_link(room.id, role="editor", max_uses=2)
    assert link.token and link.role == "editor" and link.max_uses == 2 and link.uses == 0
    joined = await bob.space.join_by_invite(room.id, link.token)
    assert joined.keyring.key(0) == room.keyring.key(0)
    roles = {m.member_id: m.role for m in await alice.space.members(room.id)}
    assert roles["bob"] == "editor"
    (listed,) = await alice.space.list_invite_links(room.id)
    assert listed.token is None and listed.uses == 1 and listed.link_id == link.link_id


async def test_used_up_and_revoked_links(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    carol = await connect("carol")
    dave = await connect("dave")
    room = await alice.space.create_channel("secret", private=True)
    once = await alice.space.create_invite_link(room.id, max_uses=1)
    await bob.space.join_by_invite(room.id, once.token)
    with pytest.raises(InviteError):
        await carol.space.join_by_invite(room.id, once.token)
    other = await alice.space.create_invite_link(room.id)
    await alice.space.revoke_invite_link(room.id, other.token)
    with pytest.raises(InviteError):
        await dave.space.join_by_invite(room.id, other.token)
    with pytest.raises(InviteError):
        await dave.space.join_by_invite(room.id, "not-a-token")


async def test_owner_only_link_and_role_operations(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    room = await alice.space.create_channel("general")
    await bob.space.join_channel("general")
    with pytest.raises(PermissionDeniedError):
        await bob.space.create_invite_link(room.id)
    with pytest.raises(PermissionDeniedError):
        await bob.space.list_invite_links(room.id)
    link = await alice.space.create_invite_link(room.id)
    with pytest.raises(PermissionDeniedError):
        await bob.space.revoke_invite_link(room.id, link.token)
    with pytest.raises(PermissionDeniedError):
        await bob.space.set_member_role(room.id, "bob", "editor")
    await alice.space.set_member_role(room.id, "bob", "editor")
    roles = {m.member_id: m.role for m in await bob.space.members(room.id)}
    assert roles["bob"] == "editor"


async def test_roster_has_keys_and_presence(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    room = await alice.space.create_channel("general")
    await bob.space.join_channel("general")
    roster = {m.member_id: m for m in await alice.space.roster(room.id)}
    assert roster["bob"].ecdh_key == bob.identity.ecdh_key
    assert roster["bob"].online is True and roster["alice"].role == "owner"
