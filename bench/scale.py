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
  per newcomer joining the full channel (while the ``--newcomers`` join one by one), and
  the member processes' CPU per newcomer (each verifies every newcomer's ``add``);
- with ``--breakdown``, the median of each stage of the newcomers' joins, the keeper's
  part included (:mod:`bench.joinstages`); with ``--members-idle``, another
  ``--newcomers`` join, each once the members and the relay are idle: a separate figure
  (the main one has the members' CPU for the previous joins on the same cores).

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
from .joinstages import (
    RELAY_STAGES,
    STAGES,
    keeper_stages,
    median_stages,
    newcomers_worker,
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
    trace = {"bench_trace": True} if args.breakdown and kind == "spacenb" else {}
    with Topology(
        kind,
        layout,
        join_concurrency=args.join_concurrency,
        setup_timeout=900,
        **trace,
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
        members = [r.pid for r in topo.receivers]
        relay_before = cpu_seconds(topo.relay.pid)
        members_before = sum(cpu_seconds(pid) for pid in members)
        fn, extra = (newcomers_worker, ()) if args.breakdown else (receivers_worker, (1,))
        with Worker(fn, topo.target, names, *extra, name=f"{kind}-newcomers") as late:
            newcomers = late.expect("ready", 300)
        relay_newcomers = cpu_seconds(topo.relay.pid) - relay_before
        members_newcomers = sum(cpu_seconds(pid) for pid in members) - members_before
        idle: dict[str, Any] | None = None
        if args.members_idle:
            names = [f"idle{i}" for i in range(args.newcomers)]
            pids = [*members, topo.relay.pid, topo.sender.pid]
            with Worker(newcomers_worker, topo.target, names, pids, name=f"{kind}-idle") as late:
                idle = late.expect("ready", 600)
        record = None
        if trace:
            topo.relay.send("relay_log")
            record = topo.relay.expect("relay_log", 60)
    ramp = opening_times(kind, topo.receivers_ready)
    full = opening_times(kind, [newcomers])
    connects = [t for ready in topo.receivers_ready for t in ready["connect_s"]]
    extra_figures: dict[str, Any] = {}
    if idle is not None:
        quiet = opening_times(kind, [idle])
        extra_figures["idle_p50"] = percentile(quiet, 50) * MS
        extra_figures["idle_p99"] = percentile(quiet, 99) * MS
        extra_figures["idle_stages"] = breakdown(idle["stages"], names, record)
    if args.breakdown:
        late_names = [f"late{i}" for i in range(args.newcomers)]
        extra_figures["stages"] = breakdown(newcomers["stages"], late_names, record)
    return {
        **extra_figures,
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
        "members_cpu_per_newcomer": members_newcomers / max(args.newcomers, 1) * MS,
    }


def breakdown(
    rows: list[dict[str, Any]], names: list[str], record: dict[str, Any] | None
) -> dict[str, float]:
    """The median of each stage of the newcomers' joins (ms), the relay's part included
    when it was traced."""
    rows = [dict(r) for r in rows]
    if record is not None:
        for row, name in zip(rows, names, strict=True):
            row.update(keeper_stages(row, name, record))
    keys = [k for k, _ in STAGES] + [k for k, _ in RELAY_STAGES]
    return median_stages(rows, keys)


def stage_notes(title: str, stages: dict[str, float]) -> list[str]:
    """The breakdown as report notes, one stage a line."""
    labels = dict(STAGES) | dict(RELAY_STAGES)
    return [title] + [f"  {labels[k]}: {v:.1f} ms" for k, v in stages.items()]


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
    report.add(
        Metric(
            "member processes' CPU per newcomer joining the full channel",
            "ms",
            spacenb["members_cpu_per_newcomer"],
            None,  # the bare relay's clients verify nothing
            better="lower",
        )
    )
    if args.members_idle:
        for name in ("p50", "p99"):
            report.add(
                Metric(
                    f"join latency, {args.newcomers} newcomers into the full channel, each "
                    f"once the members are idle (not the bench's main figure), {name}",
                    "ms",
                    spacenb[f"idle_{name}"],
                    bare[f"idle_{name}"],
                    better="lower",
                )
            )
    for key, title in (
        ("stages", "newcomers' join, median of each stage (the members busy with joins):"),
        ("idle_stages", "newcomers' join once the members are idle, median of each stage:"),
    ):
        if key in spacenb:
            report.notes += stage_notes(title, spacenb[key])
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
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="trace the newcomers' joins and the keeper, report each stage's median",
    )
    parser.add_argument(
        "--members-idle",
        action="store_true",
        help="then another --newcomers, each joining once the members and relay are idle",
    )


if __name__ == "__main__":
    main(
        run,
        __doc__ or "",
        configure,
        smoke={"clients": 20, "processes": 2, "rounds": 2, "newcomers": 3},
    )
