"""The private-loop runner and the callback thread, without a server."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import spacenb
import spacenb.exceptions
from spacenb import SpacenbTimeoutError
from spacenb.sync.callbacks import CallbackThread
from spacenb.sync.runner import LoopThreadError, Runner
from spacenb.sync.testing import wait_until
from tests.facade import run_script


@pytest.fixture
def runner() -> Iterator[Runner]:
    runner = Runner(name="test-loop")
    yield runner
    runner.close()


async def add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def fail_deep() -> None:
    await asyncio.sleep(0)
    raise KeyError("inner")


def test_result_comes_back(runner: Runner) -> None:
    assert runner.run(add(2, 3)) == 5


def test_runs_on_its_own_daemon_thread(runner: Runner) -> None:
    async def where() -> threading.Thread:
        return threading.current_thread()

    thread = runner.run(where())
    assert thread is not threading.current_thread()
    assert thread.daemon
    assert runner.run(where()) is thread  # one shared loop thread


def test_exception_reraised_as_is_with_traceback(runner: Runner) -> None:
    with pytest.raises(KeyError, match="inner") as info:
        runner.run(fail_deep())
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "fail_deep" in names


def test_timeout_raises_and_cancels(runner: Runner) -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(SpacenbTimeoutError) as info:
        runner.run(forever(), timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert cancelled.wait(5), "the timed-out coroutine was not cancelled"


def test_coroutines_own_timeout_error_is_not_mistaken(runner: Runner) -> None:
    async def times_out_inside() -> None:
        raise SpacenbTimeoutError("the relay did not answer")

    with pytest.raises(SpacenbTimeoutError, match="relay did not answer"):
        runner.run(times_out_inside(), timeout=10)


CALLER = contextvars.ContextVar("CALLER", default="unset")


def test_coroutines_do_not_inherit_the_callers_context(runner: Runner) -> None:
    CALLER.set("the cell that ran first")  # in a kernel: the parent message of a cell

    async def read() -> str:
        return CALLER.get()

    assert runner.run(read()) == "unset"
    seen: list[str] = []
    runner.call_soon(lambda: seen.append(CALLER.get()))
    wait_until(lambda: seen == ["unset"], what="call_soon in an empty context")


def test_blocking_call_on_the_loop_thread_raises(runner: Runner) -> None:
    async def reenter() -> int:
        return runner.run(add(1, 1))

    with pytest.raises(LoopThreadError, match="deadlock"):
        runner.run(reenter(), timeout=5)
    assert issubclass(LoopThreadError, spacenb.SpacenbError)  # one tree of errors
    assert issubclass(LoopThreadError, RuntimeError)
    assert spacenb.LoopThreadError is LoopThreadError is spacenb.exceptions.LoopThreadError


def test_inside_a_running_loop_in_the_same_thread(runner: Runner) -> None:
    async def notebook_cell() -> int:
        # a Jupyter cell: the caller's loop is running, and the sync call still works
        return runner.run(add(20, 22))

    assert asyncio.run(notebook_cell()) == 42


def test_from_many_worker_threads(runner: Runner) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: runner.run(add(i, i)), range(64)))
    assert results == [2 * i for i in range(64)]


def test_call_runs_a_plain_function_on_the_loop_thread(runner: Runner) -> None:
    thread = runner.call(threading.current_thread)
    assert thread.name == "test-loop"


def test_close_is_bounded_and_the_runner_restarts(runner: Runner) -> None:
    runner.submit(asyncio.sleep(3600))
    runner.close(timeout=2)
    assert runner.run(add(1, 2)) == 3


def test_works_after_nest_asyncio_apply() -> None:
    pytest.importorskip("nest_asyncio")
    result = run_script(
        """
        import asyncio, nest_asyncio
        nest_asyncio.apply()
        from spacenb.sync.runner import get_runner

        async def add(a, b):
            await asyncio.sleep(0)
            return a + b

        print(get_runner().run(add(1, 2)))

        async def cell():
            return get_runner().run(add(3, 4))

        print(asyncio.run(cell()))
        print(asyncio.get_event_loop().run_until_complete(cell()))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "7", "7"]


def test_exit_closes_registered_objects_and_does_not_hang() -> None:
    result = run_script(
        """
        import asyncio
        from spacenb.sync.runner import get_runner

        class Resource:
            async def _aclose(self):
                await asyncio.sleep(0.01)
                print("closed", flush=True)

        runner = get_runner()
        keep = Resource()
        runner.register(keep)
        runner.submit(asyncio.sleep(3600))  # a task that would never end by itself
        print("exiting", flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["exiting", "closed"]


# --------------------------------------------------------------------------- callback thread


def test_callbacks_run_in_order_off_the_loop() -> None:
    callbacks = CallbackThread(name="test-callbacks")
    seen: list[tuple[int, str]] = []
    forward = callbacks.wrap(lambda item: seen.append((item, threading.current_thread().name)))
    for i in range(100):
        forward(i)
    wait_until(lambda: len(seen) == 100, what="100 callbacks")
    assert [item for item, _ in seen] == list(range(100))
    assert {name for _, name in seen} == {"test-callbacks"}


def test_a_raising_callback_is_logged_and_delivery_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    callbacks = CallbackThread()
    seen: list[int] = []

    def picky(item: int) -> None:
        if item == 1:
            raise ValueError("bad item")
        seen.append(item)

    with caplog.at_level(logging.ERROR, logger="spacenb"):
        for i in range(3):
            callbacks.post(picky, i)
        wait_until(lambda: seen == [0, 2], what="delivery after the error")
    assert any("picky" in r.getMessage() and r.exc_info for r in caplog.records)


def test_coroutine_handlers_are_left_to_the_loop() -> None:
    async def handler(event: object) -> None:
        pass

    assert CallbackThread().wrap(handler) is handler


def test_an_interrupt_while_waiting_cancels_the_call(runner: Runner) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def interrupt_once_waiting() -> None:
        started.wait(5)
        main = threading.main_thread().ident
        wait_until(
            lambda: "wait" in traceback.extract_stack(sys._current_frames()[main])[-1].name,
            what="the main thread blocked in the call",
        )
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_waiting, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        runner.run(forever())  # what a Jupyter "interrupt kernel" does to a blocking call
    assert cancelled.wait(5)
