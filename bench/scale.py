"""Scale of one relay: ``--clients`` signed-in clients in one channel, on spacenb and bare.

The relay runs in its own process; the clients are spread over ``--processes`` processes,
each opening its clients ``--join-concurrency`` at a time (spacenb: sign up, then
``join_channel``, admitted by the keeper; bare: a websocket handshake). Measured:

- join latency (spacenb ``join_channel``: resolve, join, keeper admission, key unwrap,
  subscribe), p50 and p99, against the bare websocket handshake;
- relay memory per idle connection: the relay's RSS once everyone is in, minus its RSS
  before anyone connected, over the number of connections;
- one message reaching all: ``--rounds`` single messages, each timed from the sender's
  stamp to its last delivery anywhere (median of the rounds);
- CPU per joining client (relay and clients, over the whole ramp) and the relay's CPU
  per newcomer joining the full channel (while the ``--newcomers`` join one by one).

``python -m bench.scale [--smoke] [--json]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from .common import (
    Metric,
    Report,
    Worker,
    alternate,
    cpu_seconds,
    main,
    partition,
    percentile,
    rss,
)
from .peers import KINDS, Kind, Topology, receivers_worker

MS = 1000.0
KB = 1000.0


def opening_times(kind: str, readies: list[dict[str, list[float]]]) -> list[float]:
    """Seconds each client took to get in: ``join_channel`` for spacenb (sign-up excluded),
    the websocket handshake for the bare relay (it has nothing to join)."""
    field = "join_s" if kind == "spacenb" else "connect_s"
    return [t for ready in readies for t in ready[field]]


def measure(kind: Kind, args: argparse.Namespace) -> dict[str, Any]:
    """Joins, memory and time to last delivery on a fresh relay of ``kind``."""
    layout = [len(run) for run in partition(range(args.clients), args.processes)]
    with Topology(
        kind,
        layout,
        join_concurrency=args.join_concurrency,
        setup_timeout=900,
    ) as topo:
        time.sleep(1.0)  # let the relay settle after the last join
        setup_cpu = {name: cpu_seconds(pid) for name, pid in topo.pids.items()}
        clients_cpu = sum(v for name, v in setup_cpu.items() if name.startswith("receivers"))
        connections = args.clients + 1
        per_connection = (rss(topo.relay.pid) - topo.relay_rss_before) / connections
        lasts = []
        for i in range(args.rounds):
            _, got = topo.phase(1, first_seq=i, timeout=60)
            delivered = sum(g["count"] for g in got)
            if delivered < args.clients:
                raise RuntimeError(f"{kind}: message {i} reached {delivered} of {args.clients}")
            lasts.append(max(max(g["worst"].values()) for g in got))
            time.sleep(0.2)
        names = [f"late{i}" for i in range(args.newcomers)]
        relay_before = cpu_seconds(topo.relay.pid)
        with Worker(receivers_worker, topo.target, names, 1, name=f"{kind}-newcomers") as late:
            newcomers = late.expect("ready", 300)
        relay_newcomers = cpu_seconds(topo.relay.pid) - relay_before
    ramp = opening_times(kind, topo.receivers_ready)
    full = opening_times(kind, [newcomers])
    connects = [t for ready in topo.receivers_ready for t in ready["connect_s"]]
    return {
        "ramp_p50": percentile(ramp, 50) * MS,
        "ramp_p99": percentile(ramp, 99) * MS,
        "join_p50": percentile(full, 50) * MS,
        "join_p99": percentile(full, 99) * MS,
        "connect_p50": percentile(connects, 50) * MS,
        "per_connection": per_connection / KB,
        "last_delivery": statistics.median(lasts) * MS,
        "last_delivery_max": max(lasts) * MS,
        "relay_cpu_per_join": setup_cpu["relay"] / args.clients * MS,
        "client_cpu_per_join": clients_cpu / args.clients * MS,
        "relay_cpu_per_newcomer": relay_newcomers / max(args.newcomers, 1) * MS,
    }


def run(args: argparse.Namespace) -> Report:
    report = Report.of("scale", args)
    res = alternate(lambda kind: measure(kind, args), KINDS, args.repeat)
    spacenb, bare = res["spacenb"], res["bare"]
    report.add(
        Metric(
            f"one message to {args.clients}, last delivery",
            "ms",
            spacenb["last_delivery"],
            bare["last_delivery"],
            better="lower",
            target=1000,
        )
    )
    for key, label in (
        ("join", f"join latency, {args.newcomers} newcomers one by one into the full channel,"),
        ("ramp", f"join latency while all {args.clients} join,"),
    ):
        for name, bound in (("p50", 50.0), ("p99", None)):
            report.add(
                Metric(
                    f"{label} {name}",
                    "ms",
                    spacenb[f"{key}_{name}"],
                    bare[f"{key}_{name}"],
                    better="lower",
                    target=bound,
                )
            )
    report.add(
        Metric(
            "relay memory per idle connection",
            "KB",
            spacenb["per_connection"],
            bare["per_connection"],
            better="lower",
            target=100,
        )
    )
    for side in ("relay", "client"):
        report.add(
            Metric(
                f"{side} CPU per joining client",
                "ms",
                spacenb[f"{side}_cpu_per_join"],
                bare[f"{side}_cpu_per_join"],
                better="lower",
            )
        )
    report.add(
        Metric(
            f"relay CPU per newcomer joining the full channel of {args.clients}",
            "ms",
            spacenb["relay_cpu_per_newcomer"],
            bare["relay_cpu_per_newcomer"],
            better="lower",
        )
    )
    report.notes += [
        "join baseline: the bare relay's websocket handshake (it has no join); CPU per "
        "joining client: all CPU the relay and the client processes used from start until "
        "everyone was in, over the number of clients",
        f"spacenb sign-up (connect + auth) p50 {spacenb['connect_p50']:.1f} ms; "
        f"worst round of last delivery: spacenb {spacenb['last_delivery_max']:.0f} ms, "
        f"bare {bare['last_delivery_max']:.0f} ms",
    ]
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=1_000, help="clients in the channel")
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument(
        "--join-concurrency", type=int, default=1, help="clients joining at once, per process"
    )
    parser.add_argument("--rounds", type=int, default=5, help="single messages timed")
    parser.add_argument(
        "--newcomers", type=int, default=20, help="clients joining the full channel, one by one"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds per kind (median)")


if __name__ == "__main__":
    main(
        run,
        __doc__ or "",
        configure,
        smoke={"clients": 20, "processes": 2, "rounds": 2, "newcomers": 3},
    )
