"""The PostgreSQL schema's versions (:mod:`spacenb.server.pgschema`): a new database is
made at the current version, an older one migrated, another version or another program's
tables refused untouched, and relays starting together migrate once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from spacenb.exceptions import UnsupportedVersionError
from spacenb.server.pgschema import MIGRATIONS, SCHEMA_VERSION
from spacenb.server.postgres import PostgresStorage
from tests.server.backends import dump, sql
from tests.server.records import created, envelope

TABLES = {"schema_version", "users", "spaces", "channels", "state_events", "wrapped_keys",
          "join_requests", "messages", "message_ids", "service_secrets"}  # fmt: skip


def test_schema_is_versioned_and_other_versions_are_refused_untouched(postgres_url):
    PostgresStorage(postgres_url).close()
    rows = dump(postgres_url)
    assert set(rows) == TABLES and rows["schema_version"] == [(SCHEMA_VERSION,)]
    assert SCHEMA_VERSION == 3 and set(MIGRATIONS) == {0, 2}
    PostgresStorage(postgres_url).close()  # reopening migrates nothing
    assert dump(postgres_url) == rows
    for version, words in ((99, "schema version 99.*newer"), (1, "schema version 1")):
        sql(postgres_url, f"UPDATE schema_version SET version = {version}")
        before = dump(postgres_url)
        with pytest.raises(UnsupportedVersionError, match=words) as refused:
            PostgresStorage(postgres_url)
        assert "new database" in str(refused.value)
        assert dump(postgres_url) == before


def test_a_schema_2_database_is_migrated_and_its_stored_signatures_recorded(postgres_url):
    storage = PostgresStorage(postgres_url)
    space = created(storage)
    kept = [storage.add_message(envelope(space.id, signature=bytes([i]) * 64), 10) for i in (1, 2)]
    storage.commit()
    storage.close()
    # back to version 2, with a signature stored twice (as a retry could, before version 3)
    sql(postgres_url, "DROP TABLE message_ids; UPDATE schema_version SET version = 2")
    sql(
        postgres_url,
        "INSERT INTO messages SELECT space_id, handle + 100, source, subject, epoch, "
        "content_type, head_seq, head, iv, ciphertext, signature FROM messages",
    )
    storage = PostgresStorage(postgres_url)
    assert dump(postgres_url)["schema_version"] == [(SCHEMA_VERSION,)]
    assert [storage.message_handle(space.id, bytes([i]) * 64) for i in (1, 2)] == kept  # oldest
    assert storage.add_message(envelope(space.id, signature=b"\1" * 64), 20) == kept[0]
    storage.close()


def test_a_database_of_something_else_is_refused_untouched(postgres_url):
    sql(postgres_url, "CREATE TABLE users (id INTEGER PRIMARY KEY)")
    with pytest.raises(UnsupportedVersionError, match=r"users.*not a spacenb database"):
        PostgresStorage(postgres_url)
    assert dump(postgres_url) == {"users": []}


def test_relays_starting_together_migrate_once(postgres_url):
    with ThreadPoolExecutor(4) as pool:
        storages = list(pool.map(lambda _: PostgresStorage(postgres_url), range(4)))
    for storage in storages:
        storage.close()
    assert dump(postgres_url)["schema_version"] == [(SCHEMA_VERSION,)]
