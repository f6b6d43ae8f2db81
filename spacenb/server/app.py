"""Wiring a whole server in one process: relay, keeper, storage, shard stores.

:func:`start_server` is what ``spacenb serve``, ``spacenb.aio.serve`` and the tests call.
A data directory holds everything that must survive a restart::

    spacenb.sqlite3   users, spaces and their signed state logs, wrapped keys, sealed messages
    app.json          the app key (0600)
    keeper.key        the keeper's identity keys (0600)
    relay.key         the key that signs shard tickets (0600)
    relay.pub         its public half, the ticket key shard stores check (rewritten each start)
    shards/NNN/       one directory per local shard store

With ``database=`` (a ``postgresql://`` URL) the relay keeps everything in that database
instead, so that several relays can serve it as one service: the app key and the two
identities are stored there sealed, and the data directory holds only ``service.key``,
which opens them, and the shards (:mod:`spacenb.server.service`).

With ``shard_stores=`` (URLs of ``spacenb shard-store`` processes) the relay starts no
shard store of its own and names those to clients instead; each of them must be given this
relay's ticket key (``relay.pub``, :attr:`RunningServer.ticket_key`).

The data directory itself is made readable by its owner only (0700) when the relay starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, serve

from ..clock import Clock, SystemClock
from ..exceptions import ServerError, SpacenbError, UsageError
from ..privatefile import write_private
from ..protocol.frames import UserEntry
from ..protocol.keys import IdentityKeys
from .connections import guarded_connection
from .handlers import REQUEST_TABLE, Route
from .keeper import KEEPER_USERNAME, Keeper
from .limits import Limits, raise_open_file_limit
from .relay import WS_MAX_SIZE, LocalMember, Relay
from .service import ServiceSecrets, open_service
from .shards import ShardStore
from .sqlite import SQLiteStorage
from .storage import Storage

__all__ = [
    "Limits",
    "RunningServer",
    "check_shard_counts",
    "load_or_create_identity",
    "start_server",
]

log = logging.getLogger("spacenb.server")

APP_FILE = "app.json"
KEEPER_KEY_FILE = "keeper.key"
RELAY_KEY_FILE = "relay.key"
TICKET_KEY_FILE = "relay.pub"
SHARDS_DIR = "shards"
MAX_SHARDS = 255
WS_MAX_QUEUE = 4  # frames a connection may have read ahead of the relay (each ≤ 2 MiB)


def check_shard_counts(shards: int, shards_needed: int) -> None:
    """Refuse shard counts other than ``shards == 0`` (no shard stores) or
    ``1 <= shards_needed <= shards <= 255``; raises ``ValueError``."""
    if shards == 0:
        return
    if not 1 <= shards_needed <= shards <= MAX_SHARDS:
        raise ValueError(
            f"need 1 <= shards_needed <= shards <= {MAX_SHARDS} (or shards=0 for none); "
            f"got shards={shards}, shards_needed={shards_needed}"
        )


def check_port(port: object) -> int:
    """``port`` if it is a TCP port number (0 for any free one), else :class:`UsageError`."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise UsageError(f"must be 0 to 65535 (0: any free port), got {port!r}", field="port")
    return port


def check_store_urls(urls: object) -> tuple[str, ...]:
    """``urls`` as a tuple if it is a non-empty list of distinct ``ws://``/``wss://`` URLs
    of shard stores, else :class:`UsageError`."""
    if isinstance(urls, str) or not isinstance(urls, list | tuple) or not urls:
        raise UsageError(
            f"shard_stores is a non-empty list of shard store URLs, got {urls!r}",
            field="shard_stores",
        )
    for url in urls:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss"):
            raise UsageError(
                f"a shard store URL starts with ws:// or wss:// (as spacenb shard-store "
                f"prints it), got {url!r}",
                field="shard_stores",
            )
    if len(set(urls)) != len(urls):
        raise UsageError(f"shard_stores names a store twice: {list(urls)}", field="shard_stores")
    return tuple(urls)


def write_ticket_key(root: Path, ticket_key: str) -> None:
    """Write the relay's ticket key (public, 0644) to ``relay.pub``, for shard stores."""
    write_private(root / TICKET_KEY_FILE, ticket_key + "\n", mode=0o644)


def make_private(root: Path) -> None:
    """Create the data directory, or make an existing one readable by its owner only:
    it holds the keeper's key and every stored ciphertext. Raises :class:`ServerError`
    if a directory others can read cannot be made private."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = root.stat().st_mode & 0o777
    if mode & 0o077:
        try:
            os.chmod(root, 0o700)
        except OSError as exc:
            raise ServerError(
                f"the data directory {root} can be read by other users (mode {mode:o}) and "
                f"cannot be made private ({exc}): run chmod 700 on it, or use another one"
            ) from None
        log.warning("made the data directory %s private (mode %o → 700)", root, mode)


def load_or_create_identity(path: Path) -> IdentityKeys:
    """The identity keys stored at ``path`` (``IdentityKeys.to_text()``), made on first
    use with mode 0600. Raises :class:`ServerError` if the file is unreadable."""

    def read() -> str | None:
        return path.read_text(encoding="utf-8") if path.exists() else None

    def write(text: str) -> None:
        write_private(path, text, exclusive=True)

    try:
        return IdentityKeys.load_or_create(read, write)
    except SpacenbError as exc:
        raise ServerError(f"{path} does not hold identity keys: {exc}") from None


def _load_or_create_app_key(data_dir: Path) -> str:
    path = data_dir / APP_FILE
    if not path.exists():
        write_private(
            path, json.dumps({"app_key": secrets.token_urlsafe(24)}) + "\n", exclusive=True
        )
    try:
        app_key = json.loads(path.read_text(encoding="utf-8"))["app_key"]
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"{path} does not hold an app key") from None
    if not isinstance(app_key, str) or not app_key:
        raise ServerError(f"{path} does not hold an app key")
    return app_key


def _open_database(
    database: str, root: Path, service_key: str | None
) -> tuple[Storage, ServiceSecrets, str]:
    """PostgreSQL storage and the service's secrets sealed in it (see ``service.py``)."""
    from .postgres import PostgresStorage  # psycopg is needed only here

    storage = PostgresStorage(database)
    try:
        shared, key = open_service(storage, root, service_key, secrets.token_urlsafe(24))
    except BaseException:
        storage.close()
        raise
    return storage, shared, key


def _check_database(database: str | None, service_key: str | None) -> None:
    if database is None:
        if service_key is not None:
            raise ValueError("service_key= opens the secrets of a database=: give both")
        return
    try:
        from .postgres import check_database_url
    except ImportError:
        raise ServerError("database= needs psycopg 3: pip install 'spacenb[postgres]'") from None
    check_database_url(database)


def _ws_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"


class RunningServer:
    """A relay, its keeper and its shard stores, serving until :meth:`stop`.

    ``url`` and ``app_key`` are what a client needs; ``data_dir`` is where everything is
    kept (a temporary directory, removed on stop, when none was given). With a
    ``database``, ``service_key`` is what another relay needs to serve it too (a secret).
    ``shard_urls`` are the shard stores it names to clients (its own, or the
    ``shard_stores=`` it was given); ``ticket_key`` is the ``sig.…`` public key its
    tickets are signed with, which a ``spacenb shard-store`` must be given (the same for
    every relay of one service).
    """

    def __init__(
        self,
        *,
        url: str,
        app_key: str,
        data_dir: Path,
        relay: Relay,
        keeper: Keeper,
        storage: Storage,
        ws_server: Server,
        shard_stores: list[ShardStore],
        shards_needed: int,
        tempdir: tempfile.TemporaryDirectory[str] | None,
        database: str | None = None,
        service_key: str | None = None,
        ticket_key: str = "",
        external_stores: tuple[str, ...] = (),
    ) -> None:
        self.url = url
        self.ticket_key = ticket_key
        self.app_key = app_key
        self.data_dir = data_dir
        self.database = database
        self.service_key = service_key
        self.relay = relay
        self.keeper = keeper
        self.keeper_username = keeper.username
        self.shard_urls: tuple[str, ...] = external_stores or tuple(
            str(store.url) for store in shard_stores
        )
        self.shards_needed = shards_needed
        self._storage = storage
        self._ws_server = ws_server
        self._shard_stores = shard_stores
        self._tempdir = tempdir
        self._stopped = False

    def __repr__(self) -> str:
        where = f"data_dir={str(self.data_dir)!r}"
        if self.database is not None:
            from .postgres import redacted_url

            where += f", database={redacted_url(self.database)!r}"
        return f"RunningServer(url={self.url!r}, {where})"

    @property
    def shard_stores(self) -> tuple[ShardStore, ...]:
        """The running in-process :class:`~spacenb.server.shards.ShardStore` objects, in
        ``shard_urls`` order (a test or benchmark may stop some to simulate outages);
        empty when the relay uses ``shard_stores=`` of their own."""
        return tuple(self._shard_stores)

    async def stop(self) -> None:
        """Close every connection, stop the keeper and shard stores, close the database
        and remove a temporary data directory. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._ws_server.close()
            await self._ws_server.wait_closed()
            if self.relay.cluster is not None:
                await self.relay.cluster.stop()
            await self.keeper.stop()
            for store in self._shard_stores:
                await store.stop()
        finally:
            self.relay.close()
            self._storage.close()
            if self._tempdir is not None:
                self._tempdir.cleanup()

    async def __aenter__(self) -> RunningServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _start_shard_stores(
    root: Path,
    count: int,
    relay_keys: IdentityKeys,
    host: str,
    clock: Clock | None,
    limits: Limits,
) -> list[ShardStore]:
    stores: list[ShardStore] = []
    try:
        for i in range(count):
            store_root = root / SHARDS_DIR / f"{i:03d}"
            store_root.mkdir(parents=True, exist_ok=True)
            store = ShardStore(
                store_root,
                relay_keys.signing_key,
                clock=clock,
                max_bytes=limits.shard_store_bytes,
                max_bytes_per_user=limits.shard_bytes_per_user,
                min_free_bytes=limits.shard_min_free_bytes,
            )
            await store.start(host, 0)
            stores.append(store)
    except BaseException:
        for store in stores:
            await store.stop()
        raise
    return stores


async def start_server(
    data_dir: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    shards: int = 5,
    shards_needed: int = 3,
    clock: Clock | None = None,
    limits: Limits | None = None,
    database: str | None = None,
    service_key: str | None = None,
    shard_stores: list[str] | tuple[str, ...] | None = None,
    table: Mapping[str, Route] = REQUEST_TABLE,
) -> RunningServer:
    """Start a relay with its keeper, its storage and ``shards`` local shard stores.

    ``port=0`` picks a free port (read it from ``.url``). With ``data_dir`` None the
    data lives in a temporary directory removed on stop; with a directory, everything
    (users, spaces, messages, links, the app key, the keeper's identity) survives a
    restart; the directory is made private (0700). Storage is SQLite in the data
    directory, or with ``database`` (a ``postgresql://`` URL) that database, which several
    relays may share: the first one seals the service's secrets there, and the others open
    them with its ``service_key`` (given here, or found as ``service.key`` in
    ``data_dir``). ``limits`` sets the connection caps, rates and quotas (:class:`Limits`;
    PROTOCOL.md, "Limits", lists the defaults).

    ``shard_stores``: URLs of shard stores running on their own (``spacenb shard-store``),
    used instead of local ones: then no local store is started (``shards`` is not used)
    and any ``shards_needed`` of them rebuild a file. Each store must accept this relay's
    ticket key (``.ticket_key``, also written to ``relay.pub`` in ``data_dir``).

    ``table``: the request table (:data:`~spacenb.server.handlers.REQUEST_TABLE`, which
    tests replace a row of with :func:`~spacenb.server.handlers.with_handler`).

    Raises ``ValueError`` for bad shard counts or a database that is not a PostgreSQL URL,
    :class:`UsageError` (a ``ValueError``) for a port out of range,
    :class:`ServerError` for an unusable data directory or database (or a missing or wrong
    service key), :class:`UnsupportedVersionError` for another schema version, ``OSError``
    if the port cannot be bound.
    """
    external = () if shard_stores is None else check_store_urls(shard_stores)
    if external:
        shards = 0
        check_shard_counts(len(external), shards_needed)
    else:
        check_shard_counts(shards, shards_needed)
    _check_database(database, service_key)
    check_port(port)
    limits = limits or Limits()
    raise_open_file_limit(limits.open_files)
    clock = clock or SystemClock()
    tempdir = None
    if data_dir is None:
        tempdir = tempfile.TemporaryDirectory(prefix="spacenb-")
        data_dir = tempdir.name
    root = Path(data_dir)
    async with contextlib.AsyncExitStack() as undo:  # unwinds only if starting fails
        if tempdir is not None:
            undo.callback(tempdir.cleanup)
        make_private(root)
        storage: Storage
        if database is None:
            storage = SQLiteStorage.in_dir(root)  # first: it refuses another version untouched
            undo.callback(storage.close)
            app_key = _load_or_create_app_key(root)
            keeper_keys = load_or_create_identity(root / KEEPER_KEY_FILE)
            relay_keys = load_or_create_identity(root / RELAY_KEY_FILE)
        else:
            storage, shared, service_key = _open_database(database, root, service_key)
            undo.callback(storage.close)
            app_key, keeper_keys, relay_keys = shared.app_key, shared.keeper_keys, shared.relay_keys
        keeper_user = UserEntry(KEEPER_USERNAME, keeper_keys.signing_key, keeper_keys.ecdh_key)
        if storage.register_user(keeper_user, clock.now_us())[0] != keeper_user:
            raise ServerError(
                f"{root / KEEPER_KEY_FILE} is not the keeper registered in this data "
                "directory: restore the original file"
                if database is None
                else "the keeper registered in this database is not the one its sealed secrets hold"
            )
        write_ticket_key(root, relay_keys.signing_key)
        stores = await _start_shard_stores(root, shards, relay_keys, host, clock, limits)
        for store in stores:
            undo.push_async_callback(store.stop)
        store_urls = list(external) or [str(store.url) for store in stores]
        relay = Relay(
            storage,
            app_key=app_key,
            relay_keys=relay_keys,
            keeper=KEEPER_USERNAME,
            clock=clock,
            shard_stores=store_urls,
            shards_needed=shards_needed if store_urls else 0,
            limits=limits,
            table=table,
        )
        keeper = Keeper(
            keeper_keys,
            LocalMember(relay, KEEPER_USERNAME),
            checkpoint_every=limits.checkpoint_every,
        )
        relay.keeper_inbox = lambda event: keeper.notify(event.space_id, event.member_id)
        if database is not None:  # several relays: delivery, presence, limits, one keeper
            from .cluster import Cluster

            relay.cluster = Cluster(relay.core, database, keeper)
            undo.push_async_callback(relay.cluster.stop)
            await relay.cluster.start()  # it starts the keeper if this relay holds the lock
        ws_server = await serve(
            relay.serve_connection,
            host,
            port,
            max_size=WS_MAX_SIZE,
            max_queue=WS_MAX_QUEUE,
            compression=None,  # sealed bodies do not compress; deflate would only cost CPU
            create_connection=guarded_connection(relay.guard),  # counted from accept on
        )
        undo.push_async_callback(ws_server.wait_closed)
        undo.callback(ws_server.close)
        if relay.cluster is None:
            await keeper.start()
        undo.pop_all()
    bound_port = ws_server.sockets[0].getsockname()[1]
    running = RunningServer(
        url=_ws_url(host, bound_port),
        app_key=app_key,
        data_dir=root,
        relay=relay,
        keeper=keeper,
        storage=storage,
        ws_server=ws_server,
        shard_stores=stores,
        shards_needed=shards_needed if store_urls else 0,
        tempdir=tempdir,
        database=database,
        service_key=service_key,
        ticket_key=relay_keys.signing_key,
        external_stores=external,
    )
    log.info("spacenb relay listening on %s (%r)", running.url, running)
    return running
