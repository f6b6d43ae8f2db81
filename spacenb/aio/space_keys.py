"""A space's group keys as one member handles them: fetching and adopting keys, waiting to
be admitted, admitting others, inviting, and rotating to a new epoch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from ..exceptions import (
    IdentityChangedError,
    IntegrityError,
    KeyUnavailableError,
    PermissionDeniedError,
    ProtocolError,
    SpacenbError,
    SpacenbTimeoutError,
    StaleStateError,
    UsageError,
)
from ..protocol import frames
from ..protocol.codec import json_size
from ..protocol.frames import UNSENT
from ..protocol.keyring import HistoryPolicy, Keyring
from ..protocol.member import new_group_key
from ..protocol.statelog import key_commitment
from ..protocol.wrap import WrappedKey
from .events import JoinRequest, RejectedEnvelopeEvent
from .keystore import SpaceSecrets
from .space_log import _STALE_RETRIES, SpaceLog, stale_backoff

__all__ = ["SpaceKeys"]

log = logging.getLogger("spacenb")


class SpaceKeys(SpaceLog):
    """The keys and admission layer of :class:`~spacenb.aio.space.AsyncSpace`."""

    def ensure_secrets(self, policy: HistoryPolicy) -> SpaceSecrets:
        """The keystore entry of this space, made empty with ``policy`` if there is none."""
        if self._secrets is None:
            self._secrets = self.client.keystore.new_space(self.id, policy)
        return self._secrets

    def _require_keys(self) -> Keyring:
        keyring = self.keyring
        if keyring is None:
            raise KeyUnavailableError(
                f"no group key for space {self.id}: join it first (or wait to be admitted)"
            )
        return keyring

    async def _fetch_keys(self) -> None:
        since: int | None = None
        while True:
            result = await self.client.request(
                frames.FetchKeys(UNSENT, space_id=self.id, since_epoch=since)
            )
            await self.ingest_keys(result.keys)
            if result.next_epoch is None:
                return
            since = result.next_epoch

    async def ingest_keys(self, keys: Iterable[WrappedKey]) -> None:
        """Adopt keys handed to this member, as far as the verified log allows."""
        keys = [
            k
            for k in keys
            if k.space_id == self.id
            and not self.core_holds(k.epoch)
            and k.epoch != self._rotating_to
        ]
        if not keys:
            return
        state = self.core.state
        me = self.client.username
        if state is None or any(not state.may_hold(me, k.epoch) for k in keys):
            await self._catch_up_log()  # the keys may have overtaken the events allowing them
        state = self.core.state
        if state is None:
            for wrapped in keys:
                self._reject(None, wrapped.wrapper, "key refused: no verified state log")
            return
        secrets = self.ensure_secrets(state.policy)
        if self.core.keyring is None:
            self.core.keyring = secrets.keyring
        adopted = False
        for wrapped in sorted(keys, key=lambda k: k.epoch):
            try:
                self.core.keyring.add(wrapped.epoch, self.core.accept_key(wrapped))
                adopted = True
            except (IntegrityError, ProtocolError) as exc:
                log.warning("spacenb: refused a key for epoch %s: %s", wrapped.epoch, exc)
                self.events.emit(
                    "rejected",
                    RejectedEnvelopeEvent(self.id, None, wrapped.wrapper, f"key refused: {exc}"),
                )
        if adopted:
            self.client.keystore.save_space(secrets)
        for waiter in self._key_waiters:
            if not waiter.done() and self.keyring is not None:
                waiter.set_result(None)

    async def wait_for_keys(self, timeout: float) -> None:
        """Wait until this member holds a group key; :class:`SpacenbTimeoutError` if not."""
        if self.keyring is not None:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._key_waiters.append(waiter)
        deadline = loop.time() + timeout
        # Ask for keys already stored and take whichever comes first, their answer or a
        # key-holder's push: a newcomer's key is often pushed first (bench.scale
        # --breakdown), and need not wait for an answer that brings it again.
        fetch = asyncio.ensure_future(self._fetch_keys())
        try:
            first = asyncio.FIRST_COMPLETED
            await asyncio.wait({fetch, waiter}, timeout=timeout, return_when=first)
            if not waiter.done():
                if fetch.done():
                    fetch.result()  # its error, if it failed
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise SpacenbTimeoutError(
                f"not admitted to {self.id} within {timeout} s: no key-holder (keeper or "
                "member) handed over the group key; ask a member to admit you, or retry"
            ) from None
        finally:
            self._key_waiters.remove(waiter)
            if not fetch.done():
                fetch.cancel()  # the keys are in hand (its late answer is dropped)
            elif not fetch.cancelled():
                fetch.exception()  # read, or asyncio logs it as never retrieved

    async def admit(self, member_id: str, identity_ecdh_pub: str) -> None:
        """Hand the group keys the log entitles ``member_id`` to (every epoch in a static
        space, the current one in a rotate space). ``identity_ecdh_pub`` must be the key
        the space's log records for them (:class:`IdentityChangedError` otherwise)."""
        await self.sync_log()
        state = self.core.require_state()
        member = state.members.get(member_id)
        if member is None:
            raise PermissionDeniedError(f"{member_id!r} is not a member: they must join first")
        if member.ecdh_key != identity_ecdh_pub:
            raise IdentityChangedError(
                f"the space's log records another key for {member_id!r}", username=member_id
            )
        epochs = self.core.epochs_to_wrap(member_id)
        if not epochs:
            raise KeyUnavailableError(f"this member holds no key it may hand to {member_id!r}")
        keys = tuple(self.core.wrap_for(member_id, epochs))
        await self.client.request(
            frames.Admit(UNSENT, space_id=self.id, member=member_id, keys=keys)
        )

    async def invite(self, username: str, *, role: str = "viewer") -> None:
        """Let ``username`` join this space (a private one admits only the invited): a
        signed ``invite`` event, naming their keys when this client has pinned them."""
        pinned = self.client.pinned_keys(username)
        if pinned is None:
            found = await self.client.identities([username])
            pinned = (found[username].signing_key, found[username].ecdh_key) if found else None
        body = {
            "member": username,
            "role": role,
            "signing_key": pinned[0] if pinned else None,
            "ecdh_key": pinned[1] if pinned else None,
        }
        await self.append_event(lambda s: self.sign_event(s, "invite", body))

    async def rotate(self, roster: Iterable[str] | None = None) -> int:
        """Mint the next epoch's key and wrap it to ``roster`` (default: every member).

        You and the keeper (when it is a member) are always included. Recipients and
        their keys come from the verified log. Returns the new epoch. Only ``rotate``
        spaces have epochs. The wrapped keys go with the ``epoch`` event as far as one
        frame holds them, the rest right after (``add_keys``).
        """
        self._require_keys()
        await self.sync_log()
        state = self.core.require_state()
        if state.policy != "rotate":
            raise UsageError("only spaces with history_policy='rotate' can rotate")
        wanted = None if roster is None else list(roster)
        new_key = new_group_key()  # held only once the relay agrees
        for attempt in range(_STALE_RETRIES):
            state = self.core.require_state()
            recipients = state.rotation_recipients(self.client.username, wanted)
            epoch = state.epoch + 1
            event = self.sign_event(
                state,
                "epoch",
                {
                    "epoch": epoch,
                    "recipients": recipients,
                    "key_commitment": key_commitment(self.id, epoch, new_key),
                },
            )
            keys = self.core.wrap_new_epoch(new_key, epoch, recipients)
            first_ones = (self.client.username, state.keeper)
            keys.sort(key=lambda k: k.recipient not in first_ones)  # own key in the first frame
            first, _more = frames.fitting(keys, frames.PAGE_BYTES - json_size(event))
            self._rotating_to = epoch  # its state event may arrive before the request returns
            try:
                await self.client.request(
                    frames.Append(UNSENT, space_id=self.id, event=event, keys=tuple(first))
                )
            except StaleStateError:
                await stale_backoff(attempt)
                await self.sync_log()
                continue
            finally:
                self._rotating_to = None
            self._require_keys().add(epoch, new_key)
            assert self._secrets is not None
            self.client.keystore.save_space(self._secrets)
            rest = keys[len(first) :]
            while rest:
                chunk, _more = frames.fitting(rest, frames.PAGE_BYTES)
                await self.client.request(
                    frames.AddKeys(UNSENT, space_id=self.id, keys=tuple(chunk))
                )
                rest = rest[len(chunk) :]
            await self.extend_with([event])
            return epoch
        raise StaleStateError(f"the log of {self.id} kept moving: try again")

    async def _handle_join_request(self, event: frames.JoinRequested) -> None:
        state = self.core.state
        if state is None or event.member_id not in state.members:
            await self._catch_up_log()
            state = self.core.state
        member = state.members.get(event.member_id) if state is not None else None
        if member is None:
            self._reject(None, event.member_id, "a join request for someone who is not a member")
            return
        # What handlers see of the newcomer are the keys its signed add event records.
        request = JoinRequest(
            self.id, member.name, member.ecdh_key, member.signing_key, member.role
        )
        self.events.emit("join_request", request)
        epochs = self.core.admission(member.name)
        if self.auto_admit and epochs:
            try:
                keys = tuple(self.core.wrap_for(member.name, epochs))
                await self.client.request(
                    frames.Admit(UNSENT, space_id=self.id, member=member.name, keys=keys)
                )
            except SpacenbError as exc:
                log.info("spacenb: auto-admit of %s failed: %s", member.name, exc)
