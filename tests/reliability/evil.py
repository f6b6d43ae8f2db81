"""A relay that misbehaves on purpose: a rewriting, injecting, answering proxy.

:class:`EvilRelay` listens on 127.0.0.1 and forwards every client's frames to the real
relay and back, so the clients behind it are real :mod:`spacenb.aio` clients talking to a
real relay. Around that it does what a malicious relay (or anyone in the middle of a plain
``ws://`` connection) can do:

- rewrite the answer to any request, knowing which request it answers
  (:meth:`EvilRelay.rewrite_result`, :meth:`EvilRelay.rewrite_error`);
- answer a request itself without forwarding it (:meth:`EvilRelay.answer`);
- drop or rewrite pushed events (:meth:`EvilRelay.drop_events`);
- show one user a log other than the real one (:meth:`EvilRelay.fork_log`);
- push anything to any user (:meth:`EvilRelay.inject`);
- record everything clients send (:attr:`EvilRelay.sent`), so a test can check what an
  honest client did *not* send (an ``admit`` to a made-up user, a key to a removed one).

It also holds what the relay's operator holds: the data directory, so ``keeper.key``
(:func:`keeper_identity`). The module's other helpers forge what such a relay would forge:
state events on top of a member's head (:func:`forge_event`), keys wrapped by whoever it
likes, pushed frames as JSON (:func:`as_json`).

:class:`EvilKeeperPort` is the same idea for the keeper, which talks to the relay
in-process: it serves the keeper the real log plus forged events.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from spacenb.protocol import frames
from spacenb.protocol.codec import to_obj
from spacenb.protocol.keys import IdentityKeys
from spacenb.protocol.statelog import SpaceState, StateEvent, make_event
from spacenb.protocol.wrap import WrappedKey
from spacenb.server.app import KEEPER_KEY_FILE
from spacenb.server.keeper import KeeperPort

__all__ = [
    "Answer",
    "Conn",
    "EvilKeeperPort",
    "EvilRelay",
    "as_json",
    "forge_event",
    "keeper_identity",
]

Frame = dict[str, Any]
R = TypeVar("R", bound=frames.Request[Any])


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request hook returns to answer a request itself: a result record (or a
    ready result dict), or an error (``code``, ``message``)."""

    result: Any = None
    error: tuple[str, str] | None = None

    def frame(self, request_id: int) -> Frame:
        if self.error is not None:
            return {"t": "err", "id": request_id, "code": self.error[0], "message": self.error[1]}
        result = self.result if isinstance(self.result, dict) else to_obj(self.result)
        return {"t": "res", "id": request_id, "result": result}


@dataclass(eq=False)
class Conn:
    """One client connection through the proxy."""

    down: ServerConnection
    up: ClientConnection | None = None
    username: str | None = None
    requests: dict[int, Frame] = field(default_factory=dict)  # open requests by id

    async def send(self, frame: Frame) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.down.send(json.dumps(frame))


# A request hook sees a client's request frame: it returns the frame to forward (maybe
# changed), None to drop it, or an Answer to answer it without the relay.
RequestHook = Callable[[Conn, Frame], "Frame | Answer | Awaitable[Frame | Answer | None] | None"]
# A reply hook sees a relay → client frame and, for answers, the request it answers: it
# returns the frame(s) to deliver, or None to drop it.
ReplyHook = Callable[
    [Conn, Frame, "Frame | None"],
    "Frame | list[Frame] | Awaitable[Frame | list[Frame] | None] | None",
]


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def as_json(event: frames.Event) -> Frame:
    """A pushed event as the JSON object the relay sends."""
    obj: Frame = json.loads(event.to_json())
    return obj


def parse_request(frame: Frame) -> frames.Request[Any]:
    """A client's request frame as its request record."""
    return frames.parse_client_frame(json.dumps(frame))


def keeper_identity(data_dir: Path) -> IdentityKeys:
    """The keeper's identity keys, as whoever holds the relay's data directory has them."""
    return IdentityKeys.from_text((Path(data_dir) / KEEPER_KEY_FILE).read_text().strip())


def forge_event(
    signer: IdentityKeys,
    state: SpaceState,
    kind: str,
    body: dict[str, Any],
    *,
    actor: str,
    at_us: int | None = None,
    seq: int | None = None,
    prev: bytes | None = None,
) -> StateEvent:
    """A state event signed by ``signer`` in ``actor``'s name, on top of ``state``'s head
    (or at ``seq``/``prev``): well-formed, correctly chained, wrongly authorised."""
    head = state.events[-1]
    return make_event(
        signer,
        space_id=state.space_id,
        seq=state.head_seq + 1 if seq is None else seq,
        prev=state.head if prev is None else prev,
        kind=kind,
        actor=actor,
        at_us=head.at_us + 1000 if at_us is None else at_us,
        body=body,
    )


class EvilRelay:
    """A malicious relay in front of ``upstream`` (see the module docstring)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.request_hooks: list[RequestHook] = []
        self.reply_hooks: list[ReplyHook] = []
        self.sent: list[tuple[str | None, Frame]] = []  # client → relay, before any hook
        self.seen: list[tuple[str | None, Frame]] = []  # relay → client, before any hook
        self.conns: list[Conn] = []
        self._server: Any = None

    async def start(self) -> EvilRelay:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    def reset(self) -> None:
        """Behave honestly from now on (forward everything unchanged)."""
        self.request_hooks.clear()
        self.reply_hooks.clear()

    # ------------------------------------------------------------------ what clients did

    def requests(self, request: type[R], *, user: str | None = None) -> list[R]:
        """Every ``request`` that clients (``user``'s only, if given) sent, parsed."""
        found = []
        for who, frame in self.sent:
            mine = user is None or who == user
            if mine and frame.get("t") == "req" and frame.get("op") == request.OP:
                parsed = parse_request(frame)
                assert isinstance(parsed, request)
                found.append(parsed)
        return found

    def pushed(self, ev: str, *, user: str | None = None) -> list[Frame]:
        """Every event ``ev`` the real relay pushed (to ``user``'s connections)."""
        return [
            frame
            for who, frame in self.seen
            if frame.get("t") == "evt" and frame.get("ev") == ev and (user is None or who == user)
        ]

    # ------------------------------------------------------------------ misbehaving

    async def inject(self, event: frames.Event | Frame, *, to: str | None = None) -> None:
        """Push ``event`` to every connection (of user ``to``), as if the relay had."""
        frame = as_json(event) if isinstance(event, frames.Event) else event
        for conn in list(self.conns):
            if to is None or conn.username == to:
                await conn.send(frame)

    def rewrite_result(
        self,
        request: type[frames.Request[Any]],
        change: Callable[[Conn, Any, Any], Any],
        *,
        user: str | None = None,
    ) -> None:
        """Replace the result of every ``request`` (of ``user``) with
        ``change(conn, parsed request, parsed result)`` (a record or a dict); an awaitable
        is awaited (so a test can hold an answer back)."""

        async def hook(conn: Conn, frame: Frame, req: Frame | None) -> Frame:
            if (
                frame.get("t") != "res"
                or req is None
                or req.get("op") != request.OP
                or (user is not None and conn.username != user)
            ):
                return frame
            result = frames.parse_result(request, frame["result"])
            new = await _maybe(change(conn, parse_request(req), result))
            return Answer(new).frame(frame["id"])

        self.reply_hooks.append(hook)

    def rewrite_error(
        self,
        request: type[frames.Request[Any]],
        change: Callable[[Conn, Any, Frame], Any],
        *,
        user: str | None = None,
    ) -> None:
        """Turn the relay's refusal of ``request`` into ``change(conn, parsed request,
        error frame)``: a result record (the relay pretends it agreed) or None (keep the
        refusal)."""

        async def hook(conn: Conn, frame: Frame, req: Frame | None) -> Frame:
            if (
                frame.get("t") != "err"
                or req is None
                or req.get("op") != request.OP
                or (user is not None and conn.username != user)
            ):
                return frame
            new = await _maybe(change(conn, parse_request(req), frame))
            return frame if new is None else Answer(new).frame(frame["id"])

        self.reply_hooks.append(hook)

    def agree(
        self, request: type[frames.Request[Any]], result: Any, *, user: str | None = None
    ) -> None:
        """Answer every refusal of ``request`` (to ``user``) with ``result`` instead."""
        self.rewrite_error(request, lambda _conn, _req, _err: result, user=user)

    def answer(
        self,
        request: type[frames.Request[Any]],
        respond: Callable[[Conn, Any], Any],
        *,
        user: str | None = None,
    ) -> None:
        """Answer ``request`` (of ``user``) without forwarding it: ``respond(conn, parsed
        request)`` returns the result record (or None: forward it after all)."""

        async def hook(conn: Conn, frame: Frame) -> Frame | Answer | None:
            if frame.get("op") != request.OP or (user is not None and conn.username != user):
                return frame
            result = await _maybe(respond(conn, parse_request(frame)))
            return frame if result is None else Answer(result)

        self.request_hooks.append(hook)

    def drop_events(self, keep: Callable[[Conn, Frame], bool]) -> None:
        """Drop every pushed event for which ``keep(conn, frame)`` is False."""

        def hook(conn: Conn, frame: Frame, req: Frame | None) -> Frame | None:
            if frame.get("t") == "evt" and not keep(conn, frame):
                return None
            return frame

        self.reply_hooks.append(hook)

    def fork_log(self, space_id: str, user: str, at_seq: int, events: list[StateEvent]) -> None:
        """Show ``user`` the space's log with ``events`` (a list the test may extend later)
        in place of the real events from ``at_seq`` on: in ``state_log`` answers and in
        pushed ``state`` events. With ``events`` empty, the real events from ``at_seq``
        are withheld."""

        def serve(conn: Conn, req: frames.GetStateLog, page: frames.StateLogPage) -> Any:
            if req.space_id != space_id:
                return page
            real = [e for e in page.events if e.seq < at_seq]
            fork = [e for e in events if e.seq >= req.since]
            served = (real + fork)[: req.limit]
            return frames.StateLogPage(tuple(served), at_seq + len(events) - 1)

        self.rewrite_result(frames.GetStateLog, serve, user=user)

        def keep(conn: Conn, frame: Frame) -> bool:
            if conn.username != user or frame.get("ev") != "state":
                return True
            return frame.get("space_id") != space_id or frame["event"]["seq"] < at_seq

        self.drop_events(keep)

        def head(conn: Conn, req: frames.Subscribe, result: frames.SubscribeResult) -> Any:
            if req.space_id != space_id:
                return result
            return frames.SubscribeResult(result.peers, result.epoch, at_seq + len(events) - 1)

        self.rewrite_result(frames.Subscribe, head, user=user)

    # ------------------------------------------------------------------ plumbing

    async def _handle(self, down: ServerConnection) -> None:
        conn = Conn(down)
        self.conns.append(conn)
        try:
            async with ws_connect(self.upstream, max_size=None) as up:
                conn.up = up
                tasks = [
                    asyncio.create_task(self._client_to_relay(conn, up)),
                    asyncio.create_task(self._relay_to_client(conn, up)),
                ]
                _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        except (ConnectionClosed, OSError):
            pass
        finally:
            self.conns.remove(conn)

    async def _client_to_relay(self, conn: Conn, up: ClientConnection) -> None:
        async for message in conn.down:
            frame: Frame = json.loads(message)
            if frame.get("op") == "auth":
                conn.username = frame.get("username")
            self.sent.append((conn.username, frame))
            out: Frame | Answer | None = frame
            for hook in list(self.request_hooks):
                if not isinstance(out, dict):
                    break
                out = await _maybe(hook(conn, out))
            if isinstance(out, Answer):
                await conn.send(out.frame(frame["id"]))
            elif out is not None:
                if out.get("t") == "req":
                    conn.requests[out["id"]] = out
                await up.send(json.dumps(out))

    async def _relay_to_client(self, conn: Conn, up: ClientConnection) -> None:
        async for message in up:
            frame: Frame = json.loads(message)
            self.seen.append((conn.username, frame))
            request = None
            if frame.get("t") in ("res", "err") and isinstance(frame.get("id"), int):
                request = conn.requests.pop(frame["id"], None)
            items: list[Frame] = [frame]
            for hook in list(self.reply_hooks):
                next_items: list[Frame] = []
                for item in items:
                    out = await _maybe(hook(conn, item, request))
                    if out is None:
                        continue
                    next_items.extend(out if isinstance(out, list) else [out])
                items = next_items
            for item in items:
                await conn.send(item)


class EvilKeeperPort(KeeperPort):
    """The keeper's view of the relay, with forged events after the real log: what a
    relay whose storage was tampered with would serve its own keeper. Records every
    admission the keeper attempts."""

    def __init__(self, real: KeeperPort, forged: Iterable[StateEvent] = ()) -> None:
        self._real = real
        self.forged = list(forged)
        self.admitted: list[tuple[str, str, Sequence[WrappedKey]]] = []

    def state_log(self, space_id: str, since: int) -> Sequence[StateEvent]:
        real = list(self._real.state_log(space_id, since))
        return real + [e for e in self.forged if e.space_id == space_id and e.seq >= since]

    def fetch_keys(self, space_id: str) -> Sequence[WrappedKey]:
        return self._real.fetch_keys(space_id)

    def admit(self, space_id: str, member: str, keys: Sequence[WrappedKey]) -> None:
        self.admitted.append((space_id, member, keys))
        self._real.admit(space_id, member, keys)

    def pending_joins(self) -> Sequence[tuple[str, str]]:
        return self._real.pending_joins()

    def append(self, space_id: str, event: StateEvent) -> None:
        self._real.append(space_id, event)

    def now_us(self) -> int:
        return self._real.now_us()
