"""A shard store run on its own (``spacenb shard-store``), apart from any relay.

A store accepts an upload only with a ticket signed by a relay it trusts. Every relay of
one service (one database) signs its tickets with the same key, the service's relay
identity, so a store is given that one public **ticket key** (``sig.…``) per service it
stores for: on the command line (``--relay-key sig.…``, repeatable) or in a file, one key
a line (``--relay-key-file PATH``, repeatable). Each relay prints its ticket key when it
starts (``ticket key:``) and writes it to ``relay.pub`` in its data directory, so a store
on the same machine can read that file. A store given no key refuses to start: it could
never accept a share.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..exceptions import SpacenbError, UsageError
from ..protocol.keys import decode_public_key
from .app import make_private
from .limits import Limits
from .shards import ShardStore

__all__ = ["STORE_LIMITS", "read_ticket_keys", "start_shard_store"]

STORE_LIMITS = ("shard_bytes_per_user", "shard_store_bytes", "shard_min_free_bytes")


def _check_key(text: str, where: str) -> str:
    try:
        decode_public_key(text, "sig", field="relay_key")
    except SpacenbError as exc:
        raise UsageError(
            f"{where}: {text[:40]!r} is not a relay ticket key (sig.…): {exc.args[0]}"
        ) from None
    return text


def read_ticket_keys(
    keys: Iterable[str] = (), key_files: Iterable[str | os.PathLike[str]] = ()
) -> tuple[str, ...]:
    """The ticket keys given directly and those in ``key_files`` (one a line; blank lines
    and ``#`` comments skipped), without repeats. Raises :class:`UsageError` if a key does
    not decode, a file cannot be read, or no key is given at all."""
    found = [_check_key(key.strip(), "--relay-key") for key in keys]
    for name in key_files:
        path = Path(name)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read the ticket key file {path}: {exc}") from None
        found += [
            _check_key(line.strip(), str(path))
            for line in lines
            if line.strip() and not line.lstrip().startswith("#")
        ]
    if not found:
        raise UsageError(
            "no relay ticket key: give --relay-key sig.… (each relay prints its 'ticket key' "
            "when it starts) or --relay-key-file DATA_DIR/relay.pub; without one this store "
            "could accept no share"
        )
    return tuple(dict.fromkeys(found))


async def start_shard_store(
    data_dir: str | os.PathLike[str],
    relay_keys: Iterable[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: Limits | None = None,
) -> ShardStore:
    """Start a store on ``data_dir`` (made private, 0700) that accepts tickets signed by
    any of ``relay_keys``, with the shard quotas of ``limits``; read its ``url``."""
    keys = read_ticket_keys(relay_keys)
    limits = limits or Limits()
    root = Path(data_dir)
    make_private(root)
    store = ShardStore(
        root,
        keys,
        max_bytes=limits.shard_store_bytes,
        max_bytes_per_user=limits.shard_bytes_per_user,
        min_free_bytes=limits.shard_min_free_bytes,
    )
    await store.start(host, port)
    return store
