"""The relay's rules, as pure decisions: who may see or act in a space, what an envelope
must be bound to, whether an invite link can still be used, which handle a message gets,
what a user's token bucket and quota allow, and what fits in one page.

These are the rules a relay applies whoever serves it and wherever it stores. They read
a space's verified state log (:class:`~spacenb.protocol.statelog.SpaceState`: the very
rules every member applies, reused here, never copied) and plain values; they never read
a clock (times are arguments), a socket or a database. The stateful relay core
(:mod:`spacenb.server.core`) looks things up in storage and calls these; each storage
backend only performs the write it is told to (PROTOCOL.md, "Server operation").

Every refusal is the :class:`~spacenb.exceptions.SpacenbError` the client sees.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence

from ..exceptions import (
    InviteError,
    KeyUnavailableError,
    LimitExceededError,
    PermissionDeniedError,
    ProtocolError,
    QuotaExceededError,
    RateLimitedError,
    StaleStateError,
)
from . import crypto, frames
from .codec import json_size
from .envelope import Envelope
from .statelog import InviteLinkState, MemberRole, SpaceState
from .wrap import WrappedKey

__all__ = [
    "MAX_CHANNEL_NAME",
    "TokenBucket",
    "bytes_quota_refusal",
    "check_channel_name",
    "check_current_epoch",
    "check_envelope_author",
    "check_envelope_binding",
    "check_link_usable",
    "check_page_limit",
    "check_wrapped_keys",
    "history_page",
    "keys_page",
    "may_see",
    "member_role",
    "next_handle",
    "private_prefix",
    "quota_refusal",
    "rate_limited",
    "registered_name",
]

MAX_CHANNEL_NAME = 100
_PRIVATE = "\x1f"  # a control character, which no channel name may hold

# ---------------------------------------------------------------------- who may do what


def may_see(state: SpaceState, username: str) -> bool:
    """Whether ``username`` may know of the space: a private one is visible only to its
    members and to users with an open invitation."""
    return not state.private or username in state.members or username in state.invitations


def member_role(state: SpaceState, username: str) -> MemberRole:
    """``username``'s role in the space; :class:`PermissionDeniedError` if not a member."""
    role = state.role_of(username)
    if role is None:
        raise PermissionDeniedError("not a member of this space")
    return role


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


# ---------------------------------------------------------------------- envelopes


def check_envelope_author(envelope: Envelope, kind: str, username: str) -> None:
    """Before the space is looked up: the envelope is of ``kind`` and by ``username``.
    Raises :class:`ProtocolError` or :class:`PermissionDeniedError`."""
    if envelope.kind != kind:
        raise ProtocolError(f"must be {kind!r} here", field="envelope.kind")
    if envelope.source != username:
        raise PermissionDeniedError("envelope.source must be the authenticated user")


def check_envelope_binding(state: SpaceState, envelope: Envelope, username: str) -> None:
    """The author is a member, the envelope's state head is in the log and its signature
    verifies with the key the log records for the author. Raises
    :class:`PermissionDeniedError`, :class:`StaleStateError`, :class:`ProtocolError` or
    :class:`IntegrityError`."""
    member_role(state, username)
    known = state.hash_at(envelope.head_seq)
    if known is None:
        raise StaleStateError("the envelope is bound to a state event the log does not have")
    if known != envelope.head:
        raise ProtocolError(
            "the state head is not the log's event at head_seq", field="envelope.head"
        )
    signer = state.verify_key_at(username, state.head_seq)
    assert signer is not None  # member_role checked the author is a member
    crypto.verify(signer, envelope.signature, envelope.signed_bytes())


def check_current_epoch(state: SpaceState, envelope: Envelope) -> None:
    """A stored message is sealed under the space's current epoch, from a head in it;
    else :class:`KeyUnavailableError`."""
    if envelope.epoch != state.epoch or state.epoch_at(envelope.head_seq) != state.epoch:
        raise KeyUnavailableError(
            f"the space is at epoch {state.epoch} (since state event "
            f"{state.epochs[state.epoch].seq}); seal new messages under it"
        )


def next_handle(now_us: int, newest: int) -> int:
    """The handle of a new message: the time it is stored, or one more than the space's
    newest handle ever if that is not larger, so handles strictly increase per space.

    A backend shared by several relays applies this same rule inside its one atomic
    write (PostgreSQL: ``GREATEST(now, last_handle + 1)`` on the space's row)."""
    return now_us if now_us > newest else newest + 1


# ---------------------------------------------------------------------- invite links


def check_link_usable(link: InviteLinkState, now_us: int) -> None:
    """:class:`InviteError` unless the link can still be used at ``now_us``: not revoked,
    not used up, not expired. The relay decides this with its own clock, on top of what
    :meth:`SpaceState.check` decides from the event's signed time."""
    if link.revoked:
        raise InviteError("this invite link has been revoked")
    if link.max_uses is not None and link.uses >= link.max_uses:
        raise InviteError(f"this invite link has been used {link.uses} of {link.max_uses} times")
    if link.expires_at_us is not None and now_us >= link.expires_at_us:
        raise InviteError("this invite link has expired")


# ---------------------------------------------------------------------- channel names


def registered_name(name: str, private: bool, owner: str) -> str:
    """The key a channel is registered under: its name, or, for a private channel, its
    name scoped to its owner (a separator no name can hold, then the owner), so that it
    collides with nobody else's name and trying a name tells an outsider nothing."""
    return f"{name}{_PRIVATE}{owner}" if private else name


def private_prefix(name: str) -> str:
    """What every private channel called ``name`` is registered under, owner aside."""
    return name + _PRIVATE


def check_channel_name(name: str) -> str:
    """``name`` if it is a usable channel name (1 to 100 characters, no surrounding
    spaces, no control characters), else :class:`ProtocolError`."""
    if not name or len(name) > MAX_CHANNEL_NAME or name != name.strip():
        raise ProtocolError(
            f"a channel name has 1 to {MAX_CHANNEL_NAME} characters and no surrounding spaces",
            field="name",
        )
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ProtocolError("control characters are not allowed", field="name")
    return name


# ---------------------------------------------------------------------- rates and quotas


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one per request. Times are
    seconds on any monotonic clock the caller reads."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self.tokens = float(self.burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there is."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else float("inf")

    def give_back(self) -> None:
        """Return a token taken for a request that turned out to cost nothing (a resend)."""
        self.tokens = min(float(self.burst), self.tokens + 1.0)

    def full(self, now: float) -> bool:
        """Whether it is as good as new (so it can be forgotten)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


def rate_limited(rate: float, burst: int, wait: float) -> RateLimitedError:
    """The refusal of a request that found its user's bucket empty."""
    return RateLimitedError(
        f"rate limit: at most {rate:g} messages per second per user "
        f"(bursts of {burst}); try again in {wait:.2f} s"
    )


def quota_refusal(
    username: str,
    stored: tuple[int, int],
    *,
    count: int,
    size: int,
    most_messages: int | None,
    most_bytes: int | None,
) -> QuotaExceededError | None:
    """The refusal of storing ``count`` more messages of ``size`` more ciphertext bytes
    for a user who stores ``stored`` (messages, bytes) already; None if within quota
    (negative values give back and are never refused)."""
    messages, stored_bytes = stored
    if count > 0 and most_messages is not None and messages + count > most_messages:
        return QuotaExceededError(
            f"{username!r} stores {messages} messages, the most a user may "
            f"(max_messages_per_user = {most_messages}): delete some"
        )
    if size > 0 and most_bytes is not None and stored_bytes + size > most_bytes:
        return bytes_quota_refusal(username, stored_bytes, most_bytes)
    return None


def bytes_quota_refusal(
    username: str, stored_bytes: int, most_bytes: int | None
) -> QuotaExceededError:
    """The refusal of a message that would take its author past the bytes quota."""
    return QuotaExceededError(
        f"{username!r} stores {stored_bytes} bytes of messages; this one would take it "
        f"past the quota (max_message_bytes_per_user = {most_bytes}): delete some, "
        "or send files"
    )


# ---------------------------------------------------------------------- pages


def check_page_limit(limit: int, most: int) -> None:
    """A page request's ``limit``: :class:`ProtocolError` under 1,
    :class:`LimitExceededError` over ``most``."""
    if limit < 1:
        raise ProtocolError("must be at least 1", field="limit")
    if limit > most:
        raise LimitExceededError(f"limit is at most {most}")


def keys_page(
    keys: Sequence[WrappedKey], since_epoch: int | None = None
) -> tuple[tuple[WrappedKey, ...], int | None]:
    """Of ``keys`` (by epoch), one page from ``since_epoch`` on, and the epoch the next
    page starts at (None if this is the last)."""
    if since_epoch is not None:
        keys = [k for k in keys if k.epoch >= since_epoch]
    size = frames.MAX_KEYS_PAGE
    return tuple(keys[:size]), (keys[size].epoch if len(keys) > size else None)


# The JSON of a stored message with empty texts and ciphertext, its three integers counted
# at their widest (16 digits) and its comma: what every one weighs besides its contents.
_EMPTY = Envelope("msg", "", "", "", 0, "", 0, bytes(32), bytes(12), b"", bytes(64))
_FIXED = json_size(frames.StoredMessage(0, _EMPTY)) + 3 * 15 + 1

HistoryReader = Callable[
    [int | None, int], tuple[Sequence[frames.StoredMessage], int | None]
]  # (before, limit) -> (messages ascending, cursor to older ones)


def _size_bound(item: frames.StoredMessage) -> int:
    """At least the JSON size of ``item`` in a page (and its comma), cheaply. ``source``
    (a username) and ``target`` (a space id) are never escaped; ``subject`` and
    ``content_type`` are counted as if every character were (``\\u00XX``)."""
    envelope = item.envelope
    return (
        _FIXED
        + (4 * len(envelope.ciphertext) + 2) // 3
        + len(envelope.source)
        + len(envelope.target)
        + 6 * (len(envelope.subject) + len(envelope.content_type))
    )


def history_page(
    read: HistoryReader, before: int | None, limit: int
) -> tuple[list[frames.StoredMessage], int | None]:
    """The newest ``limit`` messages below ``before`` that fit in one answer, oldest first,
    and the cursor to older ones (None when there are none). ``read`` is the storage's
    history read for one space.

    Read newest first in chunks sized by what the page can still hold, so a page of large
    messages never loads more than a few of them beyond what it returns. Sizes are bounded
    cheaply until the bounds near the page's room, and counted exactly from there on.
    """
    page: list[frames.StoredMessage] = []  # newest first
    budget = frames.PAGE_BYTES
    used, exact = 2, False  # the brackets; ``used`` is a bound until ``exact``
    chunk, cursor = 16, before
    while len(page) < limit:
        items, older = read(cursor, min(chunk, limit - len(page)))
        for item in reversed(items):
            if not exact:
                bound = _size_bound(item)
                if used + bound <= budget:
                    used += bound
                    page.append(item)
                    continue
                exact = True
                used = 2 + sum(json_size(i) + 1 for i in page)
            size = json_size(item) + 1
            if used + size > budget and page:
                page.reverse()
                return page, page[0].handle
            used += size
            page.append(item)
        if older is None:
            page.reverse()
            return page, None
        cursor = older
        average = max(used // len(page), 1)
        chunk = max(16, (budget - used) // average + 1)
    page.reverse()
    return page, (page[0].handle if page and cursor is not None else None)
