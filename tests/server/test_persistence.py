"""Restarting with the same data directory keeps everything; nothing readable is stored."""

from __future__ import annotations

import base64
import stat

import pytest

from spacenb.clock import FixedClock
from spacenb.exceptions import AuthenticationError, ServerError
from spacenb.protocol import frames
from spacenb.protocol.keys import IdentityKeys
from spacenb.server.app import start_server
from tests.server.rawclient import running, user

SECRET = "the eagle lands at dawn 7f3a"


async def test_restart_keeps_users_spaces_messages_links_keeper_and_app_key(tmp_path):
    clock = FixedClock()
    alice_id, bob_id = IdentityKeys.generate(), IdentityKeys.generate()
    async with running(tmp_path, clock=clock) as srv:
        app_key, keeper_nonce_keeper = srv.app_key, (tmp_path / "keeper.key").read_text()
        alice = await user(srv, "alice", identity=alice_id)
        info, ring = await alice.create_space(name="general")
        secret, _ = await alice.create_space(name="secret", private=True)
        link = await alice.call(
            frames.CreateLink, space_id=secret.space_id, expires_in_sec=None, max_uses=3,
            role="editor",
        )  # fmt: skip
        bob = await user(srv, "bob", identity=bob_id)
        await bob.call(frames.Join, space_id=secret.space_id, token=link.token)
        await bob.event("keys")
        handles = [await alice.send(ring, f"message {i}") for i in range(3)]
        await alice.call(frames.Delete, space_id=info.space_id, handle=handles[-1])
        page_before = await alice.call(frames.History, space_id=info.space_id, before=None, limit=9)

    clock = FixedClock()  # the clock restarts at the same reading: handles must still grow
    async with running(tmp_path, clock=clock) as srv:
        assert srv.app_key == app_key
        assert (tmp_path / "keeper.key").read_text() == keeper_nonce_keeper
        alice = await user(srv, "alice", identity=alice_id)
        with pytest.raises(AuthenticationError, match="taken"):
            await user(srv, "bob")
        assert (await alice.call(frames.Resolve, name="general")).space_id == info.space_id
        assert [c.name for c in (await alice.call(frames.ListChannels)).channels] == ["general"]
        page = await alice.call(frames.History, space_id=info.space_id, before=None, limit=9)
        assert page == page_before
        (listed,) = (await alice.call(frames.ListLinks, space_id=secret.space_id)).links
        assert (listed.link_id, listed.uses, listed.role) == (link.link_id, 1, "editor")
        members = (await alice.call(frames.Members, space_id=secret.space_id)).members
        assert frames.MemberEntry("bob", "editor") in members
        assert await alice.send(ring, "after restart") > handles[-1]
        # the keeper still holds the group key (from its wrapped blobs) and admits newcomers
        carol = await user(srv, "carol")
        await carol.call(frames.Join, space_id=info.space_id)
        keys = (await carol.event("keys")).keys
        assert (await carol.keyring(info, keys)).key(0) == ring.key(0)


async def test_join_requests_left_open_are_handled_after_restart(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="general")
        await srv.keeper.stop()  # the keeper is down when bob asks
        bob_id = IdentityKeys.generate()
        bob = await user(srv, "bob", identity=bob_id)
        assert (await bob.call(frames.Join, space_id=info.space_id)).pending
    async with running(tmp_path) as srv:
        await srv.keeper.idle()
        bob = await user(srv, "bob", identity=bob_id)
        joined = await bob.call(frames.Join, space_id=info.space_id)
        assert not joined.pending
        assert (await bob.keyring(info, joined.keys)).key(0) == ring.key(0)


async def test_data_dir_holds_no_plaintext_and_no_group_key(tmp_path):
    async with running(tmp_path) as srv:
        alice = await user(srv, "alice")
        info, ring = await alice.create_space(name="general")
        rot, rring = await alice.create_space(name="rot", policy="rotate")
        bob = await user(srv, "bob")
        for space in (info, rot):
            await bob.call(frames.Join, space_id=space.space_id)
            await bob.event("keys")
        rring.mint_next()
        recipients = [await alice.user(n) for n in ("alice", "bob", "keeper")]
        keys = tuple(alice.wrap(rring, 1, r) for r in recipients)
        await alice.call(frames.Rotate, space_id=rot.space_id, epoch=1, keys=keys)
        for r in (ring, rring):
            for i in range(20):
                await alice.send(r, {"text": SECRET, "n": i})
        group_keys = [ring.key(0), rring.key(0), rring.key(1)]
        scan(tmp_path, group_keys)  # while running: the WAL holds the recent writes
    scan(tmp_path, group_keys)


def scan(data_dir, group_keys: list[bytes]) -> None:
    needles = [SECRET.encode()]
    for key in group_keys:
        needles += [key, key.hex().encode(), base64.urlsafe_b64encode(key).rstrip(b"=")]
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith("sqlite3") for p in files)
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{path.name} holds a secret"


async def test_secret_files_are_private_and_checked(tmp_path):
    async with running(tmp_path):
        pass
    for name in ("app.json", "keeper.key", "relay.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    (tmp_path / "keeper.key").unlink()  # another keeper identity would not match the users table
    with pytest.raises(ServerError, match="keeper"):
        await start_server(tmp_path, shards=0)
    (tmp_path / "relay.key").write_text("garbage")
    with pytest.raises(ServerError, match=r"relay\.key"):
        await start_server(tmp_path, shards=0)


async def test_temporary_data_dir_is_removed_on_stop():
    srv = await start_server(shards=0)
    data_dir = srv.data_dir
    assert (data_dir / "spacenb.sqlite3").exists()
    await srv.stop()
    await srv.stop()  # idempotent
    assert not data_dir.exists()


@pytest.mark.parametrize(("shards", "needed"), [(3, 4), (256, 3), (5, 0), (-1, 1)])
async def test_shard_counts_are_validated(shards, needed):
    with pytest.raises(ValueError, match="shards_needed"):
        await start_server(shards=shards, shards_needed=needed)
