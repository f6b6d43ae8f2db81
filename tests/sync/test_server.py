"""``spacenb.serve(database=...)``: the embedded relay on PostgreSQL from blocking code, a
second relay on the same database given the first one's service key, and a client of each
seeing the other's messages."""

from __future__ import annotations

import spacenb
from spacenb.sync.testing import wait_until


def test_two_embedded_relays_on_one_database(postgres_url: str) -> None:
    with spacenb.serve(shards=0, database=postgres_url) as first:
        assert first.database == postgres_url and first.service_key
        assert "database=" in repr(first) and first.service_key not in repr(first)
        with spacenb.serve(
            shards=0, database=postgres_url, service_key=first.service_key
        ) as second:
            assert second.app_key == first.app_key
            alice = spacenb.connect(first.url, app_key=first.app_key, username="alice",
                                    keystore=":memory:")  # fmt: skip
            bob = spacenb.connect(second.url, app_key=second.app_key, username="bob",
                                  keystore=":memory:")  # fmt: skip
            try:
                general = alice.space.create_channel("general")
                general.send_message("hello from the first relay")
                bobs = bob.space.join_channel("general")  # the second relay's keeper admits
                wait_until(lambda: len(bobs.history()) == 1, what="alice's message")
                assert bobs.history()["body"].tolist() == ["hello from the first relay"]
            finally:
                alice.close()
                bob.close()


def test_a_facade_client_fails_over_to_another_relay(postgres_url: str, tmp_path) -> None:
    """``spacenb.connect([url_a, url_b])``: on A; A stops; the client moves to B, where its
    channel, its history and sending carry on (``client.url`` says where it is)."""
    first = spacenb.serve(shards=0, database=postgres_url)
    with spacenb.serve(shards=0, database=postgres_url, service_key=first.service_key) as second:
        urls = [first.url, second.url]
        bob = spacenb.connect(urls, app_key=first.app_key, username="bob",
                              keystore=tmp_path / "ks")  # fmt: skip
        try:
            assert (bob.url, bob.urls) == (first.url, tuple(urls))
            notes = bob.space.create_channel("notes")
            notes.send_message("on the first relay")
            first.stop()
            wait_until(lambda: bob.url == second.url, what="the move to the second relay")
            notes.send_message("on the second relay")
            wait_until(lambda: len(notes.history()) == 2, what="both messages")
            assert notes.history()["body"].tolist() == ["on the first relay", "on the second relay"]
        finally:
            bob.close()
            first.stop()
