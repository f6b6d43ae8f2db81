"""The callback thread: where handlers registered through the sync facade run.

The async core calls handlers on its event-loop thread; a user's plain function there
could block every connection (a ``time.sleep``, a blocking spacenb call, a slow plot). So
the facade hands each event to one dedicated daemon thread instead, which runs the
handlers one at a time, in the order the events arrived. A handler that raises is logged
on the ``spacenb`` logger (with its traceback) and delivery goes on.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
from typing import Any

from ..typing import Handler

__all__ = ["CallbackThread", "get_callback_thread"]

log = logging.getLogger("spacenb")


class CallbackThread:
    """One daemon thread that runs queued calls in order, started on first use."""

    def __init__(self, name: str = "spacenb-callbacks") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Handler, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def post(self, handler: Handler, payload: Any) -> None:
        """Queue ``handler(payload)``; returns at once (thread-safe)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put((handler, payload))

    def wrap(self, handler: Handler) -> Handler:
        """A handler for the async core that forwards to ``handler`` on this thread.

        Coroutine functions are returned unchanged: they run on the event loop, where
        they belong.
        """
        if inspect.iscoroutinefunction(handler):
            return handler

        def forward(payload: Any) -> None:
            self.post(handler, payload)

        return forward

    def _work(self) -> None:
        while True:
            handler, payload = self._queue.get()
            try:
                handler(payload)
            except Exception:
                log.exception("spacenb: handler %s raised (delivery goes on)", _name_of(handler))


def _name_of(handler: Handler) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)


_callbacks = CallbackThread()


def get_callback_thread() -> CallbackThread:
    """The process-wide callback thread of the sync facade."""
    return _callbacks
