"""The compiled readers and writers of the codec against its plain definition.

``from_obj`` and ``to_obj`` run a function compiled per record type, with the commonest
checks inline (BENCHMARKS.md, "Issue 16: Python out of the message path");
``reference_from_obj`` and ``reference_to_obj`` go field by field through each
converter, as the plan states it. On valid records of every frame type and on the same
records mutated (a field replaced by junk, dropped, or an unknown one added, also inside a
nested record such as a send's envelope), both must give the same record or the same
error (type, message and field).
"""

from __future__ import annotations

import base64
import dataclasses
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spacenb.protocol import codec, frames
from spacenb.protocol.codec import MAX_INT, MAX_STR, Size, b64e
from spacenb.protocol.encoding import b64d
from spacenb.protocol.envelope import Envelope, seal_envelope
from spacenb.protocol.keys import IdentityKeys

RECORDS: list[type] = sorted(
    {
        *frames.REQUESTS.values(),
        *frames.EVENTS.values(),
        *(cls.RESULT for cls in frames.REQUESTS.values()),
    },
    key=lambda cls: cls.__name__,
)
NONE = type(None)
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def near_b64(length: int) -> st.SearchStrategy[str]:
    """Base64url-like text of about ``length`` characters: valid, non-canonical tails,
    foreign characters (standard alphabet, padding, spaces, non-ASCII)."""
    return st.text(
        alphabet=st.sampled_from(B64 + "+/= é\n"),
        min_size=max(length - 2, 0),
        max_size=length + 2,
    )


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(MAX_INT - 1, MAX_INT + 2),
    st.integers(2**63, 2**65),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.sampled_from(["\udc80", "é", "a" * MAX_STR, "a" * (MAX_STR + 1), "msg", "eph", "x"]),
    near_b64(16),
    near_b64(22),
    near_b64(43),
    near_b64(86),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["a", "kind", "epoch"]), st.integers(0, 3), max_size=2),
)


def valid(tp: Any) -> st.SearchStrategy[Any]:
    """JSON values that annotation ``tp`` accepts (mostly: a record's own checks may
    still refuse them, which both paths must then do alike)."""
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *extras = get_args(tp)
        sizes = [e for e in extras if isinstance(e, Size)]
        if inner is bytes and sizes:
            least, most = sizes[0].least, min(sizes[0].upper, sizes[0].least + 40)
            return st.binary(min_size=least, max_size=most).map(b64e)
        return valid(inner)
    if tp is bytes:
        return st.binary(max_size=40).map(b64e)
    if tp is int:
        return st.integers(0, MAX_INT)
    if tp is bool:
        return st.booleans()
    if tp is str:
        return st.text(max_size=12)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin in (Union, types.UnionType):
        (inner,) = (a for a in get_args(tp) if a is not NONE)
        return st.none() | valid(inner)
    if origin is tuple:
        return st.lists(valid(get_args(tp)[0]), max_size=2)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        return st.fixed_dictionaries(
            {f.name: valid(hints[f.name]) for f in dataclasses.fields(tp) if f.init}
        )
    raise TypeError(tp)


@st.composite
def mutated(draw: st.DrawFn, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with up to three changes, at its top level or one record down."""
    obj = dict(obj)
    for _ in range(draw(st.integers(0, 3))):
        target = obj
        nested = [k for k, v in obj.items() if isinstance(v, dict)]
        if nested and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(nested)))
            target = obj[key] = dict(obj[key])
        action = draw(st.sampled_from(["junk", "drop", "add"]))
        if action == "add" or not target:
            target[draw(st.sampled_from(["zz", "t", "op", "id", "\udc80"]))] = draw(JUNK)
        elif action == "drop":
            del target[draw(st.sampled_from(sorted(target)))]
        else:
            target[draw(st.sampled_from(sorted(target)))] = draw(JUNK)
    return obj


def outcome(read: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    try:
        return ("ok", read(*args, **kwargs))
    except Exception as exc:  # the same exception, whatever it is
        return ("error", type(exc), str(exc), getattr(exc, "field", None))


@pytest.mark.parametrize("cls", RECORDS, ids=lambda cls: cls.__name__)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_reader_matches_reference(cls: type, data: st.DataObject) -> None:
    obj = data.draw(mutated(data.draw(valid(cls))))
    skip = data.draw(st.sampled_from([(), ("t", "op")]))
    prefix = data.draw(st.sampled_from(["", "result."]))
    fast = outcome(codec.from_obj, cls, obj, prefix=prefix, skip=skip)
    assert fast == outcome(codec.reference_from_obj, cls, obj, prefix=prefix, skip=skip)
    if fast[0] == "ok":
        assert codec.to_obj(fast[1]) == codec.reference_to_obj(fast[1])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_send_and_message_frames_match_reference(data: st.DataObject) -> None:
    """The hot frames, mutated harder: the relay's ``send`` and the clients' ``message``
    push, through the entry points (``parse_client_frame``, ``parse_server_frame``)."""
    cls = data.draw(st.sampled_from([frames.Send, frames.MessagePushed]))
    obj = data.draw(mutated(data.draw(valid(cls))))
    if cls is frames.Send:
        text = codec.dumps_frame({"t": "req", "op": "send", **obj})
        fast = outcome(frames.parse_client_frame, text)
        slow = outcome(reference, frames.parse_client_frame, text)
    else:
        text = codec.dumps_frame({"t": "evt", "ev": "message", **obj})
        fast = outcome(frames.parse_server_frame, text)
        slow = outcome(reference, frames.parse_server_frame, text)
    assert fast == slow


def reference(parse: Any, text: str) -> Any:
    """``parse`` (an entry point of ``frames``) with the reference reader in its place."""
    with mock.patch.object(frames, "from_obj", codec.reference_from_obj):
        return parse(text)


@given(st.binary(max_size=300))
def test_b64e_is_unpadded_urlsafe_base64(data: bytes) -> None:
    assert b64e(data) == base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
    assert b64d(b64e(data)) == data
    assert b64e(bytearray(data)) == b64e(memoryview(data)) == b64e(data)


# --------------------------------------------------------------------------- passed on

IDENTITY = IdentityKeys.from_seed(b"codec-fast")
KEY = bytes(range(32))


def sealed(subject: str = "general", seq: int = 1) -> Envelope:
    envelope, _ = seal_envelope(
        IDENTITY,
        KEY,
        source="alice",
        target="space-1",
        subject=subject,
        epoch=1,
        content_type=None,
        body={"text": "hi"},
        head_seq=3,
        head=bytes(32),
        seq=seq,
        sid="0123456789abcdef",
    )
    return envelope


def pushed(obj: dict[str, Any], handle: int = 5) -> str:
    return codec.dumps_frame({"t": "evt", "ev": "message", "handle": handle, "envelope": obj})


def test_own_envelope_read_back_is_the_one_sent() -> None:
    envelope = sealed()
    frames.Send(0, envelope=envelope).to_json(3)
    echo = frames.parse_server_frame(pushed(codec.to_obj(envelope)))
    assert isinstance(echo, frames.MessagePushed)
    assert echo.envelope is envelope
    again = frames.parse_server_frame(pushed(codec.to_obj(envelope)))  # remembered once
    assert isinstance(again, frames.MessagePushed)
    assert again.envelope == envelope and again.envelope is not envelope


@given(change=st.sampled_from(["epoch", "head_seq", "kind", "subject", "iv", "signature"]))
def test_changed_echo_is_read_as_any_frame(change: str) -> None:
    """An echo that differs in a value, or only in its type (``true`` for ``1``, ``1.0``
    for ``1``), is read by the reader as if nothing had been remembered."""
    envelope = sealed(seq=7)
    frames.Send(0, envelope=envelope).to_json(3)
    obj = dict(codec.to_obj(envelope))
    obj[change] = {
        "epoch": True,
        "head_seq": 3.0,
        "kind": "eph",
        "subject": "other",
        "iv": b64e(bytes(12)),
        "signature": obj["signature"][:-2] + "AA",
    }[change]
    text = pushed(obj)
    got = outcome(frames.parse_server_frame, text)
    assert got == outcome(reference, frames.parse_server_frame, text)
    if got[0] == "ok":
        assert got[1].envelope is not envelope


def test_unreadable_envelope_is_not_remembered() -> None:
    """A sender may build an envelope the reader refuses (a channel name over
    ``MAX_STR``): pushed back, it is refused as before, not taken from memory."""
    envelope = sealed(subject="c" * (MAX_STR + 1))
    frames.Send(0, envelope=envelope).to_json(3)
    text = pushed(codec.to_obj(envelope))
    got = outcome(frames.parse_server_frame, text)
    assert got[0] == "error" and got[3] == "envelope.subject"
    assert got == outcome(reference, frames.parse_server_frame, text)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_relay_pushes_a_sent_envelope_as_if_encoded_again(data: st.DataObject) -> None:
    """The relay's push of a send's envelope reuses the object it read (keys put in field
    order): the same text as encoding the envelope anew, whatever order the keys came in."""
    obj = data.draw(valid(Envelope))
    keys = data.draw(st.permutations(sorted(obj)))
    request = {"t": "req", "id": 1, "op": "send", "envelope": {k: obj[k] for k in keys}}
    parsed = outcome(frames.parse_client_frame, codec.dumps_frame(request))
    if parsed[0] != "ok":
        return
    envelope = parsed[1].envelope
    fresh = codec.dumps_frame(
        {"t": "evt", "ev": "message", "handle": 9, "envelope": codec.reference_to_obj(envelope)}
    )
    assert frames.MessagePushed(9, envelope).to_json() == fresh
    assert frames.MessagePushed(9, envelope).to_json() == fresh  # (and once forgotten)


ANY_TEXT = st.one_of(st.text(max_size=8), st.sampled_from(["\udc80x", "a" * (MAX_STR + 1), "é"]))
ANY_INT = st.one_of(st.integers(-2, 5), st.integers(MAX_INT - 1, MAX_INT + 1), st.booleans())


@settings(max_examples=300)
@given(
    kind=st.sampled_from(["msg", "eph", "other", ""]),
    texts=st.tuples(ANY_TEXT, ANY_TEXT, ANY_TEXT, ANY_TEXT),
    ints=st.tuples(ANY_INT, ANY_INT),
    sizes=st.tuples(
        st.sampled_from([31, 32, 33]),
        st.sampled_from([11, 12, 13]),
        st.sampled_from([0, 15, 16, 17, 40]),
        st.sampled_from([63, 64, 65]),
    ),
)
def test_remembered_only_what_the_reader_takes(
    kind: str, texts: tuple[str, ...], ints: tuple[Any, ...], sizes: tuple[int, ...]
) -> None:
    """Whatever a sender's envelope holds, ``expect_echo`` remembers it exactly when the
    reader would take its JSON object."""
    source, target, subject, content_type = texts
    head, iv, ciphertext, signature = (bytes(n) for n in sizes)
    envelope = Envelope(
        kind,  # type: ignore[arg-type]
        source, target, subject, ints[0], content_type, ints[1], head, iv, ciphertext, signature,
    )  # fmt: skip
    obj = codec.to_obj(envelope)
    read = outcome(codec.reference_from_obj, Envelope, obj)
    assert codec._readable(Envelope, obj) == (read[0] == "ok")


def test_large_envelopes_are_not_remembered() -> None:
    """Only small envelopes are kept for their echo or their push (memory stays small
    whatever is sent); a large one is read and written as any other."""
    envelope = dataclasses.replace(sealed(), ciphertext=bytes(20_000))
    frames.Send(0, envelope=envelope).to_json(3)
    echo = frames.parse_server_frame(pushed(codec.to_obj(envelope)))
    assert isinstance(echo, frames.MessagePushed)
    assert echo.envelope == envelope and echo.envelope is not envelope
    request = {"t": "req", "id": 1, "op": "send", "envelope": codec.to_obj(envelope)}
    parsed = frames.parse_client_frame(codec.dumps_frame(request))
    assert isinstance(parsed, frames.Send)
    assert id(parsed.envelope) not in codec._WIRES
    assert frames.MessagePushed(9, parsed.envelope).to_json() == pushed(
        codec.reference_to_obj(envelope), 9
    )
