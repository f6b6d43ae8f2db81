"""The ``spacenb`` command: ``spacenb serve`` runs a relay, ``spacenb demo`` shows one.

``spacenb serve --data DIR --host H --port N --shards N --shards-needed K`` prints the URL
and the app key, then serves until SIGINT or SIGTERM; ``--limit NAME=VALUE`` (repeatable)
changes one of the relay's limits (PROTOCOL.md, "Limits"). With ``--database URL``
(PostgreSQL) several relays serve one database as one service: the first makes
``service.key`` in its data directory, and each other relay must be given it, in its own
data directory or as ``SPACENB_SERVICE_KEY``. ``spacenb demo`` starts an embedded relay
on a free port, has two users exchange messages in a channel, prints what they read, and
exits 0 when everything arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .exceptions import SpacenbError, UsageError
from .server.app import TICKET_KEY_FILE, RunningServer, check_port, start_server
from .server.limits import Limits
from .server.storeservice import STORE_LIMITS, read_ticket_keys, start_shard_store

__all__ = ["main"]

DEFAULT_PORT = 8765
DEFAULT_STORE_PORT = 8766
SERVICE_KEY_ENV = "SPACENB_SERVICE_KEY"
DEMO_TIMEOUT = 15.0


def _print(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


def _describe(server: RunningServer, *, temporary: bool, key_from_env: bool) -> list[str]:
    lines = [
        f"spacenb relay listening on {server.url}",
        f"  app key:  {server.app_key}",
        f"  data:     {server.data_dir}",
    ]
    if server.database is not None:
        from .server.postgres import redacted_url
        from .server.service import SERVICE_KEY_FILE

        where = SERVICE_KEY_ENV if key_from_env else str(server.data_dir / SERVICE_KEY_FILE)
        lines += [
            f"  database: {redacted_url(server.database)}",
            f"  service key: {where} (every relay of this database needs it)",
        ]
        if temporary and not key_from_env:
            lines.append(
                "  WARNING: the service key is in a temporary directory, deleted on exit; "
                "without it this database cannot be served again (use --data DIR)"
            )
    lines.append(f"  keeper:   {server.keeper_username}")
    if server.shard_urls:
        where = "shard stores of their own" if not server.shard_stores else "stores"
        lines.append(
            f"  shards:   {len(server.shard_urls)} {where}, any {server.shards_needed} "
            f"rebuild a file ({', '.join(server.shard_urls)})"
        )
    lines.append(
        f"  ticket key: {server.ticket_key} (give it to spacenb shard-store --relay-key; "
        f"also in {server.data_dir / TICKET_KEY_FILE})"
    )
    return lines


async def _serve(args: argparse.Namespace) -> int:
    limits = Limits()
    for setting in args.limit:
        limits = limits.with_setting(setting)
    service_key = os.environ.get(SERVICE_KEY_ENV) if args.database else None
    if args.shard_store and args.shards is not None:
        raise UsageError(
            "--shards counts local shard stores, and with --shard-store there are none: "
            "give one or the other"
        )
    server = await start_server(
        args.data,
        args.host,
        args.port,
        shards=5 if args.shards is None else args.shards,
        shards_needed=args.shards_needed,
        limits=limits,
        database=args.database,
        service_key=service_key,
        shard_stores=args.shard_store,
    )
    stop = _stop_on_signals()
    try:
        described = _describe(
            server, temporary=args.data is None, key_from_env=service_key is not None
        )
        _print(*described, "Press Ctrl+C to stop.")
        await stop.wait()
        _print("stopping…")
    finally:
        await server.stop()
    return 0


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (installed before the banner says we serve)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _shard_store(args: argparse.Namespace) -> int:
    keys = read_ticket_keys(args.relay_key, args.relay_key_file)  # first: no key, no store
    check_port(args.port)
    limits = Limits()
    for setting in args.limit:
        if setting.partition("=")[0].strip().replace("-", "_") not in STORE_LIMITS:
            raise UsageError(f"a shard store has only the limits {', '.join(STORE_LIMITS)}")
        limits = limits.with_setting(setting)
    store = await start_shard_store(args.data, keys, host=args.host, port=args.port,
                                    limits=limits)  # fmt: skip
    stop = _stop_on_signals()
    try:
        _print(
            f"spacenb shard store listening on {store.url}",
            f"  data:     {store.root}",
            f"  accepts tickets signed by: {', '.join(keys)}",
            "Press Ctrl+C to stop.",
        )
        await stop.wait()
        _print("stopping…")
    finally:
        await store.stop()
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from . import aio  # the client is needed only here, not to serve

    async with await start_server(shards=0) as server:
        _print(f"spacenb demo: a relay on {server.url}, with its keeper, in {server.data_dir}")
        alice, bob = [
            await aio.connect(server.url, app_key=server.app_key, username=name,
                              keystore=":memory:")
            for name in ("alice", "bob")
        ]  # fmt: skip
        try:
            general = await alice.space.create_channel("general")
            _print("alice created the public channel 'general' and wrapped its key to the keeper")
            bobs = await bob.space.join_channel("general", timeout=DEMO_TIMEOUT)
            _print("bob joined 'general': the keeper wrapped the group key to him")
            received: dict[str, list[Any]] = {"alice": [], "bob": []}
            for who, space in (("alice", general), ("bob", bobs)):
                space.on_message(received[who].append)
            script = [
                (general, "alice", "hello bob, welcome to general"),
                (bobs, "bob", "hi alice! the keeper handed me the key"),
                (general, "alice", "and the relay only ever saw ciphertext"),
            ]
            for space, who, text in script:
                handle = await space.send_message({"text": text})
                _print(f"  {who} sent handle {handle}: {text!r}")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEMO_TIMEOUT
            while any(len(got) < len(script) for got in received.values()):
                if loop.time() > deadline:
                    raise SpacenbError(f"messages did not all arrive: {received}")
                await asyncio.sleep(0.01)
            page = await bobs.history()
            _print("history, as bob decrypts it:")
            for event in page.messages:
                _print(f"  [{event.handle}] {event.sender}: {event.message.body['text']}")
            stored = server.relay.storage.history(general.id, None, 1)[0][0]
            _print(
                "what the relay stores for the last one: "
                f"{len(stored.envelope.ciphertext)} bytes of AES-GCM ciphertext, "
                f"signed by {stored.envelope.source}"
            )
        finally:
            await alice.close()
            await bob.close()
    counts = ", ".join(f"{who} received {len(got)}" for who, got in received.items())
    _print(f"demo ok: {len(script)} messages sealed, relayed, stored and read back ({counts})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spacenb", description="End-to-end-encrypted group messaging spaces."
    )
    parser.add_argument("--version", action="version", version=f"spacenb {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", help="logging level (default: %(default)s)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run a relay, its keeper and shard stores until Ctrl+C"
    )
    serve.add_argument(
        "--data", type=Path, default=None,
        help="data directory, kept across restarts (default: a temporary one, deleted on exit)",
    )  # fmt: skip
    serve.add_argument(
        "--database", metavar="URL", default=None,
        help="keep everything in this PostgreSQL database (postgresql://...), which several "
        "relays may serve as one service (default: SQLite in the data directory); a password "
        "is better kept in PGPASSWORD or ~/.pgpass than in the URL",
    )  # fmt: skip
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT,
        help="port to listen on, 0 for any free one (default: %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--shards", type=int, default=None,
        help="local shard stores, 0 for none (default: 5)",
    )  # fmt: skip
    serve.add_argument(
        "--shard-store", action="append", default=None, metavar="URL",
        help="use this shard store, run with spacenb shard-store, instead of local ones "
        "(repeatable: one per store; give each store this relay's ticket key)",
    )  # fmt: skip
    serve.add_argument(
        "--shards-needed", type=int, default=3,
        help="shares needed to rebuild a file (default: %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--limit", action="append", default=[], metavar="NAME=VALUE",
        help="change a relay limit, e.g. message_rate=50 or max_buffered=none (repeatable; "
        "PROTOCOL.md lists them)",
    )  # fmt: skip
    serve.set_defaults(run=_serve)
    store = commands.add_parser("shard-store", help="run one shard store on its own until Ctrl+C")
    store.add_argument("--data", type=Path, required=True, help="directory the shares are kept in")
    store.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    store.add_argument(
        "--port", type=int, default=DEFAULT_STORE_PORT,
        help="port to listen on, 0 for any free one (default: %(default)s)",
    )  # fmt: skip
    store.add_argument(
        "--relay-key", action="append", default=[], metavar="sig.…",
        help="accept tickets signed with this relay ticket key (repeatable: one per service)",
    )  # fmt: skip
    store.add_argument(
        "--relay-key-file", action="append", default=[], metavar="PATH",
        help="accept the ticket keys in this file, one a line (such as a relay's relay.pub)",
    )  # fmt: skip
    store.add_argument(
        "--limit", action="append", default=[], metavar="NAME=VALUE",
        help=f"change a store quota: {', '.join(STORE_LIMITS)} (repeatable)",
    )  # fmt: skip
    store.set_defaults(run=_shard_store)
    demo = commands.add_parser("demo", help="two users exchange messages on an embedded relay")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spacenb`` command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        status: int = asyncio.run(args.run(args))
    except KeyboardInterrupt:
        return 130
    except (SpacenbError, ValueError, OSError) as exc:
        print(f"spacenb {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
