"""Named handler lists: the one place where user callbacks are called.

A handler may be a plain function or a coroutine function. A handler that raises is
logged on the ``spacenb`` logger and never stops delivery to the other handlers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from ..typing import Handler, Unsubscribe

__all__ = ["Emitter"]

log = logging.getLogger("spacenb")


class Emitter:
    """Handlers by event name."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def on(self, event: str, handler: Handler) -> Unsubscribe:
        """Call ``handler(payload)`` for every ``event``; returns a function that undoes it."""
        if not callable(handler):
            raise TypeError("handler must be callable")
        self._handlers.setdefault(event, []).append(handler)
        return lambda: self.off(event, handler)

    def off(self, event: str, handler: Handler) -> None:
        """Stop calling ``handler`` for ``event`` (no error if it was not registered)."""
        handlers = self._handlers.get(event, [])
        if handler in handlers:
            handlers.remove(handler)

    def has(self, event: str) -> bool:
        return bool(self._handlers.get(event))

    def emit(self, event: str, payload: Any) -> None:
        """Deliver ``payload`` to every handler of ``event``; never raises."""
        for handler in list(self._handlers.get(event, ())):
            try:
                result = handler(payload)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            except Exception:
                log.exception("spacenb: %s handler %r raised", event, handler)

    async def cancel(self) -> None:
        """Cancel the async handlers still running, and wait for them to end."""
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("spacenb: async handler raised", exc_info=task.exception())
