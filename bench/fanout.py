"""Fan-out: one sender, ``--receivers`` receivers in one channel, on spacenb and the bare relay.

The receivers share ``--processes`` processes (50 clients each by default); every receiver
verifies and decrypts every message on its own, as separate users would. The figure is
deliveries per second: messages × receivers, over the time from the first send to the
last arrival anywhere.

``python -m bench.fanout [--smoke] [--json]``
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import PAYLOAD_BYTES, CpuMeter, Metric, Report, alternate, main, partition
from .history import verify_rate
from .peers import KINDS, Kind, Topology


def measure(kind: Kind, args: argparse.Namespace) -> dict[str, Any]:
    """Deliveries per second of ``args.count`` messages to every receiver."""
    layout = [len(run) for run in partition(range(args.receivers), args.processes)]
    with Topology(kind, layout, join_concurrency=8) as topo:
        topo.phase(args.warmup, in_flight=args.in_flight)
        meter = CpuMeter(topo.pids)
        sent, got = topo.phase(args.count, in_flight=args.in_flight, timeout=300)
        cpu = meter.per(args.count * args.receivers)
    delivered = sum(g["count"] for g in got)
    expected = args.count * args.receivers
    if delivered < expected:
        raise RuntimeError(f"{kind}: {delivered} of {expected} deliveries arrived")
    last = max(g["last"] for g in got)
    return {"deliveries": delivered / (last - sent["start"]), "cpu_us": cpu["total"], "cpu": cpu}


def run(args: argparse.Namespace) -> Report:
    report = Report.of("fanout", args, payload_bytes=PAYLOAD_BYTES)
    res = alternate(lambda kind: measure(kind, args), KINDS, args.repeat)
    report.add(
        Metric(
            f"deliveries to {args.receivers} receivers",
            "deliveries/s",
            res["spacenb"]["deliveries"],
            res["bare"]["deliveries"],
            target_ratio=0.40,
        )
    )
    report.add(
        Metric(
            "CPU per delivery, all processes",
            "µs",
            res["spacenb"]["cpu_us"],
            res["bare"]["cpu_us"],
            better="lower",
        )
    )
    relay = {kind: res[kind]["cpu"]["relay"] for kind in KINDS}
    report.add(
        Metric(
            "relay CPU per delivery",
            "µs",
            relay["spacenb"],
            relay["bare"],
            better="lower",
            target_ratio=3.0,
        )
    )
    # What receivers spend, against the one ECDSA verify each delivery needs (measured
    # here, in this process, by the bare verify loop of bench.history).
    _, verify_us = verify_rate(3000)
    receivers = {
        kind: sum(v for k, v in res[kind]["cpu"].items() if k.startswith("receivers"))
        for kind in KINDS
    }
    report.add(
        Metric(
            "receivers' CPU per delivery, against one bare verify",
            "µs",
            receivers["spacenb"],
            verify_us,
            better="lower",
        )
    )
    report.add(Metric("bare relay's receivers' CPU per delivery", "µs", receivers["bare"]))
    for kind in KINDS:
        report.notes.append(f"{kind} CPU µs per delivery: {res[kind]['cpu']}")
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--receivers", type=int, default=100, help="receiving clients")
    parser.add_argument("--processes", type=int, default=2, help="receiver processes")
    parser.add_argument("--count", type=int, default=1_000, help="messages")
    parser.add_argument("--warmup", type=int, default=50, help="messages before timing")
    parser.add_argument("--in-flight", type=int, default=32, help="concurrent sends")
    parser.add_argument("--repeat", type=int, default=2, help="rounds per kind (median)")


if __name__ == "__main__":
    main(
        run,
        __doc__ or "",
        configure,
        smoke={"receivers": 10, "count": 30, "warmup": 5, "repeat": 1},
    )
