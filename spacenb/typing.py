"""The callable shapes every layer above the protocol shares, named once.

``Handler`` is what ``on_message`` and its kin take (it is called with one event);
``Unsubscribe`` is what they return; ``Progress`` is called as ``progress(done, total)``
with bytes while a file travels. (The relay's request handlers are another thing, named
in ``spacenb.server``.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Handler", "Progress", "Unsubscribe"]

Handler = Callable[[Any], Any]
Unsubscribe = Callable[[], None]
Progress = Callable[[int, int], object]
