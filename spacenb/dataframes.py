"""Deprecated: moved to :mod:`spacenb.sync.dataframes` (this alias goes in 0.3)."""

from ._deprecated import moved

__getattr__ = moved(__name__, "spacenb.sync.dataframes")
