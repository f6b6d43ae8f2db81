"""The protocol's records that the async core hands out, named where the layers above look.

``space.keyring``, ``space.state``, ``client.identity.public(...)`` and ``put_file``'s
manifest are protocol types; the sync facade and the widgets import them from here, so no
layer above ``aio`` reaches past it into ``spacenb.protocol``.
"""

from __future__ import annotations

from ..protocol.keyring import HistoryPolicy, Keyring
from ..protocol.keys import PublicIdentity
from ..protocol.manifest import Manifest
from ..protocol.statelog import SpaceState

__all__ = ["HistoryPolicy", "Keyring", "Manifest", "PublicIdentity", "SpaceState"]
