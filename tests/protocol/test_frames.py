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
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spacenb import exceptions
from spacenb.exceptions import (
    ChannelExistsError,
    LimitExceededError,
    ProtocolError,
    SpacenbError,
    error_for_code,
)
from spacenb.protocol import frames
from spacenb.protocol.encoding import b64e
from spacenb.protocol.envelope import Envelope
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
from spacenb.protocol.wrap import WrappedKey

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "PROTOCOL.md"
ALLOWED = (ProtocolError, LimitExceededError)
MAX_INT = 2**53 - 1

# --------------------------------------------------------------------------- strategies


def fields_of(cls: type) -> dict[str, Any]:
    """The wire fields of a frame dataclass and their annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def valid(tp: Any) -> st.SearchStrategy[Any]:
    """Values of annotation ``tp`` that the codec must accept."""
    origin = get_origin(tp)
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
    if dataclasses.is_dataclass(tp):
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
def test_request_round_trip(cls: type[Request], data: st.DataObject) -> None:
    request = data.draw(valid(cls))
    text = request.to_json()
    obj = json.loads(text)
    assert obj["t"] == "req" and obj["op"] == cls.OP and obj["id"] == request.id
    assert parse_client_frame(text) == request
    assert request_id_of(text) == request.id


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
    if origin in (Union, types.UnionType):
        (inner,) = (a for a in get_args(tp) if a is not type(None))
        return _minimal(inner)
    if origin is Literal:
        return get_args(tp)[0]
    if origin is tuple:
        return (_minimal(get_args(tp)[0]),)
    if dataclasses.is_dataclass(tp):
        return tp(**{name: _minimal(hint) for name, hint in fields_of(tp).items()})
    return {bool: True, int: 1, str: "x", bytes: b"\x00\x01\x02"}[tp]


def _min(cls: type) -> str:
    frame: Request | Event = _minimal(cls)
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
def test_fuzz_results_of_every_request(cls: type[Request], data: st.DataObject) -> None:
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


def test_binary_field_limit() -> None:
    at_limit = parse_client_frame(_auth(b64e(bytes(MAX_BYTES_FIELD))))
    assert isinstance(at_limit, frames.Auth) and len(at_limit.signature) == MAX_BYTES_FIELD
    for extra in (1, 2, 3, 1000):
        with pytest.raises(ProtocolError) as info:
            parse_client_frame(_auth(b64e(bytes(MAX_BYTES_FIELD + extra))))
        assert info.value.field == "signature"


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
    assert request == frames.History(id=MAX_INT, space_id="s", before=MAX_INT, limit=0)


def test_join_token_is_the_only_optional_field() -> None:
    assert parse_client_frame('{"t":"req","id":1,"op":"join","space_id":"s"}') == frames.Join(
        id=1, space_id="s", token=None
    )
    assert parse_client_frame(
        '{"t":"req","id":1,"op":"join","space_id":"s","token":"abc"}'
    ) == frames.Join(id=1, space_id="s", token="abc")


def _envelope_json(**changes: Any) -> dict[str, Any]:
    env = Envelope("msg", "alice", "spc.x", "default", 0, "", bytes(12), bytes(16), bytes(64))
    obj = json.loads(frames.Send(id=1, envelope=env).to_json())
    obj["envelope"].update(changes)
    return obj


@pytest.mark.parametrize("name", ["signature", "iv", "ciphertext", "kind", "epoch"])
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


def test_parse_result_rejects_a_wrong_shape() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_result(frames.Subscribe, {"peers": "alice", "epoch": 0})
    assert info.value.field == "result.peers"
    with pytest.raises(ProtocolError):
        parse_result(frames.Ping, {"unexpected": 1})
    assert parse_result(frames.Ping(id=1), {}) == frames.Ok()


# --------------------------------------------------------------------------- PROTOCOL.md


def _doc_section(heading: str) -> str:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    return text.split(f"\n{heading}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]


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
