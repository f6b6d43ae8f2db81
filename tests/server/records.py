"""Spaces, their events, wrapped keys and envelopes as the storage tests build them,
without a relay (test_storage.py, test_postgres.py)."""

from __future__ import annotations

import itertools
from typing import Any

from spacenb.protocol.envelope import Envelope
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair, decode_public_key
from spacenb.protocol.statelog import SpaceState, StateEvent, make_event, make_genesis
from spacenb.protocol.wrap import WrappedKey, wrap_group_key
from spacenb.server.storage import SpaceRecord, Storage

ALICE = IdentityKeys.from_seed(b"storage tests: alice")
BOB = IdentityKeys.from_seed(b"storage tests: bob")


class Space:
    """A space as a test builds it: its key, group key, and a verified copy of its log."""

    def __init__(self, name: str | None = "c", *, private: bool = False) -> None:
        self.pair = SpaceKeyPair.generate()
        self.id = self.pair.space_id
        self.ring = Keyring.fresh(self.id, "static")
        self.genesis = make_genesis(
            self.pair, owner="alice", owner_signing_key=ALICE.signing_key,
            owner_ecdh_key=ALICE.ecdh_key, policy="static", private=private,
            manual_admit=False, name=name, keeper=None, group_key=self.ring.key(0), at_us=1,
        )  # fmt: skip
        self.state = SpaceState(self.genesis)
        self.record = SpaceRecord(self.id, name, private, 1)

    def event(self, kind: str, body: dict[str, Any], actor: str = "alice") -> StateEvent:
        """The next event, signed by ``actor`` (alice or bob), applied to the copy."""
        event = make_event(
            ALICE if actor == "alice" else BOB, space_id=self.id, seq=self.state.head_seq + 1,
            prev=self.state.head, kind=kind, actor=actor, at_us=2, body=body,
        )  # fmt: skip
        self.state.apply(event)
        return event

    def add_bob(self) -> StateEvent:
        self.event("invite", {"member": "bob", "role": "viewer", "signing_key": None,
                              "ecdh_key": None})  # fmt: skip
        return self.event(
            "add",
            {"member": "bob", "signing_key": BOB.signing_key, "ecdh_key": BOB.ecdh_key,
             "role": "viewer", "via": "invite", "link_id": None, "proof": None},
            actor="bob",
        )  # fmt: skip

    def key(self, recipient: str, epoch: int = 0, identity: IdentityKeys = BOB) -> WrappedKey:
        return wrap_group_key(
            self.ring.key(0), space_id=self.id, epoch=epoch, recipient=recipient,
            recipient_ecdh=decode_public_key(identity.ecdh_key, "dh"), wrapper="alice",
            wrapper_identity=ALICE,
        )  # fmt: skip


def created(storage: Storage, name: str | None = "c", **options: Any) -> Space:
    space = Space(name, **options)
    storage.create_space(space.record, space.genesis, [space.key("alice", identity=ALICE)])
    return space


_signatures = itertools.count()


def envelope(
    space_id: str, source: str = "alice", text: bytes = b"c", signature: bytes | None = None
) -> Envelope:
    """A stored-message envelope (not signed: storage checks nothing); each call has a
    signature of its own unless given one (a space stores a signature once)."""
    if signature is None:
        signature = next(_signatures).to_bytes(8, "big") * 8
    return Envelope(
        "msg", source, space_id, "default", 0, "", 3, b"h" * 32, b"\0" * 12, text * 16, signature
    )
