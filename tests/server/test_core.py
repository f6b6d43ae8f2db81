"""The relay core driven with plain calls: frames in, frames out with their recipients,
no socket and no event loop (the websockets adapter is one way to serve it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from spacenb.protocol import frames
from spacenb.protocol.keys import IdentityKeys
from spacenb.server.core import RelayCore, Session
from spacenb.server.sqlite import SQLiteStorage

APP_KEY = "app-key-for-the-core"


@pytest.fixture
def core() -> Iterator[RelayCore]:
    storage = SQLiteStorage(":memory:")
    core = RelayCore(storage, app_key=APP_KEY, relay_keys=IdentityKeys.generate())
    yield core
    storage.close()


def sent(core: RelayCore) -> list[tuple[list[Session], dict[str, Any]]]:
    outbox, _keeper = core.drain()
    return [(list(to), json.loads(text)) for to, text in outbox]


def auth_frame(session: Session, username: str, *, app_key: str = APP_KEY) -> str:
    identity = IdentityKeys.generate()
    signed = frames.auth_signed_bytes(
        session.nonce, app_key, username, identity.signing_key, identity.ecdh_key
    )
    request = frames.Auth(1, app_key, username, identity.signing_key, identity.ecdh_key,
                          identity.sign(signed))  # fmt: skip
    return request.to_json()


def test_a_request_before_sign_in_is_refused_to_that_session_only(core: RelayCore) -> None:
    alice, bob = Session(), Session()
    core.receive(alice, frames.ListChannels(5).to_json())
    ((to, frame),) = sent(core)
    assert to == [alice] and frame["t"] == "err" and frame["id"] == 5
    assert bob.username is None


def test_sign_up_answers_the_session_and_binds_it(core: RelayCore) -> None:
    alice = Session()
    core.receive(alice, auth_frame(alice, "alice"))
    ((to, frame),) = sent(core)
    assert to == [alice] and frame["t"] == "res" and frame["result"]["username"] == "alice"
    assert frame["result"]["created"] is True and alice.username == "alice"
    core.receive(alice, frames.ListChannels(2).to_json())
    ((to, frame),) = sent(core)
    assert to == [alice] and frame["id"] == 2 and frame["result"]["channels"] == []


def test_a_signature_over_another_connection_is_refused(core: RelayCore) -> None:
    """An auth signed for one connection's nonce does not sign in another connection."""
    alice, mallory = Session(), Session()
    core.receive(mallory, auth_frame(alice, "alice"))
    ((to, frame),) = sent(core)
    assert to == [mallory] and frame["t"] == "err" and frame["code"] == "auth_failed"
    assert mallory.username is None


def test_garbage_is_an_error_frame_and_changes_nothing(core: RelayCore) -> None:
    alice = Session()
    for text in ("{", "[]", '{"t":"req","op":"no_such_op","id":3}', "x" * 100):
        core.receive(alice, text)
    answers = sent(core)
    assert [frame["t"] for _, frame in answers] == ["err"] * 4
    assert {frame["code"] for _, frame in answers} == {"bad_frame"}
    assert all(to == [alice] for to, _ in answers)
    assert answers[2][1]["id"] == 3  # the request is named when it can be
    assert alice.username is None
