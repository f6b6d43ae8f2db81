"""Forgery and replay by a malicious relay (a MITM proxy in front of bob).

``tests/aio/test_verification.py`` covers live messages (each field altered, a non-member
sender, a replay, an old version replayed as an edit, a key wrapped by an outsider). This
file covers the rest: ephemeral signals, the history path, edits, kind confusion between
signals and stored messages, and keys wrapped by someone who may not hand them out. Every
forgery is bound to the space's real state-log head (protocol v2), so what refuses it is
the check of its sender, signature, seal or sequence number, not a missing head; the
state-binding fields themselves (``head``, ``head_seq``) are altered too. In every case
bob's ``rejected`` event fires and his handlers never see the forgery (a genuine edit
delivered twice is a duplicate: dropped without a report, and never re-delivered).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.aio import verify_pool
from spacenb.protocol import crypto, frames
from spacenb.protocol.wrap import WrappedKey, wrap_group_key
from spacenb.server.app import RunningServer

from .conftest import Connect, Figures, StartRelay
from .helpers import Inbox, Mitm, altered, event_json, forged_envelope, wait_until

ENVELOPE_FIELDS = [
    "source", "target", "subject", "epoch", "content_type", "head_seq", "head", "kind", "iv",
    "ciphertext", "signature",
]  # fmt: skip


@dataclass
class Scene:
    """alice owns the channel ``general`` (and ``other``); bob, behind the MITM, and carol
    are members of both; mallory is signed in but a member of neither."""

    server: RunningServer
    mitm: Mitm
    alice: aio.AsyncClient
    bob: aio.AsyncClient
    carol: aio.AsyncClient
    mallory: aio.AsyncClient
    a: aio.AsyncSpace  # general, as alice, bob and carol see it
    b: aio.AsyncSpace
    c: aio.AsyncSpace
    other: aio.AsyncSpace  # other, as bob sees it
    messages: Inbox
    edits: Inbox
    signals: Inbox
    rejected: Inbox

    def frames_seen(self, ev: str) -> list[dict[str, Any]]:
        return [f for f in self.mitm.seen if f.get("ev") == ev]

    def seal_as(self, client: aio.AsyncClient, key: bytes, body: Any, **fields: Any) -> dict:
        """An envelope for ``general`` sealed with ``key`` and signed by ``client``, bound
        to the log's real head, in a session of its own."""
        return forged_envelope(
            client.identity, key, self.a.core.require_state(), body,
            source=client.username, **fields,
        )  # fmt: skip

    @property
    def group_key(self) -> bytes:
        assert self.a.keyring is not None
        return self.a.keyring.key(0)


@pytest.fixture
async def scene(start_relay: StartRelay, connect: Connect, mitm: Any) -> Scene:
    server = await start_relay()
    proxy = await mitm(server.url)
    alice = await connect(server, "alice")
    bob = await connect(server, "bob", url=proxy.url)
    carol = await connect(server, "carol")
    mallory = await connect(server, "mallory")
    a = await alice.space.create_channel("general")
    await alice.space.create_channel("other")
    b = await bob.space.join_channel("general")
    other = await bob.space.join_channel("other")
    c = await carol.space.join_channel("general")
    messages, edits, signals, rejected = Inbox(), Inbox(), Inbox(), Inbox()
    b.on_message_edited(edits)
    for space in (b, other):
        space.on_rejected(rejected)
        space.on_message(messages)
        space.on_ephemeral(signals)
    await wait_until(lambda: "bob" in a.peers())
    return Scene(server, proxy, alice, bob, carol, mallory, a, b, c, other,
                 messages, edits, signals, rejected)  # fmt: skip


async def rejected_once_more(scene: Scene, action: Callable[[], Any], seen: int) -> int:
    """Run ``action`` (which makes the relay deliver one forgery) and wait for bob to
    reject it; returns the new count of rejections."""
    await action()
    await scene.rejected.wait(seen + 1)
    return seen + 1


# --------------------------------------------------------------------------- signals


async def test_altered_signals_are_rejected(scene: Scene, figures: Figures) -> None:
    """Each field of an ephemeral signal changed in transit: dropped, never delivered."""
    seen = 0
    for field in ENVELOPE_FIELDS:

        def rewrite(frame: dict[str, Any], field: str = field) -> dict[str, Any]:
            if frame.get("ev") == "ephemeral":
                frame = copy.deepcopy(frame)
                frame["envelope"] = altered(frame["envelope"], field, scene.other.id)
            return frame

        scene.mitm.rewrite = rewrite
        seen = await rejected_once_more(scene, lambda: scene.a.send_ephemeral("typing", 1), seen)
        figures.add("forgery.signal_fields")
    scene.mitm.rewrite = None
    await scene.a.send_ephemeral("typing", "clean")
    (signal,) = await scene.signals.wait(1)
    assert (signal.sender, signal.subject, signal.data) == ("alice", "typing", "clean")


async def test_forged_and_replayed_signals_are_rejected(scene: Scene, figures: Figures) -> None:
    await scene.a.send_ephemeral("typing", "genuine")
    await scene.signals.wait(1)
    genuine = scene.frames_seen("ephemeral")[0]
    lies = {
        "signed by a non-member": scene.seal_as(
            scene.mallory, crypto.random_bytes(32), "forged", kind="eph"
        ),
        "a member's signal relabelled as alice's": {
            **scene.seal_as(scene.carol, scene.group_key, "forged", kind="eph"),
            "source": "alice",
        },
        "replayed": genuine["envelope"],
    }
    seen = 0
    for envelope in lies.values():
        frame = {"t": "evt", "ev": "ephemeral", "envelope": envelope}
        seen = await rejected_once_more(scene, lambda f=frame: scene.mitm.inject(f), seen)
        figures.add("forgery.signal_lies")
    assert [s.data for s in scene.signals.items] == ["genuine"], lies.keys()


async def test_signals_and_stored_messages_cannot_stand_in_for_each_other(
    scene: Scene, figures: Figures
) -> None:
    """``kind`` keeps signals and stored messages apart (PROTOCOL.md, "Sealing"): a relay
    cannot turn a typing indicator into a message or an edit, nor a message into a signal."""
    await scene.a.send_ephemeral("typing", "a signal")
    handle = await scene.a.send_message("a message")
    await scene.signals.wait(1)
    await scene.messages.wait(1)
    signal = scene.frames_seen("ephemeral")[0]["envelope"]
    message = scene.frames_seen("message")[0]["envelope"]
    injected = [
        {"t": "evt", "ev": "message", "handle": handle + 1, "envelope": signal},
        {"t": "evt", "ev": "edited", "handle": handle, "envelope": signal},
        {"t": "evt", "ev": "ephemeral", "envelope": message},
    ]
    seen = 0
    for frame in injected:
        seen = await rejected_once_more(scene, lambda f=frame: scene.mitm.inject(f), seen)
        figures.add("forgery.kind_confusion")
    assert [m.message.body for m in scene.messages.items] == ["a message"]
    assert not scene.edits.items
    assert [s.data for s in scene.signals.items] == ["a signal"]


async def test_a_forged_far_future_handle_does_not_silence_the_receiver(
    scene: Scene, figures: Figures
) -> None:
    """A forgery at handle 2^53-1 is rejected and leaves no trace: it must not make every
    later genuine message look already delivered."""
    forged = scene.seal_as(scene.mallory, crypto.random_bytes(32), "forged")
    await scene.mitm.inject({"t": "evt", "ev": "message", "handle": 2**53 - 1, "envelope": forged})
    await scene.rejected.wait(1)
    handle = await scene.a.send_message("after the forgery")
    (message,) = await scene.messages.wait(1)
    assert (message.handle, message.message.body) == (handle, "after the forgery")
    figures.add("forgery.far_future_handle")


# --------------------------------------------------------------------------- history


@pytest.mark.parametrize("min_page", [1 << 30, 1], ids=["in-process", "verify-pool"])
async def test_history_drops_forged_tampered_and_replayed_items(
    scene: Scene, figures: Figures, min_page: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay answers ``history`` with lies mixed into genuine items: bob's page holds
    only the genuine messages and counts the rest as unreadable, whether the signatures
    are checked in bob's process or by verification workers (``verify_pool``)."""
    monkeypatch.setattr(verify_pool, "MIN_PAGE", min_page)
    handles = [await scene.a.send_message(f"m{i}") for i in range(3)]
    await scene.a.send_ephemeral("typing", True)
    await scene.messages.wait(3)
    await scene.signals.wait(1)
    stored = scene.frames_seen("message")
    signal = scene.frames_seen("ephemeral")[0]["envelope"]
    lies = [
        altered(stored[0]["envelope"], "ciphertext"),
        altered(stored[0]["envelope"], "source"),
        altered(stored[0]["envelope"], "head"),  # bound to a log bob does not share
        altered(stored[0]["envelope"], "head_seq"),  # bound to an event the relay withholds
        scene.seal_as(scene.mallory, crypto.random_bytes(32), "forged by an outsider"),
        # a member's genuine signature over a message relabelled as alice's
        {**scene.seal_as(scene.carol, scene.group_key, "carol as alice"), "source": "alice"},
        stored[1]["envelope"],  # a replay: the same message again at a later handle
        signal,  # a signal passed off as a stored message
    ]

    def rewrite(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("t") == "res" and "items" in frame.get("result", {}):
            frame = copy.deepcopy(frame)
            top = handles[-1]
            frame["result"]["items"] += [
                {"handle": top + 1 + i, "envelope": lie} for i, lie in enumerate(lies)
            ]
        return frame

    scene.mitm.rewrite = rewrite
    page = await scene.b.history(limit=50)
    scene.mitm.rewrite = None
    assert bool(verify_pool.shared()._workers) == (min_page == 1)
    assert [(m.handle, m.message.body) for m in page.messages] == [
        (h, f"m{i}") for i, h in enumerate(handles)
    ]
    assert page.unreadable == len(lies)
    await scene.rejected.wait(len(lies))
    figures.add("forgery.history_lies", len(lies))


# --------------------------------------------------------------------------- edits


async def test_forged_tampered_and_replayed_edits_are_rejected(
    scene: Scene, figures: Figures
) -> None:
    handle = await scene.a.send_message("v1")
    await scene.messages.wait(1)
    await scene.a.edit_message(handle, "v2")
    await scene.edits.wait(1)
    genuine = scene.frames_seen("edited")[0]
    original = scene.frames_seen("message")[0]
    by_carol = scene.seal_as(scene.carol, scene.group_key, "carol's rewrite of alice's text")
    injected = [
        # carol is a member and holds the key, but only alice may edit alice's message
        {"t": "evt", "ev": "edited", "handle": handle, "envelope": by_carol},
        # the original, replayed as an edit: an older revision would roll the text back
        {**original, "ev": "edited"},
        # an edit altered in transit, field by field
        *(
            {**genuine, "envelope": altered(genuine["envelope"], field, scene.other.id)}
            for field in ENVELOPE_FIELDS
            if field != "target"  # re-targeted, it is routed to the other space
        ),
    ]
    seen = 0
    for frame in injected:
        seen = await rejected_once_more(scene, lambda f=frame: scene.mitm.inject(f), seen)
        figures.add("forgery.edit_lies")
    # The genuine edit, delivered a second time: a duplicate (same handle, revision and
    # id), dropped without a report. Frames are handled in order, so once the forgery
    # injected after it is rejected, the duplicate has been handled too.
    await scene.mitm.inject(genuine)
    marker = scene.seal_as(scene.mallory, crypto.random_bytes(32), "after the duplicate")
    frame = {"t": "evt", "ev": "edited", "handle": handle, "envelope": marker}
    seen = await rejected_once_more(scene, lambda: scene.mitm.inject(frame), seen)
    figures.add("forgery.edit_duplicates")
    assert [e.message.body for e in scene.edits.items] == ["v2"]
    assert [m.message.body for m in scene.messages.items] == ["v1"]


# --------------------------------------------------------------------------- keys


async def test_keys_from_anyone_but_a_key_holder_are_refused(
    scene: Scene, connect: Connect, figures: Figures
) -> None:
    """In a ``rotate`` space, the relay pushes bob the next epoch's key wrapped by someone
    who may not hand it out: a removed member, a name forged over mallory's signature, and
    a genuine key re-addressed to bob. Bob refuses each and keeps sealing under the real
    epoch."""
    council = await scene.alice.space.create_channel("council", history_policy="rotate")
    bob_council = await scene.bob.space.join_channel("council")
    carol_council = await scene.carol.space.join_channel("council")
    refused = Inbox()
    bob_council.on_rejected(refused)
    await scene.alice.space.remove_member(council.id, "carol")  # rotates to epoch 1
    await wait_until(lambda: bob_council.keyring is not None and bob_council.keyring.has(1))
    assert carol_council.keyring is not None and not carol_council.keyring.has(1)

    def wrap(wrapper: aio.AsyncClient, name: str, recipient: aio.AsyncClient) -> WrappedKey:
        return wrap_group_key(
            crypto.random_bytes(32), space_id=council.id, epoch=2,
            recipient=recipient.username,
            recipient_ecdh=recipient.identity.public(recipient.username).ecdh_public_key(),
            wrapper=name, wrapper_identity=wrapper.identity,
        )  # fmt: skip

    for_carol = wrap(scene.alice, "alice", scene.carol)
    keys = [
        wrap(scene.carol, "carol", scene.bob),  # a removed member
        wrap(scene.mallory, "alice", scene.bob),  # alice's name, mallory's signature
        WrappedKey(for_carol.space_id, 2, "bob", "alice", for_carol.blob, for_carol.signature),
    ]
    for i, key in enumerate(keys):
        await scene.mitm.inject(event_json(frames.KeysPushed(council.id, (key,))))
        await refused.wait(i + 1)
        figures.add("forgery.key_lies")
    assert bob_council.keyring is not None and bob_council.keyring.epochs == [0, 1]
    handle = await bob_council.send_message("still under epoch 1")
    page = await council.history(limit=5)
    assert [(m.handle, m.epoch) for m in page.messages][-1] == (handle, 1)


async def test_a_message_passed_off_as_an_edit_first_is_still_delivered(
    scene: Scene, figures: Figures
) -> None:
    """The relay pushes carol's genuine new message first as an ``edited`` of alice's
    message (refused: carol is not its author), then as itself: the refusal must leave no
    trace, so the message is delivered at its own handle (its sequence number was never
    accepted at alice's)."""
    handle = await scene.a.send_message("alice's")
    await scene.messages.wait(1)

    def pass_off(frame: dict[str, Any]) -> Any:
        if frame.get("ev") == "message" and frame["envelope"]["source"] == "carol":
            return [{**frame, "ev": "edited", "handle": handle}, frame]
        return frame

    scene.mitm.rewrite = pass_off
    carols = await scene.c.send_message("carol's")
    await scene.rejected.wait(1)
    await wait_until(lambda: len(scene.messages.items) >= 2 or len(scene.rejected.items) > 1)
    scene.mitm.rewrite = None
    assert [(m.handle, m.message.body) for m in scene.messages.items] == [
        (handle, "alice's"), (carols, "carol's")
    ], [r.reason for r in scene.rejected.items]  # fmt: skip
    assert [r.reason for r in scene.rejected.items] == ["edit by someone other than the author"]
    assert not scene.edits.items
    page = await scene.b.history(limit=10)
    assert page.unreadable == 0
    assert [m.message.body for m in page.messages] == ["alice's", "carol's"]
    figures.add("forgery.edit_lies")
