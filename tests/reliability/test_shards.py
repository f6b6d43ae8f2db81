"""Shards under faults: stores stopped, slow, hung, corrupting shares on disk or in
transit, serving truncated or swapped shares, or missing them.

A file is erasure-coded 3-of-5 over five shard stores, each behind a proxy that can
misbehave. Whatever the faults, a download either returns exactly the file (while at
least three stores serve good shares) or raises :class:`NotEnoughSharesError`: never
wrong bytes, never another error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import spacenb.aio as aio
from spacenb.aio import files
from spacenb.exceptions import NotEnoughSharesError
from spacenb.protocol import crypto, frames, shardwire
from spacenb.protocol.manifest import Manifest
from spacenb.server.app import RunningServer, start_server
from spacenb.server.shards import ShardStore
from spacenb.sync.runner import Runner

from .conftest import Figures
from .helpers import sign_in

K, N = 3, 5
SEGMENT = 64 << 10
SIZE = 3 * SEGMENT + 12_345  # four segments, the last one short
SLOW = 0.05  # seconds a slow store waits before each reply
TIMEOUT = 5.0  # seconds a download waits for one share: ample for a good store on a busy machine
GOOD = ("ok", "slow")
FAULTS = ("stopped", "corrupt", "truncate", "swap", "disk", "missing")
IN_TRANSIT = ("slow", "corrupt", "truncate", "swap", "hung")  # what a proxy does


class ShardProxy:
    """A shard store seen through a faulty network. In mode ``ok`` it forwards every
    message; ``slow`` delays replies; ``corrupt``, ``truncate`` and ``swap`` alter the share
    a ``get`` returns (one bit flipped, half of it, another share's bytes); ``hung``
    never answers a ``get``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "ok"
        self.url = ""
        self._server: Server | None = None
        self._last = b""

    async def start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, down: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            async with ws_connect(self.upstream, max_size=None, compression=None) as up:

                async def forward() -> None:
                    async for message in down:
                        await up.send(message)

                async def back() -> None:
                    async for message in up:
                        altered = self._fault(message if isinstance(message, bytes) else b"")
                        if self.mode == "slow":
                            await asyncio.sleep(SLOW)
                        if altered is not None:
                            await down.send(altered)

                tasks = [asyncio.create_task(forward()), asyncio.create_task(back())]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _fault(self, message: bytes) -> bytes | None:
        reply = shardwire.parse_reply(message)
        if reply.error is not None or not reply.payload or reply.id is None:
            return message
        share = reply.payload
        previous, self._last = self._last, share
        if self.mode == "hung":
            return None
        if self.mode == "corrupt":
            share = bytes([share[0] ^ 0x80]) + share[1:]
        elif self.mode == "truncate":
            share = share[: len(share) // 2]
        elif self.mode == "swap":  # a genuine share, but another one
            share = previous if previous and previous != share else crypto.random_bytes(len(share))
        return shardwire.ok_reply(reply.id, share, **reply.fields)


@dataclass
class ShardWorld:
    server: RunningServer
    client: aio.AsyncClient
    stores: list[ShardStore]
    proxies: list[ShardProxy]
    data: bytes
    manifest: Manifest

    @classmethod
    async def start(cls, root: Path) -> ShardWorld:
        server = await start_server(root / "relay", shards=1, shards_needed=1)
        client = await sign_in(server.url, server.app_key, "alice")
        space = await client.space.create_channel("files")
        relay_key = server.relay.core.relay_keys.signing_key
        stores = [ShardStore(root / f"store{j}", relay_key) for j in range(N)]
        proxies = []
        for store in stores:
            await store.start("127.0.0.1", 0)
            assert store.url is not None
            proxy = ShardProxy(store.url)
            await proxy.start()
            proxies.append(proxy)
        ticket = await client.request(frames.ShardTicket(frames.UNSENT, space_id=space.id))
        data = crypto.random_bytes(SIZE)
        manifest, _stat = await files.upload(
            data, ticket=ticket.ticket, space_id=space.id, stores=[p.url for p in proxies],
            shards_needed=K, segment_size=SEGMENT,
        )  # fmt: skip
        return cls(server, client, stores, proxies, data, manifest)

    def share_files(self, j: int) -> list[Path]:
        return sorted(p for p in self.stores[j].root.glob("??/*") if p.is_file())

    async def apply(self, faults: list[str]) -> None:
        for j, fault in enumerate(faults):
            self.proxies[j].mode = fault if fault in IN_TRANSIT else "ok"
            if fault == "stopped":
                await self.stores[j].stop()
            elif fault == "disk":
                for path in self.share_files(j):
                    flip_byte(path)
            elif fault == "missing":
                shutil.move(self.stores[j].root, self.stores[j].root.with_suffix(".away"))

    async def repair(self, faults: list[str]) -> None:
        for j, fault in enumerate(faults):
            self.proxies[j].mode = "ok"
            if fault == "stopped":  # back on its port: the manifest names its proxy
                port = int(self.proxies[j].upstream.rsplit(":", 1)[1])
                await self.stores[j].start("127.0.0.1", port)
            elif fault == "disk":
                for path in self.share_files(j):
                    flip_byte(path)
            elif fault == "missing":
                shutil.move(self.stores[j].root.with_suffix(".away"), self.stores[j].root)

    async def read(self, faults: list[str]) -> str:
        """Download under ``faults``: ``"read"`` or ``"not enough shares"``; anything
        else (wrong bytes, another error) fails the test."""
        await self.apply(faults)
        try:
            data, stat = await files.download(self.manifest, timeout=TIMEOUT)
        except NotEnoughSharesError:
            return "not enough shares"
        finally:
            await self.repair(faults)
        assert data == self.data, "wrong bytes"
        if not set(faults) & {"corrupt", "truncate", "swap", "disk"}:
            assert stat.shares_rejected == 0
        return "read"

    async def stop(self) -> None:
        await self.client.close()
        for proxy in self.proxies:
            await proxy.stop()
        for store in self.stores:
            await store.stop()
        await self.server.stop()


def flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.fixture
def world(loop_thread: Runner, tmp_path: Path) -> Iterator[ShardWorld]:
    started = loop_thread.run(ShardWorld.start(tmp_path), timeout=60)
    yield started
    loop_thread.run(started.stop(), timeout=30)


@st.composite
def faulty_stores(draw: st.DrawFn) -> list[str]:
    """What each of the N stores does: any number of them faulty (each fault drawn
    independently), in any positions."""
    bad = draw(st.integers(0, N))
    faults = draw(st.lists(st.sampled_from(FAULTS), min_size=bad, max_size=bad))
    good = draw(st.lists(st.sampled_from(GOOD), min_size=N - bad, max_size=N - bad))
    return draw(st.permutations(faults + good))


def expected(faults: list[str]) -> str:
    return "read" if sum(f in GOOD for f in faults) >= K else "not enough shares"


def test_any_three_good_stores_suffice_and_bad_bytes_never_pass(
    world: ShardWorld, loop_thread: Runner, figures: Figures
) -> None:
    """Every fault, alone and mixed: the outcome depends only on how many stores still
    serve good shares."""

    @settings(max_examples=40, deadline=None)
    @given(faults=faulty_stores())
    def example(faults: list[str]) -> None:
        outcome = loop_thread.run(world.read(faults), timeout=60)
        assert outcome == expected(faults), faults
        figures.add("shards.fault_scenarios")
        figures.add(f"shards.outcome.{outcome}")
        figures.add("shards.store_faults", sum(f not in GOOD for f in faults))

    example()


def test_every_single_fault_and_the_k_boundary(
    world: ShardWorld, loop_thread: Runner, figures: Figures
) -> None:
    """Each fault on two stores (the most a 3-of-5 file survives), then on three; and
    stores that accept the connection but never answer (a download timeout)."""
    cases = [[fault] * 2 + ["ok"] * 3 for fault in FAULTS]
    cases += [[fault] * 3 + ["slow"] * 2 for fault in FAULTS]
    cases += [list(mix) for mix in itertools.islice(itertools.permutations(FAULTS, 3), 0, 120, 20)]
    for faults in cases:
        assert loop_thread.run(world.read(faults), timeout=60) == expected(faults), faults
        figures.add("shards.fault_scenarios")
    for hung in (2, 3):
        faults = ["hung"] * hung + ["ok"] * (N - hung)
        assert loop_thread.run(world.read(faults), timeout=60) == expected(faults)
        figures.add("shards.fault_scenarios")
