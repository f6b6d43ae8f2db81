"""The storage API on both backends (SQLite and PostgreSQL, the ``backend`` fixture):
users, spaces and their state logs, appending with effects in one transaction, join
requests, wrapped keys, message handles, history, group commit. Each backend's own checks
(schema files, several relays on one database) are in test_sqlite.py and test_postgres.py."""

from __future__ import annotations

import pytest

from spacenb.exceptions import ChannelExistsError, StaleStateError
from spacenb.protocol.envelope import Envelope
from spacenb.protocol.frames import ChannelEntry, UserEntry
from spacenb.protocol.keys import SpaceKeyPair
from spacenb.protocol.statelog import SpaceState, make_event
from spacenb.server.storage import PendingJoin, SpaceRecord
from tests.server.records import ALICE, BOB, Space, created, envelope

# --------------------------------------------------------------------------- users


def test_users_first_come_first_bound(backend):
    storage = backend.open()
    first = UserEntry("alice", ALICE.signing_key, ALICE.ecdh_key)
    assert storage.register_user(first, 1) == (first, True)
    assert storage.register_user(UserEntry("alice", BOB.signing_key, BOB.ecdh_key), 2) == (
        first,
        False,
    )
    names = [f"u{i:04d}" for i in range(1200)]  # more than one query's worth of names
    for name in names[::3]:
        storage.register_user(UserEntry(name, BOB.signing_key, BOB.ecdh_key), 3)
    found = storage.get_users(reversed([*names, "alice", "nobody"]))
    assert [u.username for u in found] == ["alice", *names[::3]]


# --------------------------------------------------------------------------- spaces, logs


def test_names_sort_by_code_point_and_nul_finds_nothing(backend):
    storage = backend.open()
    names = ["Zed", "alice", "bob", "bob2", "\u00e9lise", "\u4e2d"]  # SQLite's order
    for name in reversed(names):
        storage.register_user(UserEntry(name, BOB.signing_key, BOB.ecdh_key), 1)
    assert [u.username for u in storage.get_users(names)] == names
    for name in names:
        created(storage, f"#{name}")
    assert [c.name for c in storage.list_public_channels()] == [f"#{n}" for n in names]
    # text no username, id or name can hold (U+0000) is simply not found
    assert storage.get_users(["bob\x00", "alice"]) == storage.get_users(["alice"])
    assert storage.resolve_channel("#bob\x00") is None
    assert storage.get_space("spc.\x00") is None


def test_create_space_and_the_channel_directory(backend):
    storage = backend.open()
    general = created(storage, "general")
    secret = created(storage, "secret", private=True)
    unnamed = created(storage, None)
    assert storage.get_space(general.id) == general.record
    assert storage.get_space(unnamed.id) == SpaceRecord(unnamed.id, None, False, 1)
    assert storage.get_space(SpaceKeyPair.generate().space_id) is None
    assert storage.resolve_channel("general") == general.id
    assert storage.resolve_channel("secret") == secret.id  # resolvable, never listed
    assert storage.resolve_channel("nope") is None
    assert storage.list_public_channels() == [ChannelEntry("general", general.id)]
    assert storage.state_events(general.id) == [general.genesis]
    assert [k.recipient for k in storage.keys_for(general.id, "alice")] == ["alice"]


def test_a_taken_name_or_id_stores_nothing(backend):
    storage = backend.open()
    general = created(storage, "general")
    before = backend.dump()
    again = Space("general")
    with pytest.raises(ChannelExistsError, match="general"):
        storage.create_space(again.record, again.genesis, [again.key("alice", identity=ALICE)])
    with pytest.raises(ChannelExistsError, match="id"):
        storage.create_space(
            SpaceRecord(general.id, "other", False, 5), general.genesis, [general.key("bob")]
        )
    assert backend.dump() == before
    assert storage.get_space(again.id) is None and storage.state_events(again.id) == []
    assert storage.resolve_channel("other") is None


def test_state_events_in_order_from_since_with_a_limit(backend):
    storage = backend.open()
    space, other = created(storage), created(storage, "other")
    events = [space.genesis]
    for name in ("bob", "carol", "dave", "erin"):
        event = space.event("invite", {"member": name, "role": "viewer", "signing_key": None,
                                       "ecdh_key": None})  # fmt: skip
        storage.append_event(event, now_us=5)
        events.append(event)
    assert storage.state_events(space.id) == events
    assert storage.state_events(space.id, since=2) == events[2:]
    assert storage.state_events(space.id, since=1, limit=2) == events[1:3]
    assert storage.state_events(space.id, since=9) == []
    assert storage.state_events(other.id) == [other.genesis]
    # what is stored replays into the same verified state
    assert SpaceState.from_events(storage.state_events(space.id)).head == space.state.head


def test_append_event_stores_its_effects_in_one_transaction(backend):
    storage = backend.open()
    space = created(storage)
    add = space.add_bob()
    storage.append_event(space.state.events[1])
    storage.append_event(add, join=PendingJoin(space.id, "bob", "viewer"), now_us=7)
    assert storage.join_requests() == [PendingJoin(space.id, "bob", "viewer")]
    assert storage.has_join_request(space.id, "bob")
    handle = storage.add_message(envelope(space.id, "bob"), 100)
    delete = space.event("delete", {"handle": handle, "author": "bob"}, actor="bob")
    storage.append_event(delete, delete_handle=handle)  # also commits the message batch
    assert storage.history(space.id, None, 10) == ([], None)
    assert storage.message_source(space.id, handle) is None
    leave = space.event("leave", {"member": "bob"}, actor="bob")
    storage.append_event(leave, close_join="bob", keys=[space.key("alice", 0, ALICE)])
    assert storage.join_requests() == [] and not storage.has_join_request(space.id, "bob")
    rows = backend.dump()
    assert [r[1] for r in rows["state_events"]] == [0, 1, 2, 3, 4]
    assert [r[2] for r in rows["spaces"]] == [handle]  # deleted_upto (SQLite), last_handle
    # a deleted handle is never handed out again
    assert storage.add_message(envelope(space.id), 50) == handle + 1


def test_append_at_a_taken_seq_raises_stale_state_and_changes_nothing(backend):
    storage = backend.open()
    space = created(storage)
    fork = SpaceState(space.genesis)  # another member's view: the same head, another event
    add = space.add_bob()
    invite = space.state.events[1]
    storage.append_event(invite)
    storage.append_event(add, join=PendingJoin(space.id, "bob", "viewer"), now_us=7)
    handle = storage.add_message(envelope(space.id, "bob"), 100)
    storage.commit()
    before = backend.dump()
    fork.apply(invite)
    taken = make_event(
        ALICE, space_id=space.id, seq=2, prev=fork.head, kind="invite", actor="alice", at_us=3,
        body={"member": "carol", "role": "viewer", "signing_key": None, "ecdh_key": None},
    )  # fmt: skip
    with pytest.raises(StaleStateError, match="seq 2"):
        storage.append_event(
            taken,
            keys=[space.key("bob")],
            join=PendingJoin(space.id, "carol", "viewer"),
            close_join="bob",
            delete_handle=handle,
            now_us=9,
        )
    assert backend.dump() == before
    assert storage.state_events(space.id) == [space.genesis, invite, add]
    assert storage.has_join_request(space.id, "bob") and storage.keys_for(space.id, "bob") == []
    assert storage.message_source(space.id, handle) == "bob"
    # the storage is usable: the event that follows the head is taken
    storage.append_event(space.event("role", {"member": "bob", "role": "editor"}))
    assert len(storage.state_events(space.id)) == 4


def test_join_requests_and_wrapped_keys(backend):
    storage = backend.open()
    space, other = created(storage), created(storage, "other")
    for sp, name, at in ((space, "carol", 30), (space, "bob", 10), (other, "bob", 20),
                         (space, "dave", 10)):  # fmt: skip
        body = {"member": name, "role": "viewer", "signing_key": None, "ecdh_key": None}
        storage.append_event(
            sp.event("invite", body), join=PendingJoin(sp.id, name, "viewer"), now_us=at
        )
    assert [(p.space_id, p.username) for p in storage.join_requests()] == [
        (space.id, "bob"), (space.id, "dave"), (other.id, "bob"), (space.id, "carol"),
    ]  # fmt: skip
    assert [p.username for p in storage.join_requests(other.id)] == ["bob"]
    assert not storage.has_join_request(other.id, "carol")
    first = space.key("bob")
    storage.add_keys([first])  # no admission: the request stays open
    assert storage.has_join_request(space.id, "bob")
    storage.add_keys([space.key("bob"), space.key("bob", epoch=2)], admitted="bob")
    assert not storage.has_join_request(space.id, "bob")
    assert storage.has_join_request(other.id, "bob")  # another space's request stays
    keys = storage.keys_for(space.id, "bob")
    assert [k.epoch for k in keys] == [0, 2] and keys[0] == first  # the first wrap is kept
    assert storage.keys_for(other.id, "bob") == [] and storage.keys_for(space.id, "zed") == []


def test_handles_increase_across_restarts_even_past_deletions(backend):
    storage = backend.open()
    space = created(storage)
    assert [storage.add_message(envelope(space.id), 100) for _ in range(3)] == [100, 101, 102]
    delete = space.event("delete", {"handle": 102, "author": "alice"})
    storage.append_event(delete, delete_handle=102)
    storage.close()
    storage = backend.open()
    assert storage.add_message(envelope(space.id), 50) == 103
    assert storage.add_message(envelope(space.id), 1000) == 1000
    # deleting a handle with no message leaves the high-water mark alone
    storage.append_event(space.event("delete", {"handle": 5000, "author": "alice"}),
                         delete_handle=5000)  # fmt: skip
    storage.close()
    storage = backend.open()
    assert storage.add_message(envelope(space.id), 1) == 1001


def test_history_pages_and_envelopes_round_trip(backend):
    storage = backend.open()
    space = created(storage)
    sent = [envelope(space.id, text=bytes([65 + i])) for i in range(5)]
    handles = [storage.add_message(e, 10) for e in sent]
    page, cursor = storage.history(space.id, None, 2)
    assert [m.handle for m in page] == handles[3:] and cursor == handles[3]
    page, cursor = storage.history(space.id, cursor, 3)
    assert [m.handle for m in page] == handles[:3] and cursor is None
    assert storage.history(space.id, handles[0], 3) == ([], None)
    assert page[0].envelope == sent[0]  # head_seq and head included
    assert storage.history(created(storage, "empty").id, None, 5) == ([], None)


def test_free_text_envelope_fields_round_trip(backend):
    storage = backend.open()
    space = created(storage)
    odd = Envelope("msg", "alice", space.id, "sub\x00j\u00e9ct \U0001f600", 0, "text/\x00",
                   3, b"h" * 32, b"\0" * 12, b"\0" * 40, b"s" * 64)  # fmt: skip
    handle = storage.add_message(odd, 10)
    storage.commit()
    assert storage.history(space.id, None, 5)[0][0].envelope == odd
    edited = envelope(space.id)
    storage.replace_message(handle, edited)
    assert storage.history(space.id, None, 5)[0][0].envelope == edited


def test_replace_message_and_message_source(backend):
    storage = backend.open()
    space = created(storage)
    handle = storage.add_message(envelope(space.id, "bob"), 10)
    assert storage.message_source(space.id, handle) == "bob"
    assert storage.message_source(space.id, handle + 1) is None
    assert storage.message_source(created(storage, "x").id, handle) is None
    edited = envelope(space.id, "bob", text=b"e")
    assert storage.replace_message(handle, edited)
    assert not storage.replace_message(handle + 1, edited)
    (stored,) = storage.history(space.id, None, 5)[0]
    assert (stored.handle, stored.envelope) == (handle, edited)


def test_messages_are_committed_in_batches(backend):
    storage = backend.open()
    space = created(storage)
    first = [storage.add_message(envelope(space.id), 10) for _ in range(3)]
    assert backend.dump()["messages"] == []  # not committed yet
    storage.commit()
    assert len(backend.dump()["messages"]) == 3
    lost = storage.add_message(envelope(space.id), 10)
    storage.rollback()
    assert len(backend.dump()["messages"]) == 3 and storage.message_source(space.id, lost) is None
    storage.add_message(envelope(space.id), 10)
    storage.register_user(UserEntry("bob", BOB.signing_key, BOB.ecdh_key), 1)  # commits first
    assert len(backend.dump()["messages"]) == 4
    newest = storage.add_message(envelope(space.id), 10)
    assert newest > lost > first[-1]  # handles grow even past a rolled-back batch
    storage.commit()
    storage.commit()  # a no-op without a batch
    storage.rollback()
    assert len(backend.dump()["messages"]) == 5


def test_channel_pages_scoped_names_and_message_usage(backend):
    """What the relay's limits read: public channels a page at a time, channels registered
    under a prefix (private names scoped to their owner), a user's stored messages and
    their ciphertext bytes."""
    storage = backend.open()
    spaces = {name: created(storage, name) for name in ("b", "a", "d", "c")}
    secret = created(storage, "board\x1falice", private=True)
    also = created(storage, "board\x1fmallory", private=True)
    created(storage, "boardroom")
    assert [c.name for c in storage.public_channels_page(None, 2)] == ["a", "b"]
    assert [c.name for c in storage.public_channels_page("b", 10)] == ["boardroom", "c", "d"]
    assert sorted(storage.channels_named_under("board\x1f")) == sorted([secret.id, also.id])
    assert storage.channels_named_under("nothing\x1f") == []
    assert storage.message_usage("alice") == (0, 0)
    for text in (b"x", b"yy"):
        storage.add_message(envelope(spaces["a"].id, text=text), 1)
    storage.add_message(envelope(spaces["b"].id, source="bob"), 1)
    storage.commit()
    assert storage.message_usage("alice") == (2, 16 + 32)
    assert storage.message_usage("bob") == (1, 16)
