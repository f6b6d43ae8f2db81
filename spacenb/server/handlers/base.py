"""The registry of request handlers and the checks they share.

A handler is ``handler(relay, session, request) -> result``: it authorises, changes
storage (one transaction), queues pushes on the relay and returns the result record of
PROTOCOL.md's request table. It raises a :class:`~spacenb.exceptions.SpacenbError` to
refuse; the relay turns that into an error frame.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ...exceptions import ChannelNotFoundError, PermissionDeniedError, ProtocolError
from ...protocol import crypto
from ...protocol.frames import Request, Role
from ...protocol.wrap import WrappedKey
from ..storage import SpaceRecord

if TYPE_CHECKING:
    from ..relay import Relay, Session

__all__ = [
    "HANDLERS",
    "USERNAME_RE",
    "check_username",
    "check_wrapped_keys",
    "handles",
    "known_space",
    "may_see",
    "member_space",
    "owner_space",
    "user_of",
    "visible_space",
]

R = TypeVar("R", bound=Request)
Handler = Callable[["Relay", "Session", Any], Any]
HANDLERS: dict[str, Handler] = {}

USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")


def handles(request: type[R]) -> Callable[[Callable[[Relay, Session, R], Any]], Handler]:
    """Register the decorated function as the handler of ``request``'s op."""

    def register(fn: Callable[[Relay, Session, R], Any]) -> Handler:
        HANDLERS[request.OP] = fn
        return fn

    return register


def check_username(name: str, *, field: str = "username") -> str:
    """``name`` if it is a valid username, else :class:`ProtocolError`."""
    if not USERNAME_RE.fullmatch(name):
        raise ProtocolError("usernames match [a-z0-9][a-z0-9_.-]{0,31}", field=field)
    return name


def user_of(session: Session) -> str:
    """The authenticated username (handlers run only after auth, except auth and ping)."""
    assert session.username is not None
    return session.username


def known_space(relay: Relay, space_id: str) -> SpaceRecord:
    """The space, or :class:`ChannelNotFoundError`."""
    space = relay.storage.get_space(space_id)
    if space is None:
        raise ChannelNotFoundError("no such space")
    return space


def may_see(relay: Relay, space: SpaceRecord, username: str) -> bool:
    """Whether ``username`` may know of the space: a private one is visible only to its
    members and allowlisted users."""
    return (
        not space.private
        or relay.storage.get_role(space.space_id, username) is not None
        or relay.storage.is_allowed(space.space_id, username)
    )


def visible_space(relay: Relay, session: Session, space_id: str) -> SpaceRecord:
    """The space if the caller may know of it, else :class:`ChannelNotFoundError`."""
    space = known_space(relay, space_id)
    if not may_see(relay, space, user_of(session)):
        raise ChannelNotFoundError("no such space")
    return space


def member_space(relay: Relay, session: Session, space_id: str) -> tuple[SpaceRecord, Role]:
    """The space and the caller's role; :class:`PermissionDeniedError` if not a member."""
    space = known_space(relay, space_id)
    role = relay.storage.get_role(space_id, user_of(session))
    if role is None:
        raise PermissionDeniedError("not a member of this space")
    return space, role


def owner_space(relay: Relay, session: Session, space_id: str) -> SpaceRecord:
    """The space if the caller owns it; :class:`PermissionDeniedError` otherwise."""
    space, role = member_space(relay, session, space_id)
    if role != "owner":
        raise PermissionDeniedError("only the space's owner may do this")
    return space


def check_wrapped_keys(
    relay: Relay,
    keys: Sequence[WrappedKey],
    *,
    space_id: str,
    wrapper: str,
    epochs: Container[int],
    recipients: Container[str],
) -> None:
    """Refuse a list of wrapped keys unless every key is for this space, wrapped and
    signed by ``wrapper``, for an allowed epoch and recipient, and none repeats.

    Raises :class:`ProtocolError` naming the key, or :class:`IntegrityError` for a
    signature that does not verify.
    """
    if not keys:
        raise ProtocolError("at least one wrapped key is required", field="keys")
    signer = relay.signing_key(wrapper)
    seen: set[tuple[int, str]] = set()
    for i, key in enumerate(keys):
        where = f"keys[{i}]"
        if key.space_id != space_id:
            raise ProtocolError("wrapped for another space", field=f"{where}.space_id")
        if key.wrapper != wrapper:
            raise ProtocolError("must be wrapped by the caller", field=f"{where}.wrapper")
        if key.epoch not in epochs:
            raise ProtocolError("epoch not allowed here", field=f"{where}.epoch")
        if key.recipient not in recipients:
            raise ProtocolError("recipient not allowed here", field=f"{where}.recipient")
        if (key.epoch, key.recipient) in seen:
            raise ProtocolError("duplicate epoch and recipient", field=where)
        seen.add((key.epoch, key.recipient))
        crypto.verify(signer, key.signature, key.signed_bytes())
