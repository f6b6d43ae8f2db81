"""What the relay keeps: users, spaces and their state logs, wrapped keys, sealed messages.

:class:`Storage` is the one interface the relay writes against;
:class:`~spacenb.server.sqlite.SQLiteStorage` implements it (one file, WAL). Another
database is another subclass. Every mutating method is one transaction: when it returns,
the change is committed; when it raises, nothing changed. The one exception is
:meth:`Storage.add_message`, which batches consecutive messages into one commit. Nothing
stored here can open a message or a group key: bodies are sealed envelopes and keys are
ECIES blobs (PROTOCOL.md, "Server operation").

Storage holds no protocol rules: what may be appended to a log is decided by
:class:`~spacenb.protocol.statelog.SpaceState` and the relay core
(:mod:`spacenb.server.core`, :mod:`spacenb.protocol.relayrules`) before anything is
written, and members, roles, epochs, invitations, links and their uses are derived from
the stored log, never kept beside it. A write is conditional only as it is told: an event
is appended at the seq it names or not at all (:class:`StaleStateError`), which is what
makes an invite link's uses atomic across relays.

Methods are synchronous: SQLite answers in microseconds, so the relay calls them on its
event-loop thread, from one connection.
:class:`~spacenb.server.postgres.PostgresStorage` keeps that contract over one PostgreSQL
connection, so that several relays can share one database.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..exceptions import NotFoundError, UnsupportedVersionError
from ..protocol.envelope import Envelope
from ..protocol.frames import ChannelEntry, Role, StoredMessage, UserEntry
from ..protocol.statelog import StateEvent
from ..protocol.wrap import WrappedKey

__all__ = [
    "DB_FILENAME",
    "PendingJoin",
    "SpaceRecord",
    "Storage",
    "StoredBefore",
    "unsupported_schema",
]

DB_FILENAME = "spacenb.sqlite3"


def unsupported_schema(found: int, supported: int, fresh: str) -> UnsupportedVersionError:
    """The refusal of a database whose schema version is ``found`` (``supported`` is the
    one this spacenb reads); ``fresh`` says what to start the relay on instead."""
    return UnsupportedVersionError(
        f"the database has schema version {found}, written by "
        + (
            "spacenb protocol v1, whose messages are bound to no signed state log"
            if found == 1
            else "a newer spacenb"
        )
        + f"; this spacenb (protocol v2) reads schema version {supported} only. "
        f"Start the relay on {fresh} (nothing in this one was changed)."
    )


class StoredBefore(int):
    """A handle answered for a ``send`` whose envelope the space had stored already (a
    resend after a lost answer): nothing was stored, charged or pushed this time."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SpaceRecord:
    """What the relay indexes of a space beside its log: its channel name as registered
    (None for an unnamed space), whether it is private (private channels are never
    listed) and when this relay stored it. Not the wire record: ``frames.SpaceInfo`` is
    derived from the space's log alone (:meth:`RelayCore.space_info`), never from this."""

    space_id: str
    name: str | None
    private: bool
    created_at_us: int


@dataclass(frozen=True, slots=True)
class PendingJoin:
    """A member who joined and still waits for its group keys."""

    space_id: str
    username: str
    role: Role


class Storage(abc.ABC):
    """The relay's persistent state. Every mutating method but :meth:`add_message` commits
    (first the open message batch, then its own change) before it returns."""

    # -- lifecycle
    @abc.abstractmethod
    def close(self) -> None:
        """Release the database (an open message batch is lost: commit first)."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the open message batch durable (see :meth:`add_message`); a no-op if none."""

    @abc.abstractmethod
    def rollback(self) -> None:
        """Discard the open message batch; a no-op if none."""

    # -- users
    @abc.abstractmethod
    def register_user(self, user: UserEntry, now_us: int) -> tuple[UserEntry, bool]:
        """Bind ``user.username`` to its keys unless already bound (first come wins).

        Returns the stored entry and whether this call created it.
        """

    @abc.abstractmethod
    def get_users(self, usernames: Iterable[str]) -> list[UserEntry]:
        """The users among ``usernames`` that exist, sorted by name."""

    # -- spaces, their logs and the channel directory
    @abc.abstractmethod
    def create_space(
        self, space: SpaceRecord, genesis: StateEvent, keys: Sequence[WrappedKey]
    ) -> None:
        """Store a new space, its genesis event and its epoch-0 wrapped keys.

        Raises :class:`ChannelExistsError` if the space id or the channel name is taken.
        """

    @abc.abstractmethod
    def get_space(self, space_id: str) -> SpaceRecord | None:
        """The space, or None."""

    @abc.abstractmethod
    def resolve_channel(self, name: str) -> str | None:
        """The space id registered under ``name``, or None."""

    @abc.abstractmethod
    def list_public_channels(self) -> list[ChannelEntry]:
        """Every channel whose space is not private, by name."""

    def public_channels_page(self, after: str | None, limit: int) -> list[ChannelEntry]:
        """At most ``limit`` public channels whose name sorts after ``after``, by name.

        This default reads every channel; a backend should answer from an index.
        """
        return [c for c in self.list_public_channels() if after is None or c.name > after][:limit]

    def channels_named_under(self, prefix: str) -> list[str]:
        """The space ids of the channels whose registered name starts with ``prefix``,
        oldest first. The relay registers a private channel under its name, a separator
        and its owner, so that it never collides with (or reveals itself through) anyone
        else's name; this finds them. This default finds none: a backend without it
        resolves private channels by id only.
        """
        return []

    @abc.abstractmethod
    def state_events(
        self, space_id: str, since: int = 0, limit: int | None = None
    ) -> list[StateEvent]:
        """The space's state events with ``seq >= since``, in order (at most ``limit``)."""

    @abc.abstractmethod
    def append_event(
        self,
        event: StateEvent,
        *,
        keys: Sequence[WrappedKey] = (),
        join: PendingJoin | None = None,
        close_join: str | None = None,
        delete_handle: int | None = None,
        now_us: int = 0,
    ) -> None:
        """Append a checked event to its space's log, in one transaction with its effects:
        store ``keys``, record ``join`` (a join request), close ``close_join``'s request,
        remove the message at ``delete_handle``.

        Raises :class:`StaleStateError` if the log already has an event at ``event.seq``.
        """

    # -- join requests and wrapped keys
    @abc.abstractmethod
    def join_requests(self, space_id: str | None = None) -> list[PendingJoin]:
        """Join requests still open (in every space, or in ``space_id``), oldest first."""

    @abc.abstractmethod
    def has_join_request(self, space_id: str, username: str) -> bool:
        """Whether ``username`` has an open join request in the space."""

    @abc.abstractmethod
    def add_keys(self, keys: Sequence[WrappedKey], admitted: str | None = None) -> None:
        """Store wrapped keys (a key already stored for its space, epoch and recipient
        is kept); with ``admitted``, also close that member's join request."""

    @abc.abstractmethod
    def keys_for(self, space_id: str, recipient: str) -> list[WrappedKey]:
        """Every wrapped key of the space addressed to ``recipient``, by epoch."""

    # -- messages
    @abc.abstractmethod
    def message_handle(self, space_id: str, signature: bytes) -> int | None:
        """The handle the space stored a message with this signature under (a ``send``, or
        an edit applied to it), also if it was edited or deleted since; None if none. A
        signature is stored under one handle only (the table's primary key)."""

    def resent_handle(self, envelope: Envelope) -> int:
        """A ``send`` marked ``resend``: the handle the space stored the envelope's
        signature under (a :class:`StoredBefore`), else :class:`NotFoundError`; stores
        nothing. A backend whose sends commit on another thread (PostgreSQL in a cluster)
        answers there, after the commits in flight (it returns 0; the core answers with
        the outcome)."""
        handle = self.message_handle(envelope.target, envelope.signature)
        if handle is None:
            raise NotFoundError("this envelope was not stored: seal the message again")
        return StoredBefore(handle)

    @abc.abstractmethod
    def add_message(self, envelope: Envelope, now_us: int) -> int:
        """Add a message to the open message batch (opening one) and return its handle:
        :func:`~spacenb.protocol.relayrules.next_handle` of ``now_us`` (the time the core
        passes) and the space's newest handle ever, decided inside this one write so that
        handles strictly increase even with several relays on one database. If the space
        stored a message with this signature already (a resend, see
        :meth:`message_handle`), returns that handle and stores nothing.

        This is the one write that is not committed on return: consecutive messages share
        one commit (group commit), made by :meth:`commit` or by the next other write. The
        relay answers a send only after that commit.
        """

    def message_usage(self, username: str) -> tuple[int, int] | None:
        """How many messages ``username`` has stored, in all spaces, and their ciphertext
        bytes; None if this backend cannot tell (the relay then counts from its start)."""
        return None

    @abc.abstractmethod
    def message_source(self, space_id: str, handle: int) -> str | None:
        """The signed ``source`` of a stored message, or None if there is none."""

    @abc.abstractmethod
    def replace_message(self, handle: int, envelope: Envelope) -> bool:
        """Replace the envelope stored at ``handle`` in ``envelope.target`` (and record its
        signature for that handle, :meth:`message_handle`); False if there is none."""

    @abc.abstractmethod
    def history(
        self, space_id: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], int | None]:
        """The ``limit`` newest messages below ``before``, ascending, and the next cursor
        (the page's smallest handle if older messages exist, else None)."""
