"""What the request handlers share: the caller, and the space as the core knows it.

A handler is ``handler(core, session, request) -> result``: it authorises, tells storage
what to write (one transaction), queues pushes on the :class:`~..core.RelayCore` and
returns the result record of PROTOCOL.md's request table. It raises a
:class:`~spacenb.exceptions.SpacenbError` to refuse; the core turns that into an error
frame. Which handler answers which op is the one table in :mod:`.` (``REQUEST_TABLE``).

Who may do what in a space is decided from the space's verified state log
(:class:`~spacenb.protocol.statelog.SpaceState`) by the pure rules of
:mod:`spacenb.protocol.relayrules`; the helpers here only look the space up first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...exceptions import ChannelNotFoundError
from ...protocol.relayrules import may_see, member_role
from ...protocol.statelog import MemberRole, SpaceState

if TYPE_CHECKING:
    from ..core import RelayCore, Session

__all__ = ["known_space", "member_space", "stored_size", "user_of", "visible_space"]


def user_of(session: Session) -> str:
    """The authenticated username (handlers run only after auth, except auth and ping)."""
    assert session.username is not None
    return session.username


def known_space(core: RelayCore, space_id: str) -> SpaceState:
    """The space's state, or :class:`ChannelNotFoundError`."""
    state = core.state(space_id)
    if state is None:
        raise ChannelNotFoundError("no such space")
    return state


def visible_space(core: RelayCore, session: Session, space_id: str) -> SpaceState:
    """The space if the caller may know of it, else :class:`ChannelNotFoundError`."""
    state = known_space(core, space_id)
    if not may_see(state, user_of(session)):
        raise ChannelNotFoundError("no such space")
    return state


def member_space(core: RelayCore, session: Session, space_id: str) -> tuple[SpaceState, MemberRole]:
    """The space and the caller's role; :class:`PermissionDeniedError` if not a member."""
    state = known_space(core, space_id)
    return state, member_role(state, user_of(session))


def stored_size(core: RelayCore, space_id: str, handle: int) -> int:
    """The ciphertext bytes of the message stored at ``handle`` (0 if none)."""
    items, _cursor = core.storage.history(space_id, handle + 1, 1)
    return len(items[0].envelope.ciphertext) if items and items[0].handle == handle else 0
