"""Where a newcomer's join goes: the optional breakdown of ``bench.scale --breakdown``.

In the newcomers' process, :func:`trace_client` wraps the client's requests, the member
core's log verification and the adoption of keys, and records each as a span on
:func:`~bench.common.now` (system-wide, so spans of different processes compare). In the
relay's process, :func:`trace_relay` records when the keeper was told of each join, when
it began and ended admitting, its checkpoints, and the relay's large fan-out writes.
:func:`summarize` cuts one newcomer's join into stages; :func:`keeper_stages` matches the
keeper's record of the same join. Nothing is patched unless asked for.
"""

from __future__ import annotations

import contextvars
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from .common import now

__all__ = [
    "STAGES",
    "keeper_stages",
    "median_stages",
    "relay_log",
    "summarize",
    "trace_client",
    "trace_relay",
    "traced_join",
]

MS = 1000.0

# Spans of this process: (label, start, end, cpu seconds or 0, tag).
_SPANS: list[tuple[str, float, float, float, object]] = []
_TAG: contextvars.ContextVar[object] = contextvars.ContextVar("spacenb_bench_join", default=None)

STAGES = (
    ("signup", "sign-up (connect + auth)"),
    ("resolve", "resolve the channel name"),
    ("log_fetch", "state log fetch (round trips, incl. the client's frame parse)"),
    ("log_verify", "state log verification (MemberCore, wall)"),
    ("join_rt", "join request round trip"),
    ("own_add", "verify own add"),
    ("fetch_keys", "keys request round trip"),
    ("key_adopted", "join answered -> key adopted (pushed, or the keys answer)"),
    ("keys_wait", "join answered -> keys in hand and answered (incl. the three above)"),
    ("attach", "history mark + subscribe round trips"),
    ("other", "the rest of the join"),
    ("total", "join_channel total"),
    ("cpu", "newcomer process CPU, sign-up and join"),
)


def _record(label: str, start: float, cpu: float = 0.0) -> None:
    _SPANS.append((label, start, now(), cpu, _TAG.get()))


def _wrap_sync(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    def traced(*args: Any, **kwargs: Any) -> Any:
        start, cpu = now(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            _record(label, start, time.process_time() - cpu)

    setattr(owner, name, traced)


def trace_client() -> None:
    """Record this process's requests (by frame type), log verifications and key
    adoptions, tagged with the join under way (:func:`traced_join`)."""
    from spacenb.aio.client import AsyncClient
    from spacenb.aio.space import AsyncSpace
    from spacenb.protocol.member import MemberCore

    request = AsyncClient.request

    async def traced_request(self: Any, req: Any, /, **kwargs: Any) -> Any:
        start = now()
        try:
            return await request(self, req, **kwargs)
        finally:
            _record(type(req).__name__, start)

    AsyncClient.request = traced_request  # type: ignore[method-assign,assignment]
    _wrap_sync(MemberCore, "extend_log", "verify")
    _wrap_sync(MemberCore, "finish_log", "verify")
    ingest = AsyncSpace.ingest_keys

    async def traced_ingest(self: Any, keys: Any) -> None:
        had = self.keyring is not None
        start = now()
        await ingest(self, keys)
        if not had and self.keyring is not None:
            _record("keys", start)

    AsyncSpace.ingest_keys = traced_ingest  # type: ignore[method-assign]


async def traced_join(tag: object, join: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """Run ``join()`` (a coroutine function) as join ``tag``: its result, start, end and
    this process's CPU seconds over it."""
    token = _TAG.set(tag)
    try:
        start, cpu = now(), time.process_time()
        result = await join()
        return result, start, now(), time.process_time() - cpu
    finally:
        _TAG.reset(token)


def summarize(tag: object, start: float, end: float, cpu: float) -> dict[str, Any]:
    """One join's stages in ms (``STAGES``), and its ``keys_at``/``join_at`` stamps (s)."""
    spans = [s for s in _SPANS if s[4] == tag and start <= s[1] <= end]

    def total(label: str, lo: float = start, hi: float = end) -> float:
        return sum(e - b for name, b, e, _, _ in spans if name == label and lo <= b <= hi)

    joins = [s for s in spans if s[0] == "Join"]
    join_start = joins[0][1] if joins else end
    join_end = joins[-1][2] if joins else end
    keys = [s[2] for s in spans if s[0] == "keys"]
    keys_at = keys[0] if keys else join_end
    attaches = [s[1] for s in spans if s[0] in ("HistoryRequest", "Subscribe") and s[1] >= join_end]
    attach_at = min(attaches) if attaches else end
    out = {
        "resolve": total("Resolve"),
        "log_fetch": total("GetStateLog", hi=join_start),
        "log_verify": total("verify", hi=join_start),
        "join_rt": total("Join"),
        "own_add": total("verify", lo=join_end, hi=keys_at),
        "fetch_keys": total("FetchKeys", lo=join_end),
        "key_adopted": max(0.0, keys_at - join_end),
        "keys_wait": max(0.0, attach_at - join_end),
        "attach": total("HistoryRequest") + total("Subscribe"),
        "total": end - start,
        "cpu": cpu,
    }
    counted = ("resolve", "log_fetch", "log_verify", "join_rt", "keys_wait", "attach")
    out["other"] = out["total"] - sum(out[k] for k in counted)
    stages = {k: v * MS for k, v in out.items()}
    stages.update(join_sent=join_start, join_at=join_end, keys_at=keys_at)
    return stages


# ---------------------------------------------------------------------- the relay's side

_RELAY: dict[str, Any] = {"notify": {}, "admit": {}, "checkpoints": [], "writes": []}


def trace_relay(min_recipients: int = 50) -> None:
    """Record the keeper's handling of each join and the relay's fan-out writes to at
    least ``min_recipients`` connections, in this (the relay's) process."""
    from spacenb.server.keeper import Keeper
    from spacenb.server.relay import Relay

    notify, admit, checkpoint = Keeper.notify, Keeper.admit, Keeper.checkpoint_if_due

    def traced_notify(self: Any, space_id: str, member_id: str) -> None:
        _RELAY["notify"].setdefault(member_id, now())
        notify(self, space_id, member_id)

    def traced_admit(self: Any, space_id: str, member_id: str) -> bool:
        start, cpu = now(), time.thread_time()
        try:
            return admit(self, space_id, member_id)
        finally:
            _RELAY["admit"][member_id] = (start, now(), time.thread_time() - cpu)

    def traced_checkpoint(self: Any, space_id: str) -> int | None:
        start = now()
        seq = checkpoint(self, space_id)
        if seq is not None:
            _RELAY["checkpoints"].append((start, now(), seq))
        return seq

    Keeper.notify = traced_notify  # type: ignore[method-assign]
    Keeper.admit = traced_admit  # type: ignore[method-assign]
    Keeper.checkpoint_if_due = traced_checkpoint  # type: ignore[method-assign]
    write = Relay._write_outbox

    def traced_write(self: Any, outbox: Any) -> None:
        outbox = list(outbox)
        recipients = sum(len(s) for s, _ in outbox)
        start = now()
        write(self, outbox)
        if recipients >= min_recipients:
            _RELAY["writes"].append((start, now(), recipients))

    Relay._write_outbox = traced_write  # type: ignore[method-assign]


def relay_log() -> dict[str, Any]:
    """What :func:`trace_relay` recorded (picklable)."""
    return _RELAY


def keeper_stages(stages: dict[str, Any], member: str, record: dict[str, Any]) -> dict[str, float]:
    """The relay's part of one newcomer's join (ms), from the relay's record: the fan-out
    write of its add, the keeper's queue wait and work, and the key's way back."""
    out: dict[str, float] = {}
    told = record["notify"].get(member)
    admitted = record["admit"].get(member)
    sent, answered, got = stages["join_sent"], stages["join_at"], stages["keys_at"]
    writes = [w for w in record["writes"] if sent <= w[0] <= got]
    out["fanout_write"] = sum(e - b for b, e, _ in writes) * MS
    if told is not None:
        out["answered_to_keeper"] = (told - answered) * MS
    if told is not None and admitted is not None:
        out["keeper_queue"] = (admitted[0] - told) * MS
        out["keeper_admit"] = (admitted[1] - admitted[0]) * MS
        out["keeper_admit_cpu"] = admitted[2] * MS
        out["admitted_to_key"] = (got - admitted[1]) * MS
    cps = [c for c in record["checkpoints"] if sent <= c[0] <= got]
    out["checkpoint"] = sum(e - b for b, e, _ in cps) * MS
    return out


RELAY_STAGES = (
    ("fanout_write", "relay: fan-out writes during the join (the add to every member)"),
    ("answered_to_keeper", "join answer received -> keeper told"),
    ("keeper_queue", "keeper told -> keeper starts"),
    ("keeper_admit", "keeper admit (read log, verify add, wrap, store; wall)"),
    ("keeper_admit_cpu", "keeper admit, the relay thread's CPU"),
    ("admitted_to_key", "keeper done -> newcomer has adopted the key"),
    ("checkpoint", "keeper checkpoint in the join"),
)


def median_stages(rows: Sequence[dict[str, float]], keys: Sequence[str]) -> dict[str, float]:
    """Per stage, the median over the joins that have it."""
    return {k: statistics.median(vals) for k in keys if (vals := [r[k] for r in rows if k in r])}


# ---------------------------------------------------------------------- the newcomers' process


def wait_idle(
    pids: Sequence[int], *, window: float = 0.1, busy: float = 0.05, limit: float = 30.0
) -> float:
    """Wait until every process in ``pids`` used less than ``busy`` of a core over one
    ``window`` (the members have handled the last join); the seconds waited."""
    from .common import cpu_seconds

    start = time.monotonic()
    before = {pid: cpu_seconds(pid) for pid in pids}
    while time.monotonic() - start < limit:
        time.sleep(window)
        after = {pid: cpu_seconds(pid) for pid in pids}
        if all(after[p] - before[p] < busy * window for p in pids):
            break
        before = after
    return time.monotonic() - start


async def newcomers_worker(
    link: Any, target: Any, usernames: Sequence[str], idle_pids: Sequence[int] = ()
) -> None:
    """The newcomers, one by one, each join traced (:func:`summarize`); with
    ``idle_pids``, each waits for those processes to be idle first. Answers
    ``("ready", {connect_s, join_s, stages})``, then closes them when told."""
    import asyncio

    from .common import raise_nofile
    from .peers import open_peer

    raise_nofile()
    trace_client()
    peers, stages = [], []
    for name in usernames:
        if idle_pids:
            await asyncio.to_thread(wait_idle, idle_pids)
        peer, start, end, cpu = await traced_join(name, lambda n=name: open_peer(target, n))
        peers.append(peer)
        row = summarize(name, start + peer.connect_s, end, cpu)
        row["signup"] = peer.connect_s * MS
        stages.append(row)
    link.send(
        "ready",
        {
            "connect_s": [p.connect_s for p in peers],
            "join_s": [p.join_s for p in peers],
            "stages": stages,
        },
    )
    await link.recv()
    await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
