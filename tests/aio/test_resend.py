"""A send whose outcome is unknown is sent again, the same envelope (PROTOCOL.md,
"Requests": ``send`` is idempotent by signature): against a relay whose ``send`` (or
``edit``) stores the message and then drops the connection, or answers ``server_error``,
``send_message`` returns the one handle and history holds the message once. A refusal
whose outcome is known is raised at once, and a message is never sealed twice."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import spacenb.aio as aio
import spacenb.aio.space_messages as space_messages
from spacenb.exceptions import QuotaExceededError, ServerError
from spacenb.server.handlers import messages, with_handler
from spacenb.server.limits import Limits
from tests.aio.conftest import relay_on


class Faulty:
    """A ``send`` or ``edit`` handler that lets the real one run (the message is stored),
    then, ``faults`` times, loses its answer: it drops the connection (``drop``) or
    answers ``server_error`` (without ``store``, those times nothing is stored). Records
    the signature of every envelope it was sent, and whether it came as a resend."""

    def __init__(self, op: str, faults: int, *, drop: bool, store: bool = True) -> None:
        self.real = messages.send if op == "send" else messages.edit
        self.faults = faults
        self.drop = drop
        self.store = store
        self.seen: list[bytes] = []
        self.resends: list[bool] = []

    def __call__(self, core: Any, session: Any, req: Any) -> Any:
        self.seen.append(req.envelope.signature)
        self.resends.append(bool(getattr(req, "resend", False)))
        result = self.real(core, session, req) if self.store or not self.faults else None
        if self.faults > 0:
            self.faults -= 1
            if self.drop:  # stored, committed with this loop turn; the answer never leaves
                session.connection.transport.abort()
            else:
                raise ServerError("the relay lost the answer")
        return result


def relay_with(
    tmp_path: Path, op: str, handler: Faulty, **options: Any
) -> contextlib.AbstractAsyncContextManager[Callable[[str], Awaitable[aio.AsyncClient]]]:
    """A relay whose ``op`` handler is ``handler``, and ``connect(username)`` for it."""
    return relay_on(tmp_path, with_handler(op, handler), **options)


async def everything(space: aio.AsyncSpace) -> list[Any]:
    return list((await space.history(limit=100)).messages)


@pytest.mark.parametrize("drop", [True, False], ids=["dropped", "server_error"])
async def test_a_send_stored_but_unanswered_is_sent_again_and_stored_once(tmp_path, drop):
    faulty = Faulty("send", 2, drop=drop)
    async with relay_with(tmp_path, "send", faulty) as connect:
        alice = await connect("alice")
        room = await alice.space.create_channel("room")
        handle = await room.send_message("hello")
        assert len(faulty.seen) == 3 and len(set(faulty.seen)) == 1  # the same envelope
        assert faulty.resends == [False, True, True]
        assert [(m.handle, m.message.body) for m in await everything(room)] == [(handle, "hello")]
        later = await room.send_message("and more")
        assert [m.handle for m in await everything(room)] == [handle, later]
        if drop:
            assert alice.connection.reconnects == 2


async def test_an_edit_cut_off_is_sent_again(tmp_path):
    faulty = Faulty("edit", 1, drop=True)
    async with relay_with(tmp_path, "edit", faulty) as connect:
        alice = await connect("alice")
        room = await alice.space.create_channel("room")
        handle = await room.send_message("first")
        await room.edit_message(handle, "second")
        assert len(faulty.seen) == 2 and len(set(faulty.seen)) == 1
        (message,) = await everything(room)
        assert (message.handle, message.message.body) == (handle, "second")


async def test_a_known_refusal_is_raised_at_once(tmp_path):
    faulty = Faulty("send", 0, drop=False)
    async with relay_with(tmp_path, "send", faulty, limits=Limits(max_messages_per_user=1)) as c:
        alice = await c("alice")
        room = await alice.space.create_channel("room")
        await room.send_message("the one")
        with pytest.raises(QuotaExceededError):
            await room.send_message("one too many")
        assert len(faulty.seen) == 2  # not sent again


async def test_resends_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(space_messages, "_RESENDS", 3)
    faulty = Faulty("send", 100, drop=False, store=False)
    async with relay_with(tmp_path, "send", faulty) as connect:
        alice = await connect("alice")
        room = await alice.space.create_channel("room")
        with pytest.raises(ServerError, match="lost the answer"):
            await room.send_message("never stored")
        assert len(faulty.seen) == 4 and len(set(faulty.seen)) == 1  # never sealed again
        assert await everything(room) == []


@pytest.mark.parametrize("drop", [True, False], ids=["dropped", "server_error"])
async def test_a_send_never_stored_is_sealed_again_once_the_relay_says_so(tmp_path, drop):
    faulty = Faulty("send", 1, drop=drop, store=False)
    async with relay_with(tmp_path, "send", faulty) as connect:
        alice = await connect("alice")
        room = await alice.space.create_channel("room")
        handle = await room.send_message("hello")
        # the first attempt, its resend (answered not_found), then a new seal
        assert faulty.resends == [False, True, False]
        assert faulty.seen[0] == faulty.seen[1] != faulty.seen[2]
        assert [(m.handle, m.message.body) for m in await everything(room)] == [(handle, "hello")]
