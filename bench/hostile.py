"""What hostile load costs the relay (a spacenb relay with its default limits, in its own
process): sockets that never sign in, pages of history, and a real user signing in
meanwhile.

- **idle sockets**: ``--idle`` websockets that open, read their hello and never sign in
  (from 40 loopback addresses); the relay's CPU per accepted socket and its memory per
  held socket.
- **sign-in under idle sockets**: how long a real user takes to connect and sign in while
  they are held, against the same with none.
- **history pages**: the relay's CPU per page (``limit=1000``) of 1000 small messages and
  of near-256 KiB messages (a page then holds 2 of them: cut by bytes).

``python -m bench.hostile [--smoke] [--json] [--idle 2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from .common import MIB, CpuMeter, Link, Metric, Report, Worker, main, now, rss
from .peers import RelayProcess

SMALL = 1000
BIG_BODY = 262_128 - 200


async def _idle(url: str, count: int) -> list[Any]:
    from websockets.asyncio.client import connect

    async def one(i: int) -> Any:
        ws = await connect(url, local_addr=(f"127.0.2.{1 + i % 40}", 0), open_timeout=60,
                           ping_interval=None, compression=None)  # fmt: skip
        await ws.recv()
        return ws

    held = []
    for start in range(0, count, 200):
        held += await asyncio.gather(*(one(i) for i in range(start, min(start + 200, count))))
    return held


async def _sign_in_seconds(url: str, app_key: str, name: str) -> float:
    import spacenb.aio as aio

    start = now()
    client = await aio.connect(url, app_key=app_key, username=name, keystore=":memory:")
    took = now() - start
    await client.close()
    return took


async def idle_worker(link: Link, url: str, app_key: str, count: int) -> None:
    """Hold ``count`` idle sockets; report how long a sign-in takes before and meanwhile."""
    before = [await _sign_in_seconds(url, app_key, f"before{i}") for i in range(5)]
    held = await _idle(url, count)
    link.send("held", len(held))
    await link.recv()
    during = [await _sign_in_seconds(url, app_key, f"during{i}") for i in range(5)]
    link.send("signed_in", {"before": sorted(before)[2], "during": sorted(during)[2]})
    await link.recv()
    for ws in held:
        ws.transport.abort()


async def pages_worker(link: Link, url: str, app_key: str, pages: int) -> None:
    """Fill a channel, then ask for ``pages`` history pages of small and then of large
    messages, reporting when each phase starts and ends (the parent reads CPU)."""
    import spacenb.aio as aio
    from spacenb.protocol import frames

    client = await aio.connect(url, app_key=app_key, username="pages", keystore=":memory:")
    small = await client.space.create_channel("small")
    await asyncio.gather(*(small.send_message({"n": i, "pad": "x" * 200}) for i in range(SMALL)))
    big = await client.space.create_channel("big")
    for _ in range(6):
        await big.send_message("x" * BIG_BODY)
    for label, space in (("small", small), ("big", big)):
        link.send("phase", label)
        await link.recv()
        sizes = []
        for _ in range(pages):
            page = await client.request(
                frames.HistoryRequest(frames.UNSENT, space_id=space.id, before=None, limit=1000)
            )
            sizes.append(len(page.items))
        link.send("done", sizes[-1])
        await link.recv()
    await client.close()


def run(args: argparse.Namespace) -> Report:
    report = Report.of("hostile", args)
    with RelayProcess("spacenb", limits=None) as relay:
        target = relay.target
        with Worker(idle_worker, target.url, target.app_key, args.idle, name="idle") as idle:
            rss_before = rss(relay.pid)
            meter = CpuMeter({"relay": relay.pid})
            held = idle.expect("held", timeout=300)
            cpu = meter.per(held)["relay"]
            rss_held = rss(relay.pid)
            idle.send("go")
            signed_in = idle.expect("signed_in", timeout=120)
            idle.send("stop")
        report.add(Metric("relay CPU per idle socket accepted", "µs", cpu, better="lower"))
        report.add(
            Metric("relay memory per idle socket held", "KiB",
                   round((rss_held - rss_before) / max(held, 1) / 1024, 1), better="lower")
        )  # fmt: skip
        report.add(
            Metric(f"sign-in while {held} idle sockets are held", "ms",
                   round(signed_in["during"] * 1000, 1),
                   baseline=round(signed_in["before"] * 1000, 1), better="lower",
                   note="baseline: the same sign-in with none held")
        )  # fmt: skip
        with Worker(pages_worker, target.url, target.app_key, args.pages, name="pages") as w:
            for _ in range(2):
                label = w.expect("phase", timeout=300)
                w.send("go")
                meter = CpuMeter({"relay": relay.pid})
                items = w.expect("done", timeout=300)
                per_page = meter.per(args.pages)["relay"]
                report.add(
                    Metric(f"relay CPU per history page ({label} messages, {items} a page)",
                           "µs", per_page, better="lower")
                )  # fmt: skip
                w.send("next")
    report.notes.append(
        f"relay RSS {rss_before / MIB:.1f} MiB before the idle sockets, {rss_held / MIB:.1f} "
        f"MiB with {held} held (caps: 2048 in all, 64 per address)"
    )
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--idle", type=int, default=2000, help="sockets that never sign in")
    parser.add_argument("--pages", type=int, default=200, help="history pages of each kind")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(run, __doc__ or "", configure, smoke={"idle": 100, "pages": 5})
