"""The member's rules, without I/O: what a member believes, accepts and does in a space.

:class:`MemberCore` holds one member's view of one space: the verified state log
(:class:`~spacenb.protocol.statelog.SpaceState`), its group keys, its replay memory and its
delivery mark. Frames from the relay go in; decisions come out:

- :meth:`MemberCore.extend_log` verifies events before anything derives from them;
- :meth:`MemberCore.open_message` decides whether a stored or pushed envelope is delivered,
  rejected (with a reason), or needs the log or keys first (:class:`Need`);
- :meth:`MemberCore.accept_key` decides whether a wrapped key may be adopted;
- :meth:`MemberCore.admission` decides whether to hand keys to someone who joined;
- :class:`Delivery` decides, per pushed handle, whether to deliver it now, hold it for a
  catch-up or skip it as already delivered.

The asyncio client (:mod:`spacenb.aio.space`) and the relay's keeper drive this class; its
tests play every attack on it without a socket.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..exceptions import (
    ForkError,
    IntegrityError,
    InvalidKeyError,
    KeyUnavailableError,
    PermissionDeniedError,
    ProtocolError,
    SpacenbError,
)
from . import crypto
from .envelope import Envelope, Message, open_envelope
from .keyring import Keyring
from .keys import IdentityKeys, decode_public_key
from .sessionlog import SessionLog
from .statelog import LogLoader, MemberState, SpaceState, StateEvent
from .wrap import WrappedKey, unwrap_group_key, wrap_group_key

__all__ = [
    "Delivery",
    "MemberCore",
    "Need",
    "Opened",
    "Rejected",
    "ReplayGuard",
]


class Need(enum.Enum):
    """What a decision is waiting for: fetch it, then ask again."""

    LOG = "log"  # the envelope is bound to a state-log event this member has not seen yet
    KEYS = "keys"  # the envelope is sealed under an epoch whose key this member lacks


@dataclass(frozen=True, slots=True)
class Opened:
    """A message that verified: deliver it. ``edit`` is True for a new revision."""

    envelope: Envelope
    message: Message
    handle: int
    edit: bool = False
    duplicate: bool = False  # seen before at the same handle and revision (history, a push)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that must never reach handlers, and why (reported as ``rejected``)."""

    reason: str
    sender: str
    handle: int | None


# --------------------------------------------------------------------------- replays


MAX_MARKS = 10_000  # sender sessions remembered per space across restarts
MAX_NAMES = 4096  # distinct sender and channel names shared per space (MemberCore.shared)


class ReplayGuard:
    """Refuses a message whose sender sequence number does not increase with its handle.

    Per sender session, the order of handles and the order of sequence numbers must agree
    strictly (so a sequence number lives at one handle only); an edit keeps its handle and
    sequence number and raises its revision. ``marks`` (``"sender/sid"`` → ``(handle,
    seq)``, the newest message of each session) survive a restart through the keystore, so
    a restarted client still refuses an old message re-served at a new handle.
    """

    def __init__(self, marks: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.marks: dict[str, tuple[int, int]] = dict(marks or {})
        self._sessions: dict[str, SessionLog] = {}
        self.changed = False  # marks moved since the owner last saved them

    def knows(self, sender: str, sid: str, handle: int) -> bool:
        """Whether a message of this session was recorded at ``handle``."""
        session = self._sessions.get(f"{sender}/{sid}")
        return session is not None and handle in session

    def check(self, sender: str, message: Message, handle: int) -> str | None:
        """Record ``message`` at ``handle``; the reason to refuse it, or None.

        A message seen before at the same handle and revision returns ``"duplicate"``.
        """
        return self.check_revision(sender, message, handle)[0]

    def check_revision(self, sender: str, message: Message, handle: int) -> tuple[str | None, bool]:
        """:meth:`check`, and whether a message of this session was recorded at ``handle``
        before it (:meth:`knows`: the message is a new revision of one seen)."""
        key = f"{sender}/{message.sid}"
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = SessionLog()
        seq = message.seq
        k, i = session.find(handle)
        if session.holds(k, i, handle):
            known_seq, rev, msg_id = session.entry(k, i)
            if known_seq != seq:
                return "an edit keeps the sequence number of the message it replaces", True
            if message.rev > rev:
                session.revise(k, i, message.rev, message.id)
                return None, True
            if message.rev == rev and message.id == msg_id:
                return "duplicate", True
            return "replayed older revision of an edited message", True
        below = session.seq_before(k, i)
        if below is not None and below >= seq:
            return (
                "replayed or reordered message (its sequence number is not above the last)",
                False,
            )
        above = session.seq_after(k, i)
        if above is not None and above <= seq:
            return "replayed or reordered message (its sequence number is out of order)", False
        mark = self.marks.get(key)
        if mark is not None and (
            (handle > mark[0] and seq <= mark[1]) or (handle == mark[0] and seq != mark[1])
        ):
            return "replayed message (older than one already delivered)", False
        session.insert(k, i, handle, seq, message.rev, message.id)
        if mark is None or handle > mark[0]:
            self.marks[key] = (handle, seq)
            self.changed = True
            if len(self.marks) > MAX_MARKS:
                # Forget the session heard from longest ago: memory stays bounded, and a
                # replay of that session after a restart is then caught only in-session.
                del self.marks[min(self.marks, key=lambda name: self.marks[name][0])]
        return None, False


# --------------------------------------------------------------------------- delivery


class Delivery:
    """Delivers each stored message once, in handle order, across pushes and catch-ups.

    ``last_handle`` is the newest handle delivered; while ``behind`` (a catch-up after a
    reconnect is due) pushed messages are held back, since delivering them first would
    move the mark past the missed ones.
    """

    def __init__(self, last_handle: int = 0) -> None:
        self.last_handle = last_handle
        self.behind = False

    def on_push(self, handle: int) -> str:
        """``"deliver"``, ``"hold"`` (a catch-up will fetch it) or ``"skip"``."""
        if self.behind:
            return "hold"
        return "skip" if handle <= self.last_handle else "deliver"

    def is_new(self, handle: int) -> bool:
        return handle > self.last_handle

    def delivered(self, handle: int) -> None:
        """Move the mark (only after the message verified: a forged far-future handle
        must not make later messages look delivered)."""
        self.last_handle = max(self.last_handle, handle)

    def missed(self, page_handles: list[int]) -> tuple[list[int], bool]:
        """Of one history page (ascending), the handles not yet delivered, and whether an
        older page may hold more of them."""
        newer = [h for h in page_handles if h > self.last_handle]
        return newer, len(newer) == len(page_handles) and bool(page_handles)


# --------------------------------------------------------------------------- the member


class MemberCore:
    """One member's verified view of one space (see the module docstring).

    ``trust(username, signing_key, ecdh_key)`` is asked about every member's keys as the
    log records them: it pins them on first sight and returns None, or returns why they
    differ from a pin. Such members are ``distrusted``: their envelopes and keys are
    refused, and no key is wrapped to them.
    """

    def __init__(
        self,
        space_id: str,
        username: str,
        identity: IdentityKeys,
        *,
        keyring: Keyring | None = None,
        marks: Mapping[str, tuple[int, int]] | None = None,
        trust: Callable[[str, str, str], str | None] | None = None,
        trust_checkpoints: bool = True,
    ) -> None:
        self.space_id = space_id
        self.username = username
        self.identity = identity
        self.state: SpaceState | None = None
        self.keyring = keyring
        self.replay = ReplayGuard(marks)
        self.delivery = Delivery()
        self.distrusted: dict[str, str] = {}  # username -> why
        self._trust = trust or (lambda _name, _sig, _dh: None)
        self._sent: dict[bytes, tuple[Envelope, Message]] = {}
        self._authors: dict[int, str] = {}  # handle -> sender of the messages accepted
        self._names: dict[str, str] = {}  # see shared()
        self.trust_checkpoints = trust_checkpoints
        self._loader: LogLoader | None = None  # a read from genesis under way
        self._pins_due: list[tuple[str, str, str]] = []  # the read's members, to ask trust about

    # ------------------------------------------------------------------ the log

    def extend_log(self, events: Iterable[StateEvent], *, more: bool = False) -> list[StateEvent]:
        """Verify and apply events that follow the head (those already held are checked
        against the held hashes, so a rewritten past is a :class:`ForkError`).

        A member that holds no state yet reads the log from its genesis with a
        :class:`~spacenb.protocol.statelog.LogLoader`: ``more`` says that further pages
        of the same read follow, so the signatures a later checkpoint attests can wait;
        without it (and in :meth:`finish_log`) the read is settled and the state appears.

        Returns the events that were new (for a read from genesis: all of them, once
        settled). Raises :class:`ForkError` when the relay's log contradicts the one
        verified before, :class:`IntegrityError` (or a subclass) for an event that breaks
        the rules.
        """
        new: list[StateEvent] = []
        for event in events:
            state = self.state
            if event.space_id != self.space_id:
                raise IntegrityError("the relay served a state event of another space")
            if state is None:
                self._load(event)
                continue
            known = state.hash_at(event.seq)
            if known is not None:
                if known != event.hash():
                    raise ForkError(
                        f"the relay's state log differs from the one verified before at "
                        f"event {event.seq}: members no longer share one history"
                    )
                continue
            if event.seq != state.head_seq + 1 or event.prev != state.head:
                if event.seq == state.head_seq + 1:
                    raise ForkError(
                        f"state event {event.seq} does not follow the head this member verified"
                    )
                raise IntegrityError(f"the relay skipped state events before {event.seq}")
            try:
                state.apply(event)
            except SpacenbError as exc:
                raise _unsigned(event, exc) from None
            if event.kind == "add":
                member = state.members.get(event.actor)
                if member is not None:
                    self._check_pins([member])
            new.append(event)
        if not more:
            new.extend(self.finish_log())
        return new

    @property
    def next_log_seq(self) -> int:
        """The seq of the next event to fetch (events read but not yet settled count)."""
        if self.state is not None:
            return self.state.head_seq + 1
        return 0 if self._loader is None else self._loader.state.head_seq + 1

    def _load(self, event: StateEvent) -> None:
        """Feed an event of a read from genesis (see :meth:`extend_log`)."""
        loader = self._loader
        if loader is None:
            if event.seq != 0:
                raise IntegrityError("the relay served a state log without its genesis")
            try:
                self._loader = LogLoader(event, checkpoints=self.trust_checkpoints)
            except SpacenbError as exc:
                raise IntegrityError(f"the space's genesis does not verify: {exc}") from None
            self._pins_due = [
                (m.name, m.signing_key, m.ecdh_key) for m in self._loader.state.members.values()
            ]
            return
        head = loader.state
        if event.seq <= head.head_seq:
            if head.hash_at(event.seq) != event.hash():
                self._loader = None
                raise IntegrityError(f"the relay served two different state events at {event.seq}")
            return
        if event.seq != head.head_seq + 1:
            self._loader = None
            raise IntegrityError(f"the relay skipped state events before {event.seq}")
        if event.prev != head.head:
            self._loader = None
            raise IntegrityError(
                f"state event {event.seq} does not carry the hash of the event before it: "
                "the relay altered the log"
            )
        try:
            loader.feed(event)
        except SpacenbError as exc:
            self._loader = None
            raise _unsigned(event, exc) from None
        if event.kind == "add":
            member = loader.state.members[event.actor]  # asked about once the read verified
            self._pins_due.append((member.name, member.signing_key, member.ecdh_key))

    def finish_log(self) -> list[StateEvent]:
        """Settle a read from genesis (see :meth:`extend_log`): verify what it put off and
        make its state this member's. Returns its events ([] if none was under way)."""
        loader = self._loader
        if loader is None:
            return []
        self._loader = None
        try:
            state = loader.settle()
        except SpacenbError as exc:
            raise IntegrityError(
                f"the relay's state log does not verify (a forged event or checkpoint): {exc}"
            ) from None
        self.state = state
        pins, self._pins_due = self._pins_due, []
        for name, signing_key, ecdh_key in pins:  # genesis members, then each add in order
            self._check_pin(name, signing_key, ecdh_key)
        return list(state.events)

    def _check_pins(self, members: Iterable[MemberState]) -> None:
        for member in members:
            self._check_pin(member.name, member.signing_key, member.ecdh_key)

    def _check_pin(self, name: str, signing_key: str, ecdh_key: str) -> None:
        why = self._trust(name, signing_key, ecdh_key)
        if why is not None:
            self.distrusted[name] = why
        else:
            self.distrusted.pop(name, None)

    def recheck_trust(self) -> None:
        """Ask ``trust`` again about every member (after a pin changed)."""
        if self.state is not None:
            self.distrusted.clear()
            self._check_pins(self.state.members.values())

    def require_state(self) -> SpaceState:
        if self.state is None:
            raise ProtocolError("the space's state log has not been fetched yet")
        return self.state

    # ------------------------------------------------------------------ sending

    def sealing_epoch(self) -> int:
        """The epoch to seal under: the log's current one (its key must be held)."""
        return self.require_state().epoch

    def remember_sent(self, envelope: Envelope, message: Message) -> None:
        """Our own envelope: when it echoes back unchanged it needs no verifying."""
        self._sent[envelope.signature] = (envelope, message)
        if len(self._sent) > 10_000:
            del self._sent[next(iter(self._sent))]

    # ------------------------------------------------------------------ receiving

    def open_message(
        self,
        envelope: Envelope,
        handle: int | None,
        *,
        kind: str = "msg",
        live: bool = False,
        edit: bool = False,
        verified: str | None = None,
    ) -> Opened | Rejected | Need:
        """Decide about one envelope (a stored message, or a signal with ``handle`` None).

        Accepted only if it is of ``kind`` and for this space; the state head it is bound
        to is in this member's verified log (:attr:`Need.LOG` if the log may just be
        behind); its sender was a member at that head, with the keys the log records and
        not distrusted; it is sealed under the epoch current at that head; it verifies and
        opens; and (for stored messages) its sequence number fits (:class:`ReplayGuard`).
        A ``live`` envelope (pushed now, not read from history) also needs its sender to be
        a member at this member's head: someone removed cannot speak live, even through a
        relay that takes a message bound to an older head. An ``edit`` must come from the
        author this member saw at that handle, and nothing is recorded before every check
        has passed (so a relay cannot spend a genuine message by showing it first as
        something it is not).

        ``verified`` is the signing key (its text) under which a verification worker
        found this envelope object's signature valid: the signature is not checked again
        only if that is the key this member's log gives the sender at the envelope's
        head. Every other check runs as without it.
        """
        source = envelope.source
        if envelope.kind != kind:
            what = (
                "a signal passed off as a stored message"
                if kind == "msg"
                else ("a stored message kind sent as a signal")
            )
            return Rejected(what, source, handle)
        if envelope.target != self.space_id:
            return Rejected("addressed to another space", source, handle)
        state = self.state
        if state is None:
            return Need.LOG
        known = state.hash_at(envelope.head_seq)
        if known is None:
            return Need.LOG
        if known != envelope.head:
            return Rejected(
                f"bound to a state log this member does not share (event {envelope.head_seq}: "
                "a fork)",
                source,
                handle,
            )
        if source in self.distrusted:
            return Rejected(self.distrusted[source], source, handle)
        if live and source not in state.members:
            return Rejected("sender is no longer a member", source, handle)
        message = None
        if source == self.username:
            mine = self._sent.pop(envelope.signature, None)
            if mine is not None and mine[0] == envelope:
                message = mine[1]  # our own envelope, back unchanged: we sealed it ourselves
        if message is None:
            try:
                signer = state.verify_key_at(source, envelope.head_seq)
            except InvalidKeyError as exc:  # decoded at first use (PROTOCOL.md, "Keys")
                return Rejected(f"the log records a bad key for the sender: {exc}", source, handle)
            if signer is None:
                return Rejected("sender was not a member at the state it signed", source, handle)
            if envelope.epoch != state.epoch_at(envelope.head_seq):
                return Rejected(
                    f"sealed under epoch {envelope.epoch}, not the epoch of its state head",
                    source,
                    handle,
                )
            if self.keyring is None or not self.keyring.has(envelope.epoch):
                return Need.KEYS
            try:
                checked = verified is not None and verified == state.signing_key_at(
                    source, envelope.head_seq
                )
                message = open_envelope(
                    envelope, self.keyring.key(envelope.epoch), signer, verified=checked
                )
            except IntegrityError as exc:
                return Rejected(str(exc), source, handle)
        if handle is None:
            return Opened(envelope, message, 0)
        if state.deleted.get(handle) == source:
            return Rejected("deleted by its author or the owner", source, handle)
        seen = self._authors.get(handle)
        if seen is not None and seen != source:
            clash = "edit by someone other than the author" if edit else "another sender's handle"
            return Rejected(clash, source, handle)
        why, revision = self.replay.check_revision(source, message, handle)
        if why == "duplicate":
            return Opened(envelope, message, handle, duplicate=True)
        if why is not None:
            return Rejected(why, source, handle)
        self._authors[handle] = self.shared(source)
        return Opened(envelope, message, handle, edit=revision)

    def shared(self, name: str) -> str:
        """One string object for each sender or channel name (the first ``MAX_NAMES``):
        each parsed envelope brings its own copies, and what is kept per message (its
        author here, a history DataFrame's ``sender`` and ``channel`` cells) would otherwise
        hold two strings per message."""
        names = self._names
        got = names.get(name)
        if got is None:
            if len(names) >= MAX_NAMES:
                return name
            names[name] = got = name
        return got

    def deletion_applies(self, event: StateEvent) -> bool:
        """Whether a verified ``delete`` event hides the message at its handle: only when
        the message's author (as this member saw it) is the author the event names."""
        fields = event.fields()
        author = self._authors.get(fields["handle"])
        return author is None or author == fields["author"]

    def author_of(self, handle: int) -> str | None:
        """The sender of the message accepted at ``handle``, if any."""
        return self._authors.get(handle)

    # ------------------------------------------------------------------ keys

    def accept_key(self, wrapped: WrappedKey) -> bytes:
        """The group key in ``wrapped``, if the log allows it; raises otherwise.

        Adopted only when a signed event introduced the epoch, the wrapper may hand it
        out (a member holding it; the keeper only where genesis admitted it), this member
        may hold it, the wrapper's signature verifies against the keys the log records for
        it, and the key is the one the log committed to. Raises :class:`IntegrityError`.
        """
        state = self.require_state()
        epoch, wrapper = wrapped.epoch, wrapped.wrapper
        if wrapped.space_id != self.space_id or wrapped.recipient != self.username:
            raise IntegrityError("the wrapped key is for another space or member")
        if epoch not in state.epochs:
            raise IntegrityError(f"no signed event introduced epoch {epoch}")
        if wrapper in self.distrusted:
            raise IntegrityError(self.distrusted[wrapper])
        if not state.may_wrap(wrapper, epoch):
            raise IntegrityError(f"{wrapper!r} may not hand out the key of epoch {epoch}")
        if not state.may_hold(self.username, epoch):
            raise IntegrityError(f"the log does not give this member the key of epoch {epoch}")
        try:
            signer = state.verify_key_at(wrapper, state.head_seq)
        except InvalidKeyError as exc:
            raise IntegrityError(f"the log records a bad key for {wrapper!r}: {exc}") from None
        assert signer is not None  # may_wrap checked it is a current member
        key = unwrap_group_key(wrapped, self.identity, signer)
        state.check_commitment(epoch, key)
        return key

    # ------------------------------------------------------------------ admitting

    def admission(self, member: str, *, as_keeper: bool = False) -> list[int]:
        """The epochs to wrap for ``member`` who joined, or [] if this member should not.

        An honest member hands keys only to a current member of the log, never to itself,
        and only the epochs the log entitles the newcomer to. The keeper admits only where
        genesis admitted it; a member admits on its own only where the keeper does not
        and the space is not admitted by hand.
        """
        state = self.state
        if state is None or member == self.username or member not in state.members:
            return []
        if member in self.distrusted:
            return []
        if as_keeper:
            if state.keeper != self.username or not state.keeper_admits():
                return []
        elif state.manual_admit or state.keeper_admits():
            return []
        return [e for e in state.epochs_for(member) if state.may_wrap(self.username, e)]

    def epochs_to_wrap(self, member: str) -> list[int]:
        """The epochs the log entitles ``member`` to that this member holds and may hand out."""
        state = self.require_state()
        held = self.keyring
        return [
            e
            for e in state.epochs_for(member)
            if held is not None and held.has(e) and state.may_wrap(self.username, e)
        ]

    def wrap_for(self, member: str, epochs: Iterable[int]) -> list[WrappedKey]:
        """Wrap the keys of ``epochs`` to ``member``'s key-agreement key as the log records
        it. Raises :class:`PermissionDeniedError` if the log does not allow it."""
        state = self.require_state()
        target = state.members.get(member)
        if target is None:
            raise PermissionDeniedError(f"{member!r} is not a member of this space")
        if member in self.distrusted:
            raise IntegrityError(self.distrusted[member])
        keyring = self.keyring
        recipient = _ecdh_key_of(member, target.ecdh_key)
        out = []
        for epoch in epochs:
            if keyring is None or not keyring.has(epoch):
                raise KeyUnavailableError(f"this member holds no key for epoch {epoch}")
            if not state.may_hold(member, epoch) or not state.may_wrap(self.username, epoch):
                raise PermissionDeniedError(
                    f"the log does not let {self.username!r} hand epoch {epoch} to {member!r}"
                )
            out.append(
                wrap_group_key(
                    keyring.key(epoch),
                    space_id=self.space_id,
                    epoch=epoch,
                    recipient=member,
                    recipient_ecdh=recipient,
                    wrapper=self.username,
                    wrapper_identity=self.identity,
                )
            )
        return out

    def wrap_new_epoch(
        self, group_key: bytes, epoch: int, recipients: Iterable[str]
    ) -> list[WrappedKey]:
        """Wrap a freshly minted key to each of ``recipients`` (their keys from the log)."""
        state = self.require_state()
        recipients = list(recipients)
        outsiders = [name for name in recipients if name not in state.members]
        if outsiders:
            raise PermissionDeniedError(f"not members of this space: {sorted(outsiders)}")
        return [
            wrap_group_key(
                group_key,
                space_id=self.space_id,
                epoch=epoch,
                recipient=name,
                recipient_ecdh=_ecdh_key_of(name, state.members[name].ecdh_key),
                wrapper=self.username,
                wrapper_identity=self.identity,
            )
            for name in recipients
        ]


def _ecdh_key_of(member: str, text: str) -> crypto.PublicKey:
    """A member's key-agreement key as the log records it, decoded at its first use (the
    log checks only its form: PROTOCOL.md, "Keys"); :class:`InvalidKeyError` if its
    point is not on the curve."""
    try:
        return decode_public_key(text, "dh", field="ecdh_key")
    except InvalidKeyError as exc:
        raise InvalidKeyError(
            f"the key-agreement key the log records for {member!r} does not decode "
            f"({exc.detail}): no key can be wrapped to it",
            field="ecdh_key",
        ) from None


def _unsigned(event: StateEvent, exc: SpacenbError) -> IntegrityError:
    return IntegrityError(
        f"the relay served state event {event.seq} ({event.kind} by {event.actor!r}) that "
        f"no entitled member could sign: {exc}"
    )


def new_group_key() -> bytes:
    return crypto.random_bytes(crypto.AES_KEY_SIZE)
