"""spacenb and the bare baseline behind one interface, and the worker processes that use it.

A :class:`Target` says which relay to talk to (``kind`` ``"spacenb"`` or ``"bare"``);
:func:`open_peer` gives a :class:`Peer` on it whose ``send(body)`` returns once the relay
has the message (for spacenb: sealed, signed, verified and stored) and whose ``on_body``
callback gets every message body it receives (for spacenb: verified and decrypted). The
workers below (a relay, a sender, a process of receivers) run either kind unchanged, so a
benchmark runs the same topology twice and only the kind differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .bare_relay import BareClient, start_bare_relay, url_of
from .common import (
    PAYLOAD_BYTES,
    Link,
    Worker,
    expect_all,
    now,
    payload,
    raise_nofile,
    rss,
)

__all__ = [
    "KINDS",
    "Deliveries",
    "Kind",
    "Peer",
    "RelayProcess",
    "Target",
    "Topology",
    "create_channel",
    "open_peer",
    "receivers_worker",
    "send_batch",
    "sender_worker",
]

Kind = Literal["spacenb", "bare"]
KINDS: tuple[Kind, ...] = ("spacenb", "bare")
OnBody = Callable[[Any], None]


@dataclass(frozen=True)
class Target:
    """A running relay: its kind, URL and (spacenb) app key and the channel to use."""

    kind: Kind
    url: str
    app_key: str = ""
    channel: str = "bench"


class Peer(Protocol):
    """One client connection; ``connect_s``/``join_s`` say how long opening it took."""

    connect_s: float
    join_s: float

    async def send(self, body: Any) -> None: ...

    async def close(self) -> None: ...


class SpacenbPeer:
    """A signed-in spacenb client that has joined the target's channel."""

    def __init__(self, client: Any, space: Any, connect_s: float, join_s: float) -> None:
        self.client = client
        self.space = space
        self.connect_s = connect_s
        self.join_s = join_s

    @classmethod
    async def open(
        cls, target: Target, username: str, on_body: OnBody | None = None
    ) -> SpacenbPeer:
        from spacenb import aio

        start = now()
        client = await aio.connect(
            target.url, app_key=target.app_key, username=username, keystore=":memory:"
        )
        connected = now()
        space = await client.space.join_channel(target.channel, timeout=60.0)
        if on_body is not None:
            space.on_message(lambda event: on_body(event.message.body))
        return cls(client, space, connected - start, now() - connected)

    async def send(self, body: Any) -> None:
        await self.space.send_message(body)

    async def close(self) -> None:
        await self.client.close()


class BarePeer:
    """A :class:`~bench.bare_relay.BareClient` with the :class:`Peer` timings."""

    join_s = 0.0

    def __init__(self, client: BareClient, connect_s: float) -> None:
        self.client = client
        self.connect_s = connect_s

    @classmethod
    async def open(cls, target: Target, on_body: OnBody | None = None) -> BarePeer:
        start = now()
        client = await BareClient.connect(target.url, on_body)
        return cls(client, now() - start)

    async def send(self, body: Any) -> None:
        await self.client.send(body)

    async def close(self) -> None:
        await self.client.close()


async def open_peer(target: Target, username: str, on_body: OnBody | None = None) -> Peer:
    """Connect ``username`` to the target (and join its channel, for spacenb)."""
    if target.kind == "spacenb":
        return await SpacenbPeer.open(target, username, on_body)
    return await BarePeer.open(target, on_body)


async def open_peers(
    target: Target,
    usernames: Sequence[str],
    on_body_for: Callable[[int], OnBody | None],
    concurrency: int = 1,
) -> list[Peer]:
    """Open one peer per username, at most ``concurrency`` at a time, in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, username: str) -> Peer:
        async with gate:
            return await open_peer(target, username, on_body_for(index))

    return list(await asyncio.gather(*(one(i, u) for i, u in enumerate(usernames))))


async def create_channel(
    target: Target, owner: str = "owner", history_policy: Literal["static", "rotate"] = "static"
) -> None:
    """Create the target's channel (spacenb only; the bare relay has one room)."""
    if target.kind != "spacenb":
        return
    from spacenb import aio

    client = await aio.connect(
        target.url, app_key=target.app_key, username=owner, keystore=":memory:"
    )
    try:
        await client.space.create_channel(target.channel, history_policy=history_policy)
    finally:
        await client.close()


# ---------------------------------------------------------------------- relays


async def relay_worker(link: Link, kind: Kind, options: dict[str, Any]) -> None:
    """Serve a relay of ``kind`` until the parent says stop. Reports its URL (and key).

    ``("stop_shard_stores", n)`` stops the first ``n`` shard stores of a spacenb relay;
    with ``bench_trace`` in ``options``, ``("relay_log", None)`` answers what
    :func:`bench.joinstages.trace_relay` recorded.
    """
    raise_nofile()
    if options.pop("bench_trace", False):
        from .joinstages import trace_relay

        trace_relay()
    if kind == "bare":
        server = await start_bare_relay()
        link.send("ready", {"url": url_of(server)})
        await link.recv()
        server.close()
        await server.wait_closed()
        return
    from spacenb.server.app import start_server
    from spacenb.server.limits import Limits

    # Benchmarks measure speed: no rate or storage caps, and room for a thousand clients
    # from one address (the relay's hostile-load limits are measured by bench.hostile).
    options.setdefault(
        "limits",
        Limits.unlimited().replace(
            max_connections_per_address=100_000, max_connections_per_user=10_000
        ),
    )
    running = await start_server(**options)
    link.send("ready", {"url": running.url, "app_key": running.app_key,
                        "service_key": running.service_key})  # fmt: skip
    while True:
        command, count = await link.recv()
        if command == "relay_log":  # what bench.joinstages.trace_relay recorded
            from .joinstages import relay_log

            link.send("relay_log", relay_log())
            continue
        if command != "stop_shard_stores":
            break
        for store in running.shard_stores[:count]:
            await store.stop()
        link.send("done")
    await running.stop()


class RelayProcess(Worker):
    """A relay of ``kind`` in its own process; ``target`` is ready once constructed."""

    def __init__(self, kind: Kind, channel: str = "bench", **options: Any) -> None:
        super().__init__(relay_worker, kind, options, name=f"{kind}-relay")
        try:
            info = self.expect("ready", timeout=60)
        except BaseException:
            self.stop()
            raise
        self.target = Target(kind, info["url"], info.get("app_key", ""), channel)
        self.service_key: str | None = info.get("service_key")  # shared by its other relays


# ---------------------------------------------------------------------- sending


async def send_batch(
    peer: Peer,
    count: int,
    *,
    in_flight: int = 1,
    rate: float | None = None,
    size: int = PAYLOAD_BYTES,
    first_seq: int = 0,
) -> dict[str, float]:
    """Send ``count`` stamped bodies: ``in_flight`` at a time, or paced at ``rate``/s.

    Returns the wall-clock ``start`` and ``end`` (all acknowledged).
    """
    start = now()
    seqs = iter(range(first_seq, first_seq + count))
    if rate is None:

        async def lane() -> None:
            for seq in seqs:
                await peer.send(payload(seq, size))

        await asyncio.gather(*(lane() for _ in range(in_flight)))
    else:
        sends = []
        for i, seq in enumerate(seqs):
            delay = start + i / rate - now()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(asyncio.ensure_future(peer.send(payload(seq, size))))
        await asyncio.gather(*sends)
    return {"start": start, "end": now()}


async def sender_worker(link: Link, target: Target, username: str) -> None:
    """One sending peer; each ``("send", kwargs)`` runs :func:`send_batch` and answers
    ``("done", {start, end})``."""
    peer = await open_peer(target, username)
    link.send("ready", {"connect_s": peer.connect_s, "join_s": peer.join_s})
    while True:
        kind, options = await link.recv()
        if kind != "send":
            break
        link.send("done", await send_batch(peer, **options))
    await peer.close()


# ---------------------------------------------------------------------- receiving


class Deliveries:
    """What a process of receivers got in one phase: counts, first and last arrival,
    latencies seen by the first receiver, and the worst latency of each message."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.complete = asyncio.Event()
        self.reset(0)

    def reset(self, per_client: int) -> None:
        self.expected = per_client * self.clients
        self.count = 0
        self.first = math.inf
        self.last = -math.inf
        self.latencies: list[float] = []
        self.worst: dict[int, float] = {}
        self.complete.clear()

    def on_body_for(self, index: int) -> OnBody:
        """The ``on_body`` callback of receiver number ``index``."""

        def on_body(body: Any) -> None:
            arrived = now()
            latency = arrived - body["t"]
            self.count += 1
            self.first = min(self.first, arrived)
            self.last = max(self.last, arrived)
            if index == 0:
                self.latencies.append(latency)
            seq = body["seq"]
            if latency > self.worst.get(seq, -math.inf):
                self.worst[seq] = latency
            if self.count >= self.expected:
                self.complete.set()

        return on_body

    def result(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "expected": self.expected,
            "first": self.first,
            "last": self.last,
            "latencies": self.latencies,
            "worst": self.worst,
        }


async def receivers_worker(
    link: Link, target: Target, usernames: Sequence[str], concurrency: int = 1
) -> None:
    """A process of receiving peers.

    Answers ``("ready", {connect_s, join_s})`` once all are in the channel; then, for each
    ``("expect", {per_client, timeout})``, answers ``("armed")`` and, when every receiver
    has had ``per_client`` messages (or at the timeout), ``("done", Deliveries.result())``.
    """
    raise_nofile()
    deliveries = Deliveries(len(usernames))
    peers = await open_peers(target, usernames, deliveries.on_body_for, concurrency)
    link.send(
        "ready",
        {"connect_s": [p.connect_s for p in peers], "join_s": [p.join_s for p in peers]},
    )
    while True:
        kind, options = await link.recv()
        if kind != "expect":
            break
        deliveries.reset(options["per_client"])
        link.send("armed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(deliveries.complete.wait(), options["timeout"])
        link.send("done", deliveries.result())
    await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)


# ---------------------------------------------------------------------- topologies


class Topology(contextlib.ExitStack):
    """A relay, its channel, one sender process and processes of receivers, all ready.

    ``receivers`` gives the number of receiving peers in each receiver process. Leaving
    the ``with`` block stops every process.
    """

    def __init__(
        self,
        kind: Kind,
        receivers: Sequence[int],
        *,
        join_concurrency: int = 1,
        setup_timeout: float = 300.0,
        **relay_options: Any,
    ) -> None:
        super().__init__()
        try:
            self.relay = self.enter_context(RelayProcess(kind, **relay_options))
            self.target = self.relay.target
            asyncio.run(create_channel(self.target))
            self.relay_rss_before = rss(self.relay.pid)  # before any peer connects
            self.sender = self.enter_context(
                Worker(sender_worker, self.target, "sender", name=f"{kind}-sender")
            )
            self.receivers = [
                self.enter_context(
                    Worker(
                        receivers_worker,
                        self.target,
                        [f"r{p}x{i}" for i in range(n)],
                        join_concurrency,
                        name=f"{kind}-receivers-{p}",
                    )
                )
                for p, n in enumerate(receivers)
            ]
            self.sender_ready = self.sender.expect("ready", setup_timeout)
            self.receivers_ready = expect_all(self.receivers, "ready", setup_timeout)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> dict[str, int]:
        """Process ids by role (``relay``, ``sender``, ``receivers-N``)."""
        pids = {"relay": self.relay.pid, "sender": self.sender.pid}
        pids.update({f"receivers-{i}": r.pid for i, r in enumerate(self.receivers)})
        return pids

    def phase(
        self, count: int, *, timeout: float = 120.0, **send_options: Any
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Arm every receiver for ``count`` messages, send them, and collect both sides."""
        for receiver in self.receivers:
            receiver.send("expect", {"per_client": count, "timeout": timeout})
        expect_all(self.receivers, "armed")
        self.sender.send("send", {"count": count, **send_options})
        sent = self.sender.expect("done", timeout + 60)
        return sent, expect_all(self.receivers, "done", timeout + 60)
