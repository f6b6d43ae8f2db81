"""Deprecated: moved to :mod:`spacenb.aio.events` (this alias goes in 0.3)."""

from ._deprecated import moved

__getattr__ = moved(__name__, "spacenb.aio.events")
