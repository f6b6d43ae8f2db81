"""The shard store over a real websocket: tickets, hashes, limits, malformed input, disk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from spacenb.clock import FixedClock
from spacenb.exceptions import InvalidKeyError
from spacenb.protocol import shardwire
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair
from spacenb.protocol.tickets import issue_ticket
from spacenb.server.shards import ShardStore

RELAY = IdentityKeys.from_seed(b"shard store tests: relay")
SPACE = SpaceKeyPair.from_seed(b"shard store tests: space").space_id
OTHER_SPACE = SpaceKeyPair.from_seed(b"shard store tests: other space").space_id
MAX_SHARE = 4096


def name_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ticket_for(clock: FixedClock, *, space_id: str = SPACE, seconds: int = 60) -> str:
    expires = clock.now_us() + seconds * 1_000_000
    return issue_ticket(RELAY, space_id=space_id, username="alice", expires_at_us=expires)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
async def store(tmp_path: Path, clock: FixedClock) -> AsyncIterator[ShardStore]:
    store = ShardStore(tmp_path / "store", RELAY.signing_key, clock=clock, max_share_size=MAX_SHARE)
    await store.start()
    yield store
    await store.stop()


@pytest.fixture
async def ws(store: ShardStore) -> AsyncIterator[ClientConnection]:
    assert store.url is not None
    async with connect(store.url, compression=None) as conn:
        yield conn


async def ask(ws: ClientConnection, message: bytes | str) -> shardwire.Reply:
    await ws.send(message)
    return shardwire.parse_reply(await ws.recv())


def put(data: bytes, ticket: str, *, rid: int = 1, name: str | None = None) -> bytes:
    return shardwire.PutShare(rid, SPACE, ticket, name or name_of(data), data).to_bytes()


async def test_put_get_has(store: ShardStore, ws: ClientConnection, clock: FixedClock) -> None:
    data = b"an opaque share"
    reply = await ask(ws, put(data, ticket_for(clock), rid=7))
    assert (reply.id, reply.error) == (7, None)
    assert store.share_path(name_of(data)).read_bytes() == data
    assert list((store.root / "tmp").iterdir()) == []

    reply = await ask(ws, shardwire.GetShare(8, name_of(data)).to_bytes())
    assert (reply.id, reply.payload, reply.error) == (8, data, None)

    missing = name_of(b"nothing")
    reply = await ask(ws, shardwire.HasShares(9, (name_of(data), missing)).to_bytes())
    assert reply.fields == {"present": [True, False]}

    reply = await ask(ws, put(data, ticket_for(clock), rid=10))  # content-addressed: idempotent
    assert reply.error is None


async def test_get_unknown_share(ws: ClientConnection) -> None:
    reply = await ask(ws, shardwire.GetShare(3, "ab" * 32).to_bytes())
    assert reply.id == 3 and reply.error is not None and reply.error.code == "missing"


async def test_share_must_match_its_name(
    store: ShardStore, ws: ClientConnection, clock: FixedClock
) -> None:
    name = name_of(b"the real share")
    reply = await ask(ws, put(b"something else", ticket_for(clock), name=name))
    assert reply.error is not None and reply.error.code == "integrity"
    assert not store.share_path(name).exists()


async def test_oversize_share_is_refused(
    store: ShardStore, ws: ClientConnection, clock: FixedClock
) -> None:
    data = bytes(MAX_SHARE + 1)
    reply = await ask(ws, put(data, ticket_for(clock)))
    assert reply.error is not None and reply.error.code == "too_large"
    assert not store.share_path(name_of(data)).exists()


@pytest.mark.parametrize("problem", ["other key", "expired", "other space", "garbage"])
async def test_bad_tickets_cannot_upload(
    store: ShardStore, ws: ClientConnection, clock: FixedClock, problem: str
) -> None:
    if problem == "other key":
        impostor = IdentityKeys.from_seed(b"not the relay")
        ticket = issue_ticket(impostor, space_id=SPACE, username="alice", expires_at_us=2**52)
    elif problem == "expired":
        ticket = ticket_for(clock, seconds=30)
        clock.advance(31)
    elif problem == "other space":
        ticket = ticket_for(clock, space_id=OTHER_SPACE)
    else:
        ticket = "not.a-ticket"
    data = b"share " + problem.encode()
    reply = await ask(ws, put(data, ticket))
    assert reply.error is not None and reply.error.code == "forbidden", reply.error
    assert "ticket" in str(reply.error)
    assert not store.share_path(name_of(data)).exists()


def framed(header: object, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + payload


NAME = "ab" * 32


@pytest.mark.parametrize(
    ("message", "rid", "field"),
    [
        ("a text frame", None, "frame"),
        (b"\x00\x00", None, "frame"),
        (struct.pack(">I", 1 << 20) + b"{}", None, "frame"),
        (struct.pack(">I", 3) + b"{x}", None, "header"),
        (framed([1, 2]), None, "header"),
        (framed({"op": "get", "name": NAME}), None, "id"),
        (framed({"op": "get", "id": -1, "name": NAME}), None, "id"),
        (framed({"op": "delete", "id": 4, "name": NAME}), 4, "op"),
        (framed({"op": "get", "id": 5, "name": "ABC"}), 5, "name"),
        (framed({"op": "get", "id": 6, "name": NAME, "x": 1}), 6, "x"),
        (framed({"op": "get", "id": 7, "name": NAME}, b"payload"), 7, "payload"),
        (framed({"op": "has", "id": 8, "names": [NAME] * 513}), 8, "names"),
        (framed({"op": "has", "id": 9, "names": [NAME, 3]}), 9, "names[1]"),
        (framed({"op": "put", "id": 10, "name": NAME, "ticket": "t"}), 10, "space_id"),
    ],
)
async def test_malformed_requests_get_an_error_reply(
    ws: ClientConnection, message: bytes | str, rid: int | None, field: str
) -> None:
    reply = await ask(ws, message)
    assert reply.id == rid
    assert reply.error is not None and reply.error.code == "bad_frame"
    assert str(reply.error).startswith(f"{field}:")
    # ... and the connection still serves
    reply = await ask(ws, shardwire.HasShares(99, ()).to_bytes())
    assert reply.id == 99 and reply.fields == {"present": []}


async def test_pipelined_requests_are_all_answered(ws: ClientConnection, clock: FixedClock) -> None:
    ticket = ticket_for(clock)
    shares = [f"share {i}".encode() for i in range(30)]
    for i, data in enumerate(shares):
        await ws.send(put(data, ticket, rid=i))
    replies = [shardwire.parse_reply(await ws.recv()) for _ in shares]
    assert all(r.error is None for r in replies)
    assert sorted(r.id or 0 for r in replies) == list(range(30))
    for i, data in enumerate(shares):
        await ws.send(shardwire.GetShare(100 + i, name_of(data)).to_bytes())
    got = {}
    for _ in shares:
        reply = shardwire.parse_reply(await ws.recv())
        got[reply.id] = reply.payload
    assert got == {100 + i: data for i, data in enumerate(shares)}


async def test_shares_survive_a_restart_and_stale_temp_files_go(
    store: ShardStore, ws: ClientConnection, clock: FixedClock
) -> None:
    data = b"durable"
    assert (await ask(ws, put(data, ticket_for(clock)))).error is None
    await store.stop()
    (store.root / "tmp" / "half-written").write_bytes(b"x")
    again = ShardStore(store.root, RELAY.signing_key)
    await again.start()
    try:
        assert list((store.root / "tmp").iterdir()) == []
        assert again.url is not None
        async with connect(again.url) as conn:
            reply = await ask(conn, shardwire.GetShare(1, name_of(data)).to_bytes())
        assert reply.payload == data
    finally:
        await again.stop()


def test_relay_key_must_be_a_signing_key(tmp_path: Path) -> None:
    with pytest.raises(InvalidKeyError):
        ShardStore(tmp_path, RELAY.ecdh_key)


async def test_quotas_refuse_a_share_and_keep_everything_stored(
    tmp_path: Path, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-user and per-store byte quotas and a free-disk floor: a share over any of them
    is refused (``quota_exceeded``), nothing stored is removed, storing a share again
    costs nothing, and what each user uploaded survives a restart."""
    root = tmp_path / "store"
    store = ShardStore(root, RELAY.signing_key, clock=clock, max_bytes=170,
                       max_bytes_per_user=100)  # fmt: skip
    await store.start()
    try:
        assert store.url is not None
        async with connect(store.url, compression=None) as conn:
            alices = ticket_for(clock)
            bobs, carols = (
                issue_ticket(RELAY, space_id=SPACE, username=name,
                             expires_at_us=clock.now_us() + 10**8)
                for name in ("bob", "carol")
            )  # fmt: skip
            first = bytes(range(60))
            assert (await ask(conn, put(first, alices))).error is None
            assert (await ask(conn, put(first, alices, rid=2))).error is None  # no charge
            refused = (await ask(conn, put(b"y" * 50, alices, rid=3))).error
            assert refused is not None and refused.code == "quota_exceeded"
            assert "shard_bytes_per_user" in str(refused)
            for i, size in enumerate((60, 30)):
                assert (await ask(conn, put(bytes([i]) * size, bobs, rid=4 + i))).error is None
            full = (await ask(conn, put(b"z" * 30, carols, rid=9))).error
            assert full is not None and "shard_store_bytes" in str(full)
            assert store.share_path(name_of(first)).read_bytes() == first
    finally:
        await store.stop()
    again = ShardStore(root, RELAY.signing_key, clock=clock, max_bytes_per_user=100)
    await again.start()
    try:
        assert again.usage == {"alice": 60, "bob": 90} and again.stored_bytes == 150
        monkeypatch.setattr("shutil.disk_usage", lambda path: type("U", (), {"free": 10})())
        again.min_free_bytes = 1
        assert again.url is not None
        async with connect(again.url, compression=None) as conn:
            low = (await ask(conn, put(b"w" * 20, ticket_for(clock)))).error
            assert low is not None and "shard_min_free_bytes" in str(low)
    finally:
        await again.stop()


async def test_usage_is_saved_once_for_many_puts_and_at_stop(
    tmp_path: Path, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """usage.json is rewritten once for a burst of puts, not once per share, and what
    is still unsaved when the store stops is saved then (a restart reads it)."""
    monkeypatch.setattr("spacenb.server.shards.USAGE_SAVE_DELAY", 3600.0)
    root = tmp_path / "store"
    store = ShardStore(root, RELAY.signing_key, clock=clock)
    saves = []
    save = store._save_usage
    monkeypatch.setattr(store, "_save_usage", lambda: (saves.append(1), save())[1])
    await store.start()
    try:
        assert store.url is not None
        async with connect(store.url, compression=None) as conn:
            for i in range(20):
                assert (
                    await ask(conn, put(bytes([i]) * 10, ticket_for(clock), rid=i))
                ).error is None
        assert saves == [] and not (root / "usage.json").exists()
    finally:
        await store.stop()
    assert saves == [1]
    again = ShardStore(root, RELAY.signing_key, clock=clock)
    await again.start()
    try:
        assert again.usage == {"alice": 200} and again.stored_bytes == 200
    finally:
        await again.stop()


async def test_a_usage_save_that_fails_is_a_warning_and_is_tried_again(
    tmp_path: Path, clock: FixedClock, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The store's directory gone while a save of usage.json is due (a disk pulled, an
    operator's mistake): the save is logged as a warning, nothing escapes as an
    unretrieved task error, and the counts kept in memory are saved once it is back."""
    monkeypatch.setattr("spacenb.server.shards.USAGE_SAVE_DELAY", 0.05)
    root = tmp_path / "store"
    store = ShardStore(root, RELAY.signing_key, clock=clock)
    await store.start()
    try:
        assert store.url is not None
        async with connect(store.url, compression=None) as conn:
            assert (await ask(conn, put(b"a" * 10, ticket_for(clock)))).error is None
            root.rename(tmp_path / "away")
            await asyncio.sleep(0.3)
            assert "could not save usage.json" in caplog.text
            (tmp_path / "away").rename(root)
            assert (await ask(conn, put(b"b" * 10, ticket_for(clock), rid=2))).error is None
    finally:
        await store.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert json.loads((root / "usage.json").read_text()) == {"alice": 20}
