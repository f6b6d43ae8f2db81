"""spacenb: end-to-end-encrypted group messaging spaces, with a notebook face.

Two faces over one core (shared/reference/python-api.md):

- ``spacenb.serve()``, ``spacenb.connect(...)``: the synchronous facade. Every call blocks
  and returns its result, the same in a script, a Jupyter cell or a worker thread;
  tabular results are pandas DataFrames; ``space.widget()`` is a live chat view.
- ``spacenb.aio``: the async core (``await spacenb.aio.connect(...)``).

The facade, ``aio`` (with the events) and ``widgets`` are imported on first use, so that
``import spacenb`` stays light for the relay and the command line. The package's own
modules (``exceptions``, ``clock``, ``typing``, ``units``, ``privatefile``) are the bottom
layer every other one shares; the README draws the tree.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from .exceptions import (
    AuthenticationError,
    ChannelExistsError,
    ChannelNotFoundError,
    ConnectionLimitError,
    ConnectionLostError,
    ForkError,
    IdentityChangedError,
    IntegrityError,
    InvalidKeyError,
    InviteError,
    KeyUnavailableError,
    LimitExceededError,
    LoopThreadError,
    NotEnoughSharesError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    QuotaExceededError,
    RateLimitedError,
    RemoteProtocolError,
    ServerError,
    SpacenbError,
    SpacenbTimeoutError,
    StaleStateError,
    UnsupportedVersionError,
    UsageError,
)

if TYPE_CHECKING:
    from . import aio, widgets
    from .aio.events import (
        EphemeralEvent,
        JoinRequest,
        MessageDeletedEvent,
        PresenceEvent,
        RejectedEnvelopeEvent,
        SpaceMessageEvent,
        StateLogEntry,
        TrustedIdentity,
    )
    from .sync import (
        Client,
        FileManifest,
        InviteLink,
        LocalServer,
        Space,
        connect,
        serve,
    )

__version__ = "0.1.0"

# A library's log records go where the application sends them, and nowhere by default
# (not to stderr, where they would land in whichever notebook cell is running).
logging.getLogger("spacenb").addHandler(logging.NullHandler())

__all__ = [
    "AuthenticationError",
    "ChannelExistsError",
    "ChannelNotFoundError",
    "Client",
    "ConnectionLimitError",
    "ConnectionLostError",
    "EphemeralEvent",
    "FileManifest",
    "ForkError",
    "IdentityChangedError",
    "IntegrityError",
    "InvalidKeyError",
    "InviteError",
    "InviteLink",
    "JoinRequest",
    "KeyUnavailableError",
    "LimitExceededError",
    "LocalServer",
    "LoopThreadError",
    "MessageDeletedEvent",
    "NotEnoughSharesError",
    "NotFoundError",
    "PermissionDeniedError",
    "PresenceEvent",
    "ProtocolError",
    "QuotaExceededError",
    "RateLimitedError",
    "RejectedEnvelopeEvent",
    "RemoteProtocolError",
    "ServerError",
    "Space",
    "SpaceMessageEvent",
    "SpacenbError",
    "SpacenbTimeoutError",
    "StaleStateError",
    "StateLogEntry",
    "TrustedIdentity",
    "UnsupportedVersionError",
    "UsageError",
    "aio",
    "connect",
    "serve",
    "widgets",
]

_EVENTS = (
    "EphemeralEvent",
    "JoinRequest",
    "MessageDeletedEvent",
    "PresenceEvent",
    "RejectedEnvelopeEvent",
    "SpaceMessageEvent",
    "StateLogEntry",
    "TrustedIdentity",
)
_LAZY = {
    **dict.fromkeys(_EVENTS, "aio.events"),
    "Client": "sync",
    "FileManifest": "sync",
    "InviteLink": "sync",
    "LocalServer": "sync",
    "Space": "sync",
    "connect": "sync",
    "serve": "sync",
}
_SUBMODULES = {"aio", "widgets"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spacenb' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
