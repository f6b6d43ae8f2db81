"""The engine of the sync facade: one private asyncio loop in one daemon thread.

Modelled on jupyter_core's ``_TaskRunner``: the loop is started lazily, shared by every
server, client and widget of the process, and fed with
:func:`asyncio.run_coroutine_threadsafe`. A blocking call works the same from a plain
script, from a thread whose own loop is running (a Jupyter kernel, ``asyncio.run``), from
worker threads and under ``nest_asyncio``, because it never touches the caller's loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, Self, TypeVar

from ..exceptions import LoopThreadError, SpacenbTimeoutError

__all__ = ["LoopResource", "LoopThreadError", "Runner", "get_runner"]

T = TypeVar("T")

SHUTDOWN_TIMEOUT = 5.0  # seconds the whole exit-time cleanup may take


class Closeable(Protocol):
    """Something the runner closes, on its loop, when the interpreter exits."""

    async def _aclose(self) -> None: ...


class Runner:
    """A private event loop in a daemon thread, started on first use."""

    def __init__(self, name: str = "spacenb-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closeables: weakref.WeakSet[Closeable] = weakref.WeakSet()

    # ------------------------------------------------------------------ the loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The private loop, started (with its thread) on first access.

        Raises ``RuntimeError`` if it would have to start while the interpreter exits.
        """
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                if sys.is_finalizing():
                    raise RuntimeError("spacenb: the interpreter is shutting down")
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._run_forever, args=(loop, ready), name=self._name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _run_forever(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def in_loop_thread(self) -> bool:
        """True when called on the runner's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    # ------------------------------------------------------------------ calls

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop and return a thread-safe future (non-blocking).

        The coroutine runs in an empty ``contextvars`` context, not the caller's: tasks it
        starts (a client's reader and dispatcher) outlive the call, and in a Jupyter kernel
        the caller's context pins the cell that was running then, so output and widget
        messages from those tasks would be filed under that old cell forever.
        """
        return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block until it is done; return its result.

        Its exception is re-raised as is (traceback included). Raises
        :class:`SpacenbTimeoutError` after ``timeout`` seconds (the coroutine is cancelled),
        :class:`LoopThreadError` when called on the loop thread itself. An interrupt
        (KeyboardInterrupt) while waiting cancels the coroutine too.
        """
        if self.in_loop_thread():
            coro.close()
            raise LoopThreadError()
        future: concurrent.futures.Future[T] | None = None
        try:
            future = self.submit(coro)
            done, _ = concurrent.futures.wait([future], timeout=timeout)
        except BaseException:
            if future is not None:
                future.cancel()
            raise
        if not done:
            future.cancel()
            raise SpacenbTimeoutError(f"no result after {timeout} s (the operation was cancelled)")
        return future.result()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the plain function ``fn(*args)`` on the loop thread and return its result.

        For touching loop-owned state (handler lists) from another thread. On the loop
        thread itself it simply calls ``fn``.
        """
        if self.in_loop_thread():
            return fn(*args)

        async def call() -> T:
            return fn(*args)

        return self.run(call())

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop thread without waiting (thread-safe).

        With no loop running (never started, or closed at exit) there is nothing to race
        with, so ``fn`` is called at once; a loop is never started for it (so a widget's
        ``__del__`` at interpreter exit cannot start one).
        """
        with self._lock:
            loop = self._loop
        if loop is None or loop.is_closed():
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args, context=contextvars.Context())

    # ------------------------------------------------------------------ shutdown

    def register(self, obj: Closeable) -> None:
        """Close ``obj`` (``await obj._aclose()``) when the runner shuts down.

        Held weakly: an object that is garbage-collected first is simply forgotten.
        """
        self._closeables.add(obj)

    def unregister(self, obj: Closeable) -> None:
        self._closeables.discard(obj)

    def close(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Close registered objects, cancel what still runs, stop the loop, join the thread.

        Bounded by ``timeout`` seconds in total; never raises. Safe to call twice. The
        runner starts a fresh loop if it is used again afterwards.
        """
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or loop.is_closed():
            return
        closeables = list(self._closeables)
        self._closeables = weakref.WeakSet()
        if threading.current_thread() is thread:  # pragma: no cover - exit from a handler
            loop.stop()
            return
        future = asyncio.run_coroutine_threadsafe(_shutdown(closeables, timeout * 0.8), loop)
        with contextlib.suppress(BaseException):  # shutdown must never raise
            future.result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout * 0.2)


async def _shutdown(closeables: list[Closeable], timeout: float) -> None:
    """Close every object concurrently, then cancel and reap the loop's other tasks."""
    if closeables:
        await asyncio.wait(
            [asyncio.ensure_future(_quietly(obj._aclose())) for obj in closeables],
            timeout=timeout / 2,
        )
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout / 2
    for _round in range(3):  # a task being cancelled may start another (a reconnection)
        tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not tasks or loop.time() >= deadline:
            break
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=deadline - loop.time())
    await loop.shutdown_asyncgens()


async def _quietly(awaitable: Awaitable[object]) -> None:
    with contextlib.suppress(Exception):  # best effort at exit
        await awaitable


class LoopResource:
    """Base of facade objects that own something living on the runner's loop (a client's
    connection, a server's sockets): released by ``with``, or at interpreter exit."""

    _runner: Runner

    def _own(self, runner: Runner) -> None:
        self._runner = runner
        runner.register(self)

    @property
    def runner(self) -> Runner:
        """The loop thread this object lives on (a :class:`spacenb.widgets.LoopRunner`)."""
        return self._runner

    async def _aclose(self) -> None:
        raise NotImplementedError

    def _release(self, timeout: float | None = None) -> None:
        self._runner.unregister(self)
        self._runner.run(self._aclose(), timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()


_runner = Runner()
atexit.register(_runner.close)


def get_runner() -> Runner:
    """The process-wide runner shared by the whole sync facade and the widgets."""
    return _runner
