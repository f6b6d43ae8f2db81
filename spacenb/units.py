"""How spacenb's quantities read: sizes in bytes, and message handles as times.

Every layer above the protocol shows these (the sync facade's records and DataFrames, the
chat widget), so they are written once, here, with no dependency.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["handle_time", "human_bytes"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def human_bytes(size: int) -> str:
    """``1536`` → ``"1.5 KiB"`` (binary units, as tqdm shows them with unit_divisor=1024)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def handle_time(handle: int) -> datetime:
    """The relay time a message handle stands for (handles are UTC microseconds)."""
    return _EPOCH + timedelta(microseconds=handle)
