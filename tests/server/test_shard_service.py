"""Shard stores as their own service: ``spacenb shard-store`` processes, a relay that uses
them (``start_server(shard_stores=)``, ``spacenb serve --shard-store``), tickets of another
service refused, a store without a ticket key refusing to start, and stores SIGKILLed
under a file: any k still read it, and with n - k + 1 gone the error names the stores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import spacenb.aio as aio
from spacenb.exceptions import NotEnoughSharesError, PermissionDeniedError, UsageError
from spacenb.server.app import TICKET_KEY_FILE, load_or_create_identity, start_server
from spacenb.server.shards import ShardStore
from tests.server.test_cli import read_banner, spacenb, stop
from tests.storeproc import ShardStoreProcess

ROOT = Path(__file__).resolve().parents[2]
N, K = 3, 2
DATA = os.urandom(200_000)


def ticket_key_of(relay_dir: Path) -> str:
    """The ticket key a relay with this data directory will sign with (made now)."""
    relay_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return load_or_create_identity(relay_dir / "relay.key").signing_key


def store_processes(root: Path, key_args: list[str], count: int = N) -> list[ShardStoreProcess]:
    stores: list[ShardStoreProcess] = []
    try:
        for j in range(count):
            stores.append(ShardStoreProcess(root / f"store{j}", *key_args).start())
    except BaseException:
        for store in stores:
            store.kill()
        raise
    return stores


@pytest.fixture(scope="module")
def shared_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """Three store processes that accept the tickets of the relay in ``relay`` (its key
    given once on the command line, once as ``relay.pub``-style file); stopped after."""
    root = tmp_path_factory.mktemp("stores")
    key = ticket_key_of(root / "relay")
    (root / "keys.pub").write_text(f"# the service's ticket key\n{key}\n")
    stores = store_processes(root, ["--relay-key", key], N - 1)
    stores += store_processes(root / "byfile", ["--relay-key-file", str(root / "keys.pub")], 1)
    try:
        yield root / "relay", [store.url for store in stores]
    finally:
        for store in stores:
            assert store.stop() == 0, store.err.read_text()


async def sign_in(srv, username: str) -> aio.AsyncClient:
    return await aio.connect(srv.url, app_key=srv.app_key, username=username, keystore=":memory:")


async def channel_pair(srv):
    alice, bob = await sign_in(srv, "alice"), await sign_in(srv, "bob")
    a = await alice.space.create_channel("files")
    b = await bob.space.join_channel("files")
    return (alice, bob), a, b


async def test_a_relay_uses_shard_store_processes(shared_stores):
    relay_dir, urls = shared_stores
    async with await start_server(relay_dir, shard_stores=urls, shards_needed=K) as srv:
        assert srv.shard_urls == tuple(urls)
        assert srv.shard_stores == ()  # no store of its own was started
        assert not (relay_dir / "shards").exists()
        assert (relay_dir / TICKET_KEY_FILE).read_text().strip() == srv.ticket_key
        clients, a, b = await channel_pair(srv)
        try:
            assert clients[1].readable_stores() == frozenset(urls)  # announced at sign-in
            manifest, stat = await a.put_file(DATA, name="data.bin")
            assert list(manifest.stores) == urls
            assert set(stat.stores_used) == set(urls) and (stat.n, stat.k) == (N, K)
            data, _ = await b.get_file(manifest)
            assert data == DATA
        finally:
            for client in clients:
                await client.close()


async def test_a_ticket_from_a_relay_of_another_service_is_refused(shared_stores, tmp_path):
    _, urls = shared_stores
    async with await start_server(tmp_path / "other", shard_stores=urls, shards_needed=K) as srv:
        clients, a, _ = await channel_pair(srv)
        try:
            with pytest.raises(PermissionDeniedError, match="ticket refused"):
                await a.put_file(DATA, name="data.bin")
        finally:
            for client in clients:
                await client.close()


async def test_stores_killed_under_a_file(tmp_path):
    """SIGKILL one store: the file still reads from the other two; SIGKILL a second
    (n - k + 1 = 2 gone): NotEnoughSharesError naming both dead stores."""
    relay_dir = tmp_path / "relay"
    stores = store_processes(tmp_path, ["--relay-key", ticket_key_of(relay_dir)])
    urls = [store.url for store in stores]
    try:
        async with await start_server(relay_dir, shard_stores=urls, shards_needed=K) as srv:
            clients, a, b = await channel_pair(srv)
            try:
                manifest, _ = await a.put_file(DATA, name="data.bin")
                stores[0].kill()
                data, stat = await b.get_file(manifest)
                assert data == DATA
                assert urls[0] in stat.stores_failed
                stores[2].kill()
                with pytest.raises(NotEnoughSharesError) as caught:
                    await b.get_file(manifest)
                message = str(caught.value)
                assert urls[0] in message and urls[2] in message, message
            finally:
                for client in clients:
                    await client.close()
    finally:
        for store in stores:
            store.kill()


def test_a_store_without_a_ticket_key_refuses_to_start(tmp_path):
    for args in ([], ["--relay-key", "sig.abc"], ["--relay-key-file", str(tmp_path / "none")]):
        store = ShardStoreProcess(tmp_path / "store", *args)
        proc = subprocess.run(store.command(), capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)  # fmt: skip
        assert proc.returncode == 1, proc
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spacenb shard-store: error: "), lines
        assert "ticket key" in lines[0]
        assert not (tmp_path / "store").exists()  # nothing was made


def test_a_store_object_needs_a_key(tmp_path):
    with pytest.raises(UsageError, match="ticket key"):
        ShardStore(tmp_path, [])


@pytest.mark.parametrize("bad", [[], "ws://one:1", ["http://x:1"], ["ws://a:1", "ws://a:1"], [3]])
async def test_shard_store_urls_are_checked(bad, tmp_path):
    with pytest.raises(UsageError, match="shard"):
        await start_server(tmp_path, shard_stores=bad)


async def test_serve_with_shard_store_processes(shared_stores, tmp_path):
    """``spacenb serve --shard-store`` as a process: it names the stores, starts none,
    prints its ticket key; ``--shards`` beside ``--shard-store`` is a one-line error."""
    _, urls = shared_stores
    args = [arg for url in urls for arg in ("--shard-store", url)]
    proc = spacenb("serve", "--data", str(tmp_path / "relay"), "--port", "0",
                   "--shards-needed", str(K), *args)  # fmt: skip
    try:
        banner = "\n".join(read_banner(proc))
        assert f"{N} shard stores of their own, any {K} rebuild a file" in banner
        assert all(url in banner for url in urls)
        key = re.search(r"ticket key: (sig\.\S+)", banner).group(1)  # type: ignore[union-attr]
        assert (tmp_path / "relay" / TICKET_KEY_FILE).read_text().strip() == key
    finally:
        stop(proc)
    assert not (tmp_path / "relay" / "shards").exists()
    both = subprocess.run(
        [sys.executable, "-m", "spacenb", "serve", "--port", "0", "--shards", "3", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert both.returncode == 1
    assert both.stderr.count("\n") == 1 and "--shard-store" in both.stderr


async def test_stores_accept_the_tickets_of_every_relay_of_a_service(tmp_path, postgres_url):
    """The stores are given the ticket key the first relay of a PostgreSQL service prints;
    another relay of that service, started later with ``shard_stores=``, signs tickets the
    stores accept (every relay of a service signs with the same sealed identity)."""
    first = await start_server(tmp_path / "first", database=postgres_url, shards=0)
    stores: list[ShardStoreProcess] = []
    try:
        stores = store_processes(tmp_path, ["--relay-key", first.ticket_key], 2)
        urls = [store.url for store in stores]
        async with await start_server(
            tmp_path / "second", database=postgres_url, service_key=first.service_key,
            shard_stores=urls, shards_needed=1,
        ) as second:  # fmt: skip
            assert second.ticket_key == first.ticket_key
            clients, a, b = await channel_pair(second)
            try:
                manifest, _ = await a.put_file(DATA, name="data.bin")
                assert (await b.get_file(manifest))[0] == DATA
            finally:
                for client in clients:
                    await client.close()
    finally:
        for store in stores:
            store.kill()
        await first.stop()
