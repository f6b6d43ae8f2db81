"""History → DataFrame: stored messages fetched, verified, decrypted and framed.

A sender seeds the channel through the async client (``--in-flight`` sends outstanding);
then a fresh member, in its own process, reads the whole history with the sync facade
(``space.history(before=cursor, limit=1000)`` until the cursor is None, one DataFrame per
page, concatenated). The baseline, in the same reader process just before, is the floor
of that work: verifying as many ECDSA P-256 signatures (over ~300-byte messages) in a bare
``cryptography`` loop. Peak memory is the reader process's peak RSS during the read.

``python -m bench.history [--smoke] [--json] [--counts 10000 100000]``
"""

from __future__ import annotations

import argparse
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


def read_history(space: Any) -> tuple[int, Any]:
    """Every stored message of ``space`` (a sync facade ``Space``) as one DataFrame."""
    import pandas as pd

    frames = []
    cursor = None
    while True:
        frame = space.history(before=cursor, limit=PAGE)
        frames.append(frame)
        cursor = frame.attrs["next_cursor"]
        if cursor is None:
            break
    frames.reverse()  # pages come newest first; rows within a page oldest first
    history = pd.concat(frames, ignore_index=True)
    return len(history), history


async def reader_worker(link: Link, target: Target, username: str = "reader") -> None:
    """A sync-facade member; each ``("read", n)`` times a full history read between two
    bare verify loops of ``n`` signatures (the baseline is their mean), and reports both
    with the read's peak RSS."""
    import spacenb

    client = spacenb.connect(
        target.url, app_key=target.app_key, username=username, keystore=":memory:"
    )
    space = client.space.join_channel(target.channel)
    link.send("ready")
    while True:
        kind, count = await link.recv()
        if kind != "read":
            break
        baseline_before, verify_cpu_before = verify_rate(count)
        with usage() as used:
            rows, history = read_history(space)
        ordered = bool(history["handle"].is_monotonic_increasing)
        del history
        baseline_after, verify_cpu_after = verify_rate(count)
        link.send(
            "done",
            {
                "rows": rows,
                "rate": rows / used.seconds,
                "cpu_us": used.cpu * 1e6 / rows,
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


def run(args: argparse.Namespace) -> Report:
    counts = sorted(args.counts)
    report = Report.of("history", args, page=PAGE, payload_bytes=PAYLOAD_BYTES)
    with (
        Topology("spacenb", [], shards=0) as topo,
        Worker(reader_worker, topo.target, name="history-reader") as reader,
    ):
        reader.expect("ready", 120)
        stored = 0
        for count in counts:
            sent, _ = topo.phase(count - stored, in_flight=args.in_flight, first_seq=stored)
            seed_rate = (count - stored) / (sent["end"] - sent["start"])
            stored = count
            relay_cpu = CpuMeter({"relay": topo.relay.pid})
            reader.send("read", count)
            got = reader.expect("done", 3600)
            relay_us = relay_cpu.per(count)["relay"]
            if got["rows"] != count or not got["ordered"]:
                raise RuntimeError(f"read {got['rows']} of {count} rows: {got}")
            report.add(
                Metric(
                    f"history of {count:,} → DataFrame",
                    "msg/s",
                    got["rate"],
                    got["baseline"],
                    target_ratio=0.70,
                )
            )
            report.add(
                Metric(
                    f"reader CPU per message, {count:,}",
                    "µs",
                    got["cpu_us"],
                    got["baseline_cpu_us"],
                    better="lower",
                )
            )
            report.add(Metric(f"reader peak RSS, {count:,}", "MiB", got["peak"] / MIB))
            report.notes.append(
                f"{count:,}: seeded at {seed_rate:,.0f} msg/s; bare verify "
                f"{got['baseline_before']:,.0f}/s before the read, "
                f"{got['baseline_after']:,.0f}/s after; relay CPU {relay_us:.0f} µs per "
                f"message served; reader RSS {got['rss_before'] / MIB:.0f} MiB before the read"
            )
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--counts", type=int, nargs="+", default=[10_000, 100_000], help="history sizes"
    )
    parser.add_argument("--in-flight", type=int, default=64, help="concurrent sends, seeding")


if __name__ == "__main__":
    main(run, __doc__ or "", configure, smoke={"counts": [300, 1000]})
