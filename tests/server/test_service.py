"""Several relays on one PostgreSQL database are one service: the first seals the app key
and the keeper and relay identities in the database under its service key; every other
relay opens them with that key (copied ``service.key``, or ``service_key=``), and without
it, or with another, is refused. No secret of the service is in the database in the
clear, in its rows or in the cluster's files."""

from __future__ import annotations

import base64
import shutil
import stat
import urllib.parse

import pytest

from spacenb.exceptions import ServerError
from spacenb.protocol.keys import IdentityKeys
from spacenb.server.app import start_server
from spacenb.server.service import (
    SERVICE_KEY_FILE,
    ServiceSecrets,
    seal_secrets,
    unseal_secrets,
)
from tests.server.backends import Backend
from tests.server.rawclient import RawClient, user


def test_sealed_secrets_open_only_with_their_service_key():
    secrets = ServiceSecrets.generate("app-key")
    key = b"k" * 32
    sealed = seal_secrets(secrets, key)
    opened = unseal_secrets(sealed, key)
    assert opened.app_key == "app-key"
    assert opened.keeper_keys.to_text() == secrets.keeper_keys.to_text()
    assert opened.relay_keys.to_text() == secrets.relay_keys.to_text()
    assert seal_secrets(secrets, key) != sealed  # a fresh IV each time
    with pytest.raises(ServerError, match="does not open"):
        unseal_secrets(sealed, b"x" * 32)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ServerError, match="does not open"):
        unseal_secrets(tampered, key)


async def test_relays_on_one_database_share_the_secrets_the_first_sealed(tmp_path, postgres_url):
    first_dir, second_dir, third_dir = (tmp_path / n for n in ("a", "b", "c"))
    first = await start_server(first_dir, shards=0, database=postgres_url)
    try:
        key_file = first_dir / SERVICE_KEY_FILE
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_text().strip() == first.service_key
        # nothing else secret is kept beside it: the database holds the rest, sealed; the
        # ticket key beside it is public (what shard stores check tickets with)
        assert sorted(p.name for p in first_dir.iterdir()) == ["relay.pub", SERVICE_KEY_FILE]
        assert (first_dir / "relay.pub").read_text().strip() == first.ticket_key
        with pytest.raises(ServerError, match=r"copy service\.key"):
            await start_server(second_dir, shards=0, database=postgres_url)
        wrong = base64.urlsafe_b64encode(b"w" * 32).rstrip(b"=").decode()
        with pytest.raises(ServerError, match="does not open"):
            await start_server(second_dir, shards=0, database=postgres_url, service_key=wrong)
        with pytest.raises(ServerError, match="does not hold a service key"):
            await start_server(second_dir, shards=0, database=postgres_url, service_key="short")
        second = await start_server(
            second_dir, shards=0, database=postgres_url, service_key=first.service_key
        )
        third_dir.mkdir()
        shutil.copy(key_file, third_dir / SERVICE_KEY_FILE)
        third = await start_server(third_dir, shards=0, database=postgres_url)
        try:
            for other in (second, third):
                assert other.app_key == first.app_key
                assert other.keeper.identity.to_text() == first.keeper.identity.to_text()
                assert (
                    other.relay.core.relay_keys.to_text() == first.relay.core.relay_keys.to_text()
                )
                assert other.service_key == first.service_key
            assert not (second_dir / SERVICE_KEY_FILE).exists()  # given, not written
            # one service: a user signed up through one relay signs in through another
            alice_keys = IdentityKeys.generate()
            alice = await user(first, "alice", identity=alice_keys)
            again = await RawClient.open(third.url)
            assert not (await again.auth(third.app_key, "alice", alice_keys)).created
            for client in (alice, again):
                await client.close()
        finally:
            await second.stop()
            await third.stop()
    finally:
        await first.stop()
    # the first relay, restarted on its data directory, serves the same service
    again = await start_server(first_dir, shards=0, database=postgres_url)
    assert again.app_key == first.app_key
    await again.stop()


async def test_no_secret_of_the_service_is_in_the_database_in_the_clear(
    tmp_path, postgres_url, postgres_server
):
    srv = await start_server(tmp_path / "relay", shards=0, database=postgres_url)
    try:
        alice = await user(srv, "alice")
        await alice.create_space(name="general")
        await alice.close()
        needles = {"app key": srv.app_key.encode()}
        for name, keys in (("keeper", srv.keeper.identity), ("relay", srv.relay.core.relay_keys)):
            raw = keys.to_bytes()
            needles |= {
                f"{name} key text": keys.to_text().encode(),
                f"{name} signing scalar": raw[1:33],
                f"{name} ECDH scalar": raw[33:],
            }
        needles["service key"] = srv.service_key.encode()
        needles["service key bytes"] = base64.urlsafe_b64decode(srv.service_key + "=")
        at_rest = Backend("postgresql", tmp_path / "none", postgres_url, postgres_server.cluster)
        (tmp_path / "none").mkdir()
        places = set()
        for where, data in at_rest.stored_bytes():
            places.add(where.split()[0])
            for what, needle in needles.items():
                assert needle not in data, f"{where} holds the {what}"
        assert "table" in places
    finally:
        await srv.stop()


async def test_banners_and_reprs_never_show_the_password(tmp_path, postgres_url):
    parts = urllib.parse.urlsplit(postgres_url)
    with_password = urllib.parse.urlunsplit(
        parts._replace(netloc=f"{parts.username}:hunter2@{parts.hostname}:{parts.port}")
    )
    srv = await start_server(tmp_path, shards=0, database=with_password)
    try:
        assert "hunter2" not in repr(srv) and ":***@" in repr(srv)
        assert "hunter2" not in repr(srv.relay.storage)
    finally:
        await srv.stop()


async def test_service_key_without_a_database_is_refused(tmp_path):
    with pytest.raises(ValueError, match="service_key"):
        await start_server(tmp_path, shards=0, service_key="x")
    with pytest.raises(ValueError, match="postgresql://"):
        await start_server(tmp_path, shards=0, database=str(tmp_path / "db.sqlite3"))
