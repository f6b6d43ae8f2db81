"""A space's signed state log (PROTOCOL.md, "The state log").

Every change to who may read or act in a space is an event signed by an actor whom the
state so far allows to make it, and each event carries the hash of the one before. The
first event (genesis) is signed by the space key, so the chain is self-certifying from the
space id alone. :class:`SpaceState` verifies a chain event by event and derives from it
everything a member or the relay needs to decide: members and their keys, roles, bans,
invitations, invite links, epochs and who each was wrapped to, and deletions. A reader
that holds none of a log verifies it with :class:`LogLoader`, which takes the owner's last
``checkpoint`` for the signatures before it, and the genesis keeper's for those of the
self-signed adds before it only.

The relay runs the same checks before it stores an event, but nobody has to trust that
it did: a client derives the state from the events alone, never from a relay answer.

An event's form, bodies and signature are :mod:`.stateevent`'s, and invite-link tokens
and proofs :mod:`.invitelinks`'; this module exports their names too.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ..exceptions import (
    IntegrityError,
    InviteError,
    PermissionDeniedError,
    ProtocolError,
    StaleStateError,
)
from . import crypto
from .encoding import b64d
from .invitelinks import link_id_of_key, link_keys_from_token, link_proof_bytes, new_link_token
from .keys import check_public_key, decode_public_key, decode_space_id
from .stateevent import (
    GENESIS_PREV,
    HASH_SIZE,
    KINDS,
    USERNAME_RE,
    StateEvent,
    check_username,
    key_commitment,
    make_event,
    make_genesis,
)

__all__ = [
    "GENESIS_PREV",
    "KEEPER_ATTESTS",
    "KINDS",
    "MAX_UNCHECKED",
    "USERNAME_RE",
    "Invitation",
    "InviteLinkState",
    "LogLoader",
    "MemberState",
    "SpaceState",
    "StateEvent",
    "Unchecked",
    "check_username",
    "key_commitment",
    "link_id_of_key",
    "link_keys_from_token",
    "link_proof_bytes",
    "make_event",
    "make_genesis",
    "new_link_token",
]

MemberRole = Literal["owner", "editor", "viewer"]


def _username(value: str, field_name: str) -> str:
    return check_username(value, field=field_name)


# --------------------------------------------------------------------------- derived state


@dataclass(frozen=True, slots=True)
class MemberState:
    """A current member as the log records it."""

    name: str
    role: MemberRole
    signing_key: str
    ecdh_key: str
    since_seq: int  # the event that added it
    since_epoch: int  # the epoch current when it was added


@dataclass(frozen=True, slots=True)
class Invitation:
    """An open invitation: ``member`` may add itself with ``role`` (and, when the inviter
    pinned them, exactly these keys)."""

    member: str
    role: MemberRole
    by: str
    seq: int
    signing_key: str | None
    ecdh_key: str | None


@dataclass(frozen=True, slots=True)
class InviteLinkState:
    """An invite link as the log records it; ``uses`` counts the signed adds through it."""

    link_id: str
    link_key: str
    role: MemberRole
    max_uses: int | None
    expires_at_us: int | None
    created_at_us: int
    seq: int
    uses: int = 0
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class _Span:
    """One stretch of membership: from the adding event to the one that ended it."""

    start: int
    end: int | None
    signing_key: str


@dataclass(frozen=True, slots=True)
class EpochState:
    epoch: int
    seq: int
    recipients: frozenset[str]
    commitment: str


@dataclass(frozen=True, slots=True)
class Unchecked:
    """An event :meth:`SpaceState.apply_unchecked` applied: every rule held, but its
    signature (by ``signer``, a ``sig.`` key text) and the keys and link proof it names
    are not checked yet."""

    event: StateEvent
    signer: str
    checks: tuple[Callable[[], None], ...] = field(repr=False)


class SpaceState:
    """A verified state log and the state it derives. Start with :meth:`from_genesis`,
    then :meth:`apply` each following event; :meth:`check` says whether one would apply.

    Every refusal raises: :class:`StaleStateError` for an event that does not extend the
    head, :class:`PermissionDeniedError` for an actor the state does not allow,
    :class:`InviteError` for a link that cannot be used, :class:`ProtocolError` for a
    malformed event and :class:`IntegrityError` for a signature that does not verify.
    """

    def __init__(self, genesis: StateEvent, *, verify: bool = True) -> None:
        if genesis.seq != 0 or genesis.kind != "genesis" or genesis.prev != GENESIS_PREV:
            raise ProtocolError("a log starts with a genesis event at seq 0", field="event")
        body = genesis.fields()
        space_key = decode_space_id(genesis.space_id, field="event.space_id")
        if verify:
            crypto.verify(space_key, genesis.signature, genesis.signed_bytes())
        owner = _username(body["owner"], "event.body.owner")
        if genesis.actor != owner:
            raise ProtocolError("genesis is made by the owner", field="event.actor")
        if body["policy"] not in ("static", "rotate"):
            raise ProtocolError("policy is 'static' or 'rotate'", field="event.body.policy")
        _key(body["signing_key"], "sig", "event.body.signing_key")
        _key(body["ecdh_key"], "dh", "event.body.ecdh_key")
        _commitment(body["key_commitment"])
        keeper = body["keeper"]
        keeper_keys = (body["keeper_signing_key"], body["keeper_ecdh_key"])
        if keeper is None:
            if keeper_keys != (None, None):
                raise ProtocolError("keeper keys without a keeper", field="event.body.keeper")
        else:
            _username(keeper, "event.body.keeper")
            if keeper == owner:
                raise ProtocolError("the keeper is not the owner", field="event.body.keeper")
            if body["manual_admit"]:
                raise ProtocolError(
                    "a space with manual admission never admits the keeper",
                    field="event.body.keeper",
                )
            _key(keeper_keys[0], "sig", "event.body.keeper_signing_key")
            _key(keeper_keys[1], "dh", "event.body.keeper_ecdh_key")
        if body["name"] is not None and not body["name"]:
            raise ProtocolError("a channel name is not empty", field="event.body.name")

        self.space_id = genesis.space_id
        self.owner: str = owner
        self.policy: Literal["static", "rotate"] = body["policy"]
        self.private: bool = body["private"]
        self.manual_admit: bool = body["manual_admit"]
        self.name: str | None = body["name"]
        self.keeper: str | None = keeper
        self.created_at_us = genesis.at_us
        self.members: dict[str, MemberState] = {}
        self.banned: set[str] = set()
        self.invitations: dict[str, Invitation] = {}
        self.links: dict[str, InviteLinkState] = {}
        self.deleted: dict[int, str] = {}  # handle -> author
        self.epoch = 0
        self.epochs: dict[int, EpochState] = {}
        self.events: list[StateEvent] = []
        self._hashes: list[bytes] = []
        self._by_hash: dict[bytes, int] = {}
        self._spans: dict[str, list[_Span]] = {}
        self._epoch_starts: list[int] = []  # seq at which epoch i began
        self._verify_keys: dict[str, crypto.PublicKey] = {}
        self._checking_keys = True  # False while replaying events checked before
        self._deferred: list[Callable[[], None]] | None = None  # see apply_unchecked
        self.checkpoint_seq = 0  # the newest checkpoint's seq (genesis counts as one)

        first = {owner}
        self._add_member(owner, "owner", body["signing_key"], body["ecdh_key"], 0)
        if keeper is not None:
            self._add_member(keeper, "editor", keeper_keys[0], keeper_keys[1], 0)
            first.add(keeper)
        self.epochs[0] = EpochState(0, 0, frozenset(first), body["key_commitment"])
        self._epoch_starts.append(0)
        self._append(genesis)

    @classmethod
    def from_events(cls, events: Iterable[StateEvent], *, verify: bool = True) -> SpaceState:
        """Verify a whole chain from its genesis; raises on the first bad event."""
        it = iter(events)
        try:
            genesis = next(it)
        except StopIteration:
            raise ProtocolError("an empty state log", field="events") from None
        state = cls(genesis, verify=verify)
        for event in it:
            state.apply(event, verify=verify)
        return state

    # ------------------------------------------------------------------ the chain

    @property
    def head_seq(self) -> int:
        return len(self._hashes) - 1

    @property
    def head(self) -> bytes:
        return self._hashes[-1]

    def hash_at(self, seq: int) -> bytes | None:
        return self._hashes[seq] if 0 <= seq < len(self._hashes) else None

    def seq_of(self, digest: bytes) -> int | None:
        return self._by_hash.get(digest)

    def _append(self, event: StateEvent) -> None:
        digest = event.hash()
        self.events.append(event)
        self._hashes.append(digest)
        self._by_hash[digest] = event.seq

    # ------------------------------------------------------------------ queries

    def role_of(self, name: str) -> MemberRole | None:
        member = self.members.get(name)
        return member.role if member else None

    def is_member_at(self, name: str, seq: int) -> bool:
        return self.signing_key_at(name, seq) is not None

    def signing_key_at(self, name: str, seq: int) -> str | None:
        """The signing key ``name`` had as a member at event ``seq`` (None if not one)."""
        for span in reversed(self._spans.get(name, ())):
            if span.start <= seq and (span.end is None or seq < span.end):
                return span.signing_key
        return None

    def verify_key_at(self, name: str, seq: int) -> crypto.PublicKey | None:
        text = self.signing_key_at(name, seq)
        if text is None:
            return None
        return self._verify_key(text)

    def _verify_key(self, text: str, field: str = "key") -> crypto.PublicKey:
        """The signing key ``text`` decoded: at its first use (a signature by it verified),
        then kept."""
        key = self._verify_keys.get(text)
        if key is None:
            key = self._verify_keys[text] = decode_public_key(text, "sig", field=field)
        return key

    def epoch_at(self, seq: int) -> int:
        """The epoch current once event ``seq`` was applied."""
        return bisect.bisect_right(self._epoch_starts, seq) - 1

    def may_hold(self, name: str, epoch: int) -> bool:
        """Whether the log entitles current member ``name`` to the key of ``epoch``: every
        member holds a static space's key; in a rotate space a member holds the epoch that
        was current when it was added and the later ones that were wrapped to it."""
        member = self.members.get(name)
        if member is None or epoch not in self.epochs:
            return False
        if self.policy == "static":
            return True
        if epoch == member.since_epoch:
            return True
        return epoch > member.since_epoch and name in self.epochs[epoch].recipients

    def epochs_for(self, name: str) -> list[int]:
        """Every epoch ``name`` may hold, oldest first."""
        return [e for e in sorted(self.epochs) if self.may_hold(name, e)]

    def may_wrap(self, wrapper: str, epoch: int) -> bool:
        """Whether ``wrapper`` may hand out the key of ``epoch``: a current member that
        holds it itself (the keeper only because genesis admitted it)."""
        return self.may_hold(wrapper, epoch)

    def keeper_admits(self) -> bool:
        """Whether the keeper hands keys to newcomers here (genesis admitted it, it is
        still a member, and admission is not by hand)."""
        return self.keeper is not None and self.keeper in self.members and not self.manual_admit

    def check_commitment(self, epoch: int, group_key: bytes) -> None:
        """:class:`IntegrityError` unless ``group_key`` is the key the log committed to."""
        known = self.epochs.get(epoch)
        if known is None or known.commitment != key_commitment(self.space_id, epoch, group_key):
            raise IntegrityError(f"the key for epoch {epoch} is not the one the log committed to")

    def rotation_recipients(self, actor: str, roster: Iterable[str] | None) -> list[str]:
        """Who a rotation by ``actor`` wraps the new key to: ``roster`` (default: every
        member), plus the actor and the keeper when it is a member. Raises
        :class:`PermissionDeniedError` naming anyone in ``roster`` who is not a member."""
        wanted = set(self.members) if roster is None else set(roster)
        unknown = wanted - set(self.members)
        if unknown:
            raise PermissionDeniedError(f"not members of this space: {sorted(unknown)}")
        wanted.add(actor)
        if self.keeper is not None and self.keeper in self.members:
            wanted.add(self.keeper)
        return sorted(wanted)

    def active_links(self) -> Iterator[InviteLinkState]:
        return iter(self.links.values())

    # ------------------------------------------------------------------ checking

    def check(self, event: StateEvent, *, verify: bool = True) -> dict[str, Any]:
        """Check that ``event`` may follow the head; return its parsed body.

        Changes nothing. ``verify=False`` skips the signature check and decoding the
        keys an event names (for events the caller already checked, as the relay does for
        what it stored itself).
        """
        body, signer = self._check(event, keys=verify)
        if verify:
            self._verify_signature(event, signer)
        return body

    def _check(self, event: StateEvent, *, keys: bool) -> tuple[dict[str, Any], str]:
        """Every check but the signature's: the body and the signer's key text."""
        if event.space_id != self.space_id:
            raise ProtocolError("event for another space", field="event.space_id")
        if event.seq != self.head_seq + 1:
            raise StaleStateError(
                f"event {event.seq} does not follow the head (event {self.head_seq}): fetch "
                "the log and try again"
            )
        if event.prev != self.head:
            raise StaleStateError(
                f"event {event.seq}'s prev is not the hash of event {self.head_seq}: it was "
                "signed on another head; fetch the log and try again"
            )
        if event.kind == "genesis":
            raise ProtocolError("a space has one genesis", field="event.kind")
        body = event.fields()
        actor = _username(event.actor, "event.actor")
        rule = getattr(self, f"_check_{event.kind}")
        self._checking_keys = keys
        try:
            signer: str = rule(actor, body, event)
        finally:
            self._checking_keys = True
        return body, signer

    def _verify_signature(self, event: StateEvent, signer: str) -> None:
        key = self._verify_key(signer, f"the signing key of {event.actor!r}")
        crypto.verify(key, event.signature, event.signed_bytes())

    def apply_unchecked(self, event: StateEvent) -> Unchecked:
        """Check every rule of ``event`` and make it the head, but put off its signature
        and the keys and link proof it names: :meth:`verify_unchecked` checks them, unless
        a later checkpoint attests the event (:class:`LogLoader`). Raises as :meth:`check`.
        """
        self._deferred = []
        try:
            body, signer = self._check(event, keys=True)
            checks = tuple(self._deferred)
        finally:
            self._deferred = None
        getattr(self, f"_apply_{event.kind}")(event, body)
        self._append(event)
        return Unchecked(event, signer, checks)

    def verify_unchecked(self, unchecked: Unchecked) -> None:
        """The checks :meth:`apply_unchecked` put off: :class:`IntegrityError` for a bad
        signature, :class:`ProtocolError` for a bad key."""
        for check in unchecked.checks:
            check()
        self._verify_signature(unchecked.event, unchecked.signer)

    def _crypto(self, check: Callable[[], None]) -> None:
        """Run a cryptographic check of the event being checked now, or put it off."""
        if self._deferred is None:
            check()
        else:
            self._deferred.append(check)

    def _check_key(self, text: str | None, kind: str, where: str) -> None:
        """Check a key an event names. A member's ``sig`` and ``dh`` keys only by their
        form (kind, base64url, length, version, suite, point prefix): their points are
        decoded where first used (a signature verified, a key wrapped to the member), by
        every reader alike (PROTOCOL.md, "Keys"); others (a link key) are decoded."""
        if kind in ("sig", "dh"):
            check_public_key(text, kind, field=where)
            return
        if not self._checking_keys:
            return
        self._crypto(lambda: _key(text, kind, where))

    def _actor_member(self, actor: str) -> MemberState:
        member = self.members.get(actor)
        if member is None:
            raise PermissionDeniedError(f"{actor!r} is not a member of this space")
        return member

    def _actor_owner(self, actor: str) -> MemberState:
        member = self._actor_member(actor)
        if member.role != "owner":
            raise PermissionDeniedError("only the space's owner may do this")
        return member

    def _target(self, body: dict[str, Any]) -> str:
        return _username(body["member"], "event.body.member")

    def _check_add(self, actor: str, body: dict[str, Any], event: StateEvent) -> str:
        member = self._target(body)
        if actor != member:
            raise PermissionDeniedError("a member adds itself (with an invitation or a link)")
        if member in self.members:
            raise PermissionDeniedError(f"{member!r} is already a member")
        if member == self.keeper or member == self.owner:
            raise PermissionDeniedError(f"{member!r} cannot join again")
        self._check_key(body["signing_key"], "sig", "event.body.signing_key")
        self._check_key(body["ecdh_key"], "dh", "event.body.ecdh_key")
        role, via = body["role"], body["via"]
        if via != "link" and (body["link_id"] is not None or body["proof"] is not None):
            raise ProtocolError("only a link add carries a link", field="event.body.link_id")
        if via == "open":
            if self.private:
                raise PermissionDeniedError(
                    "this space is private: ask a member to invite you, or use an invite link"
                )
            if member in self.banned:
                raise PermissionDeniedError(f"{member!r} was removed from this space")
            if role != "viewer":
                raise PermissionDeniedError("joining an open space makes a viewer")
        elif via == "invite":
            invitation = self.invitations.get(member)
            if invitation is None:
                raise PermissionDeniedError(f"{member!r} has no invitation to this space")
            if role != invitation.role:
                raise PermissionDeniedError(f"the invitation is for the role {invitation.role!r}")
            if invitation.signing_key is not None and (
                invitation.signing_key != body["signing_key"]
                or invitation.ecdh_key != body["ecdh_key"]
            ):
                raise PermissionDeniedError(
                    f"the invitation names other identity keys for {member!r}"
                )
        elif via == "link":
            link = self.links.get(body["link_id"] or "")
            if link is None:
                raise InviteError("unknown invite link")
            if member in self.banned:
                raise PermissionDeniedError(
                    f"{member!r} was removed from this space: an old link does not let them back"
                )
            if link.revoked:
                raise InviteError("this invite link has been revoked")
            if link.expires_at_us is not None and event.at_us >= link.expires_at_us:
                raise InviteError("this invite link has expired")
            if link.max_uses is not None and link.uses >= link.max_uses:
                raise InviteError(
                    f"this invite link has been used {link.uses} of {link.max_uses} times"
                )
            if role != link.role:
                raise PermissionDeniedError(f"the link grants the role {link.role!r}")
            proof = _b64(body["proof"], "event.body.proof")
            signed = link_proof_bytes(self.space_id, member, event.prev)
            self._crypto(
                lambda: crypto.verify(
                    decode_public_key(link.link_key, "lnk", field="link_key"), proof, signed
                )
            )
        else:
            raise ProtocolError("via is 'open', 'invite' or 'link'", field="event.body.via")
        signer: str = body["signing_key"]
        return signer

    def _check_invite(self, actor: str, body: dict[str, Any], event: StateEvent) -> str:
        inviter = self._actor_member(actor)
        member = self._target(body)
        if member in self.members:
            raise PermissionDeniedError(f"{member!r} is already a member")
        if member == self.keeper:
            raise PermissionDeniedError("the keeper genesis names joins only through genesis")
        if body["role"] not in ("editor", "viewer"):
            raise ProtocolError(
                "an invitation grants 'editor' or 'viewer'", field="event.body.role"
            )
        if body["role"] == "editor" and inviter.role != "owner":
            raise PermissionDeniedError("only the owner invites editors")
        if member in self.banned and inviter.role == "viewer":
            raise PermissionDeniedError(
                f"{member!r} was removed: only the owner or an editor can invite them back"
            )
        keys = (body["signing_key"], body["ecdh_key"])
        if keys != (None, None):
            self._check_key(keys[0], "sig", "event.body.signing_key")
            self._check_key(keys[1], "dh", "event.body.ecdh_key")
        return inviter.signing_key

    def _check_role(self, actor: str, body: dict[str, Any], event: StateEvent) -> str:
        owner = self._actor_owner(actor)
        member = self._target(body)
        if member not in self.members:
            raise PermissionDeniedError(f"{member!r} is not a member of this space")
        if member == self.owner:
            raise PermissionDeniedError("the owner's role is fixed")
        if body["role"] not in ("editor", "viewer"):
            raise ProtocolError("a role is 'editor' or 'viewer'", field="event.body.role")
        return owner.signing_key

    def _check_remove(self, actor: str, body: dict[str, Any], event: StateEvent) -> str:
        owner = self._actor_owner(actor)
        member = self._target(body)
        if member not in self.members:
            raise PermissionDeniedError(f"{member!r} is not a member of this space")
        if member == self.owner:
            raise PermissionDeniedError("the owner cannot be removed")
        return owner.signing_key

    def _check_leave(self, actor: str, body: dict[str, Any], event: StateEvent) -> str:
        member = self._actor_member(actor)
        if self._target(body) != actor:
            raise PermissionDeniedError("a member leaves only by itself")
        if actor == self.owner:
            raise PermissionDeniedError("the owner cannot leave the space")
        return member.signing_key

    def _check_epoch(self, actor: str, body: dict[str, Any], event: StateEvent) -> str:
        member = self._actor_member(actor)
        if self.policy != "rotate":
            raise PermissionDeniedError("only 'rotate' spaces change epochs")
        if member.role == "viewer" or actor == self.keeper:
            raise PermissionDeniedError("only the owner or an editor may rotate the space's key")
        if body["epoch"] != self.epoch + 1:
            raise ProtocolError(
                f"the space is at epoch {self.epoch}; rotate to {self.epoch + 1}",
                field="event.body.epoch",
            )
        recipients = body["recipients"]
        if recipients != sorted(set(recipients)):
            raise ProtocolError("recipients are sorted and unique", field="event.body.recipients")
        outsiders = set(recipients) - set(self.members)
        if outsiders:
            raise PermissionDeniedError(f"not members of this space: {sorted(outsiders)}")
        if actor not in recipients:
            raise ProtocolError("the rotating member is a recipient", field="event.body.recipients")
        if self.keeper in self.members and self.keeper not in recipients:
            raise ProtocolError(
                "the new key must also be wrapped for the keeper", field="event.body.recipients"
            )
        _commitment(body["key_commitment"])
        return member.signing_key

    def _check_link(self, actor: str, body: dict[str, Any], event: StateEvent) -> str:
        owner = self._actor_owner(actor)
        self._check_key(body["link_key"], "lnk", "event.body.link_key")
        if body["link_id"] != link_id_of_key(body["link_key"]):
            raise ProtocolError("link_id is the hash of link_key", field="event.body.link_id")
        if body["link_id"] in self.links:
            raise ProtocolError("this link already exists", field="event.body.link_id")
        if body["role"] not in ("editor", "viewer"):
            raise ProtocolError("a link grants 'editor' or 'viewer'", field="event.body.role")
        if body["max_uses"] == 0:
            raise ProtocolError("must be at least 1, or null", field="event.body.max_uses")
        expires = body["expires_at_us"]
        if expires is not None and expires <= event.at_us:
            raise ProtocolError("a link expires after it is made", field="event.body.expires_at_us")
        return owner.signing_key

    def _check_unlink(self, actor: str, body: dict[str, Any], event: StateEvent) -> str:
        owner = self._actor_owner(actor)
        link = self.links.get(body["link_id"])
        if link is None:
            raise InviteError("unknown invite link")
        if link.revoked:
            raise InviteError("this invite link is already revoked")
        return owner.signing_key

    def may_checkpoint(self, name: str) -> bool:
        """Whether ``name`` may sign a checkpoint: the owner, or the keeper genesis names
        while it is a member (both sign with the key genesis records for them)."""
        return name == self.owner or (name == self.keeper and name in self.members)

    def _check_checkpoint(self, actor: str, body: dict[str, Any], event: StateEvent) -> str:
        if not self.may_checkpoint(actor):
            raise PermissionDeniedError(
                "only the owner or the keeper genesis names may sign a checkpoint"
            )
        return self.members[actor].signing_key  # the genesis key: neither can be re-added

    def _check_delete(self, actor: str, body: dict[str, Any], event: StateEvent) -> str:
        member = self._actor_member(actor)
        author = _username(body["author"], "event.body.author")
        if actor != author and member.role != "owner":
            raise PermissionDeniedError("only the message's author or the owner may delete it")
        if body["handle"] < 1:
            raise ProtocolError("a handle is at least 1", field="event.body.handle")
        if body["handle"] in self.deleted:
            raise ProtocolError("this message is already deleted", field="event.body.handle")
        return member.signing_key

    # ------------------------------------------------------------------ applying

    def apply(self, event: StateEvent, *, verify: bool = True) -> None:
        """Check ``event`` (see :meth:`check`) and make it the new head."""
        body = self.check(event, verify=verify)
        getattr(self, f"_apply_{event.kind}")(event, body)
        self._append(event)

    def _add_member(
        self, name: str, role: MemberRole, signing_key: str, ecdh_key: str, seq: int
    ) -> None:
        self.members[name] = MemberState(name, role, signing_key, ecdh_key, seq, self.epoch)
        self._spans.setdefault(name, []).append(_Span(seq, None, signing_key))

    def _end_member(self, name: str, seq: int) -> None:
        del self.members[name]
        spans = self._spans[name]
        spans[-1] = _Span(spans[-1].start, seq, spans[-1].signing_key)

    def _apply_add(self, event: StateEvent, body: dict[str, Any]) -> None:
        member = body["member"]
        self._add_member(member, body["role"], body["signing_key"], body["ecdh_key"], event.seq)
        self.invitations.pop(member, None)  # joining by any way uses the invitation up
        if body["via"] == "link":
            link = self.links[body["link_id"]]
            self.links[link.link_id] = _replace_link(link, uses=link.uses + 1)

    def _apply_invite(self, event: StateEvent, body: dict[str, Any]) -> None:
        member = body["member"]
        self.banned.discard(member)
        self.invitations[member] = Invitation(
            member, body["role"], event.actor, event.seq, body["signing_key"], body["ecdh_key"]
        )

    def _apply_role(self, event: StateEvent, body: dict[str, Any]) -> None:
        old = self.members[body["member"]]
        self.members[old.name] = MemberState(
            old.name, body["role"], old.signing_key, old.ecdh_key, old.since_seq, old.since_epoch
        )

    def _apply_remove(self, event: StateEvent, body: dict[str, Any]) -> None:
        self._end_member(body["member"], event.seq)
        self.banned.add(body["member"])
        self.invitations.pop(body["member"], None)

    def _apply_leave(self, event: StateEvent, body: dict[str, Any]) -> None:
        self._end_member(body["member"], event.seq)

    def _apply_epoch(self, event: StateEvent, body: dict[str, Any]) -> None:
        self.epoch = body["epoch"]
        self.epochs[self.epoch] = EpochState(
            self.epoch, event.seq, frozenset(body["recipients"]), body["key_commitment"]
        )
        self._epoch_starts.append(event.seq)

    def _apply_link(self, event: StateEvent, body: dict[str, Any]) -> None:
        self.links[body["link_id"]] = InviteLinkState(
            body["link_id"], body["link_key"], body["role"], body["max_uses"],
            body["expires_at_us"], event.at_us, event.seq,
        )  # fmt: skip

    def _apply_unlink(self, event: StateEvent, body: dict[str, Any]) -> None:
        self.links[body["link_id"]] = _replace_link(self.links[body["link_id"]], revoked=True)

    def _apply_delete(self, event: StateEvent, body: dict[str, Any]) -> None:
        self.deleted[body["handle"]] = body["author"]

    def _apply_checkpoint(self, event: StateEvent, body: dict[str, Any]) -> None:
        self.checkpoint_seq = event.seq

    def __repr__(self) -> str:
        return (
            f"<SpaceState {self.space_id} seq={self.head_seq} epoch={self.epoch} "
            f"members={len(self.members)}>"
        )


MAX_UNCHECKED = 4096  # events a LogLoader holds unchecked before it checks them anyway

# What a checkpoint by the keeper stands for (PROTOCOL.md, "Checkpoints"): only the
# self-signed adds, whose forgery gives whoever holds the keeper's key nothing it lacks
# where genesis admits the keeper. Every other event under it is verified in full.
KEEPER_ATTESTS: frozenset[str] = frozenset({"add"})


class LogLoader:
    """Verifies a state log read from its genesis by a member that holds none of it (a
    newcomer, a fresh reader), trusting the last checkpoints it reads (PROTOCOL.md,
    "Checkpoints").

    :meth:`feed` applies each event with every rule of :class:`SpaceState` (hash links,
    seqs, who may sign what) but puts off its signature; :meth:`settle` then verifies
    them: the last checkpoint by the owner stands for every event before it (one verify,
    its signer attesting them through the hash chain); a later checkpoint by the keeper
    stands only for the adds between the two (:data:`KEEPER_ATTESTS`), every other event
    there being verified; every event after the last checkpoint is verified in full.
    Until it settles, :attr:`state` is not to be believed. At most ``max_unchecked``
    events wait unchecked (a relay serving an endless forged log costs bounded memory);
    at that many it settles early. With ``checkpoints`` False every event is verified in
    full. Raises what :meth:`SpaceState.apply` raises.
    """

    def __init__(
        self,
        genesis: StateEvent,
        *,
        checkpoints: bool = True,
        max_unchecked: int = MAX_UNCHECKED,
    ) -> None:
        self.state = SpaceState(genesis)
        self.checkpoints = checkpoints
        self.max_unchecked = max_unchecked
        self._unchecked: list[Unchecked] = []
        self._by_owner: int | None = None  # index in _unchecked of the owner's last checkpoint
        self._by_keeper: int | None = None  # and of the keeper's last one after it

    def feed(self, event: StateEvent) -> None:
        """Apply the next event, its signature put off."""
        unchecked = self.state.apply_unchecked(event)
        self._unchecked.append(unchecked)
        if event.kind == "checkpoint" and self.checkpoints:
            if event.actor == self.state.owner:
                self._by_owner, self._by_keeper = len(self._unchecked) - 1, None
            else:  # the keeper: the rules let no one else sign one
                self._by_keeper = len(self._unchecked) - 1
        if len(self._unchecked) >= self.max_unchecked:
            self.settle()

    def settle(self) -> SpaceState:
        """Verify what :meth:`feed` put off (see the class) and return the state."""
        pending, start = self._unchecked, 0
        if self._by_owner is not None:
            self.state.verify_unchecked(pending[self._by_owner])
            start = self._by_owner + 1
        if self._by_keeper is not None:
            for unchecked in pending[start : self._by_keeper]:
                if unchecked.event.kind not in KEEPER_ATTESTS:
                    self.state.verify_unchecked(unchecked)
            start = self._by_keeper
        for unchecked in pending[start:]:
            self.state.verify_unchecked(unchecked)
        self._unchecked, self._by_owner, self._by_keeper = [], None, None
        return self.state


def _replace_link(link: InviteLinkState, **changes: Any) -> InviteLinkState:
    from dataclasses import replace

    return replace(link, **changes)


def _key(text: str | None, kind: str, where: str) -> None:
    decode_public_key(text, kind, field=where)


def _commitment(text: str) -> None:
    if len(_b64(text, "event.body.key_commitment")) != HASH_SIZE:
        raise ProtocolError("a key commitment is 32 bytes", field="event.body.key_commitment")


def _b64(text: str | None, where: str) -> bytes:
    if text is None:
        raise ProtocolError("required", field=where)
    return b64d(text, field=where)
