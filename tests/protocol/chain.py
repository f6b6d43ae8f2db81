"""Builders for state-log and member-core tests (no sockets, no clock, no randomness
where it matters): deterministic identities, a genesis, events that follow a head, sealed
envelopes bound to a head, and wrapped keys.

A :class:`Chain` is the honest history of one space. Its builders sign with the key the
rules expect unless a test passes ``signer=`` (a forgery); ``event`` builds without
applying, ``append`` applies to the chain's own :class:`SpaceState` too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any

from spacenb.protocol import crypto
from spacenb.protocol.encoding import b64e, lp_encode
from spacenb.protocol.envelope import Envelope, EnvelopeKind, Message, seal_envelope
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair
from spacenb.protocol.member import MemberCore
from spacenb.protocol.statelog import (
    GENESIS_PREV,
    SpaceState,
    StateEvent,
    key_commitment,
    link_id_of_key,
    link_keys_from_token,
    link_proof_bytes,
    make_event,
    make_genesis,
)
from spacenb.protocol.wrap import WrappedKey, wrap_group_key

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
KEEPER = "keeper"
SID = "00000000000000aa"
OTHER_SID = "00000000000000bb"

Signer = IdentityKeys | SpaceKeyPair


@cache
def ident(name: str) -> IdentityKeys:
    """The deterministic identity of ``name`` (``ident("mallory")`` is the attacker)."""
    return IdentityKeys.from_seed(b"chain/" + name.encode())


SPACE = SpaceKeyPair.from_seed(b"chain/space")
OTHER_SPACE = SpaceKeyPair.from_seed(b"chain/other-space")


def group_key(space_id: str, epoch: int, tag: bytes = b"") -> bytes:
    """A deterministic 32-byte group key (``tag`` makes a different one)."""
    return crypto.sha256(lp_encode("test/group-key", space_id, epoch, tag))


def token_for(tag: str) -> str:
    """A deterministic invite-link token."""
    return b64e(crypto.sha256(b"test/link-token/" + tag.encode()))


def resign(event: StateEvent, signer: Signer, **changes: Any) -> StateEvent:
    """``event`` with ``changes``, signed again by ``signer``."""
    unsigned = dataclasses.replace(event, signature=b"", **changes)
    return dataclasses.replace(unsigned, signature=signer.sign(unsigned.signed_bytes()))


def raw_event(
    signer: Signer,
    *,
    space_id: str,
    seq: int,
    prev: bytes,
    kind: str,
    actor: str,
    at_us: int,
    body: bytes,
) -> StateEvent:
    """An event with exactly these body bytes (canonical or not), properly signed."""
    unsigned = StateEvent(space_id, seq, prev, kind, actor, at_us, body)
    return dataclasses.replace(unsigned, signature=signer.sign(unsigned.signed_bytes()))


def genesis_body(space_id: str = SPACE.space_id, **overrides: Any) -> dict[str, Any]:
    """A valid genesis body (owner alice, static, public, no keeper) with ``overrides``."""
    alice = ident("alice")
    body: dict[str, Any] = {
        "owner": "alice",
        "signing_key": alice.signing_key,
        "ecdh_key": alice.ecdh_key,
        "policy": "static",
        "private": False,
        "manual_admit": False,
        "name": "general",
        "keeper": None,
        "keeper_signing_key": None,
        "keeper_ecdh_key": None,
        "key_commitment": key_commitment(space_id, 0, group_key(space_id, 0)),
    }
    body.update(overrides)
    return body


def genesis_event(
    body: dict[str, Any] | None = None,
    *,
    space: SpaceKeyPair = SPACE,
    signer: Signer | None = None,
    actor: str = "alice",
    seq: int = 0,
    prev: bytes = GENESIS_PREV,
    kind: str = "genesis",
    at_us: int = T0,
) -> StateEvent:
    """A genesis event with any body (the schema is still checked by make_event)."""
    return make_event(
        signer or space,
        space_id=space.space_id,
        seq=seq,
        prev=prev,
        kind=kind,
        actor=actor,
        at_us=at_us,
        body=genesis_body(space.space_id) if body is None else body,
    )


class Chain:
    """One space's honest history, and builders for the events that may follow it."""

    def __init__(
        self,
        *,
        policy: str = "static",
        private: bool = False,
        manual_admit: bool = False,
        keeper: bool = False,
        name: str | None = "general",
        owner: str = "alice",
        space: SpaceKeyPair = SPACE,
    ) -> None:
        self.space = space
        self.space_id = space.space_id
        self.owner = owner
        self.policy = policy
        self.clock = T0
        self.keys: dict[int, bytes] = {0: group_key(self.space_id, 0)}
        keeper_keys = None
        if keeper:
            k = ident(KEEPER)
            keeper_keys = (KEEPER, k.signing_key, k.ecdh_key)
        genesis = make_genesis(
            space,
            owner=owner,
            owner_signing_key=ident(owner).signing_key,
            owner_ecdh_key=ident(owner).ecdh_key,
            policy=policy,
            private=private,
            manual_admit=manual_admit,
            name=name,
            keeper=keeper_keys,
            group_key=self.keys[0],
            at_us=self.clock,
        )
        self.state = SpaceState(genesis)
        self.events: list[StateEvent] = [genesis]

    def fork(self, upto: int | None = None) -> Chain:
        """Another history sharing this one's events up to ``upto`` (default: all): what a
        relay that keeps two logs could show two members."""
        other = object.__new__(Chain)
        other.space, other.space_id, other.owner = self.space, self.space_id, self.owner
        other.policy, other.clock, other.keys = self.policy, self.clock, dict(self.keys)
        other.events = list(self.events if upto is None else self.events[: upto + 1])
        other.state = SpaceState.from_events(other.events)
        for epoch in [e for e in other.keys if e not in other.state.epochs]:
            del other.keys[epoch]
        return other

    # ------------------------------------------------------------------ raw events

    def now(self) -> int:
        self.clock += 1_000_000
        return self.clock

    def event(
        self,
        kind: str,
        actor: str,
        body: dict[str, Any],
        *,
        signer: Signer | None = None,
        seq: int | None = None,
        prev: bytes | None = None,
        at_us: int | None = None,
        space_id: str | None = None,
    ) -> StateEvent:
        """A signed event following the head (not applied). ``signer`` defaults to the
        actor's identity."""
        return make_event(
            signer or ident(actor),
            space_id=space_id or self.space_id,
            seq=self.state.head_seq + 1 if seq is None else seq,
            prev=self.state.head if prev is None else prev,
            kind=kind,
            actor=actor,
            at_us=self.now() if at_us is None else at_us,
            body=body,
        )

    def push(self, event: StateEvent) -> StateEvent:
        self.state.apply(event)
        self.events.append(event)
        return event

    def append(self, kind: str, actor: str, body: dict[str, Any], **kw: Any) -> StateEvent:
        return self.push(self.event(kind, actor, body, **kw))

    # ------------------------------------------------------------------ bodies

    def add_body(
        self,
        member: str,
        *,
        via: str = "open",
        role: str = "viewer",
        token: str | None = None,
        identity: IdentityKeys | None = None,
        proof_member: str | None = None,
        proof_prev: bytes | None = None,
    ) -> dict[str, Any]:
        who = identity or ident(member)
        link_id = proof = None
        if token is not None:
            pair = link_keys_from_token(token)
            link_id = link_id_of_key(pair.link_key)
            proof = b64e(
                pair.sign(
                    link_proof_bytes(
                        self.space_id,
                        proof_member or member,
                        self.state.head if proof_prev is None else proof_prev,
                    )
                )
            )
        return {
            "member": member,
            "signing_key": who.signing_key,
            "ecdh_key": who.ecdh_key,
            "role": role,
            "via": via,
            "link_id": link_id,
            "proof": proof,
        }

    def add_event(
        self, member: str, *, identity: IdentityKeys | None = None, **kw: Any
    ) -> StateEvent:
        """``member``'s self-signed add (via open unless ``via``/``token`` say otherwise)."""
        if "token" in kw and "via" not in kw:
            kw["via"] = "link"
        at_us = kw.pop("at_us", None)
        signer = kw.pop("signer", None)
        body = self.add_body(member, identity=identity, **kw)
        return self.event("add", member, body, signer=signer or identity, at_us=at_us)

    def add(self, member: str, **kw: Any) -> StateEvent:
        return self.push(self.add_event(member, **kw))

    def invite_event(
        self,
        by: str,
        member: str,
        role: str = "viewer",
        *,
        pin: IdentityKeys | None = None,
        **kw: Any,
    ) -> StateEvent:
        body = {
            "member": member,
            "role": role,
            "signing_key": pin.signing_key if pin else None,
            "ecdh_key": pin.ecdh_key if pin else None,
        }
        return self.event("invite", by, body, **kw)

    def invite(self, by: str, member: str, role: str = "viewer", **kw: Any) -> StateEvent:
        return self.push(self.invite_event(by, member, role, **kw))

    def join(self, member: str, role: str = "viewer", *, by: str | None = None) -> StateEvent:
        """Invite (by the owner) and add ``member``: works in private spaces too."""
        self.invite(by or self.owner, member, role)
        return self.add(member, via="invite", role=role)

    def role_event(self, by: str, member: str, role: str, **kw: Any) -> StateEvent:
        return self.event("role", by, {"member": member, "role": role}, **kw)

    def remove_event(self, by: str, member: str, **kw: Any) -> StateEvent:
        return self.event("remove", by, {"member": member}, **kw)

    def remove(self, by: str, member: str) -> StateEvent:
        return self.push(self.remove_event(by, member))

    def leave_event(self, member: str, *, actor: str | None = None, **kw: Any) -> StateEvent:
        return self.event("leave", actor or member, {"member": member}, **kw)

    def leave(self, member: str) -> StateEvent:
        return self.push(self.leave_event(member))

    def epoch_event(
        self,
        by: str,
        recipients: Iterable[str] | None = None,
        *,
        epoch: int | None = None,
        key: bytes | None = None,
        commitment: str | None = None,
        **kw: Any,
    ) -> StateEvent:
        number = self.state.epoch + 1 if epoch is None else epoch
        new_key = key if key is not None else group_key(self.space_id, number)
        names = self.state.rotation_recipients(by, None) if recipients is None else list(recipients)
        body = {
            "epoch": number,
            "recipients": names,
            "key_commitment": commitment or key_commitment(self.space_id, number, new_key),
        }
        return self.event("epoch", by, body, **kw)

    def rotate(self, by: str | None = None, recipients: Iterable[str] | None = None) -> int:
        """An honest rotation by ``by`` (default the owner); returns the new epoch."""
        event = self.push(self.epoch_event(by or self.owner, recipients))
        epoch = self.state.epoch
        assert event.seq == self.state.epochs[epoch].seq
        self.keys[epoch] = group_key(self.space_id, epoch)
        return epoch

    def link_event(
        self,
        by: str,
        token: str,
        *,
        role: str = "viewer",
        max_uses: int | None = None,
        expires_at_us: int | None = None,
        link_id: str | None = None,
        link_key: str | None = None,
        **kw: Any,
    ) -> StateEvent:
        key = link_key or link_keys_from_token(token).link_key
        body = {
            "link_id": link_id or link_id_of_key(key),
            "link_key": key,
            "role": role,
            "max_uses": max_uses,
            "expires_at_us": expires_at_us,
        }
        return self.event("link", by, body, **kw)

    def link(self, by: str, tag: str = "link", **kw: Any) -> str:
        """A new invite link made by ``by``; returns its token."""
        token = token_for(tag)
        self.push(self.link_event(by, token, **kw))
        return token

    def unlink_event(self, by: str, token: str, **kw: Any) -> StateEvent:
        link_id = link_id_of_key(link_keys_from_token(token).link_key)
        return self.event("unlink", by, {"link_id": link_id}, **kw)

    def delete_event(
        self, by: str, handle: int, author: str | None = None, **kw: Any
    ) -> StateEvent:
        return self.event("delete", by, {"handle": handle, "author": author or by}, **kw)

    def delete(self, by: str, handle: int, author: str | None = None) -> StateEvent:
        return self.push(self.delete_event(by, handle, author))

    def checkpoint_event(self, by: str | None = None, **kw: Any) -> StateEvent:
        return self.event("checkpoint", by or self.owner, {}, **kw)

    def checkpoint(self, by: str | None = None) -> StateEvent:
        """A checkpoint at the head, signed by ``by`` (default the owner)."""
        return self.push(self.checkpoint_event(by))

    # ------------------------------------------------------------------ members

    def keyring(self, epochs: Iterable[int]) -> Keyring:
        return Keyring(self.space_id, self.policy, {e: self.keys[e] for e in epochs})  # type: ignore[arg-type]

    def core(
        self,
        name: str,
        *,
        epochs: Iterable[int] | None = None,
        upto: int | None = None,
        marks: Mapping[str, tuple[int, int]] | None = None,
        trust: Callable[[str, str, str], str | None] | None = None,
        identity: IdentityKeys | None = None,
    ) -> MemberCore:
        """``name``'s member core, having verified the log up to ``upto`` (default: all),
        holding the keys of ``epochs`` (default: those the log entitles it to)."""
        held = self.state.epochs_for(name) if epochs is None else list(epochs)
        core = MemberCore(
            self.space_id,
            name,
            identity or ident(name),
            keyring=self.keyring(held),
            marks=marks,
            trust=trust,
        )
        core.extend_log(self.events if upto is None else self.events[: upto + 1])
        return core

    def seal(
        self,
        sender: str,
        body: Any = "hi",
        *,
        seq: int = 1,
        sid: str = SID,
        rev: int = 0,
        head_seq: int | None = None,
        head: bytes | None = None,
        epoch: int | None = None,
        key: bytes | None = None,
        identity: IdentityKeys | None = None,
        kind: EnvelopeKind = "msg",
        subject: str = "general",
        target: str | None = None,
    ) -> tuple[Envelope, Message]:
        """``sender``'s envelope bound to ``head_seq`` (default the head), sealed under the
        epoch current there (or ``epoch``), signed by ``identity`` (default its own)."""
        at = self.state.head_seq if head_seq is None else head_seq
        digest = head if head is not None else self.state.hash_at(at)
        assert digest is not None
        number = self.state.epoch_at(at) if epoch is None else epoch
        return seal_envelope(
            identity or ident(sender),
            key if key is not None else self.keys[number],
            kind=kind,
            source=sender,
            target=target or self.space_id,
            subject=subject,
            epoch=number,
            content_type=None,
            body=body,
            head_seq=at,
            head=digest,
            seq=seq,
            sid=sid,
            rev=rev,
        )

    def wrap(
        self,
        epoch: int,
        recipient: str,
        wrapper: str,
        *,
        key: bytes | None = None,
        wrapper_identity: IdentityKeys | None = None,
        recipient_identity: IdentityKeys | None = None,
        space_id: str | None = None,
    ) -> WrappedKey:
        """``epoch``'s key (or ``key``) wrapped to ``recipient`` and signed as ``wrapper``."""
        to = recipient_identity or ident(recipient)
        return wrap_group_key(
            key if key is not None else self.keys[epoch],
            space_id=space_id or self.space_id,
            epoch=epoch,
            recipient=recipient,
            recipient_ecdh=to.public(recipient).ecdh_public_key(),
            wrapper=wrapper,
            wrapper_identity=wrapper_identity or ident(wrapper),
        )
