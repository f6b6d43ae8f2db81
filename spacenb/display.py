"""Deprecated: moved to :mod:`spacenb.sync.display` (this alias goes in 0.3)."""

from ._deprecated import moved

__getattr__ = moved(__name__, "spacenb.sync.display")
