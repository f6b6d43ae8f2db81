"""A malicious relay that speaks for a member with a false key from its directory, or
replays an old message at a new handle after a restart: refused and reported, never
delivered, while the real member's messages are. The attacks of issue 12 are split by
family: see :mod:`tests.reliability.malicious`.
"""

from __future__ import annotations

from typing import Any

import pytest

import spacenb.aio as aio
from spacenb.exceptions import IdentityChangedError
from spacenb.protocol import frames
from spacenb.protocol.envelope import Envelope, new_session_id, seal_envelope
from spacenb.protocol.keys import IdentityKeys
from spacenb.server.app import RunningServer

from .conftest import Connect, DirClient
from .evil import EvilRelay
from .helpers import wait_until
from .malicious import bodies, reported, stored, watch

pytestmark = pytest.mark.timeout(90)


# --------------------------------------------------------------------------- false keys


def _false_keys(evil: EvilRelay, user: str, victim: str, false: IdentityKeys) -> None:
    """Make the relay's directory answer ``user`` with ``false`` keys for ``victim``."""

    def lie(conn: Any, req: Any, result: frames.UserKeysResult) -> frames.UserKeysResult:
        return frames.UserKeysResult(
            tuple(
                frames.UserEntry(u.username, false.signing_key, false.ecdh_key)
                if u.username == victim
                else u
                for u in result.users
            )
        )

    evil.rewrite_result(frames.UserKeys, lie, user=user)


def _forged_from(
    space: aio.AsyncSpace, false: IdentityKeys, group_key: bytes, body: Any
) -> Envelope:
    """A message "from bob" signed by the false key, sealed under the real group key (the
    strongest relay: it even knows the key) and bound to the receiver's own head."""
    state = space.core.require_state()
    envelope, _ = seal_envelope(
        false,
        group_key,
        source="bob",
        target=space.id,
        subject="default",
        epoch=state.epoch,
        content_type=None,
        body=body,
        head_seq=state.head_seq,
        head=state.head,
        seq=2**62,
        sid=new_session_id(),
    )
    return envelope


async def test_a_false_signing_key_does_not_let_the_relay_speak_for_bob(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """In carol's fresh session the relay's directory serves a false key for bob, and it
    pushes a message "from bob" signed by that key: refused (the log records bob's real
    key, and carol pins that one); the directory's lie raises IdentityChangedError; the
    real bob's messages are delivered."""
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    false = IdentityKeys.generate()
    _false_keys(evil, "carol", "bob", false)
    carol = await connect(server, "carol", evil.url)
    c = await carol.space.join_channel("general")
    c_msgs, c_rej = watch(c)
    assert a.keyring is not None

    last = stored(server, a.id)[-1].handle if stored(server, a.id) else 0
    forged = _forged_from(c, false, a.keyring.key(0), "forged")
    await evil.inject(frames.MessagePushed(last + 1, forged), to="carol")
    await reported(c_rej, "signature does not verify", sender="bob")
    history_forgery = _forged_from(c, false, a.keyring.key(0), "forged in history")

    def add(conn: Any, req: Any, page: frames.HistoryPage) -> frames.HistoryPage:
        return frames.HistoryPage((*page.items, frames.StoredMessage(last + 2,
                                   history_forgery)), page.next_cursor)  # fmt: skip

    evil.rewrite_result(frames.HistoryRequest, add, user="carol")
    page = await c.history()
    assert page.unreadable == 1 and [m.message.body for m in page.messages] == []

    assert await carol.fingerprint_of("bob") == bob.fingerprint
    with pytest.raises(IdentityChangedError):
        await carol.identities(["bob"])
    with pytest.raises(IdentityChangedError):
        await carol.verify_identity("bob", false.fingerprint)
    await carol.verify_identity("bob", bob.fingerprint)

    await b.send_message("the real bob")
    await wait_until(lambda: bool(c_msgs.items))
    assert bodies(c_msgs) == ["the real bob"]
    assert all(m.sender == "bob" for m in c_msgs.items)


async def test_a_false_key_pinned_first_is_a_reported_conflict_never_a_forgery(
    server: RunningServer, evil: EvilRelay, connect: Connect
) -> None:
    """Trust on first use: carol asks the directory about bob before she ever sees the
    space's log, so she pins the relay's false key. The log then records bob's real key: a
    conflict carol's client reports (and an out-of-band fingerprint check raises on), and
    neither the forgery nor anything "from bob" is delivered until it is resolved."""
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    false = IdentityKeys.generate()
    _false_keys(evil, "carol", "bob", false)
    carol = await connect(server, "carol", evil.url)
    assert await carol.fingerprint_of("bob") == false.fingerprint  # pinned: TOFU
    c = await carol.space.join_channel("general")
    c_msgs, c_rej = watch(c)
    assert "bob" in c.core.distrusted
    with pytest.raises(IdentityChangedError):
        await carol.verify_identity("bob", bob.fingerprint)
    assert a.keyring is not None

    last = stored(server, a.id)[-1].handle if stored(server, a.id) else 0
    await evil.inject(
        frames.MessagePushed(last + 1, _forged_from(c, false, a.keyring.key(0), "forged")),
        to="carol",
    )
    await b.send_message("the real bob")
    await a.send_message("alice")
    await wait_until(lambda: bool(c_msgs.items))
    await wait_until(lambda: len([r for r in c_rej.items if r.sender == "bob"]) >= 2)
    assert bodies(c_msgs) == ["alice"]
    for event in c_rej.items:
        assert event.sender == "bob"
    assert any("pinned" in r.reason for r in c_rej.items)


# --------------------------------------------------------------------------- replays


async def test_an_old_message_replayed_after_a_restart_is_refused(
    server: RunningServer, evil: EvilRelay, connect: Connect, dir_client: DirClient
) -> None:
    """carol (a directory keystore) receives two messages, closes and comes back. The relay
    re-serves the first one at a new handle, pushed live and inside history: refused and
    reported both times. A fresh client reading history from the start refuses the
    replayed copy too, and delivers the original once."""
    alice = await connect(server, "alice")
    a = await alice.space.create_channel("general")
    carol = await dir_client(server, "carol", evil.url)
    c = await carol.space.join_channel("general")
    c_msgs, _ = watch(c)
    h1 = await a.send_message("first")
    h2 = await a.send_message("second")
    await wait_until(lambda: len(c_msgs.items) >= 2)
    assert bodies(c_msgs) == ["first", "second"]
    original = next(item for item in stored(server, a.id) if item.handle == h1)
    await carol.close()

    carol = await dir_client(server, "carol", evil.url)
    c = await carol.space.join_channel("general")
    c_msgs, c_rej = watch(c)
    replay_at = h2 + 1
    await evil.inject(frames.MessagePushed(replay_at, original.envelope), to="carol")
    why = await reported(c_rej, "replayed", sender="alice")
    assert why.handle == replay_at

    def alone(conn: Any, req: Any, page: frames.HistoryPage) -> frames.HistoryPage:
        return frames.HistoryPage((frames.StoredMessage(replay_at, original.envelope),), h2)

    evil.rewrite_result(frames.HistoryRequest, alone, user="carol")
    only = await c.history(limit=1)  # a page holding just the replayed copy
    assert only.messages == () and only.unreadable == 1
    assert len([r for r in c_rej.items if r.handle == replay_at]) == 2
    evil.reset()

    def replay(conn: Any, req: Any, page: frames.HistoryPage) -> frames.HistoryPage:
        if req.space_id != a.id or req.before is not None:
            return page
        return frames.HistoryPage(
            (*page.items, frames.StoredMessage(replay_at, original.envelope)), page.next_cursor
        )

    evil.rewrite_result(frames.HistoryRequest, replay)
    page = await c.history()
    assert [(m.handle, m.message.body) for m in page.messages] == [(h1, "first"), (h2, "second")]
    assert page.unreadable == 1
    assert len([r for r in c_rej.items if r.handle == replay_at]) == 3

    dave = await connect(server, "dave", evil.url)
    d = await dave.space.join_channel("general")
    d_msgs, d_rej = watch(d)
    page = await d.history()
    assert [(m.handle, m.message.body) for m in page.messages] == [(h1, "first"), (h2, "second")]
    assert page.unreadable == 1
    why = await reported(d_rej, "replayed", sender="alice")
    assert why.handle == replay_at

    await a.send_message("third")
    await wait_until(lambda: bool(c_msgs.items) and bool(d_msgs.items))
    assert bodies(c_msgs) == bodies(d_msgs) == ["third"]
