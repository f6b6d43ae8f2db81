"""The registry of request handlers and the checks they share.

A handler is ``handler(relay, session, request) -> result``: it authorises, changes
storage (one transaction), queues pushes on the relay and returns the result record of
PROTOCOL.md's request table. It raises a :class:`~spacenb.exceptions.SpacenbError` to
refuse; the relay turns that into an error frame.

Who may do what in a space is decided from the space's verified state log
(:class:`~spacenb.protocol.statelog.SpaceState`): the very rules every member applies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ...exceptions import ChannelNotFoundError, PermissionDeniedError, ProtocolError
from ...protocol import crypto
from ...protocol.frames import Request
from ...protocol.statelog import USERNAME_RE, MemberRole, SpaceState, check_username
from ...protocol.wrap import WrappedKey

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
    "stored_size",
    "user_of",
    "visible_space",
]

R = TypeVar("R", bound=Request[Any])
Handler = Callable[["Relay", "Session", Any], Any]
HANDLERS: dict[str, Handler] = {}


def handles(request: type[R]) -> Callable[[Callable[[Relay, Session, R], Any]], Handler]:
    """Register the decorated function as the handler of ``request``'s op."""

    def register(fn: Callable[[Relay, Session, R], Any]) -> Handler:
        HANDLERS[request.OP] = fn
        return fn

    return register


def user_of(session: Session) -> str:
    """The authenticated username (handlers run only after auth, except auth and ping)."""
    assert session.username is not None
    return session.username


def known_space(relay: Relay, space_id: str) -> SpaceState:
    """The space's state, or :class:`ChannelNotFoundError`."""
    state = relay.state(space_id)
    if state is None:
        raise ChannelNotFoundError("no such space")
    return state


def may_see(state: SpaceState, username: str) -> bool:
    """Whether ``username`` may know of the space: a private one is visible only to its
    members and to users with an open invitation."""
    return not state.private or username in state.members or username in state.invitations


def visible_space(relay: Relay, session: Session, space_id: str) -> SpaceState:
    """The space if the caller may know of it, else :class:`ChannelNotFoundError`."""
    state = known_space(relay, space_id)
    if not may_see(state, user_of(session)):
        raise ChannelNotFoundError("no such space")
    return state


def member_space(relay: Relay, session: Session, space_id: str) -> tuple[SpaceState, MemberRole]:
    """The space and the caller's role; :class:`PermissionDeniedError` if not a member."""
    state = known_space(relay, space_id)
    role = state.role_of(user_of(session))
    if role is None:
        raise PermissionDeniedError("not a member of this space")
    return state, role


def stored_size(relay: Relay, space_id: str, handle: int) -> int:
    """The ciphertext bytes of the message stored at ``handle`` (0 if none)."""
    items, _cursor = relay.storage.history(space_id, handle + 1, 1)
    return len(items[0].envelope.ciphertext) if items and items[0].handle == handle else 0


def check_wrapped_keys(
    state: SpaceState,
    keys: Sequence[WrappedKey],
    *,
    wrapper: str,
    allowed: Callable[[WrappedKey], bool],
) -> None:
    """Refuse a list of wrapped keys unless every key is for this space, wrapped and
    signed by ``wrapper`` (with the key the log records for it), ``allowed`` by the log,
    and none repeats.

    Raises :class:`ProtocolError` naming the key, :class:`PermissionDeniedError` for a key
    the log does not allow, or :class:`IntegrityError` for a signature that does not verify.
    """
    if not keys:
        raise ProtocolError("at least one wrapped key is required", field="keys")
    signer = state.verify_key_at(wrapper, state.head_seq)
    if signer is None:
        raise PermissionDeniedError(f"{wrapper!r} is not a member of this space")
    seen: set[tuple[int, str]] = set()
    for i, key in enumerate(keys):
        where = f"keys[{i}]"
        if key.space_id != state.space_id:
            raise ProtocolError("wrapped for another space", field=f"{where}.space_id")
        if key.wrapper != wrapper:
            raise ProtocolError("must be wrapped by the caller", field=f"{where}.wrapper")
        if (key.epoch, key.recipient) in seen:
            raise ProtocolError("duplicate epoch and recipient", field=where)
        if not allowed(key):
            raise PermissionDeniedError(
                f"{where}: the log does not let {wrapper!r} hand epoch {key.epoch} to "
                f"{key.recipient!r}"
            )
        seen.add((key.epoch, key.recipient))
        crypto.verify(signer, key.signature, key.signed_bytes())
