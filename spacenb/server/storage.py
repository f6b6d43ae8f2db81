"""What the relay keeps: users, spaces, memberships, links, wrapped keys, sealed messages.

:class:`Storage` is the one interface the relay writes against;
:class:`~spacenb.server.sqlite.SQLiteStorage` implements it (one file, WAL). Another
database is another subclass. Every mutating method is one transaction: when it returns,
the change is committed; when it raises, nothing changed. The one exception is
:meth:`Storage.add_message`, which batches consecutive messages into one commit. Nothing
stored here can open a message or a group key: bodies are sealed envelopes and keys are
ECIES blobs (PROTOCOL.md, "Server operation").

Methods are synchronous: SQLite answers in microseconds, so the relay calls them on its
event-loop thread, from one connection.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..protocol.envelope import Envelope
from ..protocol.frames import (
    ChannelEntry,
    LinkInfo,
    MemberEntry,
    Policy,
    Role,
    StoredMessage,
    UserEntry,
)
from ..protocol.wrap import WrappedKey

__all__ = [
    "DB_FILENAME",
    "PendingJoin",
    "SpaceRecord",
    "Storage",
    "link_id_of",
    "token_hash",
]

DB_FILENAME = "spacenb.sqlite3"


@dataclass(frozen=True, slots=True)
class SpaceRecord:
    """A stored space. ``name`` is its channel name, None for an unnamed space."""

    space_id: str
    owner: str
    policy: Policy
    private: bool
    manual_admit: bool
    name: str | None
    epoch: int
    created_at_us: int


@dataclass(frozen=True, slots=True)
class PendingJoin:
    """A member who joined and still waits for its group keys."""

    space_id: str
    username: str
    role: Role


def token_hash(token: str) -> bytes:
    """What is stored of an invite token: its SHA-256 (the token itself never is)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def link_id_of(token_digest: bytes) -> str:
    """A link's public id: the first 16 hex digits of its token hash."""
    return token_digest.hex()[:16]


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

    # -- spaces and the channel directory
    @abc.abstractmethod
    def create_space(
        self, space: SpaceRecord, members: Sequence[MemberEntry], keys: Sequence[WrappedKey]
    ) -> None:
        """Store a new space, its first members and its epoch-0 wrapped keys.

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

    @abc.abstractmethod
    def advance_epoch(self, space_id: str, epoch: int, keys: Sequence[WrappedKey]) -> None:
        """Make ``epoch`` current (it must be current + 1) and store its wrapped keys.

        Raises :class:`KeyUnavailableError` if the space is not at ``epoch - 1``.
        """

    # -- memberships, allowlist, join requests, wrapped keys
    @abc.abstractmethod
    def get_role(self, space_id: str, username: str) -> Role | None:
        """The member's role, or None if not a member."""

    @abc.abstractmethod
    def list_members(self, space_id: str) -> list[MemberEntry]:
        """The space's members, by member id."""

    @abc.abstractmethod
    def list_member_users(self, space_id: str) -> list[tuple[MemberEntry, UserEntry]]:
        """The space's members with their published keys, by member id."""

    @abc.abstractmethod
    def set_role(self, space_id: str, username: str, role: Role) -> bool:
        """Change a member's role; False if not a member."""

    @abc.abstractmethod
    def remove_member(self, space_id: str, username: str, *, disallow: bool = False) -> bool:
        """Drop a membership and its pending join request (and with ``disallow``, its
        allowlist entry); False if not a member."""

    @abc.abstractmethod
    def allow(self, space_id: str, username: str) -> None:
        """Add ``username`` to the space's allowlist (idempotent)."""

    @abc.abstractmethod
    def is_allowed(self, space_id: str, username: str) -> bool:
        """Whether ``username`` is on the space's allowlist."""

    @abc.abstractmethod
    def join_space(
        self, space_id: str, username: str, role: Role, now_us: int, token: str | None = None
    ) -> Role:
        """Make ``username`` a member and record its join request; return its role.

        With ``token``, first redeem that invite link atomically (one more use) and take
        the link's role; raises :class:`InviteError` if it is unknown, for another space,
        revoked, expired or used up.
        """

    @abc.abstractmethod
    def pending_joins(self, member: str, space_id: str | None = None) -> list[PendingJoin]:
        """Join requests still open in the spaces ``member`` belongs to (or in just
        ``space_id``), oldest first."""

    @abc.abstractmethod
    def has_pending_join(self, space_id: str, username: str) -> bool:
        """Whether ``username`` has an open join request in the space."""

    @abc.abstractmethod
    def add_keys(self, keys: Sequence[WrappedKey], admitted: str | None = None) -> None:
        """Store wrapped keys (a key already stored for its space, epoch and recipient
        is kept); with ``admitted``, also close that member's join request."""

    @abc.abstractmethod
    def keys_for(self, space_id: str, recipient: str) -> list[WrappedKey]:
        """Every wrapped key of the space addressed to ``recipient``, by epoch."""

    # -- invite links
    @abc.abstractmethod
    def create_link(self, link: LinkInfo, token: str) -> None:
        """Store a link (by the hash of ``token``; the token itself is not kept)."""

    @abc.abstractmethod
    def list_links(self, space_id: str) -> list[LinkInfo]:
        """The space's links, oldest first, without tokens."""

    @abc.abstractmethod
    def revoke_link(self, space_id: str, token: str) -> bool:
        """Revoke a link of the space; False if no such link."""

    # -- messages
    @abc.abstractmethod
    def add_message(self, envelope: Envelope, now_us: int) -> int:
        """Add a message to the open message batch (opening one) and return its handle:
        ``now_us``, or one more than the space's newest handle ever if that is not larger
        (so handles strictly increase).

        This is the one write that is not committed on return: consecutive messages share
        one commit (group commit), made by :meth:`commit` or by the next other write. The
        relay answers a send only after that commit.
        """

    @abc.abstractmethod
    def message_source(self, space_id: str, handle: int) -> str | None:
        """The signed ``source`` of a stored message, or None if there is none."""

    @abc.abstractmethod
    def replace_message(self, handle: int, envelope: Envelope) -> bool:
        """Replace the envelope stored at ``handle`` in ``envelope.target``."""

    @abc.abstractmethod
    def delete_message(self, space_id: str, handle: int) -> bool:
        """Remove a stored message; False if there was none."""

    @abc.abstractmethod
    def history(
        self, space_id: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], int | None]:
        """The ``limit`` newest messages below ``before``, ascending, and the next cursor
        (the page's smallest handle if older messages exist, else None)."""
