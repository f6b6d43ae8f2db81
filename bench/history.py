"""History → DataFrame: stored messages fetched, verified, decrypted and framed.

A sender seeds the channel through the async client (``--in-flight`` sends outstanding);
then for each read a fresh member, in a new process that joins after the seeding (so it
has received none of the messages live), reads the whole history with the sync facade
(``space.history(before=cursor, limit=page)`` until the cursor is None, one DataFrame per
page, concatenated). The baseline, in the same reader process just before, is the floor
of that work: verifying as many ECDSA P-256 signatures (over ~300-byte messages) in a bare
``cryptography`` loop. Peak memory is the reader process's peak RSS during the read.

The reader reads the next page ahead (``AsyncSpace.read_ahead``) unless ``--read-ahead
off``; ``both`` reads without it, then with it, by two fresh readers in turn.

``python -m bench.history [--smoke] [--json] [--counts 10000 100000] [--read-ahead both]``
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from .common import (
    MIB,
    PAYLOAD_BYTES,
    CpuMeter,
    Link,
    Metric,
    Report,
    Worker,
    cpu_seconds,
    main,
    now,
    usage,
)
from .peers import Target, Topology

PAGE = 1000
DISTINCT_SIGNATURES = 1000


def verify_rate(count: int) -> tuple[float, float]:
    """Bare ECDSA P-256 verifications over ``count`` (message, signature) pairs: per second
    by the clock, and CPU microseconds each."""
    import os

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    algorithm = ec.ECDSA(hashes.SHA256())
    pairs = []
    for _ in range(min(count, DISTINCT_SIGNATURES)):
        message = os.urandom(PAYLOAD_BYTES)
        pairs.append((message, key.sign(message, algorithm)))
    start, cpu = now(), cpu_seconds()
    for i in range(count):
        message, signature = pairs[i % len(pairs)]
        public.verify(signature, message, algorithm)
    return count / (now() - start), (cpu_seconds() - cpu) * 1e6 / count


def read_history(space: Any, page: int = PAGE) -> tuple[int, Any]:
    """Every stored message of ``space`` (a sync facade ``Space``) as one DataFrame."""
    import pandas as pd

    frames = []
    cursor = None
    while True:
        frame = space.history(before=cursor, limit=page)
        frames.append(frame)
        cursor = frame.attrs["next_cursor"]
        if cursor is None:
            break
    frames.reverse()  # pages come newest first; rows within a page oldest first
    history = pd.concat(frames, ignore_index=True)
    return len(history), history


def _workers_cpu(verify_pool: Any) -> float:
    """CPU seconds the reader's verification workers have used so far."""
    pids = [w.process.pid for pool in verify_pool._POOLS.values() for w in pool._workers]
    return sum(cpu_seconds(pid) for pid in pids)


async def _warm_pool(verify_pool: Any) -> None:
    """Start the verify workers and wait until each has answered once (imports done)."""
    workers = await verify_pool.shared()._ensure()
    await asyncio.gather(*(worker.verify([]) for worker in workers))


async def reader_worker(
    link: Link, target: Target, username: str, read: tuple[int, int, bool, bool]
) -> None:
    """A fresh sync-facade member (joined after the seeding: it has seen no message yet)
    that times one full history read in pages of ``page`` (``read`` is ``(n, page,
    pool, ahead)``) between two bare verify loops of ``n`` signatures (the baseline is their
    mean), and reports both with the read's peak RSS. ``pool`` False keeps every signature
    check in this process (``spacenb.aio.verify_pool`` off); True starts its workers
    before the clock starts. ``ahead`` False turns the read-ahead of pages off."""
    import spacenb
    from spacenb.aio import verify_pool

    count, page, pool, ahead = read
    client = spacenb.connect(
        target.url, app_key=target.app_key, username=username, keystore=":memory:"
    )
    space = client.space.join_channel(target.channel)
    if not ahead:
        space.aio.read_ahead = False
    if pool:
        client.runner.run(_warm_pool(verify_pool))
    else:
        verify_pool.MIN_PAGE = 1 << 30
    baseline_before, verify_cpu_before = verify_rate(min(count, 20_000))
    workers_before = _workers_cpu(verify_pool)
    with usage() as used:
        rows, history = read_history(space, page)
    workers_cpu = _workers_cpu(verify_pool) - workers_before
    ordered = bool(history["handle"].is_monotonic_increasing)
    del history
    baseline_after, verify_cpu_after = verify_rate(min(count, 20_000))
    link.send(
        "done",
        {
            "rows": rows,
            "rate": rows / used.seconds,
            "cpu_us": used.cpu * 1e6 / rows,
            "workers_cpu_us": workers_cpu * 1e6 / rows,
            "baseline": (baseline_before + baseline_after) / 2,
            "baseline_cpu_us": (verify_cpu_before + verify_cpu_after) / 2,
            "baseline_before": baseline_before,
            "baseline_after": baseline_after,
            "rss_before": used.rss_before,
            "peak": used.peak,
            "ordered": ordered,
        },
    )
    client.close()


def read_once(
    report: Report,
    topo: Topology,
    read: tuple[int, int, bool, bool],
    seed: float,
    n: int,
) -> None:
    """One read ``(count, page, pool, ahead)`` (see :func:`reader_worker`) by a fresh
    reader (the ``n``-th), its figures added."""
    relay_cpu = CpuMeter({"relay": topo.relay.pid})
    count, page, pool, ahead = read
    with Worker(
        reader_worker, topo.target, f"reader{n}", read, name=f"history-reader-{n}"
    ) as reader:
        got = reader.expect("done", 3600)
    relay_us = relay_cpu.per(count)["relay"]
    if got["rows"] != count or not got["ordered"]:
        raise RuntimeError(f"read {got['rows']} of {count} rows: {got}")
    where = f"{count:,}, pages of {page:,}, {'verify pool' if pool else 'in-process'}"
    where += "" if ahead else ", no read-ahead"
    target = {100: 9000.0}.get(page) if pool else None
    target_ratio = 1.0 if pool and page >= 1000 else None
    report.add(
        Metric(
            f"history of {where} → DataFrame",
            "msg/s",
            got["rate"],
            got["baseline"],
            target=target,
            target_ratio=target_ratio,
        )
    )
    report.add(
        Metric(
            f"reader CPU per message, {where}",
            "µs",
            got["cpu_us"],
            got["baseline_cpu_us"],
            better="lower",
            note="this process only (verify workers not counted)" if pool else "",
        )
    )
    if pool:
        report.add(
            Metric(
                f"reader + verify workers CPU per message, {where}",
                "µs",
                got["cpu_us"] + got["workers_cpu_us"],
                got["baseline_cpu_us"],
                better="lower",
            )
        )
    report.add(Metric(f"reader peak RSS, {where}", "MiB", got["peak"] / MIB))
    report.notes.append(
        f"{where}: seeded at {seed:,.0f} msg/s; bare verify "
        f"{got['baseline_before']:,.0f}/s before the read, "
        f"{got['baseline_after']:,.0f}/s after; relay CPU {relay_us:.0f} µs per "
        f"message served; reader RSS {got['rss_before'] / MIB:.0f} MiB before the read"
    )


def run(args: argparse.Namespace) -> Report:
    counts = sorted(args.counts)
    report = Report.of("history", args, page=PAGE, payload_bytes=PAYLOAD_BYTES)
    readers = 0
    with Topology("spacenb", [], shards=0) as topo:
        stored = 0
        for count in counts:
            sent, _ = topo.phase(
                count - stored, in_flight=args.in_flight, first_seq=stored, timeout=3600
            )
            seed_rate = (count - stored) / (sent["end"] - sent["start"])
            stored = count
            for page in args.pages:
                for pool in _choice(args.pool):
                    aheads = _choice(args.read_ahead)
                    for ahead in reversed(aheads) if args.ahead_first else aheads:
                        readers += 1
                        read_once(report, topo, (count, page, pool, ahead), seed_rate, readers)
    return report


def _choice(option: str) -> tuple[bool, ...]:
    return (False, True) if option == "both" else (option == "on",)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--counts", type=int, nargs="+", default=[10_000, 100_000], help="history sizes"
    )
    parser.add_argument("--in-flight", type=int, default=64, help="concurrent sends, seeding")
    parser.add_argument("--pages", type=int, nargs="+", default=[100, 1000], help="page sizes")
    parser.add_argument(
        "--pool", choices=["both", "on", "off"], default="both", help="verify workers"
    )
    parser.add_argument(
        "--read-ahead",
        choices=["both", "on", "off"],
        default="on",
        help="the next page fetched and verified while the caller builds one",
    )
    parser.add_argument(
        "--ahead-first", action="store_true", help="with --read-ahead both: read with it first"
    )


if __name__ == "__main__":
    main(run, __doc__ or "", configure, smoke={"counts": [300, 1000], "pages": [100]})
