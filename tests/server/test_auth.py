"""Authentication: app key, signatures, sign-up and sign-in, what is allowed before auth."""

from __future__ import annotations

import pytest
from websockets.exceptions import ConnectionClosed

from spacenb.exceptions import (
    AuthenticationError,
    InvalidKeyError,
    PermissionDeniedError,
    ProtocolError,
)
from spacenb.protocol import frames
from spacenb.protocol.keys import IdentityKeys
from tests.server.rawclient import RawClient, running, user

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and PostgreSQL


async def test_hello_then_sign_up_then_sign_in(tmp_path):
    async with running(tmp_path) as srv:
        client = await RawClient.open(srv.url)
        assert client.hello.server == "spacenb"
        assert client.hello.version == frames.PROTOCOL_VERSION == 2
        assert len(client.hello.nonce) == 32
        assert client.hello.keeper == "keeper"
        identity = IdentityKeys.generate()
        first = await client.auth(srv.app_key, "alice", identity)
        assert first == frames.AuthResult("alice", True, "keeper", ())
        again = await RawClient.open(srv.url)
        assert again.hello.nonce != client.hello.nonce
        second = await again.auth(srv.app_key, "alice", identity)
        assert second.created is False


async def test_wrong_app_key_is_refused_and_closes(tmp_path):
    async with running(tmp_path) as srv:
        client = await RawClient.open(srv.url)
        with pytest.raises(AuthenticationError, match="app key"):
            await client.auth("not-the-key", "alice")
        with pytest.raises(ConnectionClosed):
            await client.ws.recv()
        assert client.ws.close_code == 1008
        # the server is still up, and nobody was registered
        bob = await user(srv, "bob")
        assert (await bob.call(frames.UserKeys, usernames=("alice",))).users == ()


async def test_bad_signature_is_refused(tmp_path):
    async with running(tmp_path) as srv:
        client = await RawClient.open(srv.url)
        identity = IdentityKeys.generate()
        signed = frames.auth_signed_bytes(
            b"\0" * 32, srv.app_key, "alice", identity.signing_key, identity.ecdh_key
        )  # signed over the wrong nonce
        with pytest.raises(AuthenticationError, match="signature"):
            await client.call(
                frames.Auth,
                app_key=srv.app_key,
                username="alice",
                signing_key=identity.signing_key,
                ecdh_key=identity.ecdh_key,
                signature=identity.sign(signed),
            )
        # the connection stays open and a correct attempt then works
        assert (await client.auth(srv.app_key, "alice", identity)).created


async def test_username_taken_by_another_key(tmp_path):
    async with running(tmp_path) as srv:
        await user(srv, "alice")
        intruder = await RawClient.open(srv.url)
        with pytest.raises(AuthenticationError, match="taken by another key"):
            await intruder.auth(srv.app_key, "alice")


async def test_keeper_username_is_reserved(tmp_path):
    async with running(tmp_path) as srv:
        client = await RawClient.open(srv.url)
        with pytest.raises(AuthenticationError, match="reserved"):
            await client.auth(srv.app_key, "keeper")


@pytest.mark.parametrize("name", ["Alice", "", "-alice", "a" * 33, "al ice", "ålice"])
async def test_bad_usernames(tmp_path, name):
    async with running(tmp_path) as srv:
        client = await RawClient.open(srv.url)
        with pytest.raises(ProtocolError, match="username"):
            await client.auth(srv.app_key, name)


async def test_bad_public_key(tmp_path):
    async with running(tmp_path) as srv:
        client = await RawClient.open(srv.url)
        identity = IdentityKeys.generate()
        with pytest.raises(InvalidKeyError):
            await client.call(
                frames.Auth,
                app_key=srv.app_key,
                username="alice",
                signing_key=identity.ecdh_key,  # a dh key where a sig key belongs
                ecdh_key=identity.ecdh_key,
                signature=b"\1" * 64,
            )


async def test_only_auth_and_ping_before_auth(tmp_path):
    async with running(tmp_path) as srv:
        client = await RawClient.open(srv.url)
        assert await client.call(frames.Ping) == frames.Ok()
        for cls, fields in [
            (frames.ListChannels, {}),
            (frames.Resolve, {"name": "x"}),
            (frames.UserKeys, {"usernames": ("keeper",)}),
            (frames.GetStateLog, {"space_id": "x", "since": 0, "limit": 1}),
            (frames.Join, {"space_id": "x", "event": None}),
            (frames.FetchKeys, {"space_id": "x"}),
        ]:
            with pytest.raises(PermissionDeniedError, match="not authenticated"):
                await client.call(cls, **fields)
        await client.auth(srv.app_key, "alice")
        assert (await client.call(frames.ListChannels)).channels == ()


async def test_second_auth_on_a_connection_is_refused(tmp_path):
    async with running(tmp_path) as srv:
        client = await user(srv, "alice")
        with pytest.raises(ProtocolError, match="already authenticated"):
            await client.auth(srv.app_key, "bob")
