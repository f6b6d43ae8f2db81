"""Pinned identities, fingerprints, keystore versions, and who is blamed for an error."""

from __future__ import annotations

import copy
import json

import pytest

import spacenb.aio as aio
from spacenb.exceptions import (
    IdentityChangedError,
    NotFoundError,
    ProtocolError,
    RemoteProtocolError,
    UnsupportedVersionError,
    UsageError,
)
from spacenb.protocol.keys import IdentityKeys

from .mitm import MitmRelay


@pytest.fixture
async def mitm(server):
    proxy = await MitmRelay(server.url).start()
    yield proxy
    await proxy.stop()


async def test_fingerprints_are_pinned_on_first_sight_and_verified(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    assert await alice.fingerprint_of("bob") == bob.fingerprint
    (pin,) = alice.trusted_identities()
    assert (pin.username, pin.fingerprint, pin.verified) == ("bob", bob.fingerprint, False)
    with pytest.raises(IdentityChangedError) as wrong:
        await alice.verify_identity("bob", "0000 " * 7 + "0000")
    assert wrong.value.username == "bob"
    assert alice.trusted_identities()[0].verified is False
    await alice.verify_identity("bob", bob.fingerprint.upper())  # spacing and case are free
    assert alice.trusted_identities()[0].verified is True
    with pytest.raises(NotFoundError, match="no user named"):
        await alice.fingerprint_of("nobody")


async def test_pins_survive_a_restart_and_a_changed_key_is_refused(server, tmp_path, mitm):
    keystore = tmp_path / "keys"
    alice = await aio.connect(
        server.url, app_key=server.app_key, username="alice", keystore=keystore
    )
    bob = await aio.connect(server.url, app_key=server.app_key, username="bob", keystore=":memory:")
    try:
        await alice.fingerprint_of("bob")
        await alice.close()
        # The relay (here a proxy rewriting its answers) now presents other keys for bob.
        impostor = IdentityKeys.generate().public("bob")

        def swap(frame):
            users = frame.get("result", {}).get("users")
            if users:
                frame = copy.deepcopy(frame)
                for user in frame["result"]["users"]:
                    if user["username"] == "bob":
                        user["signing_key"] = impostor.signing_key
                        user["ecdh_key"] = impostor.ecdh_key
            return frame

        mitm.rewrite = swap
        alice = await aio.connect(
            mitm.url, app_key=server.app_key, username="alice", keystore=keystore
        )
        assert (await alice.fingerprint_of("bob")) == bob.fingerprint  # from the pin, no lookup
        with pytest.raises(IdentityChangedError, match="differ from the ones"):
            await alice.identities(["bob"])
        # Accepting the new keys is an explicit act; the pin then follows the relay.
        assert await alice.accept_new_identity("bob") == impostor.fingerprint
        assert await alice.fingerprint_of("bob") == impostor.fingerprint
        pins = json.loads((keystore / "alice" / "pins.json").read_text())
        assert pins["users"]["bob"]["signing_key"] == impostor.signing_key
    finally:
        await alice.close()
        await bob.close()


async def test_a_channel_name_is_pinned_to_its_space(connect, mitm, server):
    alice = await connect("alice")
    general = await alice.space.create_channel("general")
    other = await alice.space.create_channel("other")
    bob = await connect("bob", url=mitm.url)
    assert await bob.space.resolve_channel("general") == general.id

    def redirect(frame):
        if frame.get("result", {}).get("space_id") == general.id:
            frame = copy.deepcopy(frame)
            frame["result"]["space_id"] = other.id
        return frame

    mitm.rewrite = redirect
    with pytest.raises(IdentityChangedError, match="pinned"):
        await bob.space.resolve_channel("general")


async def test_joining_by_name_checks_the_name_in_the_signed_genesis(connect, mitm):
    alice = await connect("alice")
    await alice.space.create_channel("general")
    decoy = await alice.space.create_channel("decoy")
    bob = await connect("bob", url=mitm.url)

    def redirect(frame):
        if "space_id" in frame.get("result", {}) and len(frame["result"]) == 1:
            frame = copy.deepcopy(frame)
            frame["result"]["space_id"] = decoy.id
        return frame

    mitm.rewrite = redirect
    with pytest.raises(IdentityChangedError, match="genesis"):
        await bob.space.join_channel("general")


async def test_a_v1_keystore_is_refused_and_left_unchanged(server, tmp_path):
    root = tmp_path / "old" / "alice"
    root.mkdir(parents=True)
    (root / "identity.key").write_text(IdentityKeys.generate().to_text() + "\n")
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    with pytest.raises(UnsupportedVersionError, match="protocol v1"):
        await aio.connect(
            server.url, app_key=server.app_key, username="alice", keystore=tmp_path / "old"
        )
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before


async def test_a_keystore_of_another_version_is_refused(server, tmp_path):
    root = tmp_path / "new" / "alice"
    root.mkdir(parents=True)
    (root / "keystore.json").write_text('{"version": 3}\n')
    with pytest.raises(UnsupportedVersionError, match="version 3"):
        await aio.connect(
            server.url, app_key=server.app_key, username="alice", keystore=tmp_path / "new"
        )


async def test_bad_calls_and_relay_garbage_raise_different_errors(connect, mitm):
    alice = await connect("alice")
    space = await alice.space.create_channel("general")
    with pytest.raises(UsageError) as bad_call:
        await space.history(limit=0)
    assert isinstance(bad_call.value, ValueError)
    with pytest.raises(UsageError):
        await alice.verify_identity("bob", 42)  # type: ignore[arg-type]

    bob = await connect("bob", url=mitm.url)

    def garble(frame):
        if frame.get("t") == "res" and "channels" in frame.get("result", {}):
            return {"t": "res", "id": frame["id"], "result": {"channels": "not a list"}}
        return frame

    mitm.rewrite = garble
    with pytest.raises(RemoteProtocolError) as garbage:
        await bob.space.list_channels()
    assert isinstance(garbage.value, ProtocolError)
    assert not isinstance(garbage.value, UsageError)


async def test_accepting_new_keys_can_be_bound_to_a_fingerprint(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.verify_identity("bob", bob.fingerprint)
    with pytest.raises(IdentityChangedError, match="nothing was changed"):
        await alice.accept_new_identity("bob", "0000 " * 7 + "0000")
    assert alice.trusted_identities()[0].verified is True
    # The same keys again: the pin keeps its first sight and its verification.
    (before,) = alice.trusted_identities()
    assert await alice.accept_new_identity("bob") == bob.fingerprint
    assert alice.trusted_identities() == [before]
    assert await alice.accept_new_identity("bob", bob.fingerprint) == bob.fingerprint
    assert alice.trusted_identities()[0].verified is True
