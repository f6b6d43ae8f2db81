"""Hostile load on a relay in its own process (so that its memory and file descriptors can
be read from /proc): members that never read while asking for history, and thousands of
sockets that never sign in under a low open-file limit. Figures go to ``figures``
(RELIABILITY.md, "Hostile load")."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import spacenb.aio as aio
from spacenb.protocol.envelope import MAX_SEALED_BYTES
from spacenb.server import Limits

from .conftest import Figures
from .helpers import Inbox
from .hostile import RssSampler, idle_socket, mib, non_reader
from .relayproc import RelayProcess

pytestmark = pytest.mark.timeout(240)

BIG = "x" * (MAX_SEALED_BYTES - 200)


async def test_fifty_members_that_never_read_cost_bounded_memory(
    tmp_path: Path, figures: Figures
) -> None:
    """50 members stop reading and each ask for twenty pages of near-256 KiB messages (the
    attack that pinned 240 MiB with six requests): every answer is at most one frame, the
    relay reads no further from a connection with more than a frame waiting, and drops one
    at the write that takes it past ``max_buffered``, so it holds at most
    50 × (4 MiB + 1 MiB) for them; a real member reads on."""
    relay = RelayProcess(tmp_path / "relay")
    await relay.start()
    readers = []
    try:
        owner = await aio.connect(relay.url, app_key=relay.app_key, username="owner",
                                  keystore=":memory:")  # fmt: skip
        room = await owner.space.create_channel("big room")
        for _ in range(30):
            await room.send_message(BIG)
        await asyncio.sleep(0.5)
        baseline, files = relay.rss_bytes(), relay.open_files()
        with RssSampler(relay, every=0.05) as sampler:
            for i in range(50):
                readers.append(
                    await non_reader(relay.url, relay.app_key, f"mute{i}", room.id, requests=20)
                )
            page = await room.history(limit=1000)  # a member who reads gets its pages
            await asyncio.sleep(2.0)
        # Each dropped connection closed a file descriptor of the relay's (most are not
        # dropped: the relay stops reading them instead, and the kernel holds the rest).
        dropped = files + len(readers) - relay.open_files()
        bound = 50 * (Limits().max_buffered + (1 << 20))
        figures.set("hostile.non_readers", {
            "clients": 50, "history_requests_each": 20, "dropped": dropped,
            "relay_rss_baseline_mib": mib(baseline), "relay_rss_peak_mib": mib(sampler.peak),
            "relay_rss_after_mib": mib(relay.rss_bytes()), "bound_mib": mib(bound),
        })  # fmt: skip
        assert sampler.peak - baseline < bound, (mib(baseline), mib(sampler.peak))
        assert len(page.messages) == 2 and page.next_cursor is not None
        await owner.close()
    finally:
        for reader in readers:
            reader.ws.transport.abort()
        relay.stop()


async def test_two_thousand_sockets_that_never_sign_in_under_a_1024_file_limit(
    tmp_path: Path, figures: Figures
) -> None:
    """Started with a soft RLIMIT_NOFILE of 1024 (a common default), the relay raises it;
    2,000 websockets that never sign in (from 40 addresses) are held to the caps, and a
    real user signs in, creates a channel, sends and receives."""
    relay = RelayProcess(tmp_path / "relay", nofile=1024)
    await relay.start()
    crowd = []
    try:
        assert relay.soft_nofile() > 1024

        async def one(i: int) -> None:
            with contextlib.suppress(Exception):
                crowd.append(await idle_socket(relay.url, f"127.0.2.{1 + i % 40}"))

        for start in range(0, 2000, 200):
            await asyncio.gather(*(one(i) for i in range(start, start + 200)))
        open_files = relay.open_files()
        client = await aio.connect(relay.url, app_key=relay.app_key, username="alice",
                                   keystore=":memory:")  # fmt: skip
        room = await client.space.create_channel("still open")
        inbox = Inbox()
        room.on_message(inbox)
        await room.send_message("signed in despite 2,000 idle sockets")
        (message,) = await inbox.wait(1)
        figures.set("hostile.idle_sockets", {
            "opened": 2000, "relay_soft_nofile": relay.soft_nofile(),
            "relay_open_files_after": open_files, "relay_rss_mib": mib(relay.rss_bytes()),
        })  # fmt: skip
        assert message.message.body.startswith("signed in")
        limits = Limits()
        assert open_files < limits.max_unauthenticated + 100
        await client.close()
    finally:
        for ws in crowd:
            ws.transport.abort()
        relay.stop()
