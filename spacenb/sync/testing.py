"""Bounded waiting, for tests and tutorials of the sync facade.

:func:`wait_until` polls a condition with a deadline, never a fixed sleep, so a test (or a
notebook cell) is as fast as the system allows and fails with a clear message when
something never happens. (The pytest fixtures and script runners that used to live here
are test-suite code, in ``tests/facade.py``.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``predicate()`` until it returns something truthy, and return that.

    Raises ``AssertionError`` (naming ``what``) if it is still falsy after ``timeout``
    seconds. Exceptions from ``predicate`` propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)
