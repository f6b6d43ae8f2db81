"""``spacenb.serve`` and ``LocalServer``: the embedded relay, run from blocking code."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import aio
from ..display import Displayable, secret
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
) -> LocalServer:
    """Start an embedded relay (+ keeper, SQLite, local shard stores) and return it.

    ``port=0`` picks a free port; ``data_dir=None`` uses a temporary directory (with it
    set, data persists across restarts). With ``database`` (a ``postgresql://`` URL) the
    relay keeps everything in that database instead, which other relays can serve too when
    given this one's ``service_key``. Raises OSError when the port is taken.
    """
    runner = get_runner()
    inner = runner.run(
        aio.serve(
            data_dir=data_dir,
            host=host,
            port=port,
            shards=shards,
            shards_needed=shards_needed,
            database=database,
            service_key=service_key,
        )
    )
    return LocalServer(inner, runner=runner)
