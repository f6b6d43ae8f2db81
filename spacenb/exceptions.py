"""Every error spacenb raises, in one place.

The tree::

    SpacenbError
    ├── ProtocolError              a frame or byte layout is malformed (``field`` says where)
    │   ├── InvalidKeyError        an encoded key is invalid (not on the curve, bad suite)
    │   ├── UsageError             the caller passed something spacenb cannot use (a ValueError)
    │   └── RemoteProtocolError    the relay sent something malformed or against the rules
    ├── IntegrityError             a signature, AEAD tag, share hash or key wrap did not verify
    │   ├── IdentityChangedError   a user's keys differ from the ones pinned or in a space's log
    │   └── ForkError              the relay showed this member a state log others do not share
    ├── StaleStateError            a state event no longer follows the log's head (retry)
    ├── UnsupportedVersionError    a data dir, keystore or relay of another protocol version
    ├── AuthenticationError        wrong app key, bad sign-in, username bound to another key
    ├── PermissionDeniedError      not the owner, not the author, not a member, wrong role
    ├── ChannelExistsError         the channel name is taken
    ├── NotFoundError              no such message handle, member, user or share
    │   └── ChannelNotFoundError   no channel (or space) by that name or id
    ├── InviteError                invite link expired, used up, revoked or unknown
    ├── KeyUnavailableError        no group key for that epoch (not a member then, not admitted)
    ├── NotEnoughSharesError       fewer than k good shares of a file could be found
    ├── ConnectionLostError        the connection to the relay is closed
    ├── LimitExceededError         a frame, message or page is larger than the protocol allows
    │   ├── RateLimitedError       more requests per second than the relay allows one user
    │   ├── QuotaExceededError     a user's stored messages or shares, or a store's disk, is full
    │   └── ConnectionLimitError   too many connections (of one user or one address)
    ├── ServerError                the relay reported an error with no more specific class
    ├── SpacenbTimeoutError        also a builtin ``TimeoutError``
    └── LoopThreadError            a blocking call on spacenb's own loop thread (a RuntimeError)

Errors are raised, never returned. The relay sends errors as frames with a ``code``;
:func:`error_for_code` turns a code back into the matching class, so the same class is
raised on both sides of the wire.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ChannelExistsError",
    "ChannelNotFoundError",
    "ConnectionLimitError",
    "ConnectionLostError",
    "ForkError",
    "IdentityChangedError",
    "IntegrityError",
    "InvalidKeyError",
    "InviteError",
    "KeyUnavailableError",
    "LimitExceededError",
    "LoopThreadError",
    "NotEnoughSharesError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "QuotaExceededError",
    "RateLimitedError",
    "RemoteProtocolError",
    "ServerError",
    "SpacenbError",
    "SpacenbTimeoutError",
    "StaleStateError",
    "UnsupportedVersionError",
    "UsageError",
    "error_for_code",
]


class SpacenbError(Exception):
    """Root of every spacenb error. ``code`` is the error's name on the wire."""

    code = "error"


class ProtocolError(SpacenbError, ValueError):
    """A frame, field or byte layout is malformed. ``field`` names what was wrong."""

    code = "bad_frame"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.detail = message  # the message without the field name


class InvalidKeyError(ProtocolError):
    """An encoded public or private key is not a valid key of a supported suite."""

    code = "bad_key"


class UsageError(ProtocolError):
    """The caller passed an argument spacenb cannot use (also a builtin ``ValueError``):
    a bug in the calling code, as opposed to :class:`RemoteProtocolError`."""


class RemoteProtocolError(ProtocolError):
    """The relay sent a frame that is malformed or breaks the protocol's rules: the
    relay (or something between it and this client) is at fault, not the caller."""


class IntegrityError(SpacenbError):
    """Something did not verify: a signature, an AEAD tag, a share hash or a key wrap.

    Like pyca/cryptography's ``InvalidToken``, every authentication failure collapses
    into this one opaque error, so callers cannot learn *which* check failed.
    """

    code = "integrity"


class IdentityChangedError(IntegrityError):
    """The relay presented identity keys for a user that differ from those this client
    pinned, or from those recorded in a space's signed state log.

    ``username`` names the user; accept the new keys only with
    ``client.accept_new_identity(username)`` after checking the fingerprint out of band.
    """

    def __init__(self, message: str, *, username: str | None = None) -> None:
        super().__init__(message)
        self.username = username


class ForkError(IntegrityError):
    """The relay showed this member a state log that contradicts what it showed before,
    or what another member's message was bound to: members no longer share one history.

    Also raised when the relay keeps serving a log whose head is below the one this
    member holds (a rollback: its newest events hidden) for longer than the client's
    ``log_lag_grace``."""


class StaleStateError(SpacenbError):
    """A state event no longer follows the head of the space's log (someone else's event
    came first). Fetch the log and sign the change again; spacenb's client does so itself."""

    code = "stale_state"


class UnsupportedVersionError(SpacenbError):
    """A data directory, keystore or relay speaks another version of the protocol. The
    message names the version found; nothing was changed."""

    code = "unsupported_version"


class AuthenticationError(SpacenbError):
    """Wrong app key, failed sign-in, or a username already bound to another key."""

    code = "auth_failed"


class PermissionDeniedError(SpacenbError, PermissionError):
    """The caller is not allowed to do this (not the owner, the author or a member)."""

    code = "forbidden"


class ChannelExistsError(SpacenbError):
    """A channel with that name is already registered."""

    code = "channel_exists"


class NotFoundError(SpacenbError, LookupError):
    """There is no such thing: a message at that handle, a member or user by that name, a
    share by that hash. (An unknown channel or space is its subclass
    :class:`ChannelNotFoundError`.)"""

    code = "missing"


class ChannelNotFoundError(NotFoundError):
    """No channel or space is registered under that name or id (or it is private and the
    caller may not see it)."""

    code = "not_found"


class InviteError(SpacenbError):
    """The invite link is expired, used up, revoked, for another space, or unknown."""

    code = "invite_invalid"


class KeyUnavailableError(SpacenbError):
    """No group key is held for that epoch (the reader was not a member then)."""

    code = "no_key"


class NotEnoughSharesError(SpacenbError):
    """Fewer than ``k`` shares with a correct hash could be fetched for a segment."""

    code = "not_enough_shares"


class ConnectionLostError(SpacenbError, ConnectionError):
    """The connection to the relay or a shard store is closed or could not be opened."""

    code = "connection_lost"


class LimitExceededError(SpacenbError):
    """Something is larger than the protocol or the relay allows: a frame, a message, a
    page. The message names the limit (PROTOCOL.md, "Limits"); subclasses are the relay's
    rates, quotas and connection caps."""

    code = "too_large"


class RateLimitedError(LimitExceededError):
    """A user sent more messages per second than the relay allows (a token bucket): wait
    a moment and send again. The message says how long."""

    code = "rate_limited"


class QuotaExceededError(LimitExceededError):
    """A storage quota is used up: the user's stored messages or shares, or a shard
    store's disk. Nothing stored is dropped; delete something or ask the operator."""

    code = "quota_exceeded"


class ConnectionLimitError(LimitExceededError):
    """Too many connections: of this user, or from this address."""

    code = "too_many_connections"


class ServerError(SpacenbError):
    """The relay reported an error that has no more specific class."""

    code = "server_error"


class SpacenbTimeoutError(SpacenbError, TimeoutError):
    """An operation did not finish in time. Also a builtin ``TimeoutError``."""

    code = "timeout"


class LoopThreadError(SpacenbError, RuntimeError):
    """A blocking spacenb call was made on spacenb's own loop thread (it would deadlock).

    This happens when an ``async def`` handler, or code called from one, uses the sync
    facade. Use the ``spacenb.aio`` object instead (``await space.send_message(...)``), or
    register a plain function: facade handlers run on a separate callback thread.
    """

    code = "loop_thread"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "a blocking spacenb call on spacenb's own event-loop thread would deadlock: "
            "in an async handler, await the spacenb.aio object instead"
        )


_BY_CODE: dict[str, type[SpacenbError]] = {
    cls.code: cls
    for cls in (
        ProtocolError,
        InvalidKeyError,
        IntegrityError,
        AuthenticationError,
        PermissionDeniedError,
        ChannelExistsError,
        NotFoundError,
        ChannelNotFoundError,
        InviteError,
        KeyUnavailableError,
        NotEnoughSharesError,
        ConnectionLostError,
        LimitExceededError,
        RateLimitedError,
        QuotaExceededError,
        ConnectionLimitError,
        ServerError,
        SpacenbTimeoutError,
        StaleStateError,
        UnsupportedVersionError,
    )
}


def error_for_code(code: str, message: str) -> SpacenbError:
    """Build the exception that matches an error frame's ``code``."""
    return _BY_CODE.get(code, ServerError)(message)
