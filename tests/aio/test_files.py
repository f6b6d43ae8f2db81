"""Files end to end: real shard stores on loopback, real tickets, failures made on disk."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

import spacenb
from spacenb.aio.files import HEDGE_AFTER, FileStat, download, download_to, upload
from spacenb.clock import SystemClock
from spacenb.exceptions import (
    ConnectionLostError,
    NotEnoughSharesError,
    PermissionDeniedError,
)
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair
from spacenb.protocol.manifest import Manifest
from spacenb.protocol.tickets import issue_ticket
from spacenb.server.shards import ShardStore

RELAY = IdentityKeys.from_seed(b"file tests: relay")
SPACE = SpaceKeyPair.from_seed(b"file tests: space").space_id
K, N = 3, 5
SEGMENT = 1024  # small segments: many of them, quickly


def make_ticket(*, space_id: str = SPACE, seconds: float = 600, signer: Any = RELAY) -> str:
    expires = SystemClock().now_us() + int(seconds * 1_000_000)
    return issue_ticket(signer, space_id=space_id, username="alice", expires_at_us=expires)


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[list[ShardStore]]:
    started = [ShardStore(tmp_path / f"store{j}", RELAY.signing_key) for j in range(N)]
    for store in started:
        await store.start()
    yield started
    for store in started:
        await store.stop()


def urls(stores: list[ShardStore]) -> list[str]:
    return [store.url for store in stores if store.url is not None]


async def put(source: Any, stores: list[ShardStore], **kwargs: Any) -> tuple[Manifest, FileStat]:
    kwargs.setdefault("segment_size", SEGMENT)
    kwargs.setdefault("ticket", make_ticket())
    return await upload(source, space_id=SPACE, stores=urls(stores), shards_needed=K, **kwargs)


def share_files(store: ShardStore, manifest: Manifest, j: int) -> list[Path]:
    return [store.share_path(entry.shares[j]) for entry in manifest.segments]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [0, 1, 1000, SEGMENT, 3 * SEGMENT, 10 * SEGMENT + 7])
async def test_round_trip(stores: list[ShardStore], size: int) -> None:
    data = os.urandom(size)
    manifest, stat = await put(data, stores)
    assert (manifest.size, manifest.k, manifest.n) == (size, K, N)
    assert manifest.stores == tuple(urls(stores))
    layout = manifest.layout
    assert stat.bytes_uploaded == N * sum(layout.share_size(i) for i in range(stat.segments))
    assert stat.segments == layout.segment_count and stat.bytes_fetched == 0
    for j, store in enumerate(stores):  # share j of every segment is on store j
        assert all(path.is_file() for path in share_files(store, manifest, j))

    data_back, got = await download(manifest)
    assert data_back == data
    assert got.size == size and got.bytes_uploaded == 0
    assert got.stores_failed == () and got.shares_rejected == 0
    if size:
        assert got.stores_used == tuple(urls(stores)[:K])  # primary shares first, in order


async def test_default_segment_size(stores: list[ShardStore]) -> None:
    data = os.urandom((1 << 20) + 1)
    manifest, stat = await put(data, stores, segment_size=1 << 20)
    assert stat.segments == 2
    assert (await download(manifest))[0] == data


async def test_sources_and_metadata(stores: list[ShardStore], tmp_path: Path) -> None:
    data = os.urandom(5000)
    path = tmp_path / "notes.txt"
    path.write_bytes(data)
    manifest, _ = await put(path, stores, metadata={"caption": "hi", "tags": ["x"]})
    assert (manifest.name, manifest.content_type) == ("notes.txt", "text/plain")
    assert manifest.metadata == {"caption": "hi", "tags": ["x"]}
    assert (await download(manifest))[0] == data

    manifest, _ = await put(str(path), stores, name="other.bin", content_type="x/y")
    assert (manifest.name, manifest.content_type) == ("other.bin", "x/y")

    stream = io.BytesIO(b"skipped" + data)
    stream.seek(7)  # read from the current position
    manifest, _ = await put(stream, stores)
    assert manifest.name is None and manifest.content_type is None
    assert (await download(manifest))[0] == data

    for view in (bytearray(data), memoryview(data)):
        manifest, _ = await put(view, stores)
        assert (await download(manifest))[0] == data


class Unseekable(io.RawIOBase):
    """A pipe-like stream: no seek, no size, short reads."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), 333))
        buffer[: len(chunk)] = chunk
        return len(chunk)


async def test_unseekable_source_is_spooled(stores: list[ShardStore]) -> None:
    data = os.urandom(4 * SEGMENT + 3)
    manifest, _ = await put(Unseekable(data), stores)
    assert manifest.size == len(data)
    assert (await download(manifest))[0] == data


async def test_manifest_dict_travels_as_json(stores: list[ShardStore]) -> None:
    data = os.urandom(3000)
    manifest, _ = await put(data, stores)
    received = json.loads(json.dumps(manifest.to_dict()))
    assert (await download(received))[0] == data


async def test_download_to_path_and_file(stores: list[ShardStore], tmp_path: Path) -> None:
    data = os.urandom(7 * SEGMENT + 1)
    manifest, _ = await put(data, stores)
    target = tmp_path / "out" / "copy.bin"
    target.parent.mkdir()
    stat = await download_to(manifest, target)
    assert target.read_bytes() == data and stat.size == len(data)
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.bin"]
    sink = io.BytesIO()
    await download_to(manifest, sink)
    assert sink.getvalue() == data


async def test_progress_reports_every_segment(stores: list[ShardStore]) -> None:
    data = os.urandom(5 * SEGMENT + 10)
    seen: list[tuple[int, int]] = []
    manifest, _ = await put(data, stores, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))
    assert len(seen) == 1 + 6 and [d for d, _ in seen] == sorted(d for d, _ in seen)
    seen.clear()
    await download(manifest, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data)) and len(seen) == 7


# --------------------------------------------------------------------------- failures


async def test_download_with_n_minus_k_stores_stopped(stores: list[ShardStore]) -> None:
    data = os.urandom(6 * SEGMENT)
    manifest, _ = await put(data, stores)
    for store in stores[: N - K]:
        await store.stop()
    data_back, stat = await download(manifest)
    assert data_back == data
    assert set(stat.stores_failed) == set(manifest.stores[: N - K])
    assert set(stat.stores_used) == set(manifest.stores[N - K :])


async def test_a_store_that_dies_mid_download_is_replaced(stores: list[ShardStore]) -> None:
    data = os.urandom(50 * SEGMENT)  # the store is gone long before the last segment
    manifest, _ = await put(data, stores)
    stopping: list[asyncio.Task[None]] = []

    def stop_store_0(done: int, total: int) -> None:
        if done and not stopping:
            stopping.append(asyncio.ensure_future(stores[0].stop()))

    data_back, stat = await download(manifest, progress=stop_store_0)
    assert data_back == data
    await stopping[0]
    assert stat.stores_failed == (manifest.stores[0],)


async def test_a_hung_store_costs_a_second_not_the_timeout(stores: list[ShardStore]) -> None:
    data = os.urandom(8 * SEGMENT)
    manifest, _ = await put(data, stores)

    async def swallow(ws: ServerConnection) -> None:  # answers nothing, ever
        async for _ in ws:
            pass

    async with serve(swallow, "127.0.0.1", 0) as hung:
        port = hung.sockets[0].getsockname()[1]
        stores_now = (f"ws://127.0.0.1:{port}", *manifest.stores[1:])
        moved = dataclasses.replace(manifest, stores=stores_now)
        data_back, stat = await asyncio.wait_for(download(moved, timeout=30), 10)
    assert data_back == data
    assert stat.stores_failed == (stores_now[0],)
    assert stat.seconds < 5 * HEDGE_AFTER


async def test_corrupt_share_on_disk_is_detected_and_avoided(stores: list[ShardStore]) -> None:
    data = os.urandom(4 * SEGMENT)
    manifest, _ = await put(data, stores)
    for path in share_files(stores[1], manifest, 1):
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    data_back, stat = await download(manifest)
    assert data_back == data
    assert stat.shares_rejected >= 1
    assert stat.stores_failed == (manifest.stores[1],)


async def test_missing_shares_are_fetched_elsewhere(stores: list[ShardStore]) -> None:
    data = os.urandom(3 * SEGMENT)
    manifest, _ = await put(data, stores)
    for path in share_files(stores[0], manifest, 0):
        path.unlink()
    data_back, stat = await download(manifest)
    assert data_back == data and stat.stores_failed == (manifest.stores[0],)


async def test_fewer_than_k_stores_is_not_enough(stores: list[ShardStore]) -> None:
    data = os.urandom(2 * SEGMENT)
    manifest, _ = await put(data, stores)
    for store in stores[: N - K + 1]:
        await store.stop()
    with pytest.raises(NotEnoughSharesError, match=f"found {K - 1} good shares, {K} needed"):
        await download(manifest)


async def test_too_many_corrupt_shares_never_yield_wrong_bytes(
    stores: list[ShardStore], tmp_path: Path
) -> None:
    data = os.urandom(2 * SEGMENT)
    manifest, _ = await put(data, stores)
    for j in range(N - K + 1):
        for path in share_files(stores[j], manifest, j):
            path.write_bytes(path.read_bytes()[::-1])
    with pytest.raises(NotEnoughSharesError, match="corrupt"):
        await download(manifest)
    target = tmp_path / "never.bin"
    with pytest.raises(NotEnoughSharesError):
        await download_to(manifest, target)
    assert list(tmp_path.glob("never.bin*")) == []


@pytest.mark.parametrize("problem", ["expired", "other space", "not the relay"])
async def test_bad_ticket_cannot_upload(stores: list[ShardStore], problem: str) -> None:
    ticket = {
        "expired": lambda: make_ticket(seconds=-1),
        "other space": lambda: make_ticket(space_id=SpaceKeyPair.generate().space_id),
        "not the relay": lambda: make_ticket(signer=IdentityKeys.generate()),
    }[problem]()
    with pytest.raises(PermissionDeniedError, match="ticket"):
        await put(os.urandom(100), stores, ticket=ticket)
    assert not any(any(p.name != "tmp" for p in s.root.iterdir()) for s in stores)


async def test_upload_needs_every_store(stores: list[ShardStore]) -> None:
    await stores[2].stop()
    with pytest.raises(ConnectionLostError, match=str(stores[2].url)):
        await put(os.urandom(100), stores)


# --------------------------------------------------------------------------- memory

# Peak RSS is read from VmHWM: getrusage's ru_maxrss survives execve on Linux, so a child
# of the test process would report the test process's own peak. The child moves a small file
# and then a big one: if memory grew with the file, the second peak would be far higher.
CHILD = """
import asyncio, json, sys
from spacenb.aio.files import download_to, upload

def peak_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

async def round_trip(args, source, target):
    manifest, up = await upload(source, ticket=args["ticket"], space_id=args["space"],
                                stores=args["stores"], shards_needed=args["k"])
    down = await download_to(manifest, target)
    return up.seconds, down.seconds

async def main(args):
    await asyncio.to_thread(lambda: None)  # the worker threads exist before the baseline
    base = peak_mib()
    await round_trip(args, args["small"], args["small"] + ".copy")
    small = peak_mib() - base
    up_s, down_s = await round_trip(args, args["big"], args["big"] + ".copy")
    print(json.dumps({"base_mib": base, "small_mib": small, "big_mib": peak_mib() - base,
                      "up_s": up_s, "down_s": down_s}))

asyncio.run(main(json.loads(sys.argv[1])))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
async def test_large_file_streams_in_bounded_memory(
    stores: list[ShardStore], tmp_path: Path
) -> None:
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    for path, mib in ((small, 16), (big, 64)):
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
    args = {
        "small": str(small), "big": str(big), "ticket": make_ticket(),
        "space": SPACE, "stores": urls(stores), "k": K,
    }  # fmt: skip
    repo = str(Path(spacenb.__file__).resolve().parents[1])
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, json.dumps(args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": repo},
    )  # fmt: skip
    out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, err.decode()
    report = json.loads(out)
    # A few 1 MiB segments in flight (plus glibc's per-thread arenas), never the 64 MiB file;
    # and four times the data costs (almost) no more memory than the small file did.
    assert report["big_mib"] < 32, report
    assert report["big_mib"] - report["small_mib"] < 8, report
    for path in (small, big):
        assert _sha256(path.with_name(path.name + ".copy")) == _sha256(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
