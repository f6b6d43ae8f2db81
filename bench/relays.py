"""Several relays on one PostgreSQL database, beside one relay on SQLite, in one run.

Each configuration starts its relays as processes (``spacenb.server.app.start_server``
with ``database=`` and the first relay's service key for the others), creates a channel
through the first relay, puts one sender on the first relay and spreads ``--receivers``
receivers evenly over all of them (one receiver process per relay), so with two or three
relays most deliveries cross from the relay that stored a message to another one
(PostgreSQL ``LISTEN/NOTIFY``, then a read of the row). Measured per configuration:

- messages per second with ``--in-flight`` sends outstanding, from the first send to the
  last arrival anywhere, and deliveries per second;
- CPU per message of every relay, of PostgreSQL (its server processes, as the sum of the
  postmaster's children) and of the clients: on two cores several relays cannot be faster
  than one, so CPU per message per relay, and what PostgreSQL costs per message, are the
  figures that carry over to larger machines (SCALING.md does that arithmetic);
- join latency (``join_channel`` through each relay, the keeper on whichever relay holds
  the keeper lock), p50 and p99.

The baseline of every ratio is one relay on SQLite in the same invocation. The
PostgreSQL cluster is started for the run (``initdb`` in a temporary directory, a free
loopback port) with ``fsync`` on, as a deployment runs it; ``--no-fsync`` turns it off.

``python -m bench.relays [--smoke] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import Metric, Report, Worker, cpu_seconds, expect_all, main, partition, percentile
from .peers import RelayProcess, create_channel, receivers_worker, sender_worker

MS = 1000.0
Config = tuple[str, int]  # ("sqlite" | "postgres", number of relays)


def postgres_pids(cluster: Path) -> list[int]:
    """The postmaster of ``cluster`` and its children (backends, writer, WAL...)."""
    postmaster = int((cluster / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(entry))
    return [postmaster, *children]


class PostgresCpu:
    """CPU seconds PostgreSQL's processes used between construction and :meth:`read`
    (a backend that exits in between loses its share: relays keep theirs open)."""

    def __init__(self, cluster: Path | None) -> None:
        self.cluster = cluster
        self.start = self._sample()

    def _sample(self) -> dict[int, float]:
        if self.cluster is None:
            return {}
        return {pid: _cpu_or_zero(pid) for pid in postgres_pids(self.cluster)}

    def read(self) -> float:
        end = self._sample()
        return sum(end[pid] - self.start.get(pid, 0.0) for pid in end)


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


@contextlib.contextmanager
def relays(config: Config, database: str | None, tmp: Path) -> Iterator[list[RelayProcess]]:
    """The relays of ``config``, each in its own process, stopped on leaving."""
    backend, count = config
    started: list[RelayProcess] = []
    try:
        for i in range(count):
            options: dict[str, Any] = {"data_dir": tmp / f"{backend}{count}-relay{i}",
                                       "shards": 0}  # fmt: skip
            if backend == "postgres":
                options["database"] = database
                if started:
                    options["service_key"] = started[0].service_key
            started.append(RelayProcess("spacenb", **options))
        yield started
    finally:
        for relay in reversed(started):
            relay.stop()


def measure(config: Config, args: argparse.Namespace, pg: Any, tmp: Path) -> dict[str, Any]:
    """Throughput, CPU per message and join latency of one configuration."""
    backend, count = config
    database = pg.new_database() if backend == "postgres" else None
    try:
        with relays(config, database, tmp) as started, contextlib.ExitStack() as stack:
            targets = [r.target for r in started]
            asyncio.run(create_channel(targets[0]))
            sender = stack.enter_context(
                Worker(sender_worker, targets[0], "sender", name="relays-sender")
            )
            layout = partition(range(args.receivers), count)
            receivers = [
                stack.enter_context(
                    Worker(
                        receivers_worker,
                        targets[i],
                        [f"r{i}x{j}" for j in run],
                        4,
                        name=f"relays-receivers-{i}",
                    )
                )
                for i, run in enumerate(layout)
            ]
            sender.expect("ready", 300)
            readies = expect_all(receivers, "ready", 600)
            joins = [t for ready in readies for t in ready["join_s"]]

            def phase(n: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
                for receiver in receivers:
                    receiver.send("expect", {"per_client": n, "timeout": 300})
                expect_all(receivers, "armed")
                sender.send("send", {"count": n, "in_flight": args.in_flight})
                return sender.expect("done", 400), expect_all(receivers, "done", 400)

            phase(args.warmup)
            pids = {f"relay{i}": r.pid for i, r in enumerate(started)}
            pids["sender"] = sender.pid
            pids.update({f"receivers{i}": w.pid for i, w in enumerate(receivers)})
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            pg_cpu = PostgresCpu(pg.cluster if backend == "postgres" else None)
            sent, got = phase(args.count)
            used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            postgres = pg_cpu.read()
    finally:
        if database is not None:
            pg.drop_database(database)
    delivered = sum(g["count"] for g in got)
    expected = args.count * args.receivers
    if delivered < expected:
        raise RuntimeError(f"{config}: {delivered} of {expected} deliveries arrived")
    seconds = max(g["last"] for g in got) - sent["start"]
    per_msg = 1e6 / args.count
    relays_us = [used[f"relay{i}"] * per_msg for i in range(count)]
    return {
        "messages_per_s": args.count / seconds,
        "deliveries_per_s": delivered / seconds,
        "relay_cpu_us_per_msg": sum(relays_us),
        "relay_cpu_us_per_msg_each": [round(us, 1) for us in relays_us],
        "postgres_cpu_us_per_msg": postgres * per_msg,
        "clients_cpu_us_per_msg": sum(v for k, v in used.items() if not k.startswith("relay"))
        * per_msg,
        "join_p50_ms": percentile(joins, 50) * MS,
        "join_p99_ms": percentile(joins, 99) * MS,
    }


def label(config: Config) -> str:
    backend, count = config
    engine = "PostgreSQL" if backend == "postgres" else "SQLite"
    return f"{count} relay{'s' if count > 1 else ''} on {engine}"


def run(args: argparse.Namespace) -> Report:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.pgserver import PostgresServer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"bench.relays needs PostgreSQL: {reason}")
    report = Report.of("relays", args)
    configs: list[Config] = [("sqlite", 1)] + [("postgres", n) for n in args.relays]
    pg = PostgresServer.start(durable=not args.no_fsync)
    results: dict[Config, list[dict[str, Any]]] = {c: [] for c in configs}
    try:
        with tempfile.TemporaryDirectory(prefix="spacenb-bench-relays-") as tmp:
            for round_ in range(args.repeat):
                for config in configs:
                    results[config].append(measure(config, args, pg, Path(tmp) / str(round_)))
    finally:
        pg.stop()

    def med(config: Config, key: str) -> float:
        return statistics.median(r[key] for r in results[config])

    base = configs[0]
    for config in configs[1:]:
        name = label(config)
        report.add(Metric(f"messages/s, {name}", "msg/s", med(config, "messages_per_s"),
                          med(base, "messages_per_s")))  # fmt: skip
        report.add(Metric(f"relay CPU per message (all relays), {name}", "µs",
                          med(config, "relay_cpu_us_per_msg"),
                          med(base, "relay_cpu_us_per_msg"), better="lower"))  # fmt: skip
        report.add(Metric(f"join p50, {name}", "ms", med(config, "join_p50_ms"),
                          med(base, "join_p50_ms"), better="lower"))  # fmt: skip
    for config in configs:
        last = results[config][-1]
        report.notes.append(
            f"{label(config)}: {med(config, 'messages_per_s'):.0f} msg/s, "
            f"{med(config, 'deliveries_per_s'):.0f} deliveries/s; CPU µs per message: relays "
            f"{last['relay_cpu_us_per_msg_each']}, PostgreSQL "
            f"{med(config, 'postgres_cpu_us_per_msg'):.0f}, clients "
            f"{med(config, 'clients_cpu_us_per_msg'):.0f}; join p50/p99 "
            f"{med(config, 'join_p50_ms'):.1f}/{med(config, 'join_p99_ms'):.1f} ms"
        )
    report.notes.append(
        f"PostgreSQL fsync {'off' if args.no_fsync else 'on'}; "
        f"{args.receivers} receivers spread over the relays, one sender on the first"
    )
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--relays", type=int, nargs="+", default=[1, 2, 3],
                        help="relay counts on PostgreSQL")  # fmt: skip
    parser.add_argument("--receivers", type=int, default=12, help="receiving clients in all")
    parser.add_argument("--count", type=int, default=1_000, help="messages")
    parser.add_argument("--warmup", type=int, default=50, help="messages before timing")
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent sends")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (median)")
    parser.add_argument("--no-fsync", action="store_true", help="PostgreSQL with fsync off")


if __name__ == "__main__":
    main(
        run,
        __doc__ or "",
        configure,
        smoke={"relays": [1, 2], "receivers": 4, "count": 30, "warmup": 5, "repeat": 1},
    )
