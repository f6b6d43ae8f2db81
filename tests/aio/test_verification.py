"""Receivers verify everything: a malicious relay (a MITM proxy) cannot forge, tamper or replay."""

from __future__ import annotations

import base64
import copy

import pytest

import spacenb.aio as aio

from .conftest import Inbox
from .mitm import MitmRelay


@pytest.fixture
async def mitm(server):
    proxy = await MitmRelay(server.url).start()
    yield proxy
    await proxy.stop()


async def setup(connect, mitm):
    alice = await connect("alice")
    mallory = await connect("mallory")
    bob = await connect("bob", url=mitm.url)
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    delivered, rejected = Inbox(), Inbox()
    b.on_message(delivered)
    b.on_rejected(rejected)
    return a, b, mallory, delivered, rejected


def flip(b64: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)))
    raw[len(raw) // 2] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def tamper(field: str):
    def rewrite(frame):
        if frame.get("t") == "evt" and frame.get("ev") == "message":
            frame = copy.deepcopy(frame)
            env = frame["envelope"]
            if field in ("iv", "ciphertext", "signature", "head"):
                env[field] = flip(env[field])
            elif field == "head_seq":
                env["head_seq"] += 1
            elif field == "epoch":
                env["epoch"] = 0 if env["epoch"] else 1
            elif field == "source":
                env["source"] = "mallory"
            else:
                env[field] = env[field] + "x"
        return frame

    return rewrite


@pytest.mark.parametrize(
    "field",
    [
        "source", "subject", "epoch", "content_type", "head_seq", "head", "iv", "ciphertext",
        "signature",
    ],
)  # fmt: skip
async def test_altered_envelope_is_dropped(connect, mitm, field):
    a, _b, _mallory, delivered, rejected = await setup(connect, mitm)
    mitm.rewrite = tamper(field)
    await a.send_message("tampered")
    await rejected.wait(1)
    mitm.rewrite = None
    await a.send_message("clean")
    await delivered.wait(1)
    assert [e.message.body for e in delivered.items] == ["clean"]


async def test_forged_sender_is_dropped(connect, mitm):
    """Mallory is a registered user but not a member: an envelope she signs is dropped."""
    a, _b, mallory, delivered, rejected = await setup(connect, mitm)
    await a.send_message("real")
    await delivered.wait(1)
    original = next(f for f in mitm.seen if f.get("ev") == "message")
    from spacenb.protocol.envelope import seal_envelope
    from spacenb.protocol.frames import MessagePushed

    state = a.state
    envelope, _ = seal_envelope(
        mallory.identity,
        a.keyring.key(0),
        source="mallory",
        target=a.id,
        subject="default",
        epoch=0,
        content_type=None,
        body="forged",
        head_seq=state.head_seq,
        head=state.head,
        seq=1,
        sid="0" * 16,
    )
    await mitm.inject(
        __import__("json").loads(
            MessagePushed(handle=original["handle"] + 1, envelope=envelope).to_json()
        )
    )
    (bad,) = await rejected.wait(1)
    assert bad.sender == "mallory"
    assert [e.message.body for e in delivered.items] == ["real"]


async def test_replayed_envelope_is_dropped(connect, mitm):
    a, _b, _mallory, delivered, rejected = await setup(connect, mitm)
    await a.send_message("once")
    await delivered.wait(1)
    original = next(f for f in mitm.seen if f.get("ev") == "message")
    replay = copy.deepcopy(original)
    replay["handle"] = original["handle"] + 10
    await mitm.inject(replay)
    (bad,) = await rejected.wait(1)
    assert "replay" in bad.reason
    assert [e.message.body for e in delivered.items] == ["once"]


async def test_replayed_edit_is_dropped(connect, mitm):
    """An old version replayed as an edit would roll a message back: refused."""
    a, b, _mallory, delivered, rejected = await setup(connect, mitm)
    edited = Inbox()
    b.on_message_edited(edited)
    handle = await a.send_message("v1")
    await delivered.wait(1)
    await a.edit_message(handle, "v2")
    await edited.wait(1)
    original = next(f for f in mitm.seen if f.get("ev") == "message")
    await mitm.inject(
        {"t": "evt", "ev": "edited", "handle": handle, "envelope": original["envelope"]}
    )
    await rejected.wait(1)
    assert [e.message.body for e in edited.items] == ["v2"]


async def test_key_wrapped_by_an_outsider_is_refused(connect, mitm, server):
    """A relay that injects a key wrapped by a non-member cannot make bob use it."""
    a, b, mallory, _delivered, rejected = await setup(connect, mitm)
    from spacenb.protocol.frames import KeysPushed
    from spacenb.protocol.wrap import wrap_group_key

    bogus = wrap_group_key(
        b"\x11" * 32,
        space_id=a.id,
        epoch=5,
        recipient="bob",
        recipient_ecdh=b.client.identity.public("bob").ecdh_public_key(),
        wrapper="mallory",
        wrapper_identity=mallory.identity,
    )
    await mitm.inject(__import__("json").loads(KeysPushed(space_id=a.id, keys=(bogus,)).to_json()))
    await rejected.wait(1)
    assert not b.keyring.has(5)


async def test_handler_errors_do_not_stop_delivery(connect, mitm):
    a, b, _mallory, delivered, _rejected = await setup(connect, mitm)

    def broken(event):
        raise RuntimeError("user bug")

    b.on_message(broken)
    await a.send_message("one")
    await a.send_message("two")
    await delivered.wait(2)
    assert [e.message.body for e in delivered.items] == ["one", "two"]
    assert isinstance(b, aio.AsyncSpace)
