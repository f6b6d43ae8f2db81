"""``client.space``: channels, spaces, invite links, members and roles."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..exceptions import ChannelNotFoundError, KeyUnavailableError, ProtocolError
from ..protocol import frames
from ..protocol.keyring import HistoryPolicy, Keyring, check_policy
from ..protocol.keys import SpaceKeyPair, decode_public_key
from ..protocol.wrap import wrap_group_key
from .keystore import SpaceSecrets
from .space import AsyncSpace

if TYPE_CHECKING:
    from .client import AsyncClient

__all__ = ["AsyncSpaceAPI", "InviteLink"]


def _dt(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, tz=UTC)


@dataclass(frozen=True, slots=True)
class InviteLink:
    """A shareable capability to join a space. ``token`` is shown only when minted."""

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
    def from_info(cls, info: frames.LinkInfo) -> InviteLink:
        created = _dt(info.created_at_us)
        assert created is not None
        return cls(
            info.token,
            info.link_id,
            info.space_id,
            info.role,
            _dt(info.expires_at_us),
            info.max_uses,
            info.uses,
            info.revoked,
            created,
        )


class AsyncSpaceAPI:
    """Everything addressed by space id or channel name (``client.space``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def _request(self, cls: type[frames.Request], **fields: object):  # type: ignore[no-untyped-def]
        return self._client.request(cls, **fields)

    # ------------------------------------------------------------------ creating

    async def _create(
        self, name: str | None, policy: str, private: bool, auto_admit: bool
    ) -> AsyncSpace:
        client = self._client
        policy_ = check_policy(policy)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ProtocolError("a channel name is a non-empty string", field="name")
        space_key = SpaceKeyPair.generate()
        keyring = Keyring.fresh(space_key.space_id, policy_)
        recipients = [client.username]
        # The keeper holds the keys of the channels it admits to (PROTOCOL.md, "Actors"): a
        # channel gated by hand has no use for it, so it never gets that key.
        keeper = client.keeper if name is not None and auto_admit else None
        if keeper:
            recipients.append(keeper)
        identities = await client.identities(recipients)
        keys = [
            wrap_group_key(
                keyring.key(0),
                space_id=space_key.space_id,
                epoch=0,
                recipient=who,
                recipient_ecdh=identities[who].ecdh_public_key(),
                wrapper=client.username,
                wrapper_identity=client.identity,
            )
            for who in recipients
            if who in identities
        ]
        signature = space_key.sign(
            frames.create_space_signed_bytes(
                space_key.space_id, client.username, policy_, private, not auto_admit, name
            )
        )
        secrets = SpaceSecrets(keyring, space_key)
        client.keystore.save_space(secrets)
        info = await self._request(
            frames.CreateSpace,
            space_id=space_key.space_id,
            policy=policy_,
            private=private,
            manual_admit=not auto_admit,
            name=name,
            signature=signature,
            keys=keys,
        )
        space = AsyncSpace(client, info.space_id, secrets=secrets, info=info, auto_admit=auto_admit)
        await space._connect(refresh=False)
        return space

    async def create_channel(
        self,
        name: str,
        *,
        history_policy: HistoryPolicy = "static",
        private: bool = False,
        auto_admit: bool = True,
    ) -> AsyncSpace:
        """Create a named channel; the keeper is admitted so others can join any time.

        Raises :class:`ChannelExistsError` if the name is taken. With ``private=True`` the
        channel is hidden from :meth:`list_channels` and admits only invited users. With
        ``auto_admit=False`` nobody is admitted automatically (not even by the keeper):
        ``on_join_request`` handlers decide and call ``space.admit``.
        """
        return await self._create(name, history_policy, private, auto_admit)

    async def create_space(
        self, *, history_policy: HistoryPolicy = "static", auto_admit: bool = True
    ) -> AsyncSpace:
        """Create an unnamed space (no keeper; online members admit newcomers)."""
        return await self._create(None, history_policy, False, auto_admit)

    # ------------------------------------------------------------------ joining

    def _handle(self, space_id: str, info: frames.SpaceInfo | None = None) -> AsyncSpace:
        live = self._client.live_space(space_id)
        if live is not None:
            if info is not None:
                live.info = info
            return live
        secrets = self._client.keystore.load_space(space_id)
        return AsyncSpace(self._client, space_id, secrets=secrets, info=info)

    async def _join(
        self, space_id: str, token: str | None, timeout: float, auto_admit: bool = True
    ) -> AsyncSpace:
        decode_public_key(space_id, "spc", field="space_id")
        space = self._handle(space_id)
        space.auto_admit = auto_admit
        self._client._register(space)  # so pushed keys reach it while it waits
        try:
            result = await self._request(frames.Join, space_id=space_id, token=token)
            space.info = result.space
            await space._refresh_members()
            await space._ingest_keys(result.keys)
            await space.wait_for_keys(timeout)
            await space._connect(refresh=False)
        except BaseException:
            if not space.is_connected():
                self._client._unregister(space)
            raise
        return space

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
        space_id = name if name.startswith("spc.") else await self.resolve_channel(name)
        if space_id is None:
            raise ChannelNotFoundError(f"no channel named {name!r}")
        return await self._join(space_id, None, timeout, auto_admit)

    async def join_by_invite(
        self, space_id: str, token: str, *, timeout: float = 15.0
    ) -> AsyncSpace:
        """Redeem an invite link; raises :class:`InviteError` if it is not valid."""
        return await self._join(space_id, token, timeout)

    async def get(self, space_id: str, history_policy: HistoryPolicy | None = None) -> AsyncSpace:
        """A handle on a space without connecting (enough to read files from shards)."""
        space = self._handle(space_id)
        if history_policy is not None and space._secrets is None:
            space._secrets = self._client.keystore.new_space(space_id, check_policy(history_policy))
        return space

    # ------------------------------------------------------------------ directory

    async def list_channels(self) -> list[frames.ChannelEntry]:
        """Public channels, by name."""
        return list((await self._request(frames.ListChannels)).channels)

    async def resolve_channel(self, name: str) -> str | None:
        """The space id of channel ``name``, or None."""
        return (await self._request(frames.Resolve, name=name)).space_id  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ invite links

    async def create_invite_link(
        self,
        space_id: str,
        *,
        expires_in_sec: int | None = None,
        max_uses: int | None = None,
        role: str = "viewer",
    ) -> InviteLink:
        """Mint an invite link (owner only). Keep ``.token``: it is never shown again."""
        info = await self._request(
            frames.CreateLink,
            space_id=space_id,
            expires_in_sec=expires_in_sec,
            max_uses=max_uses,
            role=role,
        )
        return InviteLink.from_info(info)

    async def list_invite_links(self, space_id: str) -> list[InviteLink]:
        """The space's invite links (owner only), without their tokens."""
        result = await self._request(frames.ListLinks, space_id=space_id)
        return [InviteLink.from_info(link) for link in result.links]

    async def revoke_invite_link(self, space_id: str, token: str) -> None:
        """Revoke a link (owner only); later redemptions raise :class:`InviteError`."""
        await self._request(frames.RevokeLink, space_id=space_id, token=token)

    # ------------------------------------------------------------------ members

    async def members(self, space_id: str) -> list[frames.MemberEntry]:
        return list((await self._request(frames.Members, space_id=space_id)).members)

    async def roster(self, space_id: str) -> list[frames.RosterEntry]:
        """Members with their published keys and whether they are online."""
        return list((await self._request(frames.Roster, space_id=space_id)).members)

    async def set_member_role(self, space_id: str, username: str, role: str) -> None:
        """Make ``username`` an ``editor`` or a ``viewer`` (owner only)."""
        await self._request(frames.SetRole, space_id=space_id, member=username, role=role)

    async def remove_member(self, space_id: str, username: str) -> None:
        """Remove ``username`` (owner only) and, in a rotate space, rotate the key so the
        removed member cannot read anything sent afterwards."""
        space = self._handle(space_id)
        if space.policy is None:
            space.info = await self._request(frames.GetSpaceInfo, space_id=space_id)
        if space.policy == "rotate" and space.keyring is None:
            raise KeyUnavailableError(
                f"cannot rotate {space_id} after removing {username}: this client holds none "
                "of its keys (use the client that created or joined it)"
            )
        await self._request(frames.RemoveMember, space_id=space_id, member=username)
        if space.policy == "rotate":
            remaining = [m.member_id for m in await self.members(space_id)]
            await space.rotate(remaining)
