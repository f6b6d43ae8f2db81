"""Latency sweep: p50 and p99 at every rate from quiet to busy, on one relay per kind.

Sender, relay and receiver in three processes (as ``bench.message_path``); for each rate
of ``--rates`` the sender paces ``rate × --seconds`` messages (at least ``--min-count``,
at most ``--max-count``), each stamped before it is sealed and timed at the receiver once
decrypted. The baseline is the bare relay (``bench.bare_relay``) with the same processes
and pacing, so a delay that only the quiet path pays shows as a ratio that grows as the
rate falls. Kinds alternate per rate (spacenb, bare, then bare, spacenb at the next).

``python -m bench.latency_sweep [--smoke] [--json] [--rates 5 20 50 200 500]``
"""

from __future__ import annotations

import argparse

from .common import PAYLOAD_BYTES, Metric, Report, main, percentile
from .peers import KINDS, Kind, Topology

MS = 1000.0


def count_for(rate: float, args: argparse.Namespace) -> int:
    return int(min(args.max_count, max(args.min_count, rate * args.seconds)))


def cold_factor(rounds: int = 60, gap: float = 0.02) -> tuple[float, float]:
    """The same small piece of work (one ECDSA sign, a JSON round trip) run back to back and
    after ``gap`` seconds of sleep: median microseconds of each. On a VM whose vCPU idles
    between messages the second is several times the first (caches are cold on waking),
    which every process on a quiet path pays at each hop, spacenb's and the bare relay's."""
    import json
    import os
    import time

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key, algorithm, message = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.ECDSA(hashes.SHA256()),
        os.urandom(300),
    )

    def work() -> float:
        start = time.perf_counter()
        signature = key.sign(message, algorithm)
        json.loads(json.dumps({"n": list(range(100)), "s": signature.hex()}))
        return time.perf_counter() - start

    warm, cold = [], []
    for _ in range(rounds):
        warm.append(work())
        time.sleep(gap)
        cold.append(work())
    return percentile(warm, 50) * 1e6, percentile(cold, 50) * 1e6


def run(args: argparse.Namespace) -> Report:
    report = Report.of("latency_sweep", args, payload_bytes=PAYLOAD_BYTES)
    results: dict[Kind, dict[float, dict[str, float]]] = {kind: {} for kind in KINDS}
    with Topology("spacenb", [1]) as spacenb, Topology("bare", [1]) as bare:
        topologies = {"spacenb": spacenb, "bare": bare}
        for topo in topologies.values():
            topo.phase(args.warmup, in_flight=4)
        for i, rate in enumerate(args.rates):
            order = KINDS if i % 2 == 0 else tuple(reversed(KINDS))
            for kind in order:
                count = count_for(rate, args)
                _, (paced,) = topologies[kind].phase(count, rate=rate)
                latencies = paced["latencies"]
                if len(latencies) < count:
                    raise RuntimeError(f"{kind} at {rate}/s: {len(latencies)} of {count}")
                results[kind][rate] = {
                    "p50": percentile(latencies, 50) * MS,
                    "p99": percentile(latencies, 99) * MS,
                    "count": count,
                }
    warm_us, cold_us = cold_factor()
    report.add(
        Metric(
            "sign + JSON after 20 ms idle (back to back = baseline)",
            "µs",
            cold_us,
            warm_us,
            better="lower",
        )
    )
    for rate in args.rates:
        ours, base = results["spacenb"][rate], results["bare"][rate]
        for name, bound in (("p50", 2.0), ("p99", 10.0)):
            report.add(
                Metric(
                    f"latency {name} at {rate:g}/s",
                    "ms",
                    ours[name],
                    base[name],
                    better="lower",
                    target=bound,
                    note=f"{int(ours['count'])} messages",
                )
            )
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[5, 20, 50, 200, 500], help="msg/s"
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="pacing time per rate")
    parser.add_argument("--min-count", type=int, default=50, help="fewest messages per rate")
    parser.add_argument("--max-count", type=int, default=1500, help="most messages per rate")
    parser.add_argument("--warmup", type=int, default=200, help="messages before timing")


if __name__ == "__main__":
    main(
        run,
        __doc__ or "",
        configure,
        smoke={"rates": [20, 200], "seconds": 0.5, "min_count": 10, "warmup": 10},
    )
