"""spacenb.protocol.frames: the frame codec, its limits, and its agreement with PROTOCOL.md.

Malformed input of any kind may only raise ``ProtocolError`` (or ``LimitExceededError`` for
an oversize frame); every request, event and result survives a round trip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spacenb import exceptions
from spacenb.exceptions import (
    ChannelExistsError,
    LimitExceededError,
    ProtocolError,
    SpacenbError,
    StaleStateError,
    error_for_code,
)
from spacenb.protocol import frames
from spacenb.protocol.codec import Size
from spacenb.protocol.encoding import b64e
from spacenb.protocol.envelope import Envelope, seal_envelope
from spacenb.protocol.frames import (
    EVENTS,
    MAX_BYTES_FIELD,
    MAX_FRAME_BYTES,
    REQUESTS,
    ErrorFrame,
    Event,
    Request,
    Response,
    parse_client_frame,
    parse_result,
    parse_server_frame,
    request_id_of,
)
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair
from spacenb.protocol.statelog import SpaceState, StateEvent, make_event, make_genesis
from spacenb.protocol.wrap import WrappedKey, wrap_group_key

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "PROTOCOL.md"
ALLOWED = (ProtocolError, LimitExceededError)
MAX_INT = 2**53 - 1

# --------------------------------------------------------------------------- strategies


def fields_of(cls: type) -> dict[str, Any]:
    """The wire fields of a frame dataclass and their annotations."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def valid(tp: Any) -> st.SearchStrategy[Any]:
    """Values of annotation ``tp`` that the codec must accept."""
    origin = get_origin(tp)
    if origin is Annotated:
        inner, size = get_args(tp)
        assert inner is bytes and isinstance(size, Size)
        return st.binary(min_size=size.least, max_size=min(size.upper, size.least + 48))
    if origin in (Union, types.UnionType):
        (inner,) = (a for a in get_args(tp) if a is not type(None))
        return st.none() | valid(inner)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin is tuple:
        return st.lists(valid(get_args(tp)[0]), max_size=3).map(tuple)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(0, MAX_INT)
    if tp is str:
        return st.text(max_size=24)
    if tp is bytes:
        return st.binary(max_size=48)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return st.builds(tp, **{name: valid(hint) for name, hint in fields_of(tp).items()})
    raise TypeError(tp)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=16),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

RESULT_TYPES = sorted({cls.RESULT for cls in REQUESTS.values()}, key=lambda c: c.__name__)
REQUEST_CLASSES = list(REQUESTS.values())
EVENT_CLASSES = list(EVENTS.values())


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cls", REQUEST_CLASSES, ids=list(REQUESTS))
@given(data=st.data())
def test_request_round_trip(cls: type[Request[Any]], data: st.DataObject) -> None:
    request = data.draw(valid(cls))
    text = request.to_json()
    obj = json.loads(text)
    assert obj["t"] == "req" and obj["op"] == cls.OP and obj["id"] == request.id
    assert parse_client_frame(text) == request
    assert request_id_of(text) == request.id


@pytest.mark.parametrize("cls", REQUEST_CLASSES, ids=list(REQUESTS))
@given(data=st.data(), request_id=st.integers(1, MAX_INT))
def test_a_request_built_unsent_and_stamped_is_the_same_frame(
    cls: type[Request[Any]], data: st.DataObject, request_id: int
) -> None:
    # The client builds requests with the placeholder id; its connection stamps the real
    # one as it sends. The frame is byte for byte the one built with that id.
    request = data.draw(valid(cls))
    unsent = dataclasses.replace(request, id=frames.UNSENT)
    stamped = unsent.stamped(request_id)
    assert type(stamped) is cls and unsent.id == frames.UNSENT  # frozen: a new request
    assert stamped.to_json() == dataclasses.replace(request, id=request_id).to_json()
    assert parse_client_frame(stamped.to_json()) == stamped
    assert unsent.to_json(request_id) == stamped.to_json()  # how the connection writes it


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=list(EVENTS))
@given(data=st.data())
def test_event_round_trip(cls: type[Event], data: st.DataObject) -> None:
    event = data.draw(valid(cls))
    text = event.to_json()
    assert json.loads(text)["ev"] == cls.EV
    assert parse_server_frame(text) == event


@pytest.mark.parametrize("result_type", RESULT_TYPES, ids=lambda c: c.__name__)
@given(data=st.data(), request_id=st.integers(0, MAX_INT))
def test_result_round_trip(result_type: type, data: st.DataObject, request_id: int) -> None:
    result = data.draw(valid(result_type))
    request_cls = next(c for c in REQUEST_CLASSES if c.RESULT is result_type)
    response = parse_server_frame(Response.of(request_id, result).to_json())
    assert isinstance(response, Response) and response.id == request_id
    assert parse_result(request_cls, response.result) == result


@given(
    request_id=st.none() | st.integers(0, MAX_INT),
    code=st.text(max_size=64),
    message=st.text(max_size=200),
)
def test_error_frame_round_trip(request_id: int | None, code: str, message: str) -> None:
    frame = ErrorFrame(request_id, code, message)
    assert parse_server_frame(frame.to_json()) == frame


def test_error_frame_of_an_exception() -> None:
    frame = ErrorFrame.of(7, ChannelExistsError("general is taken"))
    assert frame == ErrorFrame(7, "channel_exists", "general is taken")
    parsed = parse_server_frame(frame.to_json())
    assert isinstance(parsed, ErrorFrame)
    error = error_for_code(parsed.code, parsed.message)
    assert type(error) is ChannelExistsError and str(error) == "general is taken"


def test_every_op_and_event_is_registered_once() -> None:
    assert all(op == cls.OP for op, cls in REQUESTS.items())
    assert all(ev == cls.EV for ev, cls in EVENTS.items())
    assert len(set(REQUESTS.values())) == len(REQUESTS)


# --------------------------------------------------------------------------- fuzzing


def _minimal(tp: Any) -> Any:
    """A deterministic valid value for ``tp`` with every list holding one item."""
    origin = get_origin(tp)
    if origin is Annotated:
        return bytes(get_args(tp)[1].least)
    if origin in (Union, types.UnionType):
        (inner,) = (a for a in get_args(tp) if a is not type(None))
        return _minimal(inner)
    if origin is Literal:
        return get_args(tp)[0]
    if origin is tuple:
        return (_minimal(get_args(tp)[0]),)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp(**{name: _minimal(hint) for name, hint in fields_of(tp).items()})
    return {bool: True, int: 1, str: "x", bytes: b"\x00\x01\x02"}[tp]


def _min(cls: type) -> str:
    frame: Request[Any] | Event = _minimal(cls)
    return frame.to_json()


CLIENT_SAMPLES = [_min(cls) for cls in REQUEST_CLASSES]
SERVER_SAMPLES = [_min(cls) for cls in EVENT_CLASSES] + [
    Response(3, {"space_id": None}).to_json(),
    ErrorFrame(None, "bad_frame", "id: missing").to_json(),
    ErrorFrame(4, "forbidden", "not a member").to_json(),
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


BOUNDARY_VALUES = [
    None, True, False, 0, -1, 1.5, MAX_INT, MAX_INT + 1, 2**64, "", "x" * 4097, [], {},
    "AA==", "sig.AAAA", float("nan"), float("inf"), [None] * 3, {"t": "req"},
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, samples: list[str]) -> str:
    """A valid frame with one value replaced, one key dropped or one key added."""
    obj = json.loads(draw(st.sampled_from(samples)))
    path = draw(st.sampled_from(_paths(obj)))
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    new_value = draw(st.sampled_from(BOUNDARY_VALUES) | json_values)
    if not path:
        return json.dumps(new_value) if action == "replace" else json.dumps(obj)
    parent = obj
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "replace":
        parent[last] = new_value
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = new_value
    else:
        parent.append(new_value)
    return json.dumps(obj)


def assert_only_protocol_errors(parse: Any, text: str | bytes) -> Any:
    try:
        parsed = parse(text)
    except ALLOWED:
        return None
    # Whatever parses serializes back to something that parses to the same value.
    assert parse(parsed.to_json()) == parsed
    return parsed


@given(json_values)
def test_fuzz_arbitrary_json(value: Any) -> None:
    text = json.dumps(value)
    assert_only_protocol_errors(parse_client_frame, text)
    assert_only_protocol_errors(parse_server_frame, text)
    if isinstance(value, dict):
        for cls in REQUEST_CLASSES:
            with contextlib.suppress(ProtocolError):
                parse_result(cls, value)


@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    assert_only_protocol_errors(parse_client_frame, text)
    assert_only_protocol_errors(parse_server_frame, text)
    assert request_id_of(text) is None or isinstance(request_id_of(text), int)


@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_client_frame(data)
    with pytest.raises(ProtocolError):
        parse_server_frame(data)
    text = data.decode("utf-8", "replace")
    assert_only_protocol_errors(parse_client_frame, text)
    assert_only_protocol_errors(parse_server_frame, text)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(CLIENT_SAMPLES))
def test_fuzz_mutated_requests(text: str) -> None:
    assert_only_protocol_errors(parse_client_frame, text)
    request_id_of(text)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SERVER_SAMPLES))
def test_fuzz_mutated_server_frames(text: str) -> None:
    assert_only_protocol_errors(parse_server_frame, text)


@given(st.sampled_from(CLIENT_SAMPLES + SERVER_SAMPLES), st.data())
def test_fuzz_mutated_text(sample: str, data: st.DataObject) -> None:
    """Character-level damage: drop, duplicate or replace one character."""
    i = data.draw(st.integers(0, len(sample) - 1))
    c = data.draw(st.characters())
    dropped, inserted, replaced = (
        sample[:i] + sample[i + 1 :],
        sample[:i] + c + sample[i:],
        sample[:i] + c + sample[i + 1 :],
    )
    for text in (dropped, inserted, replaced):
        assert_only_protocol_errors(parse_client_frame, text)
        assert_only_protocol_errors(parse_server_frame, text)


@pytest.mark.parametrize("cls", REQUEST_CLASSES, ids=list(REQUESTS))
@given(data=st.data())
def test_fuzz_results_of_every_request(cls: type[Request[Any]], data: st.DataObject) -> None:
    result = json.loads(Response.of(1, data.draw(valid(cls.RESULT))).to_json())["result"]
    paths = _paths(result)[1:]
    if paths:
        path = data.draw(st.sampled_from(paths))
        parent = result
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = data.draw(st.sampled_from(BOUNDARY_VALUES) | json_values)
    with contextlib.suppress(ProtocolError):
        parse_result(cls, result)


# --------------------------------------------------------------------------- size and depth


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        "{" + '"a":{' * 100_000,
        '{"t":"req","id":1,"op":"ping","x":' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"t":"evt","ev":"presence","space_id":"s","peers":' + "[" * 50_000 + "]" * 50_000 + "}",
    ],
    ids=["open brackets", "balanced brackets", "objects", "inside a request", "inside an event"],
)
def test_deep_nesting_is_a_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_client_frame(text)
    with pytest.raises(ProtocolError):
        parse_server_frame(text)
    assert request_id_of(text) is None


def test_oversize_frame_is_refused_before_parsing() -> None:
    text = '{"t":"req","id":1,"op":"ping"}' + " " * MAX_FRAME_BYTES
    with pytest.raises(LimitExceededError):
        parse_client_frame(text)
    with pytest.raises(LimitExceededError):
        parse_server_frame(text)
    assert request_id_of(text) is None
    assert issubclass(LimitExceededError, SpacenbError)


def test_frame_of_exactly_the_limit_parses() -> None:
    head = '{"t":"req","id":1,"op":"ping"}'
    assert parse_client_frame(head + " " * (MAX_FRAME_BYTES - len(head))) == frames.Ping(id=1)


def test_frame_limit_counts_utf8_bytes() -> None:
    # 400k characters, 1.2 MB of UTF-8: over the limit although fewer characters than it.
    text = '{"t":"req","id":1,"op":"ping","x":"' + "€" * 400_000 + '"}'
    assert len(text) < MAX_FRAME_BYTES < len(text.encode())
    with pytest.raises(LimitExceededError):
        parse_client_frame(text)


def _auth(signature: str) -> str:
    return json.dumps(
        {
            "t": "req", "id": 1, "op": "auth", "app_key": "k", "username": "u",
            "signing_key": "s", "ecdh_key": "d", "signature": signature,
        }
    )  # fmt: skip


def _append(body: str) -> str:
    event = {
        "space_id": "s", "seq": 1, "prev": b64e(bytes(32)), "kind": "leave", "actor": "u",
        "at_us": 1, "body": body, "signature": b64e(bytes(64)),
    }  # fmt: skip
    return json.dumps({"t": "req", "id": 1, "op": "append", "space_id": "s", "event": event,
                       "keys": []})  # fmt: skip


def test_binary_field_limit() -> None:
    at_limit = parse_client_frame(_append(b64e(bytes(MAX_BYTES_FIELD))))
    assert isinstance(at_limit, frames.Append) and len(at_limit.event.body) == MAX_BYTES_FIELD
    for extra in (1, 2, 3, 1000):
        with pytest.raises(ProtocolError) as info:
            parse_client_frame(_append(b64e(bytes(MAX_BYTES_FIELD + extra))))
        assert info.value.field == "event.body"


def test_fixed_size_binary_fields() -> None:
    """Every binary field with a size the protocol fixes is refused at any other size,
    before anything else looks at it; the error names the field and the size."""
    assert isinstance(parse_client_frame(_auth(b64e(bytes(64)))), frames.Auth)
    for size in (0, 63, 65, MAX_BYTES_FIELD):
        with pytest.raises(ProtocolError, match="exactly 64 bytes") as info:
            parse_client_frame(_auth(b64e(bytes(size))))
        assert info.value.field == "signature"
    envelope = Envelope("msg", "u", "s", "c", 0, "", 0, bytes(32), bytes(12), bytes(16), bytes(64))
    good = json.loads(frames.Send(id=1, envelope=envelope).to_json())
    assert parse_client_frame(json.dumps(good)) == frames.Send(id=1, envelope=envelope)
    cases = [
        ("iv", 11), ("iv", 13), ("iv", 256 << 10), ("head", 31), ("head", 33),
        ("signature", 63), ("ciphertext", 15), ("ciphertext", MAX_BYTES_FIELD + 1),
    ]  # fmt: skip
    for name, size in cases:
        frame = {**good, "envelope": {**good["envelope"], name: b64e(bytes(size))}}
        with pytest.raises(ProtocolError, match="bytes") as info:
            parse_client_frame(json.dumps(frame))
        assert info.value.field == f"envelope.{name}"
    key = {"space_id": "s", "epoch": 0, "recipient": "r", "wrapper": "w",
           "blob": b64e(bytes(93)), "signature": b64e(bytes(64))}  # fmt: skip
    with pytest.raises(ProtocolError, match="exactly 94 bytes") as info:
        parse_client_frame(json.dumps({"t": "req", "id": 2, "op": "admit", "space_id": "s",
                                       "member": "m", "keys": [key]}))  # fmt: skip
    assert info.value.field == "keys[0].blob"
    event = json.loads(_append(b64e(b"{}")))
    event["event"]["prev"] = b64e(bytes(31))
    with pytest.raises(ProtocolError, match="exactly 32 bytes"):
        parse_client_frame(json.dumps(event))
    hello = {"t": "evt", "ev": "hello", "server": "s", "version": 2, "nonce": b64e(bytes(16)),
             "keeper": None}  # fmt: skip
    with pytest.raises(ProtocolError, match="exactly 32 bytes"):
        parse_server_frame(json.dumps(hello))


def test_text_field_limit() -> None:
    assert parse_client_frame(frames.Resolve(id=1, name="n" * 4096).to_json())
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(frames.Resolve(id=1, name="n" * 4097).to_json())
    assert info.value.field == "name"


def test_list_limit() -> None:
    ok = frames.UserKeys(id=1, usernames=("u",) * 10_000)
    assert parse_client_frame(ok.to_json()) == ok
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(frames.UserKeys(id=1, usernames=("u",) * 10_001).to_json())
    assert info.value.field == "usernames"


# --------------------------------------------------------------------------- field rules


def _frame(**fields: Any) -> str:
    return json.dumps(
        {
            "t": "req",
            "id": 1,
            "op": "history",
            "space_id": "s",
            "before": None,
            "limit": 5,
            **fields,
        }
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"limit": True}, "limit"),  # booleans are not integers
        ({"limit": 5.0}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": 2**53}, "limit"),
        ({"limit": "5"}, "limit"),
        ({"before": -5}, "before"),
        ({"space_id": 5}, "space_id"),
        ({"space_id": None}, "space_id"),
        ({"extra": 1}, "extra"),
        ({"id": -1}, "id"),
        ({"id": True}, "id"),
        ({"id": 1.0}, "id"),
        ({"id": None}, "id"),
        ({"id": 2**53}, "id"),
        ({"t": "res"}, "t"),
        ({"op": "nope"}, "op"),
        ({"op": 5}, "op"),
    ],
)
def test_field_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(_frame(**change))
    assert info.value.field == field


def test_missing_fields_are_named() -> None:
    obj = json.loads(_frame())
    del obj["before"]
    with pytest.raises(ProtocolError, match="missing") as info:
        parse_client_frame(json.dumps(obj))
    assert info.value.field == "before"


def test_integer_bounds_accepted() -> None:
    request = parse_client_frame(_frame(limit=0, before=MAX_INT, id=MAX_INT))
    assert request == frames.HistoryRequest(id=MAX_INT, space_id="s", before=MAX_INT, limit=0)


def test_only_state_log_link_fields_and_cursors_may_be_left_out() -> None:
    """v1's optional ``join`` token is gone: ``join`` carries ``event`` (null when already
    a member) and it is required; only ``state_log``'s ``link_id`` and ``proof``, the
    paging cursors of ``list_channels`` and ``keys``, and ``send``'s ``resend`` may be
    left out."""
    optional = {
        (op, f.name)
        for op, cls in REQUESTS.items()
        for f in dataclasses.fields(cls)
        if f.init and f.default is None
    }
    assert optional == {
        ("state_log", "link_id"), ("state_log", "proof"), ("list_channels", "after"),
        ("keys", "since_epoch"), ("send", "resend"),
    }  # fmt: skip
    assert parse_client_frame('{"t":"req","id":1,"op":"list_channels"}') == frames.ListChannels(
        id=1, after=None
    )
    for cls in EVENT_CLASSES:
        assert all(f.default is not None for f in dataclasses.fields(cls)), cls
    assert parse_client_frame(
        '{"t":"req","id":1,"op":"state_log","space_id":"s","since":0,"limit":5}'
    ) == frames.GetStateLog(id=1, space_id="s", since=0, limit=5, link_id=None, proof=None)
    assert parse_client_frame(
        '{"t":"req","id":1,"op":"join","space_id":"s","event":null}'
    ) == frames.Join(id=1, space_id="s", event=None)
    with pytest.raises(ProtocolError, match="missing") as info:
        parse_client_frame('{"t":"req","id":1,"op":"join","space_id":"s"}')
    assert info.value.field == "event"
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(
            '{"t":"req","id":1,"op":"join","space_id":"s","token":"abc","event":null}'
        )
    assert info.value.field == "token"


def _envelope_json(**changes: Any) -> dict[str, Any]:
    env = Envelope(
        "msg", "alice", "spc.x", "default", 0, "", 3, bytes(32), bytes(12), bytes(16), bytes(64)
    )
    obj: dict[str, Any] = json.loads(frames.Send(id=1, envelope=env).to_json())
    obj["envelope"].update(changes)
    return obj


@pytest.mark.parametrize(
    "name", ["signature", "iv", "ciphertext", "kind", "epoch", "head_seq", "head"]
)
def test_envelope_fields_are_required(name: str) -> None:
    obj = _envelope_json()
    del obj["envelope"][name]
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(json.dumps(obj))
    assert info.value.field == f"envelope.{name}"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "MSG"}, "envelope.kind"),
        ({"iv": "AA=="}, "envelope.iv"),
        ({"ciphertext": 5}, "envelope.ciphertext"),
        ({"extra": 1}, "envelope.extra"),
        ({"head_seq": -1}, "envelope.head_seq"),
        ({"head_seq": "3"}, "envelope.head_seq"),
        ({"head": "AA=="}, "envelope.head"),
        ({"head": None}, "envelope.head"),
    ],
)
def test_nested_field_errors_name_the_path(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(json.dumps(_envelope_json(**change)))
    assert info.value.field == field


def test_wrapped_key_signature_is_required() -> None:
    key = WrappedKey("spc.x", 0, "bob", "alice", bytes(94), bytes(64))
    event = json.loads(frames.KeysPushed("s", (key,)).to_json())
    del event["keys"][0]["signature"]
    with pytest.raises(ProtocolError) as info:
        parse_server_frame(json.dumps(event))
    assert info.value.field == "keys[0].signature"


@pytest.mark.parametrize(
    "text",
    [
        '{"t":"res","id":1}',
        '{"t":"res","id":1,"result":[]}',
        '{"t":"res","id":1,"result":{},"extra":0}',
        '{"t":"res","result":{}}',
        '{"t":"err","id":"1","code":"x","message":"y"}',
        '{"t":"err","id":null,"code":5,"message":"y"}',
        '{"t":"err","id":null,"code":"x"}',
        '{"t":"evt","ev":"nope"}',
        '{"t":"evt"}',
        '{"t":"evt","ev":"epoch","space_id":"s"}',
        '{"t":"evt","ev":"epoch","space_id":"s","epoch":1}',
        '{"t":"evt","ev":"member","space_id":"s","member_id":"bob","role":"viewer"}',
        '{"t":"evt","ev":"deleted","space_id":"s","handle":1}',
        '{"t":"evt","ev":"state","space_id":"s"}',
        '{"t":"evt","ev":"state","space_id":"s","event":null}',
        '{"t":"req","id":1,"op":"ping"}',
        '{"t":null}',
        "{}",
        "[]",
        "null",
    ],
)
def test_malformed_server_frames(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_server_frame(text)


def test_error_frame_text_is_bounded() -> None:
    text = json.dumps({"t": "err", "id": None, "code": "c" * 500, "message": "m" * 10_000})
    frame = parse_server_frame(text)
    assert isinstance(frame, ErrorFrame)
    assert len(frame.code) == 64 and len(frame.message) == 4096


def test_request_id_of_broken_frames() -> None:
    assert request_id_of('{"t":"req","id":9,"op":"nope"}') == 9
    assert request_id_of('{"id":-1}') is None
    assert request_id_of("not json") is None
    assert request_id_of(b'{"id":1}') is None
    # refused for a non-JSON constant, yet the error can still name the request
    assert request_id_of('{"t":"req","id":4,"op":"space_info","space_id":Infinity}') == 4
    with pytest.raises(ProtocolError, match="not valid JSON"):
        frames.loads_frame('{"t":"req","id":4,"op":"space_info","space_id":NaN}')


def test_parse_result_rejects_a_wrong_shape() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_result(frames.Subscribe, {"peers": "alice", "epoch": 0})
    assert info.value.field == "result.peers"
    with pytest.raises(ProtocolError):
        parse_result(frames.Ping, {"unexpected": 1})
    assert parse_result(frames.Ping(id=1), {}) == frames.Ok()


# --------------------------------------------------------------------------- v2 frames

SPACE_KEY = SpaceKeyPair.from_seed(b"frames/space")
ALICE = IdentityKeys.from_seed(b"frames/alice")
BOB = IdentityKeys.from_seed(b"frames/bob")
T0 = 1_767_225_600_000_000
GROUP_KEY = bytes(range(32))


def _genesis() -> StateEvent:
    return make_genesis(
        SPACE_KEY,
        owner="alice",
        owner_signing_key=ALICE.signing_key,
        owner_ecdh_key=ALICE.ecdh_key,
        policy="rotate",
        private=False,
        manual_admit=False,
        name="général",
        keeper=None,
        group_key=GROUP_KEY,
        at_us=T0,
    )


GENESIS = _genesis()


def _bob_adds() -> StateEvent:
    return make_event(
        BOB,
        space_id=SPACE_KEY.space_id,
        seq=1,
        prev=GENESIS.hash(),
        kind="add",
        actor="bob",
        at_us=T0 + 1,
        body={
            "member": "bob", "signing_key": BOB.signing_key, "ecdh_key": BOB.ecdh_key,
            "role": "viewer", "via": "open", "link_id": None, "proof": None,
        },
    )  # fmt: skip


BOB_ADDS = _bob_adds()
STATE_EVENT_FIELDS = ["space_id", "seq", "prev", "kind", "actor", "at_us", "body", "signature"]


def _wrapped(recipient: IdentityKeys, name: str) -> WrappedKey:
    return wrap_group_key(
        GROUP_KEY,
        space_id=SPACE_KEY.space_id,
        epoch=0,
        recipient=name,
        recipient_ecdh=recipient.public(name).ecdh_public_key(),
        wrapper="alice",
        wrapper_identity=ALICE,
    )


def test_protocol_version_is_2() -> None:
    assert frames.PROTOCOL_VERSION == 2
    hello = frames.Hello(server="spacenb", version=2, nonce=bytes(32), keeper=None)
    assert parse_server_frame(hello.to_json()) == hello
    assert json.loads(hello.to_json())["version"] == 2


V1_OPS = [
    "rotate", "delete", "set_role", "invite", "remove_member", "leave", "create_link",
    "list_links", "revoke_link", "members", "roster",
]  # fmt: skip


@pytest.mark.parametrize("op", V1_OPS)
def test_v1_ops_are_refused(op: str) -> None:
    assert op not in REQUESTS
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(json.dumps({"t": "req", "id": 4, "op": op, "space_id": "s"}))
    assert info.value.field == "op"
    assert request_id_of(json.dumps({"t": "req", "id": 4, "op": op})) == 4


@pytest.mark.parametrize("ev", ["member", "epoch", "deleted"])
def test_v1_events_are_refused(ev: str) -> None:
    assert ev not in EVENTS
    with pytest.raises(ProtocolError) as info:
        parse_server_frame(json.dumps({"t": "evt", "ev": ev, "space_id": "s"}))
    assert info.value.field == "ev"


def test_v2_ops_and_their_results() -> None:
    assert {op: cls.RESULT for op, cls in REQUESTS.items() if op in ("append", "state_log")} == {
        "append": frames.AppendResult,
        "state_log": frames.StateLogPage,
    }
    assert REQUESTS["create_space"].RESULT is frames.SpaceInfo
    assert REQUESTS["join"].RESULT is frames.JoinResult
    assert set(fields_of(frames.CreateSpace)) == {"id", "genesis", "keys"}
    assert set(fields_of(frames.Join)) == {"id", "space_id", "event"}
    assert set(fields_of(frames.Append)) == {"id", "space_id", "event", "keys"}
    assert set(fields_of(frames.GetStateLog)) == {
        "id", "space_id", "since", "limit", "link_id", "proof",
    }  # fmt: skip
    assert set(fields_of(frames.StatePushed)) == {"space_id", "event"}
    assert set(fields_of(frames.StateLogPage)) == {"events", "head_seq"}
    assert set(fields_of(frames.AppendResult)) == {"seq"}
    assert "head_seq" in fields_of(frames.SpaceInfo)
    assert "head_seq" in fields_of(frames.SubscribeResult)


@pytest.mark.parametrize("cls", REQUEST_CLASSES, ids=list(REQUESTS))
def test_requests_are_typed_with_their_result(cls: type[Request[Any]]) -> None:
    """``class Join(Request[JoinResult])``: the type parameter is the result record."""
    (base,) = (b for b in cls.__orig_bases__ if get_origin(b) is Request)  # type: ignore[attr-defined]
    assert get_args(base) == (cls.RESULT,)
    assert dataclasses.is_dataclass(cls.RESULT)


def test_state_event_wire_form() -> None:
    obj = json.loads(frames.StatePushed(SPACE_KEY.space_id, GENESIS).to_json())
    assert list(obj) == ["t", "ev", "space_id", "event"]
    assert list(obj["event"]) == STATE_EVENT_FIELDS
    assert obj["event"] == {
        "space_id": GENESIS.space_id,
        "seq": 0,
        "prev": b64e(bytes(32)),
        "kind": "genesis",
        "actor": "alice",
        "at_us": T0,
        "body": b64e(GENESIS.body),
        "signature": b64e(GENESIS.signature),
    }


def test_signed_events_survive_every_frame_that_carries_them() -> None:
    keys = (_wrapped(ALICE, "alice"),)
    requests: list[Request[Any]] = [
        frames.CreateSpace(id=1, genesis=GENESIS, keys=keys),
        frames.Join(id=2, space_id=SPACE_KEY.space_id, event=BOB_ADDS),
        frames.Append(id=3, space_id=SPACE_KEY.space_id, event=BOB_ADDS, keys=keys),
    ]
    for request in requests:
        parsed = parse_client_frame(request.to_json())
        assert parsed == request
    create = parse_client_frame(requests[0].to_json())
    join = parse_client_frame(requests[1].to_json())
    assert isinstance(create, frames.CreateSpace) and isinstance(join, frames.Join)
    assert join.event is not None
    # Still verifiable: the bytes the signatures cover came through unchanged.
    state = SpaceState.from_events([create.genesis, join.event])
    assert state.head == BOB_ADDS.hash() and set(state.members) == {"alice", "bob"}
    assert create.keys == keys
    pushed = parse_server_frame(frames.StatePushed(SPACE_KEY.space_id, BOB_ADDS).to_json())
    assert isinstance(pushed, frames.StatePushed) and pushed.event == BOB_ADDS
    page = frames.StateLogPage(events=(GENESIS, BOB_ADDS), head_seq=1)
    response = parse_server_frame(Response.of(9, page).to_json())
    assert isinstance(response, Response)
    got = parse_result(frames.GetStateLog, response.result)
    assert got == page
    assert SpaceState.from_events(got.events).head_seq == got.head_seq == 1
    assert parse_result(frames.Append, {"seq": 1}) == frames.AppendResult(seq=1)


def _append_json() -> dict[str, Any]:
    request = frames.Append(id=1, space_id=SPACE_KEY.space_id, event=BOB_ADDS, keys=())
    obj: dict[str, Any] = json.loads(request.to_json())
    return obj


@pytest.mark.parametrize("name", STATE_EVENT_FIELDS)
def test_state_event_fields_are_required(name: str) -> None:
    obj = _append_json()
    del obj["event"][name]
    with pytest.raises(ProtocolError, match="missing") as info:
        parse_client_frame(json.dumps(obj))
    assert info.value.field == f"event.{name}"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"extra": 1}, "event.extra"),
        ({"seq": "1"}, "event.seq"),
        ({"seq": -1}, "event.seq"),
        ({"seq": True}, "event.seq"),
        ({"at_us": 2**53}, "event.at_us"),
        ({"prev": "AA=="}, "event.prev"),
        ({"prev": None}, "event.prev"),
        ({"body": 5}, "event.body"),
        ({"body": {"member": "bob"}}, "event.body"),
        ({"signature": "+/8"}, "event.signature"),
        ({"kind": 5}, "event.kind"),
        ({"actor": None}, "event.actor"),
        ({"space_id": "x" * 4097}, "event.space_id"),
    ],
)
def test_state_event_field_errors_name_the_path(change: dict[str, Any], field: str) -> None:
    obj = _append_json()
    obj["event"].update(change)
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(json.dumps(obj))
    assert info.value.field == field


def test_state_event_errors_are_named_inside_every_frame() -> None:
    genesis = json.loads(frames.CreateSpace(id=1, genesis=GENESIS, keys=()).to_json())
    del genesis["genesis"]["prev"]
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(json.dumps(genesis))
    assert info.value.field == "genesis.prev"
    join = json.loads(frames.Join(id=1, space_id="s", event=BOB_ADDS).to_json())
    join["event"]["unknown"] = 0
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(json.dumps(join))
    assert info.value.field == "event.unknown"
    pushed = json.loads(frames.StatePushed("s", BOB_ADDS).to_json())
    del pushed["event"]["signature"]
    with pytest.raises(ProtocolError) as info:
        parse_server_frame(json.dumps(pushed))
    assert info.value.field == "event.signature"
    page = json.loads(Response.of(1, frames.StateLogPage((GENESIS, BOB_ADDS), 1)).to_json())
    page["result"]["events"][1]["body"] = "AA=="
    with pytest.raises(ProtocolError) as info:
        parse_result(frames.GetStateLog, page["result"])
    assert info.value.field == "result.events[1].body"
    with pytest.raises(ProtocolError) as info:
        parse_result(frames.GetStateLog, {"events": []})
    assert info.value.field == "result.head_seq"


def test_frames_carry_events_the_log_refuses() -> None:
    """The codec checks shapes only: an event's rules and signature are the log's job,
    so a forged event parses and is refused by ``SpaceState``."""
    forged = dataclasses.replace(BOB_ADDS, signature=ALICE.sign(BOB_ADDS.signed_bytes()))
    parsed = parse_client_frame(frames.Append(id=1, space_id="s", event=forged, keys=()).to_json())
    assert isinstance(parsed, frames.Append) and parsed.event == forged
    with pytest.raises(exceptions.IntegrityError):
        SpaceState.from_events([GENESIS, parsed.event])


def test_head_seq_is_required_in_space_info_and_subscribe() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_result(frames.Subscribe, {"peers": [], "epoch": 0})
    assert info.value.field == "result.head_seq"
    assert parse_result(
        frames.Subscribe, {"peers": ["bob"], "epoch": 2, "head_seq": 9}
    ) == frames.SubscribeResult(("bob",), 2, 9)
    space = {
        "space_id": "s", "owner": "alice", "policy": "static", "private": False,
        "manual_admit": False, "name": None, "epoch": 0, "keeper": None, "created_at_us": 1,
        "head_seq": 4,
    }  # fmt: skip
    assert parse_result(frames.GetSpaceInfo, space).head_seq == 4
    del space["head_seq"]
    with pytest.raises(ProtocolError) as info:
        parse_result(frames.GetSpaceInfo, space)
    assert info.value.field == "result.head_seq"
    with pytest.raises(ProtocolError) as info:
        parse_result(frames.Join, {"space": space, "role": "viewer", "keys": [], "pending": False})
    assert info.value.field == "result.space.head_seq"


def test_stale_state_error_code() -> None:
    frame = ErrorFrame.of(3, StaleStateError("event 4 does not follow the head (5)"))
    assert frame.code == "stale_state"
    parsed = parse_server_frame(frame.to_json())
    assert isinstance(parsed, ErrorFrame)
    error = error_for_code(parsed.code, parsed.message)
    assert type(error) is StaleStateError and str(error) == "event 4 does not follow the head (5)"


def test_a_sealed_envelope_round_trips_with_its_head() -> None:
    env, _ = seal_envelope(
        ALICE,
        GROUP_KEY,
        source="alice",
        target=SPACE_KEY.space_id,
        subject="default",
        epoch=0,
        content_type=None,
        body={"text": "hi"},
        head_seq=1,
        head=BOB_ADDS.hash(),
        seq=T0,
        sid="0123456789abcdef",
    )
    sent = parse_client_frame(frames.Send(id=1, envelope=env).to_json())
    assert isinstance(sent, frames.Send) and sent.envelope == env
    wire = json.loads(frames.Send(id=1, envelope=env).to_json())["envelope"]
    assert list(wire) == [
        "kind", "source", "target", "subject", "epoch", "content_type", "head_seq", "head",
        "iv", "ciphertext", "signature",
    ]  # fmt: skip
    assert (wire["head_seq"], wire["head"]) == (1, b64e(BOB_ADDS.hash()))
    for cls in (frames.MessagePushed, frames.MessageEdited):
        pushed = cls(handle=5, envelope=env)
        assert parse_server_frame(pushed.to_json()) == pushed


# --------------------------------------------------------------------------- PROTOCOL.md


def _doc_section(heading: str, within: str = "## Frames") -> str:
    """The text under ``heading`` inside the ``within`` chapter (v2 has an "### Events"
    under "## The state log" too)."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    chapter = text.split(f"\n{within}\n", 1)[1].split("\n## ", 1)[0]
    return chapter.split(f"\n{heading}\n", 1)[1].split("\n### ", 1)[0]


def _doc_table(heading: str) -> dict[str, set[str]]:
    """First column (a `name`) -> the field names listed in the second column."""
    rows = {}
    for line in _doc_section(heading).splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)]
        if len(cells) < 3 or not re.fullmatch(r"`\w+`", cells[1]):
            continue
        names = (re.sub(r"\s*\(.*\)$|\\\|null$|\?$", "", f.strip()) for f in cells[2].split(","))
        rows[cells[1].strip("`")] = {n for n in names if n}
    return rows


def test_protocol_md_lists_every_request_with_its_fields() -> None:
    documented = _doc_table("### Requests")
    assert set(documented) == set(REQUESTS)
    for op, cls in REQUESTS.items():
        assert documented[op] == set(fields_of(cls)) - {"id"}, op


def test_protocol_md_lists_every_event_with_its_fields() -> None:
    documented = _doc_table("### Events")
    assert set(documented) == set(EVENTS)
    for ev, cls in EVENTS.items():
        assert documented[ev] == set(fields_of(cls)), ev


def test_protocol_md_records_match_the_dataclasses() -> None:
    block = _doc_section("### Records")
    records = dict(re.findall(r"^\s*(\w+)\s*\{([^}]*)\}", block, flags=re.MULTILINE))
    assert records, "no records found in PROTOCOL.md"
    for name, listed in records.items():
        names = {re.sub(r"\|null$", "", f.strip()) for f in listed.split(",")}
        assert names == set(fields_of(getattr(frames, name))), name


def test_protocol_md_error_codes_match_the_exceptions() -> None:
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \|", _doc_section("### Error codes"), re.MULTILINE)
    assert len(rows) >= 11
    for code, class_name in rows:
        cls = getattr(exceptions, class_name)
        assert cls.code == code
        assert type(error_for_code(code, "m")) is cls
    assert type(error_for_code("no such code", "m")) is exceptions.ServerError


def test_a_state_event_is_encoded_once_and_the_same_every_time() -> None:
    """State events are memoized by the codec (a log page re-sends every one of them):
    the remembered form is the one the codec computes, and a page built from them is
    the same frame as without the memo."""
    from spacenb.protocol import codec

    from .chain import Chain

    chain = Chain(keeper=True)
    for i in range(3):
        chain.add(f"user{i}")
    page = frames.StateLogPage(tuple(chain.events), chain.state.head_seq)
    text = frames.Response.of(7, page).to_json()
    for event in chain.events:
        assert codec.to_obj(event) is codec.to_obj(event)
        assert codec.to_obj(event) == codec._to_obj(event)
        assert codec.json_size(event) == codec._json_size(event)
    codec._MEMO.clear()
    assert frames.Response.of(7, page).to_json() == text
    assert codec.json_size(page) == len(json.dumps(codec.to_obj(page), separators=(",", ":")))
