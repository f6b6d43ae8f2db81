"""The relay server: storage, the relay, the keeper, and their wiring.

Start one with :func:`start_server` (or ``spacenb serve`` from a shell). The relay routes
and stores sealed envelopes and wrapped keys; it never sees a body or a group key. A
shard store runs on its own with :func:`start_shard_store` (``spacenb shard-store``).
"""

from __future__ import annotations

from .app import RunningServer, start_server
from .keeper import KEEPER_USERNAME, Keeper
from .limits import Limits
from .relay import Relay
from .sqlite import SQLiteStorage
from .storage import Storage
from .storeservice import start_shard_store

__all__ = [
    "KEEPER_USERNAME",
    "Keeper",
    "Limits",
    "Relay",
    "RunningServer",
    "SQLiteStorage",
    "Storage",
    "start_server",
    "start_shard_store",
]
