"""``spacenb.connect`` and ``Client``: the blocking twins of the async client.

``client.space`` (:class:`SpaceAPI`) mirrors :class:`spacenb.aio.AsyncSpaceAPI` method for
method; tabular results come back as DataFrames built by :mod:`spacenb.sync.dataframes`.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from .. import aio
from ..aio.types import HistoryPolicy, PublicIdentity
from .dataframes import (
    channels_frame,
    invite_links_frame,
    members_frame,
    roster_frame,
    trusted_identities_frame,
)
from .display import Displayable
from .records import InviteLink
from .runner import LoopResource, Runner, get_runner
from .space import Space

if TYPE_CHECKING:
    from ..widgets import ChannelDirectory, ChatWidget

__all__ = ["Client", "SpaceAPI", "connect"]

T = TypeVar("T")


class Client(LoopResource, Displayable):
    """A signed-in user (make one with :func:`connect`); ``client.space`` does the rest.

    ``timeout`` (seconds, None for no limit beyond the async core's own) bounds every
    blocking call; past it :class:`SpacenbTimeoutError` is raised and the call cancelled.
    """

    def __init__(
        self, inner: aio.AsyncClient, *, runner: Runner, timeout: float | None = None
    ) -> None:
        self.aio = inner  # the async twin: lives on the facade loop (await it in async handlers)
        self.timeout = timeout
        self._own(runner)
        self._spaces: weakref.WeakKeyDictionary[aio.AsyncSpace, Space] = weakref.WeakKeyDictionary()
        self._widgets: weakref.WeakSet[ChatWidget] = weakref.WeakSet()  # detached on close
        self.space = SpaceAPI(self)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro, self.timeout)

    def _space(self, inner: aio.AsyncSpace) -> Space:
        """The one facade object of ``inner`` (so ``off`` finds what ``on`` registered)."""
        space = self._spaces.get(inner)
        if space is None:
            space = self._spaces[inner] = Space(inner, self)
        return space

    @property
    def username(self) -> str:
        return self.aio.username

    @property
    def url(self) -> str:
        """The relay this client is on now (after a fail-over, the one it moved to)."""
        return self.aio.url

    @property
    def urls(self) -> tuple[str, ...]:
        """Every relay URL it was given (one, or the relays of one service)."""
        return self.aio.urls

    @property
    def fingerprint(self) -> str:
        """Your identity's fingerprint: compare it out of band to verify a peer."""
        return self.aio.fingerprint

    @property
    def identity(self) -> PublicIdentity:
        """Your published keys (signing and ECDH key texts, fingerprint); no private key."""
        return self.aio.identity.public(self.username)

    @property
    def keeper(self) -> str | None:
        """The relay's keeper username (None if the relay runs without one)."""
        return self.aio.keeper

    # ------------------------------------------------------------------ trust

    def fingerprint_of(self, username: str) -> str:
        """The fingerprint of the identity keys pinned for ``username`` (pinned on first
        sight). Compare it with the one ``username`` reads you out of band."""
        return self._run(self.aio.fingerprint_of(username))

    def verify_identity(self, username: str, fingerprint: str) -> None:
        """Mark ``username`` verified if ``fingerprint`` (learned out of band) matches the
        pinned keys; raises :class:`IdentityChangedError` if it does not."""
        return self._run(self.aio.verify_identity(username, fingerprint))

    def trusted_identities(self) -> pd.DataFrame:
        """The pinned identities: ``username``, ``fingerprint``, ``first_seen``, ``verified``."""
        return trusted_identities_frame(self._runner.call(self.aio.trusted_identities))

    def accept_new_identity(self, username: str, fingerprint: str | None = None) -> str:
        """Accept the keys the relay now presents for ``username`` (who really did
        reinstall): the one way to replace a pin. With ``fingerprint`` (read to you out of
        band) only if they match it. Returns the new fingerprint."""
        return self._run(self.aio.accept_new_identity(username, fingerprint))

    def close(self) -> None:
        """Sign out and close the connection (also on leaving a ``with`` block).

        Chat widgets of this client stay on screen, read-only, marked closed.
        """
        for chat in list(self._widgets):
            chat.detach()
        self._release(self.timeout)

    async def _aclose(self) -> None:
        await self.aio.close()

    def _repr_fields(self) -> Mapping[str, Any]:
        return {"username": self.username, "url": self.url, "fingerprint": self.fingerprint}


class SpaceAPI:
    """``client.space``: channels, spaces, invite links, members and roles (blocking)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.aio = client.aio.space
        self._run = client._run

    def _open(self, coro: Coroutine[Any, Any, aio.AsyncSpace]) -> Space:
        return self.client._space(self._run(coro))

    # ------------------------------------------------------------------ spaces

    def create_channel(
        self,
        name: str,
        *,
        history_policy: HistoryPolicy = "static",
        private: bool = False,
        auto_admit: bool = True,
        exist_ok: bool = False,
    ) -> Space:
        """Create a named channel. Raises ChannelExistsError if the name is taken, unless
        ``exist_ok``: then join the existing channel (so a notebook cell can be re-run)."""
        return self._open(
            self.aio.create_channel(
                name,
                history_policy=history_policy,
                private=private,
                auto_admit=auto_admit,
                exist_ok=exist_ok,
            )
        )

    def join_channel(self, name: str, *, timeout: float = 15.0, auto_admit: bool = True) -> Space:
        """Join a channel by name. Raises ChannelNotFoundError, SpacenbTimeoutError."""
        return self._open(self.aio.join_channel(name, timeout=timeout, auto_admit=auto_admit))

    def create_space(
        self, *, history_policy: HistoryPolicy = "static", auto_admit: bool = True
    ) -> Space:
        """Create an unnamed space."""
        return self._open(
            self.aio.create_space(history_policy=history_policy, auto_admit=auto_admit)
        )

    def join_space(self, space_id: str, *, timeout: float = 15.0, auto_admit: bool = True) -> Space:
        """Join a space by id and wait up to ``timeout`` s for its key."""
        return self._open(self.aio.join_space(space_id, timeout=timeout, auto_admit=auto_admit))

    def join_by_invite(self, space_id: str, token: str, *, timeout: float = 15.0) -> Space:
        """Redeem an invite link. Raises InviteError if it is not valid."""
        return self._open(self.aio.join_by_invite(space_id, token, timeout=timeout))

    def get(self, space_id: str, history_policy: HistoryPolicy | None = None) -> Space:
        """A handle on a space without connecting."""
        return self._open(self.aio.get(space_id, history_policy))

    # ------------------------------------------------------------------ directory

    def list_channels(self) -> pd.DataFrame:
        """Public channels: DataFrame with ``name``, ``space_id``."""
        return channels_frame(self._run(self.aio.list_channels()))

    def resolve_channel(self, name: str) -> str | None:
        """The space id of channel ``name``, or None."""
        return self._run(self.aio.resolve_channel(name))

    # ------------------------------------------------------------------ invite links

    def create_invite_link(
        self,
        space_id: str,
        *,
        expires_in_sec: int | None = None,
        max_uses: int | None = None,
        role: str = "viewer",
    ) -> InviteLink:
        """Mint an invite link (owner only); keep ``.token``, it is shown only now."""
        return InviteLink.of(
            self._run(
                self.aio.create_invite_link(
                    space_id, expires_in_sec=expires_in_sec, max_uses=max_uses, role=role
                )
            )
        )

    def list_invite_links(self, space_id: str) -> pd.DataFrame:
        """The space's invite links (owner only), without tokens, as a DataFrame."""
        return invite_links_frame(self._run(self.aio.list_invite_links(space_id)))

    def revoke_invite_link(self, space_id: str, token: str) -> None:
        """Revoke a link (owner only), by its token or by the ``link_id`` that
        :meth:`list_invite_links` shows."""
        return self._run(self.aio.revoke_invite_link(space_id, token))

    # ------------------------------------------------------------------ members

    def members(self, space_id: str) -> pd.DataFrame:
        """DataFrame with ``member_id``, ``role``."""
        return members_frame(self._run(self.aio.members(space_id)))

    def roster(self, space_id: str) -> pd.DataFrame:
        """Members with their published keys and whether they are online."""
        return roster_frame(self._run(self.aio.roster(space_id)))

    def set_member_role(self, space_id: str, username: str, role: str) -> None:
        """Make ``username`` an ``editor`` or a ``viewer`` (owner only)."""
        return self._run(self.aio.set_member_role(space_id, username, role))

    def remove_member(self, space_id: str, username: str) -> None:
        """Remove ``username`` from the space (owner only)."""
        return self._run(self.aio.remove_member(space_id, username))

    # ------------------------------------------------------------------ notebook

    def widget(self) -> ChannelDirectory:
        """The channel directory: list, create and join channels, then chat."""
        from ..widgets import ChannelDirectory

        return ChannelDirectory(self)


def connect(
    url: str | Sequence[str],
    *,
    app_key: str,
    username: str,
    keystore: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    allowed_stores: Iterable[str] = (),
    log_lag_grace: float = 3.0,
) -> Client:
    """Sign up (first use of ``username``) or sign in, and return a :class:`Client`.

    ``url`` is a relay URL, or a list of the relay URLs of one service: the client uses
    one and, when it is lost, moves to the others, catching up with no gap and no
    duplicate (``client.url`` says which relay it is on).

    ``keystore`` is a directory for your keys (default under ``SPACENB_HOME`` or your
    home), or ``":memory:"``. Files are read only from the relay's shard stores and from
    ``allowed_stores``. ``log_lag_grace`` is how long (seconds) a relay may serve a
    space's state log below the head this client holds before that is a ForkError (a
    relay just taken over after a failover may lag a moment). Raises UsageError (a
    ValueError: a URL that is not ws:// or wss://), AuthenticationError (wrong app key,
    username taken by another key), ConnectionLostError (relay unreachable),
    SpacenbTimeoutError.
    """
    runner = get_runner()
    inner = runner.run(
        aio.connect(
            url,
            app_key=app_key,
            username=username,
            keystore=keystore,
            allowed_stores=allowed_stores,
            log_lag_grace=log_lag_grace,
        ),
        timeout,
    )
    return Client(inner, runner=runner, timeout=timeout)
