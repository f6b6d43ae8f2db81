"""PostgresStorage's own checks: database URLs, and what one database shared by several
relays must guarantee, shown with two storage objects (two relays) on one database,
driven from threads so that their transactions really overlap: handles strictly increase
per space and commit in handle order, an append at a seq another relay holds waits and is
then refused with none of its effects, two relays' batches never wait on each other, a
broken connection is reopened and a lost batch reported. The storage API itself is tested
on both backends in test_storage.py, the schema's versions in test_pgschema.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from spacenb.exceptions import ServerError, StaleStateError
from spacenb.protocol.frames import UserEntry
from spacenb.protocol.statelog import SpaceState, make_event
from spacenb.server.postgres import PostgresStorage, check_database_url, redacted_url
from spacenb.server.storage import PendingJoin
from tests.server.backends import dump, sql
from tests.server.records import ALICE, BOB, created, envelope


def opened(url: str, count: int = 1) -> list[PostgresStorage]:
    return [PostgresStorage(url) for _ in range(count)]


def invite(state: SpaceState, member: str) -> Any:
    """An invite of ``member`` on ``state``'s head, signed by alice (not applied)."""
    return make_event(
        ALICE, space_id=state.space_id, seq=state.head_seq + 1, prev=state.head,
        kind="invite", actor="alice", at_us=2,
        body={"member": member, "role": "viewer", "signing_key": None, "ecdh_key": None},
    )  # fmt: skip


# --------------------------------------------------------------------------- urls


def test_database_urls_and_passwords():
    assert check_database_url("postgresql://h/db") == "postgresql://h/db"
    for bad in ("sqlite:///x.db", "/var/lib/spacenb", "host=h dbname=db"):
        with pytest.raises(ValueError, match="postgresql://"):
            check_database_url(bad)
    assert redacted_url("postgresql://u:hunter2@h:5/db") == "postgresql://u:***@h:5/db"
    assert redacted_url("postgresql://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ServerError, match="cannot connect") as refused:
        PostgresStorage("postgresql://u:hunter2@127.0.0.1:1/db", connect_timeout=1)
    assert "hunter2" not in str(refused.value) and "u:***@" in str(refused.value)


# --------------------------------------------------------------------------- several relays


def test_an_append_at_a_seq_another_relay_holds_waits_and_is_refused(postgres_url):
    (relay_b,) = opened(postgres_url)
    space = created(relay_b)
    first, second = invite(space.state, "bob"), invite(space.state, "carol")
    before = dump(postgres_url)
    for outcome in ("commit", "rollback"):
        relay_a = psycopg.connect(postgres_url)  # relay A, mid-transaction at seq 1
        relay_a.execute(
            "INSERT INTO state_events VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (first.space_id, first.seq, first.prev, first.kind, first.actor, first.at_us,
             first.body, first.signature),
        )  # fmt: skip
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                relay_b.append_event,
                second,
                keys=[space.key("carol")],
                join=PendingJoin(space.id, "carol", "viewer"),
                now_us=5,
            )
            time.sleep(0.3)
            assert not waiting.done()  # B waits for A's transaction to end
            getattr(relay_a, outcome)()
            relay_a.close()
            if outcome == "commit":
                with pytest.raises(StaleStateError, match="seq 1"):
                    waiting.result(10)
                after = dump(postgres_url)
                assert relay_b.state_events(space.id, since=1) == [first]
                for table in ("wrapped_keys", "join_requests", "messages"):
                    assert after[table] == before[table]  # none of B's effects
                sql(postgres_url, "DELETE FROM state_events WHERE seq = 1")
            else:
                waiting.result(10)  # A gave up: B's event is the one at seq 1
                assert relay_b.state_events(space.id, since=1) == [second]
                assert relay_b.has_join_request(space.id, "carol")


def test_racing_appends_from_two_relays_store_exactly_one_each_time(postgres_url):
    relays = opened(postgres_url, 2)
    space = created(relays[0])
    state = SpaceState(space.genesis)

    def append(relay: PostgresStorage, event: Any, start: threading.Barrier) -> str:
        start.wait()
        join = PendingJoin(space.id, event.fields()["member"], "viewer")
        try:
            relay.append_event(event, join=join, now_us=event.seq)
        except StaleStateError:
            return "refused"
        return "stored"

    with ThreadPoolExecutor(2) as pool:
        for round in range(15):
            events = [invite(state, f"u{round}x{i}") for i in range(2)]
            start = threading.Barrier(2)
            outcomes = list(pool.map(append, relays, events, [start, start]))
            assert sorted(outcomes) == ["refused", "stored"]
            (winner,) = relays[0].state_events(space.id, since=state.head_seq + 1)
            assert winner == events[outcomes.index("stored")]
            state.apply(winner)
    winners = [e.fields()["member"] for e in state.events[1:]]
    assert sorted(p.username for p in relays[1].join_requests()) == sorted(winners)


def test_handles_strictly_increase_per_space_across_relays_and_commit_in_order(postgres_url):
    relays = opened(postgres_url, 3)
    space = created(relays[0])
    reader = relays[2]
    per_relay, batches, batch = 120, 12, 10
    seen: list[set[int]] = []
    done = threading.Event()

    def send(i: int) -> list[int]:
        handles = []
        for _ in range(batches):
            for _ in range(batch):
                # a clock far behind the other relay's: the counter decides
                handles.append(relays[i].add_message(envelope(space.id), 1000 if i else 5))
            relays[i].commit()
        return handles

    def watch() -> None:
        while not done.is_set():
            page, _ = reader.history(space.id, None, 1000)
            seen.append({m.handle for m in page})

    with ThreadPoolExecutor(3) as pool:
        watching = pool.submit(watch)
        sent = list(pool.map(send, range(2)))
        done.set()
        watching.result()
    for handles in sent:
        assert handles == sorted(handles) and len(set(handles)) == per_relay
    everything = sorted(sent[0] + sent[1])
    assert len(set(everything)) == 2 * per_relay
    page, _ = reader.history(space.id, None, 1000)
    assert [m.handle for m in page] == everything
    # a reader never sees a handle before every smaller one: catching up by handle
    # from the newest seen loses nothing
    for snapshot in seen:
        if snapshot:
            assert snapshot == {h for h in everything if h <= max(snapshot)}
    assert len(seen) > 1


def test_batches_over_several_spaces_never_wait_on_each_other(postgres_url):
    relays = opened(postgres_url, 2)
    spaces = [created(relays[0], name) for name in ("x", "y")]
    both_hold = threading.Barrier(2)

    def send(i: int) -> list[int]:
        mine, theirs = spaces[i], spaces[1 - i]
        first = relays[i].add_message(envelope(mine.id), 10)  # holds its own space
        both_hold.wait()
        second = relays[i].add_message(envelope(theirs.id), 10)  # the other relay holds it
        relays[i].commit()
        return [first, second]

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(send, range(2)))
    assert time.monotonic() - started < 5
    for space in spaces:
        assert len(relays[0].history(space.id, None, 10)[0]) == 2
    assert all(len(set(r)) == 2 for r in results)


def test_a_broken_connection_is_reopened_and_its_lost_batch_reported(postgres_url):
    (storage,) = opened(postgres_url)
    space = created(storage)
    kept = storage.add_message(envelope(space.id), 10)
    storage.commit()
    storage.add_message(envelope(space.id), 10)  # in the open batch
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'spacenb-relay' AND datname = current_database()"
        )
    with pytest.raises((psycopg.OperationalError, ServerError)):
        storage.commit()
    storage.rollback()
    assert [m.handle for m in storage.history(space.id, None, 10)[0]] == [kept]
    user = UserEntry("bob", BOB.signing_key, BOB.ecdh_key)
    assert storage.register_user(user, 1) == (user, True)
    # a batch open when the connection is found broken is reported by the next commit
    storage.add_message(envelope(space.id), 10)
    sql(
        postgres_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'spacenb-relay' AND datname = current_database()",
    )
    # a read finds the connection broken, and is made again on a new one
    assert [m.handle for m in storage.history(space.id, None, 10)[0]] == [kept]
    assert storage.get_users(["bob"]) == [user]
    with pytest.raises(ServerError, match="1 messages unsaved"):
        storage.commit()
    storage.commit()  # reported once
    assert [m.handle for m in storage.history(space.id, None, 10)[0]] == [kept]


def test_a_read_on_a_connection_that_broke_while_idle_is_made_on_a_new_one(postgres_url):
    """After a PostgreSQL restart the relay's idle connection is gone, and it learns so only
    when next used: that request (a history read, in the restart fault test) must not fail."""
    (storage,) = opened(postgres_url)
    space = created(storage)
    kept = storage.add_message(envelope(space.id), 10)
    storage.commit()
    sql(
        postgres_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'spacenb-relay' AND datname = current_database()",
    )
    assert [m.handle for m in storage.history(space.id, None, 10)[0]] == [kept]
    assert storage.last_handle(space.id) == kept


def test_service_secrets_are_stored_once(postgres_url):
    relays = opened(postgres_url, 2)
    assert relays[0].sealed_service_secrets() is None
    assert relays[0].store_service_secrets(b"first") == b"first"
    assert relays[1].store_service_secrets(b"second") == b"first"
    assert relays[1].sealed_service_secrets() == b"first"
