"""``spacenb.serve`` and ``LocalServer``: the embedded relay, run from blocking code."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .display import Displayable, secret
from .runner import LoopResource, Runner, get_runner

if TYPE_CHECKING:
    from ..server.app import RunningServer

__all__ = ["LocalServer", "serve"]


class LocalServer(LoopResource, Displayable):
    """A relay, keeper and shard stores running on the facade's loop in this process.

    Stop it with :meth:`stop` (or :meth:`close`) or use it as a context manager; it is also
    stopped when the interpreter exits.
    """

    def __init__(self, inner: RunningServer, *, runner: Runner) -> None:
        self.aio = inner
        self._own(runner)

    @property
    def url(self) -> str:
        """The websocket URL clients connect to."""
        return self.aio.url

    @property
    def app_key(self) -> str:
        """The key every client must present (``connect(url, app_key=...)``)."""
        return self.aio.app_key

    @property
    def data_dir(self) -> Any:
        """Where the relay keeps its database and shards."""
        return self.aio.data_dir

    def stop(self) -> None:
        """Stop serving (idempotent; also on leaving a ``with`` block)."""
        self._release()

    def close(self) -> None:
        """The same as :meth:`stop`, so that a server closes like a client does."""
        self.stop()

    async def _aclose(self) -> None:
        await self.aio.stop()

    @property
    def database(self) -> str | None:
        """The PostgreSQL URL the relay keeps everything in (None: SQLite in ``data_dir``)."""
        return self.aio.database

    @property
    def service_key(self) -> str | None:
        """With a ``database``: what another relay needs to serve it too (a secret)."""
        return self.aio.service_key

    @property
    def ticket_key(self) -> str:
        """The ``sig.…`` public key shard stores check this relay's upload tickets with
        (``spacenb shard-store --relay-key``); the same for every relay of a service."""
        return self.aio.ticket_key

    @property
    def shard_urls(self) -> tuple[str, ...]:
        """The shard stores this relay names to clients (its own or ``shard_stores``)."""
        return self.aio.shard_urls

    def _repr_fields(self) -> Mapping[str, Any]:
        fields = {"url": self.url, "app_key": secret(self.app_key), "data_dir": self.data_dir}
        if self.database is not None:
            from ..server.postgres import redacted_url

            fields["database"] = redacted_url(self.database)
        return fields


def serve(
    data_dir: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    shards: int = 5,
    shards_needed: int = 3,
    database: str | None = None,
    service_key: str | None = None,
    shard_stores: list[str] | tuple[str, ...] | None = None,
) -> LocalServer:
    """Start an embedded relay (+ keeper, SQLite, local shard stores) and return it.

    ``port=0`` picks a free port; ``data_dir=None`` uses a temporary directory (with it
    set, data persists across restarts). With ``database`` (a ``postgresql://`` URL) the
    relay keeps everything in that database instead, which other relays can serve too when
    given this one's ``service_key``. With ``shard_stores`` (URLs of ``spacenb
    shard-store`` processes) the relay starts no local store and uses those (``shards``
    is then not used); give each of them this relay's ``ticket_key``. Raises OSError
    when the port is taken, UsageError for bad store URLs.
    """
    from ..server.app import start_server  # the relay loads only when one is started

    runner = get_runner()
    inner = runner.run(
        start_server(
            data_dir=data_dir,
            host=host,
            port=port,
            shards=shards,
            shards_needed=shards_needed,
            database=database,
            service_key=service_key,
            shard_stores=shard_stores,
        )
    )
    return LocalServer(inner, runner=runner)
