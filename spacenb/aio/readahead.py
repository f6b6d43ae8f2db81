"""Read-ahead of history pages: the next page fetched, and its signatures checked in the
verify workers, while the caller works on the page before it.

Only the relay's round trip and the workers' signature checks are done ahead. Every
decision about the page's messages (:meth:`~spacenb.protocol.member.MemberCore.open_message`:
the state head, membership, epochs, keys, the replay guard) is made when the page is asked
for, as for a page fetched then; a worker's verdict names the key it checked under, which
the member core compares with the key its log gives at that time.

A page ahead is kept for one request (cursor and limit) and one *mark* of what the relay
could serve differently since it was asked (:meth:`AsyncSpace._ahead_mark`: the state
head, edits, the connection). Asked for anything else, or under another mark, it is
dropped and the page fetched anew, as is one whose fetch failed: a read-ahead never raises
into the call that finds it. :func:`close_all` (the client's ``close``) waits for what
is left of them, so no task of theirs outlives the client.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeAlias

from ..protocol import frames
from . import verify_pool

__all__ = ["Fetched", "PageAhead", "close_all"]

Fetched: TypeAlias = tuple[frames.HistoryPage, list[verify_pool.Chunk] | None]
Want: TypeAlias = tuple[int | None, int, Hashable]  # before, limit, mark

_OWNED: weakref.WeakKeyDictionary[object, weakref.WeakSet[PageAhead]] = weakref.WeakKeyDictionary()


class PageAhead:
    """At most one history page of one space, fetched ahead (one per ``AsyncSpace``)."""

    def __init__(self, owner: object) -> None:
        self._owner = owner
        self._want: Want | None = None
        self._task: asyncio.Task[Fetched | None] | None = None
        self._loose: set[asyncio.Future[Any]] = set()  # dropped, still running

    def start(self, want: Want, fetch: Callable[[], Awaitable[Fetched]]) -> None:
        """Fetch ``want`` in the background (dropping the page ahead before it, if any)."""
        self.drop()
        self._want = want
        self._task = asyncio.get_running_loop().create_task(
            _quietly(fetch), name="spacenb-read-ahead"
        )
        _OWNED.setdefault(self._owner, weakref.WeakSet()).add(self)

    async def take(self, want: Want, mark: Callable[[], Hashable]) -> Fetched | None:
        """The page ahead if it is ``want`` and ``mark()`` has not moved while it came; None
        otherwise (the caller fetches the page itself). A page ahead that is not ``want``
        is dropped."""
        task, held = self._task, self._want
        self._task = self._want = None
        if task is None:
            return None
        if held != want:
            self._let_go(task)
            return None
        fetched = await task
        if fetched is not None and mark() != want[2]:
            self._let_go_chunks(fetched)
            return None
        return fetched

    def drop(self) -> None:
        """Forget the page ahead: its fetch is cancelled; signature checks already sent to
        the workers finish there (cancelled, a worker is killed and started again)."""
        task = self._task
        self._task = self._want = None
        if task is not None:
            self._let_go(task)

    async def close(self) -> None:
        """Drop the page ahead and wait until nothing of it runs any more."""
        self.drop()
        while self._loose:
            await asyncio.gather(*self._loose, return_exceptions=True)

    def _let_go(self, task: asyncio.Task[Fetched | None]) -> None:
        if task.done():
            self._let_go_fetched(task)
            return
        task.cancel()
        self._hold(task)
        task.add_done_callback(self._let_go_fetched)  # its fetch may have ended, unseen

    def _let_go_fetched(self, task: asyncio.Task[Fetched | None]) -> None:
        fetched = None if task.cancelled() else task.result()
        if fetched is not None:
            self._let_go_chunks(fetched)

    def _let_go_chunks(self, fetched: Fetched) -> None:
        for _start, _end, checked in fetched[1] or ():
            if checked is not None and not checked.done():
                self._hold(checked)

    def _hold(self, future: asyncio.Future[Any]) -> None:
        self._loose.add(future)
        future.add_done_callback(self._loose.discard)


async def _quietly(fetch: Callable[[], Awaitable[Fetched]]) -> Fetched | None:
    """``fetch``'s page, or None if it failed (the real call fetches it again); its chunks'
    failures are read here, so an unused one is not reported as never retrieved."""
    try:
        fetched = await fetch()
    except Exception:
        return None
    for _start, _end, checked in fetched[1] or ():
        if checked is not None:
            checked.add_done_callback(_retrieve)
    return fetched


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def close_all(owner: object) -> None:
    """Close every read-ahead of ``owner`` (an ``AsyncClient``): nothing of them runs after."""
    for ahead in list(_OWNED.pop(owner, ())):
        await ahead.close()
