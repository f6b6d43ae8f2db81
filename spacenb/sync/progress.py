"""``progress=True`` for file transfers: a byte-scaled tqdm bar (``tqdm.auto``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..typing import Progress

__all__ = ["progress_callback"]


@contextlib.contextmanager
def progress_callback(progress: Progress | bool | None, desc: str) -> Iterator[Progress | None]:
    """Yield the callback to hand to the async core: ``progress`` itself, or, for
    ``True``, one that drives a tqdm bar (closed on exit)."""
    if progress is not True:
        yield progress or None
        return
    from tqdm.auto import tqdm

    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
