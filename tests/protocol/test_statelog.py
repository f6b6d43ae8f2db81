"""spacenb.protocol.statelog: the signed state log and the state it derives.

Every rule of :class:`SpaceState` is played on a chain built in memory (``chain.py``):
genesis checks, the hash chain, canonical bodies, who may sign each kind of event
(``SpaceState._check_<kind>``), the derived state, and bans.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spacenb.exceptions import (
    IntegrityError,
    InvalidKeyError,
    InviteError,
    PermissionDeniedError,
    ProtocolError,
    StaleStateError,
)
from spacenb.protocol import crypto
from spacenb.protocol.encoding import b64d, b64e, canonical_json, lp_encode
from spacenb.protocol.keys import decode_space_id
from spacenb.protocol.stateevent import _check_body
from spacenb.protocol.statelog import (
    GENESIS_PREV,
    KINDS,
    Invitation,
    SpaceState,
    StateEvent,
    check_username,
    key_commitment,
    link_id_of_key,
    link_keys_from_token,
    link_proof_bytes,
    make_event,
    new_link_token,
)

from .chain import (
    KEEPER,
    OTHER_SPACE,
    SPACE,
    T0,
    Chain,
    genesis_body,
    genesis_event,
    group_key,
    ident,
    raw_event,
    resign,
    token_for,
)

SPACE_ID = SPACE.space_id
ALICE, BOB, CAROL, MALLORY = ident("alice"), ident("bob"), ident("carol"), ident("mallory")


def populated() -> Chain:
    """alice owns; bob is an editor, carol a viewer (a public static space)."""
    chain = Chain()
    chain.join("bob", "editor")
    chain.add("carol")
    return chain


def rotating(**kw: Any) -> Chain:
    chain = Chain(policy="rotate", **kw)
    chain.join("bob", "editor")
    chain.join("carol")
    return chain


# =========================================================================== genesis


def test_genesis_derives_the_first_state() -> None:
    chain = Chain(private=True, name="lab")
    state, genesis = chain.state, chain.events[0]
    assert (state.space_id, state.owner, state.policy) == (SPACE_ID, "alice", "static")
    assert (state.private, state.manual_admit, state.name, state.keeper) == (
        True,
        False,
        "lab",
        None,
    )
    assert state.created_at_us == T0
    assert list(state.members) == ["alice"]
    owner = state.members["alice"]
    assert (owner.role, owner.signing_key, owner.ecdh_key) == (
        "owner",
        ALICE.signing_key,
        ALICE.ecdh_key,
    )
    assert (owner.since_seq, owner.since_epoch) == (0, 0)
    assert state.epoch == 0 and list(state.epochs) == [0]
    assert state.epochs[0].recipients == {"alice"}
    assert state.epochs[0].commitment == key_commitment(SPACE_ID, 0, chain.keys[0])
    assert state.head_seq == 0 and state.head == genesis.hash() == state.hash_at(0)
    assert state.seq_of(genesis.hash()) == 0
    assert state.events == [genesis]
    assert not state.banned and not state.invitations and not state.links and not state.deleted
    assert not state.keeper_admits()


def test_genesis_with_a_keeper_makes_it_an_editor_holding_epoch_zero() -> None:
    state = Chain(keeper=True).state
    assert state.keeper == KEEPER
    keeper = state.members[KEEPER]
    assert (keeper.role, keeper.signing_key, keeper.ecdh_key) == (
        "editor",
        ident(KEEPER).signing_key,
        ident(KEEPER).ecdh_key,
    )
    assert state.epochs[0].recipients == {"alice", KEEPER}
    assert state.keeper_admits()
    assert state.may_wrap(KEEPER, 0)


def test_genesis_body_fields_are_signed() -> None:
    event = genesis_event()
    assert event.signed_bytes() == lp_encode(
        "spacenb/v2/state/genesis", SPACE_ID, 0, GENESIS_PREV, "alice", T0, event.body
    )
    crypto.verify(decode_space_id(SPACE_ID), event.signature, event.signed_bytes())
    assert event.fields() == genesis_body()


def test_genesis_signed_by_another_space_key_is_refused() -> None:
    with pytest.raises(IntegrityError):
        SpaceState(genesis_event(signer=OTHER_SPACE))


def test_genesis_signed_by_the_owner_identity_is_refused() -> None:
    with pytest.raises(IntegrityError):
        SpaceState(genesis_event(signer=ALICE))


def test_genesis_with_a_tampered_body_is_refused() -> None:
    event = genesis_event()
    forged = dataclasses.replace(
        event, body=canonical_json(genesis_body(policy="rotate"))
    )  # same signature
    with pytest.raises(IntegrityError):
        SpaceState(forged)


def test_genesis_signature_check_can_be_skipped_for_stored_logs() -> None:
    state = SpaceState(genesis_event(signer=OTHER_SPACE), verify=False)
    assert state.owner == "alice"


def test_genesis_is_made_by_the_owner() -> None:
    with pytest.raises(ProtocolError) as info:
        SpaceState(genesis_event(actor="bob"))
    assert info.value.field == "event.actor"


@pytest.mark.parametrize(
    "overrides",
    [{"seq": 1}, {"prev": bytes([1]) * 32}, {"kind": "add"}],
    ids=["seq", "prev", "kind"],
)
def test_genesis_is_seq_zero_with_zero_prev(overrides: dict[str, Any]) -> None:
    event = genesis_event()
    event = resign(event, SPACE, **overrides)
    with pytest.raises(ProtocolError):
        SpaceState(event)


def test_genesis_with_a_keeper_is_never_manual_admit() -> None:
    k = ident(KEEPER)
    body = genesis_body(
        manual_admit=True,
        keeper=KEEPER,
        keeper_signing_key=k.signing_key,
        keeper_ecdh_key=k.ecdh_key,
    )
    with pytest.raises(ProtocolError) as info:
        SpaceState(genesis_event(body))
    assert info.value.field == "event.body.keeper"


def test_manual_admit_without_a_keeper_is_fine() -> None:
    state = Chain(manual_admit=True).state
    assert state.manual_admit and state.keeper is None and not state.keeper_admits()


@pytest.mark.parametrize(
    "keys",
    [("sig", None), (None, "dh"), ("sig", "dh")],
    ids=["signing-only", "ecdh-only", "both"],
)
def test_genesis_keeper_keys_without_a_keeper_are_refused(keys: tuple[Any, Any]) -> None:
    k = ident(KEEPER)
    body = genesis_body(
        keeper_signing_key=k.signing_key if keys[0] else None,
        keeper_ecdh_key=k.ecdh_key if keys[1] else None,
    )
    with pytest.raises(ProtocolError) as info:
        SpaceState(genesis_event(body))
    assert info.value.field == "event.body.keeper"


def test_genesis_keeper_is_not_the_owner() -> None:
    body = genesis_body(
        keeper="alice", keeper_signing_key=ALICE.signing_key, keeper_ecdh_key=ALICE.ecdh_key
    )
    with pytest.raises(ProtocolError) as info:
        SpaceState(genesis_event(body))
    assert info.value.field == "event.body.keeper"


def test_genesis_keeper_without_keys_is_refused() -> None:
    with pytest.raises(InvalidKeyError):
        SpaceState(genesis_event(genesis_body(keeper=KEEPER)))


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("signing_key", ALICE.ecdh_key, "event.body.signing_key"),
        ("ecdh_key", ALICE.signing_key, "event.body.ecdh_key"),
        ("signing_key", "sig.AAAA", "event.body.signing_key"),
        ("ecdh_key", "not-a-key", "event.body.ecdh_key"),
        ("signing_key", SPACE_ID, "event.body.signing_key"),
    ],
)
def test_genesis_owner_keys_must_be_valid_keys_of_their_kind(
    name: str, value: str, field: str
) -> None:
    with pytest.raises(InvalidKeyError) as info:
        SpaceState(genesis_event(genesis_body(**{name: value})))
    assert info.value.field == field


@pytest.mark.parametrize("swap", ["signing", "ecdh"])
def test_genesis_keeper_keys_must_be_valid_keys_of_their_kind(swap: str) -> None:
    k = ident(KEEPER)
    body = genesis_body(
        keeper=KEEPER,
        keeper_signing_key=k.ecdh_key if swap == "signing" else k.signing_key,
        keeper_ecdh_key=k.signing_key if swap == "ecdh" else k.ecdh_key,
    )
    with pytest.raises(InvalidKeyError):
        SpaceState(genesis_event(body))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"policy": "forever"}, "event.body.policy"),
        ({"name": ""}, "event.body.name"),
        ({"owner": "Alice"}, "event.body.owner"),
        ({"keeper": "Keeper!"}, "event.body.keeper"),
        ({"key_commitment": b64e(bytes(31))}, "event.body.key_commitment"),
        ({"key_commitment": "not base64!"}, "event.body.key_commitment"),
    ],
)
def test_genesis_field_rules(overrides: dict[str, Any], field: str) -> None:
    if "keeper" in overrides:
        k = ident(KEEPER)
        overrides |= {"keeper_signing_key": k.signing_key, "keeper_ecdh_key": k.ecdh_key}
    actor = overrides.get("owner", "alice")
    with pytest.raises(ProtocolError) as info:
        SpaceState(genesis_event(genesis_body(**overrides), actor=actor))
    assert info.value.field == field


def test_genesis_space_id_must_be_a_space_key() -> None:
    event = genesis_event()
    with pytest.raises(InvalidKeyError):
        SpaceState(dataclasses.replace(event, space_id=ALICE.signing_key))


def test_genesis_without_a_name() -> None:
    assert Chain(name=None).state.name is None


def test_from_events_replays_a_chain() -> None:
    chain = populated()
    chain.link("alice", max_uses=2)
    chain.delete("carol", 3)
    replayed = SpaceState.from_events(chain.events)
    assert replayed.head == chain.state.head and replayed.head_seq == chain.state.head_seq
    assert replayed.members == chain.state.members
    assert replayed.links == chain.state.links and replayed.deleted == {3: "carol"}


def test_from_events_of_nothing_is_refused() -> None:
    with pytest.raises(ProtocolError):
        SpaceState.from_events([])


def test_from_events_stops_at_the_first_bad_event() -> None:
    chain = populated()
    forged = resign(chain.events[2], MALLORY)
    with pytest.raises(IntegrityError):
        SpaceState.from_events([*chain.events[:2], forged, *chain.events[3:]])


# =========================================================================== the hash chain


def test_hash_and_signed_bytes_definitions() -> None:
    chain = Chain()
    event = chain.add("bob")
    assert event.signed_bytes() == lp_encode(
        "spacenb/v2/state/add",
        SPACE_ID,
        1,
        chain.events[0].hash(),
        "bob",
        event.at_us,
        event.body,
    )
    assert event.hash() == crypto.sha256(
        lp_encode("spacenb/v2/state-hash", event.signed_bytes(), event.signature)
    )
    assert event.prev == chain.events[0].hash()
    assert chain.state.head == event.hash() and chain.state.head_seq == 1
    assert chain.state.hash_at(1) == event.hash() and chain.state.seq_of(event.hash()) == 1
    assert chain.state.hash_at(2) is None and chain.state.hash_at(-1) is None
    assert chain.state.seq_of(bytes(32)) is None


@pytest.mark.parametrize(
    "change",
    [
        {"at_us": T0 + 1},
        {"actor": "carol"},
        {"body": b'{"x":1}'},
        {"seq": 7},
        {"prev": bytes(32)},
        {"kind": "leave"},
        {"space_id": OTHER_SPACE.space_id},
        {"signature": bytes(64)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_rewritten_event_has_another_hash(change: dict[str, Any]) -> None:
    event = Chain().add_event("bob")
    assert dataclasses.replace(event, **change).hash() != event.hash()


def test_a_rewritten_event_breaks_the_chain_after_it() -> None:
    """Even re-signed by its rightful actor, a changed event cannot keep its successors."""
    chain = populated()
    chain.leave("carol")
    rewritten = resign(chain.events[3], CAROL, at_us=chain.events[3].at_us + 1)
    assert rewritten.hash() != chain.events[3].hash()
    state = SpaceState.from_events(chain.events[:3])
    state.apply(rewritten)
    with pytest.raises(StaleStateError):
        state.apply(chain.events[4])


@pytest.mark.parametrize("seq_delta", [1, -1, -3])
def test_an_event_that_does_not_follow_the_head_is_stale(seq_delta: int) -> None:
    chain = populated()
    event = chain.event(
        "leave", "carol", {"member": "carol"}, seq=chain.state.head_seq + 1 + seq_delta
    )
    with pytest.raises(StaleStateError):
        chain.state.check(event)


def test_an_event_with_another_prev_is_stale() -> None:
    chain = populated()
    event = chain.event("leave", "carol", {"member": "carol"}, prev=chain.events[1].hash())
    with pytest.raises(StaleStateError):
        chain.state.check(event)


def test_an_old_event_replayed_is_stale() -> None:
    chain = populated()
    with pytest.raises(StaleStateError):
        chain.state.apply(chain.events[1])


def test_check_changes_nothing() -> None:
    chain = populated()
    before = (chain.state.head, dict(chain.state.members), chain.state.banned.copy())
    body = chain.state.check(chain.remove_event("alice", "carol"))
    assert body == {"member": "carol"}
    assert (chain.state.head, chain.state.members, chain.state.banned) == before


def test_a_second_genesis_is_refused() -> None:
    chain = Chain()
    event = genesis_event(seq=1, prev=chain.state.head)
    with pytest.raises(ProtocolError) as info:
        chain.state.check(event)
    assert info.value.field == "event.kind"


def test_an_event_of_another_space_is_refused() -> None:
    chain = Chain()
    event = chain.add_event("bob")
    event = resign(event, BOB, space_id=OTHER_SPACE.space_id)
    with pytest.raises(ProtocolError) as info:
        chain.state.check(event)
    assert info.value.field == "event.space_id"


def test_a_bad_signature_is_refused() -> None:
    chain = Chain()
    event = chain.add_event("bob")
    with pytest.raises(IntegrityError):
        chain.state.check(dataclasses.replace(event, signature=bytes(64)))
    with pytest.raises(IntegrityError):
        chain.state.check(dataclasses.replace(event, signature=event.signature[:-1]))


def test_a_high_s_twin_signature_is_refused() -> None:
    """ECDSA's (r, n - s) twin would give the same event a second hash: refused."""
    chain = Chain()
    event = chain.add_event("bob")
    r, s = event.signature[:32], int.from_bytes(event.signature[32:], "big")
    twin = r + (crypto.P256_ORDER - s).to_bytes(32, "big")
    with pytest.raises(IntegrityError):
        chain.state.check(dataclasses.replace(event, signature=twin))


def test_verify_false_skips_only_the_signature() -> None:
    chain = Chain()
    event = dataclasses.replace(chain.add_event("bob"), signature=b"")
    chain.state.apply(event, verify=False)
    assert "bob" in chain.state.members
    with pytest.raises(PermissionDeniedError):
        chain.state.check(resign(chain.add_event("carol"), CAROL, actor="dave"), verify=False)


@pytest.mark.parametrize("actor", ["Bob", "", "b" * 33, "-bob"])
def test_the_actor_is_a_username(actor: str) -> None:
    chain = populated()
    event = raw_event(
        CAROL,
        space_id=SPACE_ID,
        seq=chain.state.head_seq + 1,
        prev=chain.state.head,
        kind="leave",
        actor=actor,
        at_us=T0,
        body=canonical_json({"member": "carol"}),
    )
    with pytest.raises(ProtocolError) as info:
        chain.state.check(event)
    assert info.value.field == "event.actor"


# =========================================================================== canonical bodies


def raw(chain: Chain, kind: str, actor: str, body: bytes, signer: Any = None) -> StateEvent:
    return raw_event(
        signer or ident(actor),
        space_id=chain.space_id,
        seq=chain.state.head_seq + 1,
        prev=chain.state.head,
        kind=kind,
        actor=actor,
        at_us=chain.now(),
        body=body,
    )


def test_a_canonical_body_is_accepted_byte_for_byte() -> None:
    chain = populated()
    body = b'{"member":"carol"}'
    assert canonical_json({"member": "carol"}) == body
    chain.push(raw(chain, "leave", "carol", body))
    assert "carol" not in chain.state.members


@pytest.mark.parametrize(
    "body",
    [
        b'{"member": "carol"}',
        b' {"member":"carol"}',
        b'{"member":"carol"}\n',
        b'{"member":"\\u0063arol"}',
        b'{"member":"carol","member":"carol"}',
        b'{"member":"bob","member":"carol"}',
    ],
    ids=["space", "leading-space", "newline", "escape", "duplicate-key", "duplicate-override"],
)
def test_a_non_canonical_body_is_refused(body: bytes) -> None:
    chain = populated()
    assert json.loads(body) == {"member": "carol"}
    with pytest.raises(ProtocolError) as info:
        chain.state.check(raw(chain, "leave", "carol", body))
    assert info.value.field == "event.body"
    assert "canonical" in str(info.value)


def test_unsorted_keys_are_not_canonical() -> None:
    chain = populated()
    body = b'{"role":"viewer","member":"carol"}'
    with pytest.raises(ProtocolError, match="canonical"):
        chain.state.check(raw(chain, "role", "alice", body))


def test_non_ascii_text_is_utf8_not_escaped() -> None:
    chain = Chain(name="café")
    assert "café".encode() in chain.events[0].body
    escaped = chain.events[0].body.replace("café".encode(), b"caf\\u00e9")
    with pytest.raises(ProtocolError, match="canonical"):
        SpaceState(resign(chain.events[0], SPACE, body=escaped))


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe", b"not json", b"", b"[" * 100_000],
    ids=["not-utf8", "not-json", "empty", "deep"],
)
def test_a_body_that_is_not_json_is_refused(body: bytes) -> None:
    chain = populated()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(raw(chain, "leave", "carol", body))
    assert info.value.field == "event.body"


LONE_SURROGATE_BODIES = [
    ("leave", b'{"member":"\\ud800"}'),
    ("epoch", b'{"epoch":1,"key_commitment":"x","recipients":["alice","\\ud800"]}'),
]


@pytest.mark.parametrize(("kind", "body"), LONE_SURROGATE_BODIES, ids=["text", "list-item"])
def test_a_lone_surrogate_escape_is_a_protocol_error(kind: str, body: bytes) -> None:
    """JSON can spell a lone UTF-16 surrogate ("\\ud800") that no UTF-8 text can hold: the
    body has no canonical form, so it is a ProtocolError like every other malformed body,
    not a UnicodeEncodeError escaping the checks (in a text field or in a list item)."""
    chain = Chain(policy="rotate")
    chain.add("carol")
    with pytest.raises(ProtocolError) as info:
        chain.state.check(raw(chain, kind, "carol" if kind == "leave" else "alice", body))
    assert info.value.field is not None and info.value.field.startswith("event.body")


BAD_LINK_BODY = {
    "link_id": "a", "link_key": "b", "role": "viewer", "max_uses": True, "expires_at_us": None,
}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("leave", {}),
        ("leave", {"member": "carol", "extra": 1}),
        ("leave", {"who": "carol"}),
        ("leave", ["carol"]),
        ("leave", "carol"),
        ("leave", {"member": None}),
        ("leave", {"member": 7}),
        ("leave", {"member": "c" * 4097}),
        ("delete", {"handle": "1", "author": "carol"}),
        ("delete", {"handle": True, "author": "carol"}),
        ("delete", {"handle": 1.0, "author": "carol"}),
        ("delete", {"handle": -1, "author": "carol"}),
        ("delete", {"handle": 2**53, "author": "carol"}),
        ("epoch", {"epoch": 1, "recipients": "alice", "key_commitment": "x"}),
        ("epoch", {"epoch": 1, "recipients": ["alice", 1], "key_commitment": "x"}),
        ("invite", {"member": "dave", "role": "viewer", "signing_key": 1, "ecdh_key": None}),
        ("link", BAD_LINK_BODY),
    ],
)
def test_bodies_follow_their_kinds_schema(kind: str, body: Any) -> None:
    chain = populated()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(raw(chain, kind, "carol", canonical_json(body)))
    assert info.value.field is not None and info.value.field.startswith("event.body")
    with pytest.raises(ProtocolError):
        make_event(
            CAROL,
            space_id=SPACE_ID,
            seq=chain.state.head_seq + 1,
            prev=chain.state.head,
            kind=kind,
            actor="carol",
            at_us=T0,
            body=body,
        )


def test_an_unknown_kind_is_refused() -> None:
    chain = populated()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(raw(chain, "promote", "carol", b"{}"))
    assert info.value.field == "event.kind"
    with pytest.raises(ProtocolError):
        make_event(
            CAROL, space_id=SPACE_ID, seq=1, prev=GENESIS_PREV, kind="promote", actor="carol",
            at_us=T0, body={},
        )  # fmt: skip


def test_make_event_writes_the_canonical_body() -> None:
    event = Chain().add_event("bob")
    assert event.body == canonical_json(json.loads(event.body))
    assert event.fields()["member"] == "bob"
    assert set(KINDS) == {
        "genesis", "add", "invite", "role", "remove", "leave", "epoch", "link", "unlink",
        "delete", "checkpoint",
    }  # fmt: skip


# =========================================================================== add


def test_open_add_makes_a_viewer() -> None:
    chain = Chain()
    event = chain.add("bob")
    bob = chain.state.members["bob"]
    assert (bob.role, bob.signing_key, bob.ecdh_key, bob.since_seq, bob.since_epoch) == (
        "viewer",
        BOB.signing_key,
        BOB.ecdh_key,
        event.seq,
        0,
    )


def test_open_add_as_an_editor_is_refused() -> None:
    chain = Chain()
    with pytest.raises(PermissionDeniedError, match="viewer"):
        chain.state.check(chain.add_event("bob", role="editor"))


def test_open_add_to_a_private_space_is_refused() -> None:
    chain = Chain(private=True)
    with pytest.raises(PermissionDeniedError, match="private"):
        chain.state.check(chain.add_event("bob"))


def test_an_add_is_made_by_the_member_itself() -> None:
    chain = Chain()
    body = chain.add_body("bob")
    with pytest.raises(PermissionDeniedError, match="adds itself"):
        chain.state.check(chain.event("add", "alice", body, signer=BOB))
    with pytest.raises(PermissionDeniedError, match="adds itself"):
        chain.state.check(chain.event("add", "carol", body))


def test_an_add_is_signed_with_the_keys_in_its_body() -> None:
    chain = Chain()
    with pytest.raises(IntegrityError):
        chain.state.check(chain.add_event("bob", signer=MALLORY))
    # mallory's keys in the body, signed by mallory: that is an add of "bob" with new keys
    event = chain.add_event("bob", identity=MALLORY)
    chain.push(event)
    assert chain.state.members["bob"].signing_key == MALLORY.signing_key


def test_an_add_for_a_current_member_is_refused() -> None:
    chain = Chain()
    chain.add("bob")
    with pytest.raises(PermissionDeniedError, match="already a member"):
        chain.state.check(chain.add_event("bob"))


def test_the_owner_cannot_add_itself_again() -> None:
    chain = Chain()
    with pytest.raises(PermissionDeniedError, match="already a member"):
        chain.state.check(chain.add_event("alice"))


def test_the_keeper_never_joins_by_add() -> None:
    chain = Chain(keeper=True)
    with pytest.raises(PermissionDeniedError, match="already a member"):
        chain.state.check(chain.add_event(KEEPER))
    chain.leave(KEEPER)
    with pytest.raises(PermissionDeniedError, match="cannot join again"):
        chain.state.check(chain.add_event(KEEPER))


def test_a_username_other_than_the_keeper_may_join_a_space_without_one() -> None:
    """With no keeper in genesis, the name "keeper" is just a name."""
    chain = Chain()
    chain.add(KEEPER)
    assert chain.state.members[KEEPER].role == "viewer" and chain.state.keeper is None
    assert not chain.state.keeper_admits()


@pytest.mark.parametrize(
    ("field", "value"),
    [("signing_key", BOB.ecdh_key), ("ecdh_key", BOB.signing_key), ("ecdh_key", "dh.AAAA")],
)
def test_an_add_needs_valid_keys(field: str, value: str) -> None:
    chain = Chain()
    body = chain.add_body("bob") | {field: value}
    with pytest.raises(InvalidKeyError) as info:
        chain.state.check(chain.event("add", "bob", body))
    assert info.value.field == f"event.body.{field}"


def test_an_add_names_a_valid_member() -> None:
    chain = Chain()
    body = chain.add_body("bob") | {"member": "Bob"}
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.event("add", "Bob", body, signer=BOB))
    assert info.value.field in ("event.body.member", "event.actor")


def test_an_add_via_something_else_is_refused() -> None:
    chain = Chain()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.add_event("bob", via="magic"))
    assert info.value.field == "event.body.via"


@pytest.mark.parametrize("via", ["open", "invite"])
def test_only_a_link_add_carries_a_link(via: str) -> None:
    chain = Chain()
    token = chain.link("alice")
    chain.invite("alice", "bob")
    body = chain.add_body("bob", token=token) | {"via": via}
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.event("add", "bob", body))
    assert info.value.field == "event.body.link_id"


# ------------------------------------------------------------------ via invite


def test_an_invited_member_adds_itself_with_the_invited_role() -> None:
    chain = Chain(private=True)
    invite = chain.invite("alice", "bob", "editor")
    assert chain.state.invitations["bob"] == Invitation(
        "bob", "editor", "alice", invite.seq, None, None
    )
    chain.add("bob", via="invite", role="editor")
    assert chain.state.role_of("bob") == "editor"
    assert "bob" not in chain.state.invitations  # used up


def test_an_add_via_invite_without_an_invitation_is_refused() -> None:
    chain = Chain(private=True)
    chain.invite("alice", "carol")
    with pytest.raises(PermissionDeniedError, match="no invitation"):
        chain.state.check(chain.add_event("bob", via="invite"))


def test_an_add_via_invite_takes_the_invited_role() -> None:
    chain = Chain(private=True)
    chain.invite("alice", "bob", "viewer")
    with pytest.raises(PermissionDeniedError, match="role 'viewer'"):
        chain.state.check(chain.add_event("bob", via="invite", role="editor"))


def test_an_invitation_naming_keys_admits_only_those_keys() -> None:
    chain = Chain(private=True)
    chain.invite("alice", "bob", pin=BOB)
    assert chain.state.invitations["bob"].signing_key == BOB.signing_key
    with pytest.raises(PermissionDeniedError, match="other identity keys"):
        chain.state.check(chain.add_event("bob", via="invite", identity=MALLORY))
    chain.add("bob", via="invite")
    assert chain.state.members["bob"].signing_key == BOB.signing_key


def test_an_invitation_naming_keys_refuses_half_a_substitution() -> None:
    chain = Chain(private=True)
    chain.invite("alice", "bob", pin=BOB)
    body = chain.add_body("bob", via="invite") | {"ecdh_key": MALLORY.ecdh_key}
    with pytest.raises(PermissionDeniedError, match="other identity keys"):
        chain.state.check(chain.event("add", "bob", body))


def test_an_invitation_without_keys_admits_any_keys() -> None:
    chain = Chain(private=True)
    chain.invite("alice", "bob")
    chain.add("bob", via="invite", identity=MALLORY)
    assert chain.state.members["bob"].signing_key == MALLORY.signing_key


# ------------------------------------------------------------------ via link


def test_a_link_add_counts_a_use() -> None:
    chain = Chain(private=True)
    token = chain.link("alice", role="editor", max_uses=2)
    link_id = link_id_of_key(link_keys_from_token(token).link_key)
    assert chain.state.links[link_id].uses == 0
    chain.add("bob", token=token, role="editor")
    assert chain.state.links[link_id].uses == 1
    assert chain.state.role_of("bob") == "editor"


def test_an_unknown_link_is_refused() -> None:
    chain = Chain(private=True)
    with pytest.raises(InviteError, match="unknown"):
        chain.state.check(chain.add_event("bob", token=token_for("never made")))


def test_a_link_add_without_a_link_id_is_refused() -> None:
    chain = Chain(private=True)
    chain.link("alice")
    body = chain.add_body("bob", via="link")
    with pytest.raises(InviteError, match="unknown"):
        chain.state.check(chain.event("add", "bob", body))


def test_a_link_add_without_a_proof_is_refused() -> None:
    chain = Chain(private=True)
    token = chain.link("alice")
    body = chain.add_body("bob", token=token, via="link") | {"proof": None}
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.event("add", "bob", body))
    assert info.value.field == "event.body.proof"


def test_a_revoked_link_is_refused() -> None:
    chain = Chain(private=True)
    token = chain.link("alice")
    chain.push(chain.unlink_event("alice", token))
    with pytest.raises(InviteError, match="revoked"):
        chain.state.check(chain.add_event("bob", token=token))


def test_an_expired_link_is_refused() -> None:
    chain = Chain(private=True)
    expires = chain.clock + 10_000_000
    token = chain.link("alice", expires_at_us=expires)
    chain.state.check(chain.add_event("bob", token=token, at_us=expires - 1))
    with pytest.raises(InviteError, match="expired"):
        chain.state.check(chain.add_event("bob", token=token, at_us=expires))


def test_a_used_up_link_is_refused() -> None:
    chain = Chain(private=True)
    token = chain.link("alice", max_uses=2)
    chain.add("bob", token=token)
    chain.add("carol", token=token)
    with pytest.raises(InviteError, match="2 of 2"):
        chain.state.check(chain.add_event("dave", token=token))


def test_a_link_without_a_use_limit_is_never_used_up() -> None:
    chain = Chain(private=True)
    token = chain.link("alice")
    for name in ("bob", "carol", "dave", "erin"):
        chain.add(name, token=token)
    assert next(chain.state.active_links()).uses == 4


def test_a_link_add_takes_the_links_role() -> None:
    chain = Chain(private=True)
    token = chain.link("alice", role="viewer")
    with pytest.raises(PermissionDeniedError, match="role 'viewer'"):
        chain.state.check(chain.add_event("bob", token=token, role="editor"))


def test_a_link_proof_from_another_token_is_refused() -> None:
    chain = Chain(private=True)
    token = chain.link("alice")
    body = chain.add_body("bob", via="link", token=token_for("other"))
    body["link_id"] = link_id_of_key(link_keys_from_token(token).link_key)
    with pytest.raises(IntegrityError):
        chain.state.check(chain.event("add", "bob", body))


def test_a_link_proof_is_bound_to_its_member() -> None:
    """A proof carol's client made cannot admit mallory."""
    chain = Chain(private=True)
    token = chain.link("alice")
    with pytest.raises(IntegrityError):
        chain.state.check(chain.add_event("mallory", token=token, proof_member="carol"))


def test_a_link_proof_is_bound_to_its_place_in_the_log() -> None:
    """A proof made at an older head cannot be replayed later."""
    chain = Chain(private=True)
    token = chain.link("alice")
    old_head = chain.state.head
    chain.add("bob", token=token)
    chain.leave("bob")
    with pytest.raises(IntegrityError):
        chain.state.check(chain.add_event("bob", token=token, proof_prev=old_head))
    chain.add("bob", token=token)  # a fresh proof is fine (bob left, he was not removed)


def test_link_proof_bytes() -> None:
    assert link_proof_bytes(SPACE_ID, "bob", bytes(32)) == lp_encode(
        "spacenb/v2/link-proof", SPACE_ID, "bob", bytes(32)
    )


# =========================================================================== invite


def test_a_non_member_cannot_invite() -> None:
    chain = Chain(private=True)
    with pytest.raises(PermissionDeniedError, match="not a member"):
        chain.state.check(chain.invite_event("mallory", "mallory"))


def test_a_member_cannot_be_invited() -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError, match="already a member"):
        chain.state.check(chain.invite_event("alice", "carol"))


def test_the_keeper_cannot_be_invited() -> None:
    chain = Chain(keeper=True)
    chain.leave(KEEPER)
    with pytest.raises(PermissionDeniedError, match="keeper"):
        chain.state.check(chain.invite_event("alice", KEEPER))


@pytest.mark.parametrize("role", ["owner", "admin", ""])
def test_an_invitation_grants_editor_or_viewer(role: str) -> None:
    chain = Chain()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.invite_event("alice", "bob", role))
    assert info.value.field == "event.body.role"


def test_only_the_owner_invites_editors() -> None:
    chain = populated()
    for inviter in ("bob", "carol"):
        with pytest.raises(PermissionDeniedError, match="only the owner"):
            chain.state.check(chain.invite_event(inviter, "dave", "editor"))
    chain.state.check(chain.invite_event("alice", "dave", "editor"))


@pytest.mark.parametrize("inviter", ["alice", "bob", "carol"])
def test_any_member_invites_viewers(inviter: str) -> None:
    chain = populated()
    chain.invite(inviter, "dave")
    assert chain.state.invitations["dave"].by == inviter


def test_an_invitation_is_signed_by_the_inviter() -> None:
    chain = populated()
    with pytest.raises(IntegrityError):
        chain.state.check(chain.invite_event("alice", "dave", "editor", signer=CAROL))


def test_pinned_invitation_keys_must_be_valid() -> None:
    chain = Chain()
    body = {"member": "bob", "role": "viewer", "signing_key": BOB.signing_key, "ecdh_key": None}
    with pytest.raises(InvalidKeyError):
        chain.state.check(chain.event("invite", "alice", body))
    body |= {"ecdh_key": BOB.signing_key}
    with pytest.raises(InvalidKeyError):
        chain.state.check(chain.event("invite", "alice", body))


def test_a_new_invitation_replaces_the_old_one() -> None:
    chain = Chain()
    chain.invite("alice", "bob")
    chain.invite("alice", "bob", "editor", pin=BOB)
    assert chain.state.invitations["bob"].role == "editor"
    assert chain.state.invitations["bob"].ecdh_key == BOB.ecdh_key


# =========================================================================== role


def test_the_owner_sets_roles() -> None:
    chain = populated()
    chain.push(chain.role_event("alice", "carol", "editor"))
    chain.push(chain.role_event("alice", "bob", "viewer"))
    assert chain.state.role_of("carol") == "editor" and chain.state.role_of("bob") == "viewer"
    carol = chain.state.members["carol"]
    assert carol.signing_key == CAROL.signing_key and carol.since_seq == 3


@pytest.mark.parametrize("actor", ["bob", "carol", "mallory"])
def test_only_the_owner_sets_roles(actor: str) -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError):
        chain.state.check(chain.role_event(actor, "carol", "editor"))


def test_a_role_is_for_a_member() -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError, match="not a member"):
        chain.state.check(chain.role_event("alice", "dave", "editor"))


def test_the_owners_role_is_fixed() -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError, match="fixed"):
        chain.state.check(chain.role_event("alice", "alice", "viewer"))


@pytest.mark.parametrize("role", ["owner", "keeper"])
def test_a_role_is_editor_or_viewer(role: str) -> None:
    chain = populated()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.role_event("alice", "bob", role))
    assert info.value.field == "event.body.role"


def test_a_role_event_forged_by_the_relay_is_refused() -> None:
    chain = populated()
    with pytest.raises(IntegrityError):
        chain.state.check(chain.role_event("alice", "carol", "editor", signer=MALLORY))


# =========================================================================== remove


def test_the_owner_removes_and_bans() -> None:
    chain = populated()
    event = chain.remove("alice", "carol")
    assert "carol" not in chain.state.members and chain.state.banned == {"carol"}
    assert not chain.state.is_member_at("carol", event.seq)
    assert chain.state.is_member_at("carol", event.seq - 1)


@pytest.mark.parametrize("actor", ["bob", "carol", "mallory"])
def test_only_the_owner_removes(actor: str) -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError):
        chain.state.check(chain.remove_event(actor, "carol"))


def test_remove_is_for_a_member() -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError, match="not a member"):
        chain.state.check(chain.remove_event("alice", "dave"))


def test_the_owner_cannot_be_removed() -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError, match="owner"):
        chain.state.check(chain.remove_event("alice", "alice"))


def test_remove_forged_by_the_relay_is_refused() -> None:
    chain = populated()
    with pytest.raises(IntegrityError):
        chain.state.check(chain.remove_event("alice", "bob", signer=MALLORY))


def test_the_owner_may_remove_the_keeper() -> None:
    chain = Chain(keeper=True)
    chain.remove("alice", KEEPER)
    assert KEEPER not in chain.state.members and not chain.state.keeper_admits()


# =========================================================================== leave


def test_a_member_leaves_without_a_ban() -> None:
    chain = populated()
    chain.leave("carol")
    assert "carol" not in chain.state.members and not chain.state.banned
    chain.add("carol")  # may come back through the open door
    assert chain.state.role_of("carol") == "viewer"


def test_a_member_leaves_only_by_itself() -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError, match="only by itself"):
        chain.state.check(chain.leave_event("carol", actor="bob"))
    with pytest.raises(PermissionDeniedError, match="only by itself"):
        chain.state.check(chain.leave_event("carol", actor="alice"))


def test_the_owner_cannot_leave() -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError, match="owner"):
        chain.state.check(chain.leave_event("alice"))


def test_a_non_member_cannot_leave() -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError, match="not a member"):
        chain.state.check(chain.leave_event("dave"))


def test_a_leave_forged_by_the_relay_is_refused() -> None:
    chain = populated()
    with pytest.raises(IntegrityError):
        chain.state.check(chain.leave_event("bob", signer=MALLORY))


def test_the_keeper_may_leave() -> None:
    chain = Chain(keeper=True)
    chain.leave(KEEPER)
    assert not chain.state.keeper_admits() and chain.state.keeper == KEEPER


# =========================================================================== epoch


def test_an_editor_rotates() -> None:
    chain = rotating()
    epoch = chain.rotate("bob", ["alice", "bob"])
    assert epoch == chain.state.epoch == 1
    info = chain.state.epochs[1]
    assert info.recipients == {"alice", "bob"} and info.seq == chain.state.head_seq
    assert info.commitment == key_commitment(SPACE_ID, 1, chain.keys[1])


def test_a_static_space_never_rotates() -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError, match="rotate"):
        chain.state.check(chain.epoch_event("alice"))


def test_a_viewer_cannot_rotate() -> None:
    chain = rotating()
    with pytest.raises(PermissionDeniedError, match="owner or an editor"):
        chain.state.check(chain.epoch_event("carol"))


def test_the_keeper_cannot_rotate() -> None:
    chain = rotating(keeper=True)
    with pytest.raises(PermissionDeniedError, match="owner or an editor"):
        chain.state.check(chain.epoch_event(KEEPER))


def test_a_non_member_cannot_rotate() -> None:
    chain = rotating()
    with pytest.raises(PermissionDeniedError, match="not a member"):
        chain.state.check(chain.epoch_event("mallory", ["alice", "mallory"]))


@pytest.mark.parametrize("epoch", [0, 2, 5])
def test_epochs_advance_by_one(epoch: int) -> None:
    chain = rotating()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.epoch_event("alice", epoch=epoch))
    assert info.value.field == "event.body.epoch"


@pytest.mark.parametrize(
    "recipients",
    [["bob", "alice"], ["alice", "alice", "bob"]],
    ids=["unsorted", "duplicate"],
)
def test_recipients_are_sorted_and_unique(recipients: list[str]) -> None:
    chain = rotating()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.epoch_event("alice", recipients))
    assert info.value.field == "event.body.recipients"


def test_recipients_are_members() -> None:
    chain = rotating()
    with pytest.raises(PermissionDeniedError, match="mallory"):
        chain.state.check(chain.epoch_event("alice", ["alice", "bob", "mallory"]))


def test_the_rotating_member_is_a_recipient() -> None:
    chain = rotating()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.epoch_event("alice", ["bob", "carol"]))
    assert info.value.field == "event.body.recipients"


def test_the_keeper_is_a_recipient_while_a_member() -> None:
    chain = rotating(keeper=True)
    with pytest.raises(ProtocolError, match="keeper"):
        chain.state.check(chain.epoch_event("alice", ["alice", "bob"]))
    chain.rotate("alice", ["alice", "bob", KEEPER])
    chain.remove("alice", KEEPER)
    chain.rotate("alice", ["alice", "bob"])
    assert chain.state.epoch == 2


@pytest.mark.parametrize("commitment", [b64e(bytes(31)), "!!"])
def test_an_epoch_commits_to_32_bytes(commitment: str) -> None:
    chain = rotating()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.epoch_event("alice", commitment=commitment))
    assert info.value.field == "event.body.key_commitment"


def test_an_epoch_forged_by_the_relay_is_refused() -> None:
    chain = rotating()
    with pytest.raises(IntegrityError):
        chain.state.check(chain.epoch_event("alice", signer=MALLORY))


# =========================================================================== link / unlink


def test_the_owner_makes_a_link() -> None:
    chain = Chain(private=True)
    at = chain.clock + 1_000_000
    token = chain.link("alice", role="editor", max_uses=3, expires_at_us=at + 5)
    key = link_keys_from_token(token).link_key
    link = chain.state.links[link_id_of_key(key)]
    assert (link.link_key, link.role, link.max_uses, link.expires_at_us) == (
        key,
        "editor",
        3,
        at + 5,
    )
    assert (link.created_at_us, link.seq, link.uses, link.revoked) == (at, 1, 0, False)
    assert list(chain.state.active_links()) == [link]


@pytest.mark.parametrize("actor", ["bob", "carol"])
def test_only_the_owner_makes_links(actor: str) -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError, match="owner"):
        chain.state.check(chain.link_event(actor, token_for("x")))


def test_a_link_id_is_the_hash_of_its_key() -> None:
    chain = Chain()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.link_event("alice", token_for("x"), link_id="0" * 16))
    assert info.value.field == "event.body.link_id"


def test_a_link_key_is_a_link_key() -> None:
    chain = Chain()
    with pytest.raises(InvalidKeyError) as info:
        chain.state.check(
            chain.link_event(
                "alice",
                token_for("x"),
                link_key=BOB.signing_key,
                link_id=link_id_of_key(BOB.signing_key),
            )
        )
    assert info.value.field == "event.body.link_key"


def test_a_link_is_made_once() -> None:
    chain = Chain()
    token = chain.link("alice")
    with pytest.raises(ProtocolError, match="already exists"):
        chain.state.check(chain.link_event("alice", token))


@pytest.mark.parametrize("role", ["owner", ""])
def test_a_link_grants_editor_or_viewer(role: str) -> None:
    chain = Chain()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.link_event("alice", token_for("x"), role=role))
    assert info.value.field == "event.body.role"


def test_a_link_has_at_least_one_use() -> None:
    chain = Chain()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.link_event("alice", token_for("x"), max_uses=0))
    assert info.value.field == "event.body.max_uses"
    chain.state.check(chain.link_event("alice", token_for("x"), max_uses=1))


def test_a_link_expires_after_it_is_made() -> None:
    chain = Chain()
    at = chain.clock + 1_000_000
    for expires in (at, at - 1):
        with pytest.raises(ProtocolError) as info:
            chain.state.check(
                chain.link_event("alice", token_for("x"), expires_at_us=expires, at_us=at)
            )
        assert info.value.field == "event.body.expires_at_us"
    chain.state.check(chain.link_event("alice", token_for("x"), expires_at_us=at + 1, at_us=at))


def test_the_owner_revokes_a_link() -> None:
    chain = Chain()
    token = chain.link("alice")
    chain.push(chain.unlink_event("alice", token))
    assert next(chain.state.active_links()).revoked


def test_only_the_owner_revokes_links() -> None:
    chain = populated()
    token = chain.link("alice")
    with pytest.raises(PermissionDeniedError):
        chain.state.check(chain.unlink_event("bob", token))


def test_unlink_of_an_unknown_or_revoked_link_is_refused() -> None:
    chain = Chain()
    with pytest.raises(InviteError, match="unknown"):
        chain.state.check(chain.unlink_event("alice", token_for("x")))
    token = chain.link("alice")
    chain.push(chain.unlink_event("alice", token))
    with pytest.raises(InviteError, match="already revoked"):
        chain.state.check(chain.unlink_event("alice", token))


# =========================================================================== delete


def test_an_author_deletes_its_own_message() -> None:
    chain = populated()
    chain.delete("carol", 7)
    assert chain.state.deleted == {7: "carol"}


def test_the_owner_deletes_anyones_message() -> None:
    chain = populated()
    chain.delete("alice", 7, "carol")
    assert chain.state.deleted == {7: "carol"}


@pytest.mark.parametrize("actor", ["bob", "carol"])
def test_others_cannot_delete_a_message(actor: str) -> None:
    chain = populated()
    author = "bob" if actor == "carol" else "carol"
    with pytest.raises(PermissionDeniedError, match="author or the owner"):
        chain.state.check(chain.delete_event(actor, 7, author))


def test_a_non_member_cannot_delete() -> None:
    chain = populated()
    with pytest.raises(PermissionDeniedError, match="not a member"):
        chain.state.check(chain.delete_event("mallory", 7))


def test_a_handle_is_at_least_one() -> None:
    chain = populated()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.delete_event("carol", 0))
    assert info.value.field == "event.body.handle"


def test_a_message_is_deleted_once() -> None:
    chain = populated()
    chain.delete("carol", 7)
    with pytest.raises(ProtocolError, match="already deleted"):
        chain.state.check(chain.delete_event("alice", 7, "carol"))


def test_a_delete_names_a_valid_author() -> None:
    chain = populated()
    with pytest.raises(ProtocolError) as info:
        chain.state.check(chain.delete_event("alice", 7, "Carol"))
    assert info.value.field == "event.body.author"


def test_a_delete_forged_by_the_relay_is_refused() -> None:
    chain = populated()
    with pytest.raises(IntegrityError):
        chain.state.check(chain.delete_event("carol", 7, signer=MALLORY))
    with pytest.raises(IntegrityError):
        chain.state.check(chain.delete_event("alice", 7, "carol", signer=MALLORY))


# =========================================================================== derived state


def test_members_roles_and_invitations_follow_the_log() -> None:
    chain = populated()
    chain.invite("bob", "dave")
    chain.remove("alice", "carol")
    assert sorted(chain.state.members) == ["alice", "bob"]
    assert [chain.state.role_of(n) for n in ("alice", "bob", "carol", "dave")] == [
        "owner",
        "editor",
        None,
        None,
    ]
    assert list(chain.state.invitations) == ["dave"]
    assert chain.state.banned == {"carol"}


@pytest.mark.parametrize("via", ["open", "link"])
def test_an_add_by_any_way_uses_the_invitation_up(via: str) -> None:
    """dave was invited but came in through the open door or a link: the invitation is
    gone, so once removed he cannot use it to come back."""
    chain = populated()
    token = chain.link("alice")
    chain.invite("carol", "dave")
    chain.add("dave", token=token) if via == "link" else chain.add("dave")
    assert "dave" not in chain.state.invitations
    chain.remove("alice", "dave")
    with pytest.raises(PermissionDeniedError, match="no invitation"):
        chain.state.check(chain.add_event("dave", via="invite"))


def test_membership_spans() -> None:
    chain = Chain()
    added = chain.add("bob")
    left = chain.leave("bob")
    back = chain.add("bob", identity=MALLORY)  # same name, new keys
    state = chain.state
    assert not state.is_member_at("bob", added.seq - 1)
    assert state.is_member_at("bob", added.seq)
    assert not state.is_member_at("bob", left.seq)
    assert state.is_member_at("bob", back.seq)
    assert state.signing_key_at("bob", added.seq) == BOB.signing_key
    assert state.signing_key_at("bob", left.seq) is None
    assert state.signing_key_at("bob", back.seq) == MALLORY.signing_key
    assert state.signing_key_at("bob", back.seq + 100) == MALLORY.signing_key
    assert state.signing_key_at("nobody", 0) is None
    assert state.is_member_at("alice", 0) and state.signing_key_at("alice", 0) == ALICE.signing_key
    assert state.verify_key_at("bob", added.seq) is not None
    assert state.verify_key_at("bob", left.seq) is None


def test_epoch_at_and_since_epoch() -> None:
    chain = Chain(policy="rotate")
    chain.join("bob", "editor")  # seq 1, 2
    chain.rotate("alice")  # seq 3 -> epoch 1
    chain.add("carol")  # seq 4, added in epoch 1
    chain.rotate("bob")  # seq 5 -> epoch 2
    state = chain.state
    assert [state.epoch_at(s) for s in range(6)] == [0, 0, 0, 1, 1, 2]
    assert state.epoch_at(100) == 2
    assert state.members["carol"].since_epoch == 1 and state.members["bob"].since_epoch == 0
    assert state.epochs[2].recipients == {"alice", "bob", "carol"}


def test_may_hold_in_a_static_space() -> None:
    chain = populated()
    state = chain.state
    assert all(state.may_hold(n, 0) for n in ("alice", "bob", "carol"))
    assert not state.may_hold("dave", 0)
    assert not state.may_hold("alice", 1)
    assert state.epochs_for("carol") == [0] and state.epochs_for("dave") == []
    chain.remove("alice", "carol")
    assert not state.may_hold("carol", 0)


def test_may_hold_in_a_rotate_space() -> None:
    chain = Chain(policy="rotate")
    chain.join("bob", "editor")
    chain.add("carol")
    chain.rotate("alice", ["alice", "bob"])  # epoch 1: carol left out
    chain.add("dave")  # joins during epoch 1
    chain.rotate("alice", ["alice", "bob", "carol"])  # epoch 2: dave left out
    state = chain.state
    assert state.epochs_for("alice") == [0, 1, 2]
    assert state.epochs_for("bob") == [0, 1, 2]
    assert state.epochs_for("carol") == [0, 2]
    assert state.epochs_for("dave") == [1]  # its joining epoch, not the older one
    assert not state.may_hold("dave", 0)
    assert not state.may_hold("alice", 3)
    chain.leave("carol")
    assert state.epochs_for("carol") == []


def test_a_member_back_after_leaving_holds_only_from_its_new_start() -> None:
    chain = Chain(policy="rotate")
    chain.add("carol")
    chain.rotate("alice")  # epoch 1, carol a recipient
    chain.leave("carol")
    chain.rotate("alice")  # epoch 2
    chain.add("carol")
    assert chain.state.epochs_for("carol") == [2]


def test_may_wrap() -> None:
    chain = Chain(policy="rotate", keeper=True)
    chain.add("carol")
    chain.rotate("alice", ["alice", KEEPER])
    state = chain.state
    assert state.may_wrap(KEEPER, 0) and state.may_wrap(KEEPER, 1)
    assert state.may_wrap("carol", 0) and not state.may_wrap("carol", 1)
    assert not state.may_wrap("mallory", 0)
    no_keeper = Chain()
    assert not no_keeper.state.may_wrap(KEEPER, 0)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: Chain(keeper=True), True),
        (lambda: Chain(), False),
        (lambda: Chain(manual_admit=True), False),
    ],
    ids=["keeper", "no-keeper", "manual"],
)
def test_keeper_admits(build: Any, expected: bool) -> None:
    assert build().state.keeper_admits() is expected


def test_the_keeper_stops_admitting_once_gone() -> None:
    chain = Chain(keeper=True)
    chain.remove("alice", KEEPER)
    assert not chain.state.keeper_admits()


def test_rotation_recipients_come_from_the_log() -> None:
    chain = rotating(keeper=True)
    state = chain.state
    assert state.rotation_recipients("bob", None) == ["alice", "bob", "carol", KEEPER]
    assert state.rotation_recipients("bob", ["carol"]) == ["bob", "carol", KEEPER]
    assert state.rotation_recipients("bob", []) == ["bob", KEEPER]
    with pytest.raises(PermissionDeniedError, match="mallory"):
        state.rotation_recipients("bob", ["carol", "mallory"])
    chain.remove("alice", "carol")
    with pytest.raises(PermissionDeniedError, match="carol"):
        state.rotation_recipients("bob", ["carol"])
    chain.remove("alice", KEEPER)
    assert state.rotation_recipients("alice", None) == ["alice", "bob"]


def test_check_commitment() -> None:
    chain = rotating()
    chain.rotate()
    state = chain.state
    state.check_commitment(0, chain.keys[0])
    state.check_commitment(1, chain.keys[1])
    with pytest.raises(IntegrityError):
        state.check_commitment(1, chain.keys[0])
    with pytest.raises(IntegrityError):
        state.check_commitment(2, chain.keys[1])


def test_key_commitment_definition() -> None:
    key = group_key(SPACE_ID, 3)
    assert key_commitment(SPACE_ID, 3, key) == b64e(
        crypto.sha256(lp_encode("spacenb/v2/key-commitment", SPACE_ID, 3, key))
    )
    assert key_commitment(SPACE_ID, 3, key) != key_commitment(SPACE_ID, 4, key)
    assert key_commitment(SPACE_ID, 3, key) != key_commitment(OTHER_SPACE.space_id, 3, key)


def test_link_ids_and_tokens() -> None:
    token = new_link_token()
    assert len(b64d(token)) == 32 and new_link_token() != token
    pair = link_keys_from_token(token)
    assert pair.link_key.startswith("lnk.")
    assert link_keys_from_token(token).link_key == pair.link_key  # deterministic
    assert link_id_of_key(pair.link_key) == crypto.sha256(pair.link_key.encode()).hex()[:16]


@pytest.mark.parametrize("token", ["", "!!!", b64e(bytes(31)), b64e(bytes(33)), 7])
def test_a_malformed_token_is_an_invite_error(token: Any) -> None:
    with pytest.raises(InviteError):
        link_keys_from_token(token)


@pytest.mark.parametrize("name", ["a", "bob", "b0b_.-x", "0" * 32])
def test_valid_usernames(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize("name", ["", "Bob", "_bob", "b" * 33, "bob!", "bob ", 7, None])
def test_invalid_usernames(name: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        check_username(name, field="member")
    assert info.value.field == "member"


def test_repr() -> None:
    assert repr(populated().state) == f"<SpaceState {SPACE_ID} seq=3 epoch=0 members=3>"


# =========================================================================== bans hold


def banned_space(*, private: bool = False) -> tuple[Chain, str]:
    """carol joined through a multi-use link, then the owner removed her."""
    chain = Chain(private=private)
    chain.join("bob", "editor")
    token = chain.link("alice", max_uses=10)
    chain.add("carol", token=token)
    chain.add("dave", token=token)
    chain.remove("alice", "carol")
    return chain, token


def test_a_removed_member_cannot_come_back_through_the_open_door() -> None:
    chain, _ = banned_space()
    with pytest.raises(PermissionDeniedError, match="removed"):
        chain.state.check(chain.add_event("carol"))
    with pytest.raises(PermissionDeniedError, match="removed"):
        chain.state.check(chain.add_event("carol", identity=MALLORY))


@pytest.mark.parametrize("private", [False, True])
def test_a_removed_member_cannot_come_back_through_an_old_link(private: bool) -> None:
    chain, token = banned_space(private=private)
    with pytest.raises(PermissionDeniedError, match="old link"):
        chain.state.check(chain.add_event("carol", token=token))
    chain.add("erin", token=token)  # the link still works for others


def test_a_removed_member_cannot_add_via_invite_without_a_new_invitation() -> None:
    chain, _ = banned_space()
    with pytest.raises(PermissionDeniedError, match="no invitation"):
        chain.state.check(chain.add_event("carol", via="invite"))


def test_a_viewers_invitation_cannot_lift_a_ban() -> None:
    chain, _ = banned_space()
    with pytest.raises(PermissionDeniedError, match="owner or an editor"):
        chain.state.check(chain.invite_event("dave", "carol"))
    assert chain.state.banned == {"carol"}


@pytest.mark.parametrize("inviter", ["alice", "bob"])
def test_an_owner_or_editor_invitation_lifts_a_ban(inviter: str) -> None:
    chain, token = banned_space()
    chain.invite(inviter, "carol")
    assert not chain.state.banned
    chain.add("carol", via="invite")
    assert chain.state.role_of("carol") == "viewer"
    chain.leave("carol")
    chain.add("carol", token=token)  # the ban is gone for good


def test_a_ban_survives_leave_and_remove_cycles() -> None:
    chain, token = banned_space()
    chain.invite("alice", "carol")
    chain.add("carol", via="invite")
    chain.remove("alice", "carol")
    assert chain.state.banned == {"carol"}
    for event in (chain.add_event("carol"), chain.add_event("carol", token=token)):
        with pytest.raises(PermissionDeniedError):
            chain.state.check(event)


def test_a_ban_holds_in_a_replayed_log() -> None:
    chain, token = banned_space()
    state = SpaceState.from_events(chain.events)
    assert state.banned == {"carol"}
    with pytest.raises(PermissionDeniedError):
        state.check(chain.add_event("carol", token=token))


def _reference_fields(kind: str, data: bytes) -> dict[str, Any] | None:
    """What a body means by the spec's steps alone (stdlib JSON): its fields, or None."""
    try:
        body = _check_body(kind, json.loads(data.decode("utf-8")))
    except (ValueError, ProtocolError):
        return None
    return body if canonical_json(body) == data else None


_TEXT = st.text(st.characters(codec="utf-8"), max_size=8) | st.sampled_from(
    ["carol", "caf\u00e9", "a\x7fb", "a\x1fb", 'q"q', "b\\s", "\u2028"]
)


@settings(max_examples=300, deadline=None)
@given(
    member=_TEXT,
    role=_TEXT | st.integers(0, 2**60) | st.none() | st.booleans(),
    writer=st.sampled_from(["canonical", "orjson", "ascii", "spaced", "unsorted"]),
)
def test_the_fast_body_check_agrees_with_the_spec(member: str, role: Any, writer: str) -> None:
    """StateEvent.fields (orjson for ASCII bodies without escapes) accepts exactly the
    bodies the stdlib's canonical form accepts, with the same fields."""
    obj = {"member": member, "role": role}
    data = {
        "canonical": lambda: canonical_json(obj),
        "orjson": lambda: orjson.dumps(obj, option=orjson.OPT_SORT_KEYS),
        "ascii": lambda: json.dumps(obj, sort_keys=True, separators=(",", ":")).encode(),
        "spaced": lambda: json.dumps(obj, sort_keys=True, ensure_ascii=False).encode(),
        "unsorted": lambda: json.dumps(
            {"role": role, "member": member}, separators=(",", ":"), ensure_ascii=False
        ).encode(),
    }[writer]
    try:
        body = data()
    except (TypeError, UnicodeEncodeError):
        return  # no such text (a lone surrogate, an integer orjson cannot write)
    expected = _reference_fields("role", body)
    event = StateEvent("spc.x", 1, bytes(32), "role", "alice", 0, body)
    if expected is None:
        with pytest.raises(ProtocolError):
            event.fields()
    else:
        assert event.fields() == expected
