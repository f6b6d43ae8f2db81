"""Request handlers, one module per area; importing this package registers them all.

``HANDLERS`` maps every op of PROTOCOL.md's request table to its handler.
"""

from __future__ import annotations

from . import auth, membership, messages, spaces
from .base import HANDLERS

__all__ = ["HANDLERS"]

del auth, membership, messages, spaces
