"""``client.space``: channels, spaces, invite links, members and roles.

Everything this module reports about a space (members, roles, links, flags) comes from
the space's verified state log, never from a relay answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..exceptions import (
    ChannelExistsError,
    ChannelNotFoundError,
    IdentityChangedError,
    InviteError,
    KeyUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    StaleStateError,
    UsageError,
)
from ..protocol import frames
from ..protocol.frames import UNSENT
from ..protocol.keyring import HistoryPolicy, Keyring, check_policy
from ..protocol.keys import SpaceKeyPair, decode_public_key
from ..protocol.statelog import (
    InviteLinkState,
    SpaceState,
    StateEvent,
    link_id_of_key,
    link_keys_from_token,
    link_proof_bytes,
    make_event,
    make_genesis,
    new_link_token,
)
from ..protocol.wrap import wrap_group_key
from .keystore import SpaceSecrets
from .space import AsyncSpace, stale_backoff

if TYPE_CHECKING:
    from .client import AsyncClient

__all__ = ["AsyncSpaceAPI", "InviteLink"]

_LINK_ID_LENGTH = 16
_JOIN_RETRIES = 40  # with stale_backoff between tries (see AsyncSpace.append_event)


def _require_member(state: SpaceState, username: str) -> None:
    if username not in state.members:
        raise NotFoundError(f"{username!r} is not a member of this space")


def _dt(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, tz=UTC)


@dataclass(frozen=True, slots=True)
class InviteLink:
    """A shareable capability to join a space. ``token`` is shown only when minted;
    ``link_id`` names the link to :meth:`AsyncSpaceAPI.revoke_invite_link` ever after."""

    token: str | None
    link_id: str
    space_id: str
    role: str
    expires_at: datetime | None
    max_uses: int | None
    uses: int
    revoked: bool
    created_at: datetime

    @classmethod
    def from_state(
        cls, space_id: str, link: InviteLinkState, token: str | None = None
    ) -> InviteLink:
        created = _dt(link.created_at_us)
        assert created is not None
        return cls(
            token,
            link.link_id,
            space_id,
            link.role,
            _dt(link.expires_at_us),
            link.max_uses,
            link.uses,
            link.revoked,
            created,
        )


class AsyncSpaceAPI:
    """Everything addressed by space id or channel name (``client.space``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    # ------------------------------------------------------------------ creating

    async def _create(
        self, name: str | None, policy: str, private: bool, auto_admit: bool
    ) -> AsyncSpace:
        client = self._client
        policy_ = check_policy(policy)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise UsageError("a channel name is a non-empty string", field="name")
        space_key = SpaceKeyPair.generate()
        keyring = Keyring.fresh(space_key.space_id, policy_)
        # The keeper holds the keys of the channels it admits to (PROTOCOL.md, "Actors"): a
        # channel gated by hand has no use for it, so it never gets that key.
        keeper_name = client.keeper if name is not None and auto_admit else None
        keeper = None
        if keeper_name is not None:
            found = await client.identities([keeper_name])
            if keeper_name in found:
                keeper = found[keeper_name]
        genesis = make_genesis(
            space_key,
            owner=client.username,
            owner_signing_key=client.identity.signing_key,
            owner_ecdh_key=client.identity.ecdh_key,
            policy=policy_,
            private=private,
            manual_admit=not auto_admit,
            name=name,
            keeper=(keeper.username, keeper.signing_key, keeper.ecdh_key) if keeper else None,
            group_key=keyring.key(0),
            at_us=client.clock.now_us(),
        )
        recipients = [(client.username, client.identity.ecdh_key)]
        if keeper is not None:
            recipients.append((keeper.username, keeper.ecdh_key))
        keys = [
            wrap_group_key(
                keyring.key(0),
                space_id=space_key.space_id,
                epoch=0,
                recipient=who,
                recipient_ecdh=decode_public_key(ecdh, "dh"),
                wrapper=client.username,
                wrapper_identity=client.identity,
            )
            for who, ecdh in recipients
        ]
        secrets = SpaceSecrets(keyring, space_key)
        client.keystore.save_space(secrets)
        info = await client.request(frames.CreateSpace(UNSENT, genesis=genesis, keys=tuple(keys)))
        if name is not None:
            client.pin_channel(name, space_key.space_id)
        space = AsyncSpace(client, info.space_id, secrets=secrets, info=info, auto_admit=auto_admit)
        space.core.extend_log([genesis])
        await space.attach(refresh=False)
        return space

    async def create_channel(
        self,
        name: str,
        *,
        history_policy: HistoryPolicy = "static",
        private: bool = False,
        auto_admit: bool = True,
        exist_ok: bool = False,
    ) -> AsyncSpace:
        """Create a named channel; the keeper is admitted so others can join any time.

        Raises :class:`ChannelExistsError` if the name is taken, unless ``exist_ok``: then
        the existing channel is joined instead (a re-run notebook cell keeps working). With
        ``private=True`` the channel is hidden from :meth:`list_channels` and admits only
        invited users. With ``auto_admit=False`` nobody is admitted automatically (not even
        by the keeper): ``on_join_request`` handlers decide and call ``space.admit``.
        """
        try:
            return await self._create(name, history_policy, private, auto_admit)
        except ChannelExistsError:
            if not exist_ok:
                raise
        try:
            return await self.join_channel(name, auto_admit=auto_admit)
        except ChannelNotFoundError:
            raise ChannelExistsError(
                f"channel {name!r} exists and is not visible to you (a private channel)"
            ) from None

    async def create_space(
        self, *, history_policy: HistoryPolicy = "static", auto_admit: bool = True
    ) -> AsyncSpace:
        """Create an unnamed space (no keeper; online members admit newcomers)."""
        return await self._create(None, history_policy, False, auto_admit)

    # ------------------------------------------------------------------ joining

    def _space(self, space_id: str) -> AsyncSpace:
        """The live handle on ``space_id``, or a new one over what the keystore holds."""
        live = self._client.live_space(space_id)
        if live is not None:
            return live
        secrets = self._client.keystore.load_space(space_id)
        return AsyncSpace(self._client, space_id, secrets=secrets)

    async def _synced(self, space_id: str) -> tuple[AsyncSpace, SpaceState]:
        decode_public_key(space_id, "spc", field="space_id")
        space = self._space(space_id)
        await space.sync_log()
        return space, space.core.require_state()

    async def _join(
        self,
        space_id: str,
        token: str | None,
        timeout: float,
        auto_admit: bool = True,
        name: str | None = None,
    ) -> AsyncSpace:
        decode_public_key(space_id, "spc", field="space_id")
        client = self._client
        link_keys = link_keys_from_token(token) if token is not None else None
        space = self._space(space_id)
        space.auto_admit = auto_admit
        if link_keys is not None:
            space.use_link(link_keys)
        client.register(space)  # so pushed keys reach it while it waits
        try:
            await space.sync_log()
            state = space.core.require_state()
            if name is not None and state.name != name:
                raise IdentityChangedError(
                    f"the relay resolved channel {name!r} to a space whose signed genesis names "
                    f"it {state.name!r}"
                )
            result = None
            for attempt in range(_JOIN_RETRIES):
                state = space.core.require_state()
                event = None
                if client.username not in state.members:
                    event = self._add_event(state, link_keys)
                try:
                    result = await client.request(
                        frames.Join(UNSENT, space_id=space_id, event=event)
                    )
                    break
                except StaleStateError:
                    await stale_backoff(attempt)
                    await space.sync_log()
            if result is None:
                raise StaleStateError(f"the log of {space_id} kept moving: try joining again")
            space.info = result.space
            if event is not None:
                # The relay appended our add at the head we signed it on (else it would
                # have refused it as stale): verify it like any event, no round trip.
                await space.extend_with([event])
            await space.ingest_keys(result.keys)
            await space.wait_for_keys(timeout)
            await space.attach(refresh=False)
        except BaseException:
            if not space.is_connected():
                client.unregister(space)
            raise
        return space

    def _add_event(self, state: SpaceState, link_keys: object) -> StateEvent:
        """This client's signed ``add``: through a link, an invitation, or an open space."""
        client = self._client
        me = client.username
        body: dict[str, object] = {
            "member": me,
            "signing_key": client.identity.signing_key,
            "ecdh_key": client.identity.ecdh_key,
            "link_id": None,
            "proof": None,
        }
        if link_keys is not None:
            from ..protocol.encoding import b64e
            from ..protocol.keys import LinkKeyPair

            assert isinstance(link_keys, LinkKeyPair)
            link_id = link_id_of_key(link_keys.link_key)
            link = state.links.get(link_id)
            if link is None:
                raise InviteError("unknown invite link")
            proof = link_keys.sign(link_proof_bytes(state.space_id, me, state.head))
            body.update(via="link", role=link.role, link_id=link_id, proof=b64e(proof))
        elif me in state.invitations:
            body.update(via="invite", role=state.invitations[me].role)
        else:
            body.update(via="open", role="viewer")
        return make_event(
            client.identity,
            space_id=state.space_id,
            seq=state.head_seq + 1,
            prev=state.head,
            kind="add",
            actor=me,
            at_us=client.clock.now_us(),
            body=body,
        )

    async def join_space(
        self, space_id: str, *, timeout: float = 15.0, auto_admit: bool = True
    ) -> AsyncSpace:
        """Join a space by id and wait (up to ``timeout`` s) to be handed its key."""
        return await self._join(space_id, None, timeout, auto_admit)

    async def join_channel(
        self, name: str, *, timeout: float = 15.0, auto_admit: bool = True
    ) -> AsyncSpace:
        """Join a channel by name (or by raw space id); the keeper admits you.

        Raises :class:`ChannelNotFoundError` if no such channel is registered.
        """
        if name.startswith("spc."):
            return await self._join(name, None, timeout, auto_admit)
        space_id = await self.resolve_channel(name)
        if space_id is None:
            raise ChannelNotFoundError(f"no channel named {name!r}")
        return await self._join(space_id, None, timeout, auto_admit, name=name)

    async def join_by_invite(
        self, space_id: str, token: str, *, timeout: float = 15.0
    ) -> AsyncSpace:
        """Redeem an invite link; raises :class:`InviteError` if it is not valid."""
        return await self._join(space_id, token, timeout)

    async def get(self, space_id: str, history_policy: HistoryPolicy | None = None) -> AsyncSpace:
        """A handle on a space without connecting (enough to read files from shards)."""
        space = self._space(space_id)
        if history_policy is not None:
            space.ensure_secrets(check_policy(history_policy))
        return space

    # ------------------------------------------------------------------ directory

    async def list_channels(self) -> list[frames.ChannelEntry]:
        """Public channels, by name (every one: the relay answers a page at a time)."""
        channels: list[frames.ChannelEntry] = []
        after: str | None = None
        while True:
            page = await self._client.request(frames.ListChannels(UNSENT, after=after))
            channels.extend(page.channels)
            if page.next_after is None or not page.channels:
                return channels
            after = page.next_after

    async def resolve_channel(self, name: str) -> str | None:
        """The space id of channel ``name``, or None. The first id seen for a name is
        pinned: a relay that later points the name elsewhere raises
        :class:`IdentityChangedError`."""
        space_id = (await self._client.request(frames.Resolve(UNSENT, name=name))).space_id
        if space_id is not None:
            self._client.pin_channel(name, space_id)
        return space_id

    # ------------------------------------------------------------------ invite links

    async def create_invite_link(
        self,
        space_id: str,
        *,
        expires_in_sec: int | None = None,
        max_uses: int | None = None,
        role: str = "viewer",
    ) -> InviteLink:
        """Mint an invite link (owner only). Keep ``.token``: it is never shown again, and
        the relay never sees it (the log records only the link's public key)."""
        if role not in ("editor", "viewer"):
            raise UsageError("a link grants 'editor' or 'viewer'", field="role")
        if expires_in_sec is not None and (
            not isinstance(expires_in_sec, int) or expires_in_sec < 1
        ):
            raise UsageError("must be at least 1 second, or None", field="expires_in_sec")
        if max_uses is not None and (not isinstance(max_uses, int) or max_uses < 1):
            raise UsageError("must be at least 1, or None", field="max_uses")
        space, _ = await self._synced(space_id)
        token = new_link_token()
        link_keys = link_keys_from_token(token)
        link_id = link_id_of_key(link_keys.link_key)

        def build(state: SpaceState) -> StateEvent:
            now = self._client.clock.now_us()
            expires = None if expires_in_sec is None else now + expires_in_sec * 1_000_000
            return space.sign_event(
                state,
                "link",
                {
                    "link_id": link_id,
                    "link_key": link_keys.link_key,
                    "role": role,
                    "max_uses": max_uses,
                    "expires_at_us": expires,
                },
            )

        await space.append_event(build)
        link = space.core.require_state().links[link_id]
        return InviteLink.from_state(space_id, link, token)

    async def list_invite_links(self, space_id: str) -> list[InviteLink]:
        """The space's invite links, as its log records them (uses counted from the
        signed adds through each), without tokens."""
        _space, state = await self._synced(space_id)
        if state.role_of(self._client.username) != "owner":
            raise PermissionDeniedError("only the space's owner may list its invite links")
        return [InviteLink.from_state(space_id, link) for link in state.links.values()]

    async def revoke_invite_link(self, space_id: str, token_or_link_id: str) -> None:
        """Revoke a link (owner only) by its token or by the ``link_id`` that
        :meth:`list_invite_links` shows; later redemptions raise :class:`InviteError`."""
        space, state = await self._synced(space_id)
        if token_or_link_id in state.links:
            link_id = token_or_link_id
        elif len(token_or_link_id) == _LINK_ID_LENGTH:
            raise InviteError("unknown invite link")
        else:
            link_id = link_id_of_key(link_keys_from_token(token_or_link_id).link_key)
        if link_id not in state.links:
            raise InviteError("unknown invite link")
        await space.append_event(lambda s: space.sign_event(s, "unlink", {"link_id": link_id}))

    # ------------------------------------------------------------------ members

    async def members(self, space_id: str) -> list[frames.MemberEntry]:
        """The members and roles the space's verified log records, by name."""
        _space, state = await self._synced(space_id)
        return [frames.MemberEntry(m.name, m.role) for _n, m in sorted(state.members.items())]

    async def roster(self, space_id: str) -> list[frames.RosterEntry]:
        """Members with the keys their signed events record and whether they are online
        (the relay's presence, as the live space last heard it)."""
        space, state = await self._synced(space_id)
        online = set(space.peers())
        return [
            frames.RosterEntry(m.name, m.role, m.signing_key, m.ecdh_key, m.name in online)
            for _n, m in sorted(state.members.items())
        ]

    async def set_member_role(self, space_id: str, username: str, role: str) -> None:
        """Make ``username`` an ``editor`` or a ``viewer`` (owner only)."""
        if role not in ("editor", "viewer"):
            raise UsageError("a role is 'editor' or 'viewer' (a space has one owner)", field="role")
        space, state = await self._synced(space_id)
        _require_member(state, username)
        await space.append_event(
            lambda s: space.sign_event(s, "role", {"member": username, "role": role})
        )

    async def remove_member(self, space_id: str, username: str) -> None:
        """Remove and ban ``username`` (owner only): a signed ``remove`` event. In a rotate
        space it then rotates the key, so the removed member cannot read anything sent
        afterwards. They cannot come back (not by join, not by an old link) until an owner
        or editor invites them again."""
        space, state = await self._synced(space_id)
        _require_member(state, username)
        if state.policy == "rotate" and space.keyring is None:
            raise KeyUnavailableError(
                f"cannot rotate {space_id} after removing {username}: this client holds none "
                "of its keys (use the client that created or joined it)"
            )
        await space.append_event(lambda s: space.sign_event(s, "remove", {"member": username}))
        if state.policy == "rotate":
            await space.rotate()

    async def state_log(self, space_id: str) -> list[object]:
        """The space's verified state log, oldest first (see ``AsyncSpace.state_log``)."""
        space, _ = await self._synced(space_id)
        return list(space.state_log())
