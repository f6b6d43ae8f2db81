"""Old names that keep working, with a :class:`DeprecationWarning`, for one release.

A module that moved becomes a stub whose module ``__getattr__`` comes from :func:`moved`;
a package that renamed a name lists it with :func:`renamed`. Both import the new home only
when an old name is used, so a stub never pulls in a layer its own importer did not need.

Every such warning is a :class:`SpacenbDeprecationWarning`, a :class:`DeprecationWarning`
(so every filter for those applies): the test suite turns it, and only it, into an error,
so that no module, test, benchmark or notebook of spacenb's own uses an old name.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SpacenbDeprecationWarning", "moved", "renamed", "warn_deprecated"]


class SpacenbDeprecationWarning(DeprecationWarning):
    """An old spacenb name or form was used; it goes in the release the message names."""


def warn_deprecated(message: str, stacklevel: int = 2) -> None:
    """Warn, for the caller's caller (``stacklevel`` as for :func:`warnings.warn`)."""
    warnings.warn(message, SpacenbDeprecationWarning, stacklevel=stacklevel + 1)


def _warn(old: str, new: str) -> None:
    warn_deprecated(f"{old} is deprecated; use {new}", stacklevel=3)


def moved(old_module: str, new_module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` forwarding every name of ``old_module`` to ``new_module``."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(importlib.import_module(new_module), name)
        _warn(f"{old_module}.{name}", f"{new_module}.{name}")
        return value

    return __getattr__


def renamed(module: str, names: Mapping[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``names``: old name → (module it now lives in, new name)."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        home, new = names[name]
        _warn(f"{module}.{name}", f"{home}.{new}")
        return getattr(importlib.import_module(home), new)

    return __getattr__
