"""Message path: sender → relay → receiver, each in its own process.

spacenb seals, signs, verifies (relay and receiver), stores (SQLite commit) and decrypts
every message; the baseline is the bare broadcast relay (``bench.bare_relay``) with the
same three processes and the same ~300-byte payload. Two phases on each:

- throughput: ``--count`` messages with ``--in-flight`` sends outstanding, timed from the
  first send to the last arrival at the receiver;
- latency: messages paced at ``--rate`` per second, each stamped by the sender before it
  is sealed and timed at the receiver once decrypted (p50, p99).

``python -m bench.message_path [--smoke] [--json]``
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import PAYLOAD_BYTES, CpuMeter, Metric, Report, alternate, main, percentile
from .peers import KINDS, Kind, Topology

MS = 1000.0


def measure(kind: Kind, args: argparse.Namespace) -> dict[str, Any]:
    """Both phases on a fresh relay of ``kind``."""
    with Topology(kind, [1]) as topo:
        size = args.body_bytes
        topo.phase(args.warmup, in_flight=args.in_flight, size=size)
        meter = CpuMeter(topo.pids)
        sent, (got,) = topo.phase(args.count, in_flight=args.in_flight, size=size)
        cpu = meter.per(args.count)
        if got["count"] < args.count:
            raise RuntimeError(f"{kind}: {got['count']} of {args.count} messages arrived")
        _, (paced,) = topo.phase(args.paced, rate=args.rate, size=size)
        latencies = paced["latencies"]
    return {
        "throughput": got["count"] / (got["last"] - sent["start"]),
        "p50": percentile(latencies, 50) * MS,
        "p99": percentile(latencies, 99) * MS,
        "cpu_us": cpu["total"],
        "cpu": cpu,
    }


def run(args: argparse.Namespace) -> Report:
    report = Report.of("message_path", args)
    res = alternate(lambda kind: measure(kind, args), KINDS, args.repeat)
    spacenb, bare = res["spacenb"], res["bare"]
    report.add(
        Metric(
            "throughput",
            "msg/s",
            spacenb["throughput"],
            bare["throughput"],
            target=3000,
            target_ratio=0.25,
        )
    )
    for name, bound in (("p50", 3.0), ("p99", 15.0)):
        report.add(
            Metric(
                f"latency {name} at {args.rate:g}/s",
                "ms",
                spacenb[name],
                bare[name],
                better="lower",
                target=bound,
            )
        )
    report.add(
        Metric(
            "CPU per message, all processes",
            "µs",
            spacenb["cpu_us"],
            bare["cpu_us"],
            better="lower",
        )
    )
    for kind in KINDS:
        report.notes.append(f"{kind} CPU µs per message during throughput: {res[kind]['cpu']}")
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=20_000, help="messages, throughput")
    parser.add_argument("--warmup", type=int, default=1_000, help="messages before timing")
    parser.add_argument("--in-flight", type=int, default=32, help="concurrent sends")
    parser.add_argument("--rate", type=float, default=200.0, help="paced messages per second")
    parser.add_argument("--paced", type=int, default=2_000, help="messages, latency phase")
    parser.add_argument("--repeat", type=int, default=2, help="rounds per kind (median)")
    parser.add_argument(
        "--body-bytes",
        type=int,
        default=PAYLOAD_BYTES,
        help="JSON size of each body (issue 16's peer-shaped run: 200, with --in-flight 16)",
    )


if __name__ == "__main__":
    main(
        run, __doc__ or "", configure, smoke={"count": 200, "warmup": 20, "paced": 40, "repeat": 1}
    )
