"""How people look in a chat view: initials on an avatar colour.

The palette has twelve colours, each dark enough for white initials (contrast at least
4.5:1) and far apart from every other (CIEDE2000 distance above 20; the widget tests
measure both). Everyone has a preferred colour, from a hash of their name, so most people
look the same in every view and session; within one view, someone whose preferred colour
is already taken gets the next free one, so the first twelve people a view shows always
look different.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["AVATAR_COLORS", "AvatarColors", "initials", "preferred_color"]

AVATAR_COLORS = (
    "#df2063",  # raspberry
    "#b95b01",  # amber brown
    "#553f10",  # dark bronze
    "#004e1d",  # forest
    "#307e7c",  # teal
    "#0378c8",  # azure
    "#022bc1",  # royal blue
    "#c31ddf",  # violet
    "#663255",  # plum
    "#8b0009",  # maroon
    "#727071",  # grey
    "#6f7c03",  # olive
)


def initials(name: str) -> str:
    """Up to two capital letters for an avatar: ``"ada lovelace"`` → ``"AL"``."""
    parts = [p for p in re.split(r"[\W_]+", name) if p]
    if len(parts) >= 2:
        return (parts[0][0] + parts[1][0]).upper()
    return (parts[0][:2] if parts else name[:2] or "?").upper()


def preferred_color(name: str) -> int:
    """The palette index ``name`` gets wherever it is free: the same on every machine."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % len(AVATAR_COLORS)


class AvatarColors:
    """The colours of one view: each person keeps the colour they were first given."""

    def __init__(self) -> None:
        self._given: dict[str, int] = {}

    def __call__(self, name: str) -> str:
        """The colour of ``name`` in this view (assigned on first call)."""
        index = self._given.get(name)
        if index is None:
            index = preferred = preferred_color(name)
            taken = set(self._given.values())
            if len(taken) < len(AVATAR_COLORS):
                while index in taken:
                    index = (index + 1) % len(AVATAR_COLORS)
            else:  # more people than colours: fall back on the preferred one
                index = preferred
            self._given[name] = index
        return AVATAR_COLORS[index]
