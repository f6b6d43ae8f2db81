"""The shared benchmark harness: clocks, statistics, memory, worker processes, the report.

Every benchmark builds a :class:`Report` of :class:`Metric` rows (spacenb's figure, the
baseline's figure from the same invocation, their ratio, the target and whether it was met)
and hands it to :func:`main`, which prints it as a table or as JSON.

Work that must not share a GIL (a relay, a sender, receivers) runs in :class:`Worker`
processes started with ``spawn``; a worker is a coroutine function ``fn(link, *args)`` that
talks to the parent over a pipe with ``(kind, payload)`` messages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any, Literal, Self, TypeVar

import psutil

__all__ = [
    "BenchError",
    "CpuMeter",
    "Link",
    "Metric",
    "Report",
    "Usage",
    "Worker",
    "alternate",
    "cpu_seconds",
    "expect_all",
    "main",
    "now",
    "partition",
    "payload",
    "peak_rss",
    "percentile",
    "raise_nofile",
    "reset_peak_rss",
    "rss",
    "usage",
]

MIB = 1 << 20
T = TypeVar("T")
K = TypeVar("K", bound=str)
PAYLOAD_BYTES = 300


class BenchError(RuntimeError):
    """A benchmark could not complete (a worker failed, died or timed out)."""


# ---------------------------------------------------------------------- clocks and statistics


def now() -> float:
    """Seconds on ``CLOCK_MONOTONIC``.

    On Linux that clock is system-wide, so stamps taken in different processes compare
    (a receiver subtracts the sender's stamp to get a latency).
    """
    return time.monotonic()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def partition(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` cut into ``parts`` consecutive runs of near-equal length."""
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        runs.append(list(items[start:end]))
        start = end
    return runs


def payload(seq: int, size: int = PAYLOAD_BYTES) -> dict[str, Any]:
    """A message body of about ``size`` bytes of JSON, stamped with :func:`now` and ``seq``."""
    body: dict[str, Any] = {"seq": seq, "t": now(), "pad": ""}
    body["pad"] = "x" * max(0, size - len(json.dumps(body)))
    return body


# ---------------------------------------------------------------------- processes and memory


def rss(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), in bytes."""
    return int(psutil.Process(pid).memory_info().rss)


def _status_field(pid: int | None, name: str) -> int:
    path = f"/proc/{pid or 'self'}/status"
    with open(path) as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"{name} missing from {path}")


def peak_rss(pid: int | None = None) -> int:
    """Peak resident set size (``VmHWM``) of a process since it started or since
    :func:`reset_peak_rss`, in bytes. Unlike ``ru_maxrss`` it does not carry over the
    parent's size into a freshly spawned child."""
    return _status_field(pid, "VmHWM")


def reset_peak_rss(pid: int | None = None) -> None:
    """Restart :func:`peak_rss` from the current size (Linux ``clear_refs``)."""
    with open(f"/proc/{pid or 'self'}/clear_refs", "w") as refs:
        refs.write("5")


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time the live threads of a process have used so far.

    Read to the nanosecond from Linux's per-thread ``schedstat`` (user + system times,
    the fallback, tick only every 10 ms). Threads that have exited no longer count: the
    benchmarks' processes keep theirs (event loop, executor) for their whole life.
    """
    task_dir = f"/proc/{pid or 'self'}/task"
    live = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(task_dir):
            with contextlib.suppress(OSError), open(f"{task_dir}/{task}/schedstat") as stat:
                live += int(stat.read().split()[0])
    if live:
        return live / 1e9
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@dataclass
class Usage:
    """What a block of code cost this process: clock and CPU seconds, RSS before it and
    peak RSS during it (bytes)."""

    seconds: float = 0.0
    cpu: float = 0.0
    rss_before: int = 0
    peak: int = 0


@contextlib.contextmanager
def usage() -> Iterator[Usage]:
    """Measure the block: ``with usage() as used: ...``, then read ``used``."""
    used = Usage(rss_before=rss())
    reset_peak_rss()
    start, cpu = now(), cpu_seconds()
    try:
        yield used
    finally:
        used.seconds, used.cpu, used.peak = now() - start, cpu_seconds() - cpu, peak_rss()


def raise_nofile(wanted: int = 65536) -> int:
    """Raise this process's open-file limit towards ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


class Link:
    """The worker's end of its pipe to the parent."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def send(self, kind: str, payload: Any = None) -> None:
        self._conn.send((kind, payload))

    async def recv(self) -> tuple[str, Any]:
        """The parent's next ``(kind, payload)``; ``("stop", None)`` if the parent is gone."""
        try:
            message: tuple[str, Any] = await asyncio.to_thread(self._conn.recv)
        except (EOFError, OSError):
            return ("stop", None)
        return message

    async def wait(self, kind: str) -> Any:
        """The payload of the parent's next message, which must be ``kind``."""
        got, payload = await self.recv()
        if got != kind:
            raise BenchError(f"expected {kind!r} from the parent, got {got!r}")
        return payload


WorkerFn = Callable[..., Coroutine[Any, Any, None]]


def _worker_entry(conn: Connection, fn: WorkerFn, args: tuple[Any, ...]) -> None:
    profile_dir = os.environ.get("SPACENB_BENCH_PROFILE")  # a cProfile of each worker
    try:
        if profile_dir:
            import cProfile

            name = f"{mp.current_process().name}-{os.getpid()}.prof"
            cProfile.runctx(
                "asyncio.run(fn(Link(conn), *args))",
                globals(),
                {"fn": fn, "conn": conn, "args": args},
                os.path.join(profile_dir, name),
            )
        else:
            asyncio.run(fn(Link(conn), *args))
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Worker:
    """A child process running ``await fn(link, *args)``, and the parent's end of its pipe.

    Use it as a context manager: leaving the block tells the worker to stop and, if it does
    not exit within a few seconds, kills it, so a failed benchmark leaves no process behind.
    """

    def __init__(self, fn: WorkerFn, *args: Any, name: str = "bench-worker") -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_entry, args=(child, fn, args), name=name, daemon=True
        )
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, kind: str, payload: Any = None) -> None:
        self._conn.send((kind, payload))

    def expect(self, kind: str, timeout: float = 120.0) -> Any:
        """The payload of the worker's next message, which must be ``kind``.

        Raises :class:`BenchError` with the worker's traceback if it failed, or if it died
        or stayed silent for ``timeout`` seconds.
        """
        deadline = now() + timeout
        while not self._conn.poll(0.05):
            if not self.process.is_alive():
                raise self._exited(kind)
            if now() > deadline:
                raise BenchError(f"{self.name} sent no {kind!r} within {timeout:.0f} s")
        try:
            got, payload = self._conn.recv()
        except EOFError:
            self.process.join(1.0)
            raise self._exited(kind) from None
        if got == "error":
            raise BenchError(f"{self.name} failed:\n{payload}")
        if got != kind:
            raise BenchError(f"{self.name} sent {got!r}, expected {kind!r}")
        return payload

    def _exited(self, kind: str) -> BenchError:
        return BenchError(f"{self.name} exited ({self.process.exitcode}) before {kind!r}")

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the worker to finish (a relay removes its data directory, gigabytes after
        the files benchmark), then, past ``timeout`` seconds, kill it."""
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.send("stop")
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def expect_all(workers: Sequence[Worker], kind: str, timeout: float = 120.0) -> list[Any]:
    """:meth:`Worker.expect` on each worker, in order."""
    return [worker.expect(kind, timeout) for worker in workers]


class CpuMeter:
    """CPU time some processes used over a phase (started at construction).

    CPU time per unit of work is what a busy shared machine disturbs least: a process that
    waits for a core is slower by the clock but not by its CPU time.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._start = now()
        self._cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def read(self) -> dict[str, float]:
        """CPU seconds used by each process so far (call once, at the end of the phase)."""
        self.wall = now() - self._start
        return {name: cpu_seconds(pid) - self._cpu[name] for name, pid in self._pids.items()}

    def per(self, count: int) -> dict[str, float]:
        """:meth:`read` as CPU microseconds per unit of ``count``, with their ``total``."""
        used = {name: seconds * 1e6 / count for name, seconds in self.read().items()}
        used["total"] = sum(used.values())
        return {name: round(us, 1) for name, us in used.items()}


def alternate(
    measure: Callable[[K], dict[str, Any]], kinds: Sequence[K], repeat: int = 1
) -> dict[K, dict[str, Any]]:
    """Run ``measure(kind)`` for each kind, ``repeat`` rounds, alternating kinds so that a
    change in the machine's load hits both. Each figure is the median of its rounds (so
    is each figure of a dict of figures); anything else comes from the last round."""
    rounds: dict[K, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for _ in range(repeat):
        for kind in kinds:
            rounds[kind].append(measure(kind))
    merged = {kind: _median_of(results) for kind, results in rounds.items()}
    for kind, results in rounds.items():
        merged[kind]["rounds"] = len(results)
    return merged


def _median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(results[-1])
    for key, value in results[-1].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in results)
        elif isinstance(value, dict) and all(isinstance(v, int | float) for v in value.values()):
            merged[key] = _median_of([r[key] for r in results])
    return merged


# ---------------------------------------------------------------------- the report

Better = Literal["higher", "lower"]


@dataclass
class Metric:
    """One figure: spacenb's ``value``, the ``baseline`` from the same run, and targets.

    ``target`` bounds ``value`` itself, ``target_ratio`` bounds ``value / baseline``; for
    ``better="lower"`` both are upper bounds.
    """

    name: str
    unit: str
    value: float
    baseline: float | None = None
    better: Better = "higher"
    target: float | None = None
    target_ratio: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0 or math.isnan(self.baseline):
            return None
        return self.value / self.baseline

    def _ok(self, value: float, bound: float) -> bool:
        return value >= bound if self.better == "higher" else value <= bound

    @property
    def met(self) -> bool | None:
        """Whether every target holds (None when the metric has no target)."""
        checks = []
        if self.target is not None:
            checks.append(self._ok(self.value, self.target))
        if self.target_ratio is not None:
            ratio = self.ratio
            checks.append(ratio is not None and self._ok(ratio, self.target_ratio))
        return all(checks) if checks else None

    def target_text(self) -> str:
        sign = "≥" if self.better == "higher" else "≤"
        parts = []
        if self.target is not None:
            parts.append(f"{sign} {_num(self.target)} {self.unit}")
        if self.target_ratio is not None:
            parts.append(f"{sign} {self.target_ratio:.0%} of baseline")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ratio=self.ratio, met=self.met, target_text=self.target_text())
        return data


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: cores, CPU, Python, libraries, date, load."""
    from importlib.metadata import version

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if "model name" in line), "")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{lib: version(lib) for lib in ("websockets", "cryptography", "zfec")},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass
class Report:
    """Everything one benchmark invocation measured."""

    benchmark: str
    params: dict[str, Any]
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine_info)
    command: str = field(default_factory=lambda: " ".join(["python", "-m", *sys.argv]))

    @classmethod
    def of(cls, benchmark: str, args: argparse.Namespace, **extra: Any) -> Report:
        """A report whose parameters are the command's options (and ``extra``)."""
        params = {k: v for k, v in vars(args).items() if k not in ("json", "out")}
        return cls(benchmark, params | extra)

    def add(self, metric: Metric) -> Metric:
        self.metrics.append(metric)
        return metric

    def to_dict(self) -> dict[str, Any]:
        machine = dict(self.machine, loadavg_at_end=[round(x, 2) for x in os.getloadavg()])
        return {
            "benchmark": self.benchmark,
            "command": self.command,
            "machine": machine,
            "params": self.params,
            "metrics": [m.to_dict() for m in self.metrics],
            "notes": self.notes,
        }

    def render(self) -> str:
        """A plain-text table, one row per metric, then the notes."""
        head = ("metric", "spacenb", "baseline", "ratio", "target", "met")
        rows = [head]
        for m in self.metrics:
            ratio = m.ratio
            met = {True: "met", False: "MISSED", None: "-"}[m.met]
            rows.append(
                (
                    f"{m.name} ({m.unit})",
                    _num(m.value),
                    _num(m.baseline),
                    "-" if ratio is None else f"{ratio:.2f}",
                    m.target_text() or "-",
                    met,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [
            f"== {self.benchmark} ({self.machine['nproc']} cores, Python "
            f"{self.machine['python']}, {self.machine['date']})",
            "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows[1:]]
        lines += [f"  params: {json.dumps(self.params)}"]
        lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


def main(
    run: Callable[[argparse.Namespace], Report],
    description: str,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    *,
    smoke: dict[str, Any] | None = None,
    argv: Sequence[str] | None = None,
) -> Report:
    """The command line every benchmark shares: ``--smoke`` (the options in ``smoke``
    instead: tiny counts, a few seconds), ``--json`` (print JSON instead of the table) and
    ``--out FILE`` (also save the JSON)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks it runs")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", help="also write the JSON report to this file")
    if configure is not None:
        configure(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        vars(args).update(smoke or {})
    report = run(args)
    text = json.dumps(report.to_dict(), indent=2)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text + "\n")
    print(text if args.json else report.render(), flush=True)
    return report
