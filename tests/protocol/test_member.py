"""spacenb.protocol.member: what a member believes, accepts and does, without a socket.

Frames a relay could serve go in (state events, envelopes, wrapped keys, join requests);
decisions come out. The last section plays each attack of the v2 issue on the pure core.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spacenb.exceptions import (
    ForkError,
    IntegrityError,
    KeyUnavailableError,
    PermissionDeniedError,
    ProtocolError,
)
from spacenb.protocol import sessionlog
from spacenb.protocol.encoding import canonical_json
from spacenb.protocol.envelope import Envelope, Message
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.member import Delivery, MemberCore, Need, Opened, Rejected, ReplayGuard
from spacenb.protocol.statelog import SpaceState, StateEvent
from spacenb.protocol.wrap import unwrap_group_key

from .chain import (
    KEEPER,
    OTHER_SID,
    OTHER_SPACE,
    SID,
    Chain,
    group_key,
    ident,
    raw_event,
    resign,
)
from .replay_reference import ReferenceGuard

ALICE, BOB, CAROL, MALLORY = ident("alice"), ident("bob"), ident("carol"), ident("mallory")


def opened(result: Opened | Rejected | Need) -> Opened:
    assert isinstance(result, Opened), result
    return result


def rejected(result: Opened | Rejected | Need, *reason: str) -> Rejected:
    assert isinstance(result, Rejected), result
    for part in reason:
        assert part in result.reason, result.reason
    return result


def populated(**kw: Any) -> Chain:
    """alice owns; bob is an editor, carol a viewer."""
    chain = Chain(**kw)
    chain.join("bob", "editor")
    chain.join("carol")
    return chain


def rotated() -> Chain:
    """A rotate space: bob and carol in epoch 0; epoch 1 leaves carol out; dave joins in
    epoch 1."""
    chain = Chain(policy="rotate", private=True)
    chain.join("bob", "editor")
    chain.join("carol")
    chain.rotate("alice", ["alice", "bob"])
    chain.join("dave")
    return chain


def pins(**pinned: str) -> Any:
    """A trust callback that knows ``name=signing_key`` pins and trusts everyone else."""

    def trust(name: str, signing_key: str, ecdh_key: str) -> str | None:
        want = pinned.get(name)
        if want is None or want == signing_key:
            return None
        return f"{name}'s identity keys changed"

    return trust


# =========================================================================== extend_log


def test_extend_log_verifies_and_returns_the_new_events() -> None:
    chain = populated()
    core = MemberCore(chain.space_id, "bob", BOB)
    assert core.state is None
    assert core.extend_log(chain.events[:3]) == chain.events[:3]
    assert core.extend_log(chain.events) == chain.events[3:]  # held ones are skipped
    assert core.extend_log(chain.events) == []
    state = core.require_state()
    assert state.head == chain.state.head and sorted(state.members) == ["alice", "bob", "carol"]


def test_extend_log_refuses_a_log_without_its_genesis() -> None:
    chain = populated()
    core = MemberCore(chain.space_id, "bob", BOB)
    with pytest.raises(IntegrityError, match="genesis"):
        core.extend_log(chain.events[1:])
    assert core.state is None


def test_extend_log_refuses_a_genesis_that_does_not_verify() -> None:
    chain = Chain()
    forged = resign(chain.events[0], OTHER_SPACE)
    core = MemberCore(chain.space_id, "bob", BOB)
    with pytest.raises(IntegrityError, match="genesis"):
        core.extend_log([forged])
    assert core.state is None


def test_extend_log_refuses_events_of_another_space() -> None:
    chain, other = Chain(), Chain(space=OTHER_SPACE)
    core = MemberCore(chain.space_id, "bob", BOB)
    with pytest.raises(IntegrityError, match="another space"):
        core.extend_log(other.events)
    core.extend_log(chain.events)
    with pytest.raises(IntegrityError, match="another space"):
        core.extend_log([resign(other.add_event("bob"), BOB, seq=1, prev=chain.state.head)])


def test_extend_log_detects_a_rewritten_held_event() -> None:
    chain = populated()
    core = chain.core("bob")
    other = chain.fork(upto=2)
    other.add("erin")  # seq 3 differs from carol's invite in chain
    with pytest.raises(ForkError):
        core.extend_log(other.events)


def test_extend_log_detects_a_rewritten_genesis() -> None:
    chain = Chain()  # genesis signatures are randomised: two chains, two pasts
    core = chain.core("alice")
    with pytest.raises(ForkError):
        core.extend_log(Chain().events)


def test_extend_log_detects_a_next_event_from_another_history() -> None:
    chain = populated()
    other = chain.fork(upto=2)
    other.add("erin")
    other.add("frank")
    core = chain.core("bob", upto=3)  # holds chain's seq 3
    with pytest.raises(ForkError):
        core.extend_log([other.events[4]])  # seq 4, prev = the other seq 3


def test_extend_log_refuses_skipped_events() -> None:
    chain = populated()
    core = chain.core("bob", upto=2)
    with pytest.raises(IntegrityError, match="skipped") as info:
        core.extend_log([chain.events[4]])
    assert not isinstance(info.value, ForkError)
    assert core.require_state().head_seq == 2


@pytest.mark.parametrize(
    "forge",
    [
        lambda c: c.remove_event("alice", "carol", signer=MALLORY),
        lambda c: c.remove_event("bob", "carol"),
        lambda c: c.role_event("alice", "carol", "editor", signer=MALLORY),
        lambda c: c.role_event("carol", "carol", "editor"),
        lambda c: c.delete_event("carol", 4, "bob"),
        lambda c: c.delete_event("alice", 4, "bob", signer=MALLORY),
        lambda c: c.add_event("mallory"),  # private space: no open door
        lambda c: c.add_event("mallory", via="invite"),
        lambda c: c.invite_event("alice", "mallory", "editor", signer=MALLORY),
        lambda c: c.leave_event("bob", signer=MALLORY),
    ],
    ids=[
        "remove-forged",
        "remove-by-editor",
        "role-forged",
        "role-by-viewer",
        "delete-others",
        "delete-forged",
        "add-open-private",
        "add-uninvited",
        "invite-forged",
        "leave-forged",
    ],
)
def test_extend_log_refuses_events_no_entitled_member_signed(forge: Any) -> None:
    chain = populated(private=True)
    core = chain.core("bob")
    event = forge(chain)
    with pytest.raises(IntegrityError, match="no entitled member") as info:
        core.extend_log([event])
    assert not isinstance(info.value, ForkError)
    assert core.require_state().head == chain.state.head  # nothing applied


def test_extend_log_keeps_the_good_events_before_a_bad_one() -> None:
    chain = populated()
    good = chain.add("dave")
    bad = chain.remove_event("alice", "carol", signer=MALLORY)
    core = chain.core("bob", upto=good.seq - 1)
    with pytest.raises(IntegrityError):
        core.extend_log([good, bad])
    assert core.require_state().head == good.hash()


def test_extend_log_turns_a_malformed_event_into_an_integrity_error() -> None:
    chain = populated()
    core = chain.core("bob")
    event = raw_event(
        CAROL,
        space_id=chain.space_id,
        seq=chain.state.head_seq + 1,
        prev=chain.state.head,
        kind="leave",
        actor="carol",
        at_us=chain.now(),
        body=b'{"member": "carol"}',
    )
    with pytest.raises(IntegrityError):
        core.extend_log([event])


@pytest.mark.parametrize(
    ("kind", "actor", "body"),
    [
        ("leave", "carol", b'{"member":"\\ud800"}'),
        ("epoch", "alice", b'{"epoch":1,"key_commitment":"x","recipients":["alice","\\ud800"]}'),
    ],
    ids=["text", "list-item"],
)
def test_extend_log_turns_a_lone_surrogate_body_into_an_integrity_error(
    kind: str, actor: str, body: bytes
) -> None:
    """A relay can serve a body spelling "\\ud800": the member must refuse it as it refuses
    every malformed event (IntegrityError), not crash with a UnicodeEncodeError."""
    chain = populated(policy="rotate")
    core = chain.core("bob")
    event = raw_event(
        ident(actor),
        space_id=chain.space_id,
        seq=chain.state.head_seq + 1,
        prev=chain.state.head,
        kind=kind,
        actor=actor,
        at_us=chain.now(),
        body=body,
    )
    with pytest.raises(IntegrityError):
        core.extend_log([event])


def test_extend_log_asks_trust_about_every_member_it_learns() -> None:
    chain = populated(keeper=True)
    seen: list[tuple[str, str, str]] = []

    def trust(name: str, sig: str, dh: str) -> str | None:
        seen.append((name, sig, dh))
        return None

    MemberCore(chain.space_id, "bob", BOB, trust=trust).extend_log(chain.events)
    assert [name for name, _, _ in seen] == ["alice", KEEPER, "bob", "carol"]
    assert seen[2] == ("bob", BOB.signing_key, BOB.ecdh_key)


def test_a_member_whose_keys_differ_from_a_pin_is_distrusted() -> None:
    chain = populated()
    chain.leave("carol")
    chain.add("carol", identity=MALLORY)  # "carol" back with other keys
    core = chain.core("bob", trust=pins(carol=CAROL.signing_key))
    assert core.distrusted == {"carol": "carol's identity keys changed"}


def test_recheck_trust_after_a_pin_changes() -> None:
    chain = populated()
    pinned = {"carol": MALLORY.signing_key}
    core = chain.core("bob", trust=lambda n, s, d: None if pinned.get(n, s) == s else "changed")
    assert core.distrusted == {"carol": "changed"}
    pinned["carol"] = CAROL.signing_key  # accepted out of band
    core.recheck_trust()
    assert core.distrusted == {}


def test_require_state_before_the_log_is_fetched() -> None:
    core = MemberCore(Chain().space_id, "bob", BOB)
    with pytest.raises(ProtocolError):
        core.require_state()
    with pytest.raises(ProtocolError):
        core.sealing_epoch()
    core.recheck_trust()  # nothing to do


def test_sealing_epoch_is_the_logs_current_one() -> None:
    chain = rotated()
    assert chain.core("bob").sealing_epoch() == 1


# =========================================================================== open_message


def test_a_members_message_opens() -> None:
    chain = populated()
    core = chain.core("bob")
    envelope, message = chain.seal("carol", {"text": "hi"}, seq=10)
    result = opened(core.open_message(envelope, 7))
    assert (result.envelope, result.message, result.handle) == (envelope, message, 7)
    assert not result.edit and not result.duplicate
    assert result.message.body == {"text": "hi"}


def test_a_message_before_the_log_is_fetched_needs_the_log() -> None:
    chain = populated()
    core = MemberCore(chain.space_id, "bob", BOB, keyring=chain.keyring([0]))
    envelope, _ = chain.seal("carol")
    assert core.open_message(envelope, 1) is Need.LOG


def test_a_message_bound_to_an_unknown_head_needs_the_log() -> None:
    chain = populated()
    core = chain.core("bob", upto=2)
    envelope, _ = chain.seal("carol")  # bound to seq 4
    assert core.open_message(envelope, 1) is Need.LOG
    core.extend_log(chain.events)
    opened(core.open_message(envelope, 1))


def test_a_message_bound_to_a_forked_head_is_rejected() -> None:
    chain = populated()
    other = chain.fork(upto=3)
    other.add("erin")
    core = chain.core("bob", upto=3)
    chain.add("dave")
    core.extend_log(chain.events)
    envelope, _ = other.seal("carol")  # bound to the other seq 4
    result = rejected(core.open_message(envelope, 1), "fork")
    assert (result.sender, result.handle) == ("carol", 1)


def test_a_message_bound_to_a_head_with_a_made_up_hash_is_rejected() -> None:
    chain = populated()
    core = chain.core("bob")
    envelope, _ = chain.seal("carol", head_seq=2, head=bytes(32))
    rejected(core.open_message(envelope, 1), "fork")


def test_a_sender_not_yet_a_member_at_its_head_is_rejected() -> None:
    chain = populated()
    core = chain.core("bob")
    envelope, _ = chain.seal("carol", head_seq=3)  # carol's add is seq 4
    rejected(core.open_message(envelope, 1), "not a member at the state it signed")


def test_a_sender_removed_at_its_head_is_rejected() -> None:
    chain = populated()
    chain.remove("alice", "carol")
    core = chain.core("bob")
    envelope, _ = chain.seal("carol")
    rejected(core.open_message(envelope, 1), "not a member")
    earlier, _ = chain.seal("carol", head_seq=4, seq=2)  # sent while still a member
    opened(core.open_message(earlier, 2))


def test_a_sender_who_never_was_a_member_is_rejected() -> None:
    chain = populated()
    core = chain.core("bob")
    envelope, _ = chain.seal("mallory")
    rejected(core.open_message(envelope, 1), "not a member")


def test_a_message_sealed_under_another_epoch_than_its_heads_is_rejected() -> None:
    chain = rotated()
    core = chain.core("alice")
    rotation = chain.state.epochs[1].seq
    old, _ = chain.seal("bob", head_seq=rotation, epoch=0)
    rejected(core.open_message(old, 1), "sealed under epoch 0")
    new_early, _ = chain.seal("bob", head_seq=rotation - 1, epoch=1, seq=2)
    rejected(core.open_message(new_early, 2), "sealed under epoch 1")
    before, _ = chain.seal("bob", head_seq=rotation - 1, seq=3)  # epoch 0: fine
    after, _ = chain.seal("bob", head_seq=rotation, seq=4)  # epoch 1: fine
    opened(core.open_message(before, 3))
    opened(core.open_message(after, 4))


def test_a_message_under_an_epoch_whose_key_is_missing_needs_keys() -> None:
    chain = rotated()
    carol = chain.core("carol")  # left out of epoch 1
    assert carol.keyring is not None and carol.keyring.epochs == [0]
    envelope, _ = chain.seal("bob")
    assert carol.open_message(envelope, 1) is Need.KEYS
    no_ring = MemberCore(chain.space_id, "carol", CAROL)
    no_ring.extend_log(chain.events)
    assert no_ring.open_message(envelope, 1) is Need.KEYS


@pytest.mark.parametrize(
    "change",
    [
        {"ciphertext": b"x"},
        {"iv": bytes(12)},
        {"subject": "other"},
        {"content_type": "text/html"},
        {"head_seq": 3},
        {"signature": bytes(64)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_tampered_envelope_is_rejected(change: dict[str, Any]) -> None:
    chain = populated()
    chain.add("dave")
    core = chain.core("bob")
    envelope, _ = chain.seal("carol")
    if "ciphertext" in change:
        change = {"ciphertext": envelope.ciphertext[:-1] + bytes([envelope.ciphertext[-1] ^ 1])}
    rejected(core.open_message(dataclasses.replace(envelope, **change), 1))


def test_an_envelope_for_another_space_is_rejected() -> None:
    chain = populated()
    core = chain.core("bob")
    envelope, _ = chain.seal("carol", target=OTHER_SPACE.space_id)
    rejected(core.open_message(envelope, 1), "another space")


def test_a_signal_passed_off_as_a_stored_message_is_rejected() -> None:
    chain = populated()
    core = chain.core("bob")
    signal, _ = chain.seal("carol", kind="eph")
    rejected(core.open_message(signal, 1), "signal passed off")
    stored, _ = chain.seal("carol", seq=2)
    rejected(core.open_message(stored, None, kind="eph"), "stored message kind")


def test_a_relabelled_kind_does_not_verify() -> None:
    chain = populated()
    core = chain.core("bob")
    stored, _ = chain.seal("carol")
    rejected(core.open_message(dataclasses.replace(stored, kind="eph"), None, kind="eph"))
    signal, _ = chain.seal("carol", kind="eph")
    rejected(core.open_message(dataclasses.replace(signal, kind="msg"), 1))


def test_signals_open_without_a_handle_or_replay_memory() -> None:
    chain = populated()
    core = chain.core("bob")
    signal, message = chain.seal("carol", {"typing": True}, kind="eph")
    for _ in range(2):
        result = opened(core.open_message(signal, None, kind="eph"))
        assert result.handle == 0 and result.message == message
    assert core.replay.marks == {}


def test_a_distrusted_sender_is_rejected_with_the_reason() -> None:
    chain = populated()
    core = chain.core("bob", trust=pins(carol=MALLORY.signing_key))
    envelope, _ = chain.seal("carol")
    rejected(core.open_message(envelope, 1), "carol's identity keys changed")


def test_a_message_deleted_by_its_author_is_rejected() -> None:
    chain = populated()
    chain.delete("carol", 5)
    chain.delete("alice", 6, "carol")
    core = chain.core("bob")
    for handle in (5, 6):
        envelope, _ = chain.seal("carol", seq=handle)
        rejected(core.open_message(envelope, handle), "deleted")


def test_a_delete_naming_another_author_does_not_hide_a_message() -> None:
    chain = populated()
    chain.delete("alice", 5, "bob")  # the owner deleted bob's message 5
    core = chain.core("bob")
    envelope, _ = chain.seal("carol")  # but a relay serves carol's message at 5
    opened(core.open_message(envelope, 5))


def test_deletion_applies_only_to_the_named_author() -> None:
    chain = populated()
    unseen, by_carol, by_bob = chain.core("alice"), chain.core("alice"), chain.core("alice")
    opened(by_carol.open_message(chain.seal("carol")[0], 5))
    opened(by_bob.open_message(chain.seal("bob")[0], 5))
    event = chain.delete("alice", 5, "carol")
    assert unseen.deletion_applies(event)  # nothing seen at handle 5: nothing to keep
    assert by_carol.deletion_applies(event) and by_carol.author_of(5) == "carol"
    assert not by_bob.deletion_applies(event)


def test_a_message_shown_first_as_someone_elses_edit_is_still_delivered() -> None:
    """Nothing is recorded before every check passed: a relay cannot spend a genuine
    message by pushing it first as an edit of another member's handle."""
    chain = populated()
    core = chain.core("bob")
    opened(core.open_message(chain.seal("alice")[0], 5))
    carols, _ = chain.seal("carol")
    rejected(core.open_message(carols, 5, edit=True), "other than the author")
    assert opened(core.open_message(carols, 6)).handle == 6


def test_an_own_message_echoed_back_needs_no_verifying() -> None:
    chain = populated()
    core = chain.core("carol", epochs=[])  # holds no key: the echo still opens
    envelope, message = chain.seal("carol")
    core.remember_sent(envelope, message)
    assert opened(core.open_message(envelope, 1)).message is message
    again = core.open_message(envelope, 2)  # the same envelope at another handle
    assert again is Need.KEYS


@pytest.mark.parametrize(
    "change",
    [{"subject": "announcements"}, {"content_type": "text/html"}, {"ciphertext": b"x" * 40}],
    ids=lambda c: next(iter(c)),
)
def test_an_own_message_echoed_back_changed_is_verified(change: dict[str, Any]) -> None:
    """The shortcut is for an echo that comes back *unchanged* (remember_sent's
    docstring): a relay that keeps the signature but moves the message to another channel
    or content type must not get the remembered plaintext delivered under its fields."""
    chain = populated()
    core = chain.core("carol")
    envelope, message = chain.seal("carol", subject="general")
    core.remember_sent(envelope, message)
    changed = dataclasses.replace(envelope, **change)
    rejected(core.open_message(changed, 1))


def test_an_own_message_echo_is_still_bound_to_the_verified_log() -> None:
    chain = populated()
    other = chain.fork(upto=3)
    other.add("erin")
    core = chain.core("carol", upto=3)
    chain.add("dave")
    core.extend_log(chain.events)
    envelope, message = other.seal("carol")
    core.remember_sent(envelope, message)
    rejected(core.open_message(envelope, 1), "fork")


def test_an_edit_opens_as_an_edit_and_a_duplicate_as_a_duplicate() -> None:
    chain = populated()
    core = chain.core("bob")
    original, _ = chain.seal("carol", "v1", seq=10)
    edit, _ = chain.seal("carol", "v2", seq=10, rev=1)
    first = opened(core.open_message(original, 4))
    assert not first.edit and not first.duplicate
    second = opened(core.open_message(edit, 4))
    assert second.edit and second.message.body == "v2"
    third = opened(core.open_message(edit, 4))
    assert third.duplicate
    rejected(core.open_message(original, 4), "older revision")


def test_an_old_message_at_a_new_handle_is_rejected() -> None:
    chain = populated()
    core = chain.core("bob")
    envelope, _ = chain.seal("carol", seq=10)
    opened(core.open_message(envelope, 4))
    rejected(core.open_message(envelope, 9), "replayed")


# =========================================================================== accept_key


def test_a_key_wrapped_by_a_member_holding_it_is_accepted() -> None:
    chain = populated()
    core = chain.core("carol", epochs=[])
    key = core.accept_key(chain.wrap(0, "carol", "bob"))
    assert key == chain.keys[0]


def test_a_key_wrapped_by_the_genesis_keeper_is_accepted() -> None:
    chain = populated(keeper=True)
    core = chain.core("carol", epochs=[])
    assert core.accept_key(chain.wrap(0, "carol", KEEPER)) == chain.keys[0]


def test_a_key_before_the_log_is_fetched_is_refused() -> None:
    chain = populated()
    core = MemberCore(chain.space_id, "carol", CAROL)
    with pytest.raises(ProtocolError):
        core.accept_key(chain.wrap(0, "carol", "alice"))


def test_a_key_of_an_epoch_no_event_introduced_is_refused() -> None:
    chain = Chain(policy="rotate")
    chain.join("bob")
    core = chain.core("bob", epochs=[])
    with pytest.raises(IntegrityError, match="no signed event introduced epoch 1"):
        core.accept_key(chain.wrap(1, "bob", "alice", key=group_key(chain.space_id, 1)))


def test_a_keeper_wrapped_key_is_refused_where_genesis_did_not_admit_the_keeper() -> None:
    chain = populated()
    core = chain.core("carol", epochs=[])
    with pytest.raises(IntegrityError, match="may not hand out"):
        core.accept_key(chain.wrap(0, "carol", KEEPER))  # even the right key


def test_a_key_wrapped_by_a_non_member_is_refused() -> None:
    chain = populated()
    chain.remove("alice", "bob")
    core = chain.core("carol", epochs=[])
    for wrapper in ("bob", "mallory"):
        with pytest.raises(IntegrityError, match="may not hand out"):
            core.accept_key(chain.wrap(0, "carol", wrapper))


def test_a_key_wrapped_by_a_member_not_holding_that_epoch_is_refused() -> None:
    chain = rotated()
    core = chain.core("dave", epochs=[])
    with pytest.raises(IntegrityError, match="may not hand out"):
        core.accept_key(chain.wrap(1, "dave", "carol"))  # carol was left out of epoch 1
    assert core.accept_key(chain.wrap(1, "dave", "bob")) == chain.keys[1]


def test_a_rotate_newcomer_refuses_an_older_epoch() -> None:
    chain = rotated()
    core = chain.core("dave", epochs=[])
    with pytest.raises(IntegrityError, match="does not give this member the key of epoch 0"):
        core.accept_key(chain.wrap(0, "dave", "alice"))


def test_a_member_left_out_of_an_epoch_refuses_its_key() -> None:
    chain = rotated()
    core = chain.core("carol", epochs=[0])
    with pytest.raises(IntegrityError, match="epoch 1"):
        core.accept_key(chain.wrap(1, "carol", "alice"))


def test_a_key_other_than_the_committed_one_is_refused() -> None:
    chain = populated()
    core = chain.core("carol", epochs=[])
    wrong = group_key(chain.space_id, 0, b"substitute")
    with pytest.raises(IntegrityError, match="committed"):
        core.accept_key(chain.wrap(0, "carol", "alice", key=wrong))


def test_a_key_wrapped_for_someone_else_is_refused() -> None:
    chain = populated()
    core = chain.core("carol", epochs=[])
    for_bob = chain.wrap(0, "bob", "alice")
    with pytest.raises(IntegrityError, match="another space or member"):
        core.accept_key(for_bob)
    with pytest.raises(IntegrityError):  # relabelled: the wrapper's signature breaks
        core.accept_key(dataclasses.replace(for_bob, recipient="carol"))


def test_a_key_wrapped_for_another_space_is_refused() -> None:
    chain = populated()
    core = chain.core("carol", epochs=[])
    with pytest.raises(IntegrityError, match="another space"):
        core.accept_key(chain.wrap(0, "carol", "alice", space_id=OTHER_SPACE.space_id))


def test_a_key_not_signed_with_the_wrappers_logged_key_is_refused() -> None:
    chain = populated()
    core = chain.core("carol", epochs=[])
    with pytest.raises(IntegrityError):
        core.accept_key(chain.wrap(0, "carol", "alice", wrapper_identity=MALLORY))


def test_a_key_from_a_distrusted_wrapper_is_refused() -> None:
    chain = populated()
    core = chain.core("carol", epochs=[], trust=pins(bob=MALLORY.signing_key))
    with pytest.raises(IntegrityError, match="bob's identity keys changed"):
        core.accept_key(chain.wrap(0, "carol", "bob"))


def test_a_key_for_a_member_no_longer_in_the_space_is_refused() -> None:
    chain = populated()
    chain.remove("alice", "carol")
    core = chain.core("carol", epochs=[])
    with pytest.raises(IntegrityError):
        core.accept_key(chain.wrap(0, "carol", "alice"))


# =========================================================================== admission


def test_the_keeper_admits_where_genesis_admitted_it() -> None:
    chain = populated(keeper=True)
    assert chain.core(KEEPER).admission("carol", as_keeper=True) == [0]
    assert chain.core("alice").admission("carol") == []  # the keeper does it


def test_the_keeper_admits_a_rotate_newcomer_to_its_joining_epoch() -> None:
    chain = Chain(policy="rotate", keeper=True)
    chain.join("bob", "editor")
    chain.rotate("alice")
    chain.add("carol")
    keeper = chain.core(KEEPER)
    assert keeper.admission("carol", as_keeper=True) == [1]
    assert keeper.admission("bob", as_keeper=True) == [0, 1]


def test_the_keeper_does_not_admit_where_genesis_did_not_admit_it() -> None:
    chain = populated()
    keeper = chain.core(KEEPER, epochs=[])
    assert keeper.admission("carol", as_keeper=True) == []


def test_a_keeper_that_joined_by_name_only_does_not_admit_as_keeper() -> None:
    chain = populated()
    chain.add(KEEPER)  # a viewer that happens to be called "keeper"
    assert chain.core(KEEPER).admission("carol", as_keeper=True) == []


def test_a_removed_keeper_does_not_admit_and_members_take_over() -> None:
    chain = populated(keeper=True)
    chain.remove("alice", KEEPER)
    chain.add("dave")
    assert chain.core(KEEPER, epochs=[0]).admission("dave", as_keeper=True) == []
    assert chain.core("carol").admission("dave") == [0]


def test_a_member_is_not_the_keeper() -> None:
    chain = populated(keeper=True)
    assert chain.core("alice").admission("carol", as_keeper=True) == []


def test_members_admit_where_no_keeper_does() -> None:
    chain = populated()
    for admitter in ("alice", "bob", "carol"):
        core = chain.core(admitter)
        others = [n for n in ("alice", "bob", "carol") if n != admitter]
        assert [core.admission(n) for n in others] == [[0], [0]]


def test_members_admit_a_rotate_newcomer_only_to_what_they_may_wrap() -> None:
    chain = rotated()
    assert chain.core("bob").admission("dave") == [1]
    assert chain.core("carol").admission("dave") == []  # carol does not hold epoch 1
    assert chain.core("bob").admission("carol") == [0]


def test_nobody_admits_in_a_manual_space() -> None:
    chain = populated(manual_admit=True)
    assert chain.core("alice").admission("carol") == []
    assert chain.core(KEEPER, epochs=[]).admission("carol", as_keeper=True) == []


def test_admission_is_never_for_a_non_member() -> None:
    chain = populated()
    chain.remove("alice", "carol")
    core = chain.core("alice")
    assert core.admission("carol") == []  # removed
    assert core.admission("ghost") == []  # made up
    assert core.admission("alice") == []  # oneself


def test_admission_is_never_for_a_distrusted_member() -> None:
    chain = populated()
    core = chain.core("alice", trust=pins(carol=MALLORY.signing_key))
    assert core.admission("carol") == []
    assert core.admission("bob") == [0]


def test_admission_before_the_log_is_fetched() -> None:
    core = MemberCore(Chain().space_id, "alice", ALICE)
    assert core.admission("bob") == []


# =========================================================================== wrap_for


def test_wrap_for_wraps_to_the_logged_key() -> None:
    chain = populated()
    core = chain.core("alice")
    (wrapped,) = core.wrap_for("carol", [0])
    assert (wrapped.epoch, wrapped.recipient, wrapped.wrapper) == (0, "carol", "alice")
    signer = ALICE.public("alice").signing_public_key()
    assert unwrap_group_key(wrapped, CAROL, signer) == chain.keys[0]
    assert chain.core("carol", epochs=[]).accept_key(wrapped) == chain.keys[0]


def test_wrap_for_a_non_member_is_refused() -> None:
    core = populated().core("alice")
    with pytest.raises(PermissionDeniedError, match="not a member"):
        core.wrap_for("ghost", [0])


def test_wrap_for_a_distrusted_member_is_refused() -> None:
    core = populated().core("alice", trust=pins(carol=MALLORY.signing_key))
    with pytest.raises(IntegrityError):
        core.wrap_for("carol", [0])


def test_wrap_for_an_epoch_not_held_is_refused() -> None:
    chain = populated()
    with pytest.raises(KeyUnavailableError):
        chain.core("alice", epochs=[]).wrap_for("carol", [0])
    no_ring = MemberCore(chain.space_id, "alice", ALICE)
    no_ring.extend_log(chain.events)
    with pytest.raises(KeyUnavailableError):
        no_ring.wrap_for("carol", [0])


def test_wrap_for_an_epoch_the_recipient_may_not_hold_is_refused() -> None:
    chain = rotated()
    with pytest.raises(PermissionDeniedError, match="epoch 0"):
        chain.core("alice").wrap_for("dave", [0])
    with pytest.raises(PermissionDeniedError, match="epoch 1"):
        chain.core("alice").wrap_for("carol", [1])


def test_wrap_for_an_epoch_the_wrapper_may_not_hand_out_is_refused() -> None:
    chain = rotated()
    carol = chain.core("carol", epochs=[0, 1])  # somehow holds epoch 1
    with pytest.raises(PermissionDeniedError):
        carol.wrap_for("dave", [1])


def test_epochs_to_wrap_are_those_held_and_entitled() -> None:
    chain = rotated()
    assert chain.core("alice").epochs_to_wrap("bob") == [0, 1]
    assert chain.core("alice", epochs=[1]).epochs_to_wrap("bob") == [1]
    assert chain.core("carol").epochs_to_wrap("dave") == []
    assert chain.core("alice").epochs_to_wrap("dave") == [1]


def test_wrap_new_epoch_uses_the_logged_keys() -> None:
    chain = populated(policy="rotate")
    core = chain.core("alice")
    new_key = group_key(chain.space_id, 1)
    wraps = core.wrap_new_epoch(new_key, 1, ["alice", "bob"])
    assert [w.recipient for w in wraps] == ["alice", "bob"]
    signer = ALICE.public("alice").signing_public_key()
    assert unwrap_group_key(wraps[1], BOB, signer) == new_key
    with pytest.raises(IntegrityError):
        unwrap_group_key(wraps[1], MALLORY, signer)


# =========================================================================== ReplayGuard


def msg(seq: int, rev: int = 0, sid: str = SID, tag: str = "") -> Message:
    return Message(f"{seq:016x}{rev:08x}{len(tag):08x}", 0, "x", seq, rev, sid)


def refused(why: str | None, *words: str) -> None:
    """A replay refusal (not None, not a mere duplicate), naming ``words``."""
    assert why is not None and why != "duplicate", why
    for word in words:
        assert word in why, why


def test_increasing_sequence_numbers_are_accepted() -> None:
    guard = ReplayGuard()
    for handle, seq in ((1, 10), (3, 11), (4, 50)):
        assert guard.check("bob", msg(seq), handle) is None
    assert guard.marks == {f"bob/{SID}": (4, 50)}


def test_an_old_message_at_a_new_handle_is_refused() -> None:
    guard = ReplayGuard()
    assert guard.check("bob", msg(10), 1) is None
    assert guard.check("bob", msg(11), 2) is None
    refused(guard.check("bob", msg(10), 5), "replayed")
    refused(guard.check("bob", msg(11), 5), "replayed")


def test_out_of_order_sequence_numbers_are_refused() -> None:
    guard = ReplayGuard()
    assert guard.check("bob", msg(10), 5) is None
    assert guard.check("bob", msg(20), 7) is None
    refused(guard.check("bob", msg(9), 6))  # lower than handle 5's
    refused(guard.check("bob", msg(25), 6))  # higher than handle 7's
    refused(guard.check("bob", msg(15), 8))  # lower than handle 7's
    refused(guard.check("bob", msg(11), 4))  # history above handle 5's
    refused(guard.check("bob", msg(10), 6))  # handle 5's number again
    assert guard.check("bob", msg(15), 6) is None  # fits between
    assert guard.check("bob", msg(3), 2) is None  # older history
    assert guard.marks == {f"bob/{SID}": (7, 20)}


def test_a_duplicate_is_flagged() -> None:
    guard = ReplayGuard()
    assert guard.check("bob", msg(10), 5) is None
    assert guard.check("bob", msg(10), 5) == "duplicate"


def test_an_edit_keeps_the_sequence_number_and_raises_the_revision() -> None:
    guard = ReplayGuard()
    assert guard.check("bob", msg(10), 5) is None
    assert guard.check("bob", msg(10, rev=3), 5) is None
    assert guard.check("bob", msg(10, rev=3), 5) == "duplicate"
    refused(guard.check("bob", msg(10, rev=1), 5), "older revision")
    refused(guard.check("bob", msg(10, rev=0), 5), "older revision")
    refused(guard.check("bob", msg(10, rev=3, tag="x"), 5), "older revision")
    refused(guard.check("bob", msg(11, rev=4), 5), "sequence number")
    assert guard.check("bob", msg(10, rev=4), 5) is None


def test_sessions_and_senders_are_independent() -> None:
    guard = ReplayGuard()
    assert guard.check("bob", msg(100), 5) is None
    assert guard.check("bob", msg(1, sid=OTHER_SID), 6) is None  # a new session restarts low
    assert guard.check("carol", msg(100), 7) is None  # another sender, same numbers
    refused(guard.check("carol", msg(1), 8))
    assert guard.marks == {
        f"bob/{SID}": (5, 100),
        f"bob/{OTHER_SID}": (6, 1),
        f"carol/{SID}": (7, 100),
    }


def test_a_restarted_guard_still_refuses_an_old_message_at_a_new_handle() -> None:
    before = ReplayGuard()
    assert before.check("bob", msg(10), 3) is None
    assert before.check("bob", msg(20), 7) is None
    after = ReplayGuard(dict(before.marks))
    refused(after.check("bob", msg(10), 9), "replayed")
    refused(after.check("bob", msg(20), 9), "replayed")
    assert after.check("bob", msg(10), 3) is None  # history re-read at its own handle
    assert after.check("bob", msg(20), 7) is None
    assert after.check("bob", msg(21), 9) is None  # genuinely new
    assert after.check("bob", msg(1, sid=OTHER_SID), 10) is None
    assert after.marks[f"bob/{SID}"] == (9, 21)


def test_marks_are_copied_not_shared() -> None:
    marks = {f"bob/{SID}": (7, 20)}
    guard = ReplayGuard(marks)
    assert guard.check("bob", msg(21), 8) is None
    assert marks == {f"bob/{SID}": (7, 20)}


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["bob", "carol"]),
        st.sampled_from([SID, OTHER_SID]),
        st.integers(1, 40),  # handle
        st.integers(0, 40),  # seq
        st.integers(0, 3),  # rev
        st.sampled_from(["", "x"]),  # a different message id at the same seq and rev
    ),
    max_size=120,
)
_MARKS = st.dictionaries(
    st.sampled_from([f"bob/{SID}", f"carol/{OTHER_SID}"]),
    st.tuples(st.integers(1, 40), st.integers(0, 40)),
)


@settings(max_examples=300)
@given(_OPS, _MARKS, st.booleans(), st.integers(1, 3))
def test_replay_guard_decides_as_the_list_guard_did(
    ops: list[tuple[str, str, int, int, int, str]],
    marks: dict[str, tuple[int, int]],
    newest_first: bool,
    load: int,
) -> None:
    """Same answers, marks and ``changed`` as the guard on plain sorted lists, for any order
    of arrivals (also sorted newest first, the way history is read) and tiny runs."""
    import spacenb.protocol.member as member_module

    if newest_first:
        ops = sorted(ops, key=lambda op: -op[2])
    with (
        mock.patch.object(sessionlog, "LOAD", load),
        mock.patch.object(member_module, "MAX_MARKS", 2),
    ):
        guard, reference = ReplayGuard(marks), ReferenceGuard(marks, max_marks=2)
        for sender, sid, handle, seq, rev, tag in ops:
            message = msg(seq, rev, sid, tag)
            knew = reference.knows(sender, sid, handle)
            assert guard.knows(sender, sid, handle) == knew
            answer = guard.check_revision(sender, message, handle)
            assert answer == (reference.check(sender, message, handle), knew)
            assert guard.marks == reference.marks and guard.changed == reference.changed


# =========================================================================== Delivery


def test_delivery_of_pushes() -> None:
    delivery = Delivery(last_handle=5)
    assert [delivery.on_push(h) for h in (4, 5, 6)] == ["skip", "skip", "deliver"]
    assert delivery.is_new(6) and not delivery.is_new(5)
    delivery.delivered(6)
    assert delivery.on_push(6) == "skip" and delivery.last_handle == 6
    delivery.delivered(3)  # never moves back
    assert delivery.last_handle == 6


def test_delivery_holds_pushes_while_behind() -> None:
    delivery = Delivery(last_handle=5)
    delivery.behind = True
    assert [delivery.on_push(h) for h in (4, 6, 100)] == ["hold", "hold", "hold"]
    delivery.behind = False
    assert delivery.on_push(6) == "deliver"


def test_missed_handles_of_a_history_page() -> None:
    delivery = Delivery(last_handle=5)
    assert delivery.missed([6, 7, 9]) == ([6, 7, 9], True)  # an older page may hold more
    assert delivery.missed([3, 5, 6, 8]) == ([6, 8], False)
    assert delivery.missed([1, 2, 5]) == ([], False)
    assert delivery.missed([]) == ([], False)
    assert Delivery().missed([1, 2]) == ([1, 2], True)


def test_a_member_core_starts_with_nothing_delivered() -> None:
    core = MemberCore(Chain().space_id, "bob", BOB)
    assert core.delivery.last_handle == 0 and not core.delivery.behind


# =========================================================================== attacks


def test_attack_1_keeper_key_pushes_an_epoch_into_a_space_it_was_never_admitted_to() -> None:
    """A relay holding keeper.key signs an epoch event and wraps a key of its own."""
    chain = Chain(policy="rotate", private=True)
    chain.join("bob", "editor")
    core = chain.core("bob")
    relay_key = group_key(chain.space_id, 1, b"relay")
    forged = chain.epoch_event(
        KEEPER, ["alice", "bob", KEEPER], key=relay_key, signer=ident(KEEPER)
    )
    with pytest.raises(IntegrityError, match="no entitled member"):
        core.extend_log([forged])
    assert core.require_state().epoch == 0
    with pytest.raises(IntegrityError, match="no signed event introduced epoch 1"):
        core.accept_key(chain.wrap(1, "bob", KEEPER, key=relay_key))
    with pytest.raises(IntegrityError, match="may not hand out"):
        core.accept_key(chain.wrap(0, "bob", KEEPER, key=relay_key))
    # nor can the keeper add itself: the space is private and nobody invited it
    with pytest.raises(IntegrityError):
        core.extend_log([chain.add_event(KEEPER)])
    with pytest.raises(IntegrityError):
        core.extend_log([chain.add_event(KEEPER, via="invite")])
    assert core.keyring is not None and core.keyring.epochs == [0]


def test_attack_1_keeper_as_a_plain_viewer_cannot_rotate_or_hand_out_a_made_up_key() -> None:
    """In a public space without a keeper, the relay may join under the keeper's name like
    anyone; it still cannot rotate, and a key it makes up does not match the commitment."""
    chain = Chain(policy="rotate")
    chain.join("bob", "editor")
    chain.add(KEEPER)
    chain.add("carol")
    core = chain.core("carol", epochs=[])
    forged = chain.epoch_event(KEEPER, ["alice", "bob", "carol", KEEPER])
    with pytest.raises(IntegrityError, match="no entitled member"):
        core.extend_log([forged])
    made_up = group_key(chain.space_id, 0, b"relay")
    with pytest.raises(IntegrityError, match="committed"):
        core.accept_key(chain.wrap(0, "carol", KEEPER, key=made_up))


@pytest.mark.parametrize("private", [True, False])
def test_attack_1_newcomer_to_a_manual_static_space_refuses_a_keeper_wrapped_key(
    private: bool,
) -> None:
    chain = Chain(manual_admit=True, private=private)
    chain.join("bob")
    assert chain.state.keeper is None and KEEPER not in chain.state.members
    core = chain.core("bob", epochs=[])
    with pytest.raises(IntegrityError, match="may not hand out"):
        core.accept_key(chain.wrap(0, "bob", KEEPER))  # refused even with the right key
    with pytest.raises(IntegrityError):
        core.accept_key(chain.wrap(0, "bob", KEEPER, key=group_key(chain.space_id, 0, b"x")))
    assert core.keyring is not None and not core.keyring.has(0)
    assert core.accept_key(chain.wrap(0, "bob", "alice")) == chain.keys[0]  # by hand: fine


def test_attack_2_relay_claims_automatic_admission_and_a_made_up_joiner() -> None:
    """The relay's space info says manual_admit=False and it pushes join requests; the
    member decides from the log alone."""
    manual = populated(manual_admit=True)
    core = manual.core("alice")
    assert core.require_state().manual_admit
    assert core.admission("carol") == []  # a real joiner: admitted only by hand
    assert core.admission("ghost") == []
    with pytest.raises(PermissionDeniedError):
        core.wrap_for("ghost", [0])

    auto = populated(private=True)
    core = auto.core("alice")
    assert core.admission("ghost") == []  # not in the log
    with pytest.raises(IntegrityError):  # and the relay cannot put it there
        core.extend_log([auto.add_event("ghost", via="invite")])
    assert core.admission("ghost") == []


def test_attack_3_forged_events_are_refused_and_recipients_come_from_the_log() -> None:
    chain = populated(policy="rotate", private=True)
    core = chain.core("bob")
    forged = [
        chain.delete_event("carol", 4, "bob"),  # a viewer deleting bob's message
        chain.delete_event("alice", 4, "bob", signer=MALLORY),
        chain.add_event("mallory", via="invite"),
        chain.event("add", "bob", chain.add_body("mallory"), signer=BOB),  # bob adds mallory
        chain.remove_event("alice", "bob", signer=MALLORY),
        chain.role_event("alice", "carol", "editor", signer=MALLORY),
        chain.epoch_event("alice", signer=MALLORY),
        chain.epoch_event("carol"),  # a viewer rotating
        chain.epoch_event("alice", ["alice", "bob", "carol", "mallory"]),
    ]
    for event in forged:
        with pytest.raises(IntegrityError):
            core.extend_log([event])
    state = core.require_state()
    assert state.head == chain.state.head and sorted(state.members) == ["alice", "bob", "carol"]
    # A rotation wraps to members of the verified log, with the keys it records.
    assert state.rotation_recipients("bob", None) == ["alice", "bob", "carol"]
    with pytest.raises(PermissionDeniedError, match="mallory"):
        state.rotation_recipients("bob", ["carol", "mallory"])
    wraps = core.wrap_new_epoch(group_key(chain.space_id, 1), 1, ["alice", "carol"])
    signer = BOB.public("bob").signing_public_key()
    assert unwrap_group_key(wraps[1], CAROL, signer) == group_key(chain.space_id, 1)


def test_attack_4_an_envelope_signed_with_a_substituted_key_is_rejected() -> None:
    chain = populated()
    core = chain.core("bob")
    envelope, _ = chain.seal("carol", identity=MALLORY)  # the directory's "carol" key
    rejected(core.open_message(envelope, 1), "signature")
    # and the relay cannot swap carol's keys in the log either
    add = chain.events[4]
    body = dict(add.fields(), signing_key=MALLORY.signing_key, ecdh_key=MALLORY.ecdh_key)
    swapped = resign(add, MALLORY, body=canonical_json(body))
    fresh = MemberCore(chain.space_id, "bob", BOB)
    fresh.extend_log(chain.events[:4])
    fresh.extend_log([swapped])  # a different add of "carol": that is another history
    with pytest.raises(ForkError):
        fresh.extend_log(chain.events)
    with pytest.raises(ForkError):
        core.extend_log([swapped])


def test_attack_4_the_key_is_the_one_current_at_the_messages_head() -> None:
    """carol came back with new keys: a message bound to her old span needs the old key,
    one bound to the new span the new key."""
    chain = populated()
    old_head = chain.state.head_seq
    chain.leave("carol")
    chain.add("carol", identity=MALLORY)
    core = chain.core("bob")
    opened(core.open_message(chain.seal("carol", head_seq=old_head, seq=1)[0], 1))
    opened(core.open_message(chain.seal("carol", identity=MALLORY, seq=2)[0], 2))
    rejected(core.open_message(chain.seal("carol", seq=3)[0], 3))
    rejected(core.open_message(chain.seal("carol", head_seq=old_head, identity=MALLORY)[0], 4))


def test_attack_5_replay_after_a_restart() -> None:
    chain = populated()
    core = chain.core("bob")
    first, _ = chain.seal("carol", "pay alice", seq=100)
    second, _ = chain.seal("carol", "done", seq=101)
    opened(core.open_message(first, 5))
    opened(core.open_message(second, 6))
    restarted = chain.core("bob", marks=dict(core.replay.marks))
    rejected(restarted.open_message(first, 9), "replayed")
    rejected(restarted.open_message(second, 10), "replayed")
    third, _ = chain.seal("carol", "new", seq=102)
    opened(restarted.open_message(third, 11))
    rejected(restarted.open_message(first, 12), "replayed")


def test_attack_6_a_removed_member_redeems_the_same_multi_use_link() -> None:
    chain = Chain(private=True)
    token = chain.link("alice", max_uses=5)
    chain.add("bob", token=token)
    chain.add("carol", token=token)
    chain.remove("alice", "carol")
    core = chain.core("bob")
    again = chain.add_event("carol", token=token)  # a fresh, valid proof of the token
    with pytest.raises(IntegrityError, match="old link"):
        core.extend_log([again])
    state = core.require_state()
    assert "carol" not in state.members and state.banned == {"carol"}
    assert core.admission("carol") == []
    with pytest.raises(PermissionDeniedError):
        core.wrap_for("carol", [0])


def test_relay_cannot_backfill_a_member_core_with_a_fabricated_history() -> None:
    """A whole log re-signed by the relay fails at genesis (the space key signs it)."""
    chain = populated()
    forged = [resign(e, MALLORY) for e in chain.events]
    core = MemberCore(chain.space_id, "bob", BOB)
    with pytest.raises(IntegrityError, match="genesis"):
        core.extend_log(forged)


def test_a_state_replayed_from_storage_matches_the_member_view() -> None:
    chain = rotated()
    core = chain.core("dave")
    stored = SpaceState.from_events(chain.events, verify=False)
    state = core.require_state()
    assert (stored.head, stored.epoch, stored.members) == (state.head, state.epoch, state.members)
    assert isinstance(chain.events[-1], StateEvent)
    assert isinstance(core.keyring, Keyring) and core.keyring.epochs == [1]
    assert isinstance(chain.seal("dave")[0], Envelope)


def test_replay_marks_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound, the session heard from longest ago is forgotten."""
    import spacenb.protocol.member as member_module

    monkeypatch.setattr(member_module, "MAX_MARKS", 3)
    guard = ReplayGuard()
    for handle, sid in enumerate(("0" * 15 + d for d in "1234"), start=1):
        assert guard.check("bob", msg(handle, sid=sid), handle) is None
    assert sorted(guard.marks.values()) == [(2, 2), (3, 3), (4, 4)]
