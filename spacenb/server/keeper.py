"""The keeper: an always-on member that hands group keys to newcomers.

Channels stay joinable when no human member is online because the server runs a keeper,
a member like any other with its own identity keys. When someone joins a space the keeper
belongs to (and the space is not ``manual_admit``), it unwraps the group keys addressed to
itself, wraps them again for the newcomer (every epoch of a ``static`` space, the current
one of a ``rotate`` space) and admits it.

The keeper talks to the relay only through :class:`KeeperPort`, the handful of requests
any member could make; it never sees message storage. Its keys at rest are the wrapped
blobs the relay stores for it, as opaque to the database as anyone's; the keys it has
unwrapped live only in this process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Container, Sequence
from typing import Protocol

from ..exceptions import KeyUnavailableError, SpacenbError
from ..protocol.frames import MemberEntry, SpaceInfo, UserEntry
from ..protocol.keyring import Keyring
from ..protocol.keys import IdentityKeys, decode_public_key
from ..protocol.wrap import WrappedKey, unwrap_group_key, wrap_group_key

__all__ = ["KEEPER_USERNAME", "Keeper", "KeeperPort"]

log = logging.getLogger("spacenb.server.keeper")

KEEPER_USERNAME = "keeper"


class KeeperPort(Protocol):
    """The requests the keeper may make, as the member it is. Each raises the
    :class:`SpacenbError` a client would get for the same request."""

    def space_info(self, space_id: str) -> SpaceInfo: ...

    def members(self, space_id: str) -> Sequence[MemberEntry]: ...

    def fetch_keys(self, space_id: str) -> Sequence[WrappedKey]: ...

    def user_keys(self, usernames: Sequence[str]) -> Sequence[UserEntry]: ...

    def admit(self, space_id: str, member: str, keys: Sequence[WrappedKey]) -> None: ...

    def pending_joins(self) -> Sequence[tuple[str, str]]:
        """``(space_id, member_id)`` of every open join request in the keeper's spaces."""
        ...


class Keeper:
    """Admits newcomers to the spaces it is a member of, one request at a time.

    Feed it with :meth:`notify` (the relay's ``join_request`` events); run it between
    :meth:`start` and :meth:`stop`. :meth:`admit` does one admission synchronously.
    """

    def __init__(
        self, identity: IdentityKeys, port: KeeperPort, *, username: str = KEEPER_USERNAME
    ) -> None:
        self.identity = identity
        self.username = username
        self._port = port
        self._rings: dict[str, Keyring] = {}
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def notify(self, space_id: str, member_id: str) -> None:
        """Queue a join request; it is handled after the ones before it."""
        self._queue.put_nowait((space_id, member_id))

    async def start(self) -> None:
        """Start admitting, beginning with requests left open while the keeper was down."""
        for space_id, member_id in self._port.pending_joins():
            self.notify(space_id, member_id)
        self._task = asyncio.create_task(self._run(), name="spacenb-keeper")

    async def stop(self) -> None:
        """Stop admitting (queued requests stay open in storage for the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def idle(self) -> None:
        """Wait until every queued request has been handled."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            space_id, member_id = await self._queue.get()
            try:
                self.admit(space_id, member_id)
            except SpacenbError as exc:
                log.warning("keeper could not admit %s to %s: %s", member_id, space_id, exc)
            except Exception:
                log.exception("keeper failed on %s joining %s", member_id, space_id)
            finally:
                self._queue.task_done()

    def admit(self, space_id: str, member_id: str) -> bool:
        """Wrap the keys ``member_id`` may have and admit it; False if the keeper should
        not (not its space, manual admission, no longer a member).

        Raises :class:`KeyUnavailableError` if the keeper lacks the current epoch's key.
        """
        try:
            info = self._port.space_info(space_id)
        except SpacenbError:
            return False
        if info.keeper != self.username or info.manual_admit:
            return False
        members = {m.member_id for m in self._port.members(space_id)}
        if member_id not in members or member_id == self.username:
            return False
        ring = self._keyring(info, members)
        epochs = ring.epochs if info.policy == "static" else [info.epoch]
        users = self._port.user_keys([member_id])
        if not users:
            return False
        recipient_ecdh = decode_public_key(users[0].ecdh_key, "dh")
        wrapped = [
            wrap_group_key(
                ring.key(epoch),
                space_id=space_id,
                epoch=epoch,
                recipient=member_id,
                recipient_ecdh=recipient_ecdh,
                wrapper=self.username,
                wrapper_identity=self.identity,
            )
            for epoch in epochs
        ]
        self._port.admit(space_id, member_id, wrapped)
        log.info("keeper admitted %s to %s (epochs %s)", member_id, space_id, epochs)
        return True

    def _keyring(self, info: SpaceInfo, members: Container[str]) -> Keyring:
        """The group keys of the space, up to its current epoch, unwrapping new ones from
        the blobs wrapped to the keeper by members."""
        ring = self._rings.setdefault(info.space_id, Keyring(info.space_id, info.policy))
        if ring.has(info.epoch):
            return ring
        wrapped = [k for k in self._port.fetch_keys(info.space_id) if not ring.has(k.epoch)]
        signers = {
            user.username: decode_public_key(user.signing_key, "sig")
            for user in self._port.user_keys(sorted({k.wrapper for k in wrapped}))
            if user.username in members
        }
        for key in wrapped:
            signer = signers.get(key.wrapper)
            if signer is None:
                log.warning("keeper ignores a key for %s wrapped by non-member %s",
                            info.space_id, key.wrapper)  # fmt: skip
                continue
            try:
                ring.add(key.epoch, unwrap_group_key(key, self.identity, signer))
            except SpacenbError as exc:
                log.warning("keeper ignores a key for %s: %s", info.space_id, exc)
        if not ring.has(info.epoch):
            raise KeyUnavailableError(
                f"the keeper holds no key for epoch {info.epoch} of {info.space_id}"
            )
        return ring
