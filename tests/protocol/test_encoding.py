"""spacenb.protocol.encoding: base64url, the canonical length-prefixed encoding, JSON."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spacenb.exceptions import ProtocolError
from spacenb.protocol.encoding import b64d, b64e, canonical_json, lp_encode

# --------------------------------------------------------------------------- base64url


@given(st.binary(max_size=200))
def test_b64_round_trip(data: bytes) -> None:
    text = b64e(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64d(text) == data


def test_b64_known_values() -> None:
    assert b64e(b"") == "" and b64d("") == b""
    assert b64e(b"\xfb\xff") == "-_8"
    assert b64d("-_8") == b"\xfb\xff"
    assert b64e(b"\x00") == "AA"
    assert b64e(b"\x00\x00") == "AAA"


@pytest.mark.parametrize(
    "text",
    [
        "AA==",  # padding
        "AAA=",
        "AA=",
        "=",
        "A",  # impossible length
        "AAAAA",
        "+/8",  # standard alphabet
        "AA AA",  # whitespace
        "AA\n",
        "AAé",  # non-ASCII
        "AA.A",
        "AA\x00",
    ],
)
def test_b64_rejects_malformed(text: str) -> None:
    with pytest.raises(ProtocolError):
        b64d(text)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("AB", "AA"),  # one byte: the last 4 bits must be zero
        ("AP", "AA"),
        ("AAB", "AAA"),  # two bytes: the last 2 bits must be zero
        ("AAD", "AAA"),
        ("_x", "_w"),
        ("__9", "__8"),
    ],
)
def test_b64_rejects_non_canonical_trailing_bits(text: str, canonical: str) -> None:
    # Both texts would decode to the same bytes under a lenient decoder.
    assert b64e(b64d(canonical)) == canonical
    with pytest.raises(ProtocolError, match="non-canonical"):
        b64d(text)


@pytest.mark.parametrize("value", [None, 1, b"AA", ["AA"], {"AA": 1}])
def test_b64_rejects_non_text(value: object) -> None:
    with pytest.raises(ProtocolError):
        b64d(value)


def test_b64_error_names_the_field() -> None:
    with pytest.raises(ProtocolError) as info:
        b64d("A=", field="envelope.iv")
    assert info.value.field == "envelope.iv"
    assert "envelope.iv" in str(info.value)


@given(st.text(max_size=12))
def test_b64d_accepts_exactly_the_canonical_texts(text: str) -> None:
    try:
        data = b64d(text)
    except ProtocolError:
        return
    assert b64e(data) == text


# --------------------------------------------------------------------------- lp_encode


def test_lp_encode_protocol_example() -> None:
    assert lp_encode("ab", 1).hex() == "000000026162000000080000000000000001"


def test_lp_encode_field_types() -> None:
    assert lp_encode() == b""
    assert lp_encode("") == b"\x00\x00\x00\x00"
    assert lp_encode(b"") == b"\x00\x00\x00\x00"
    assert lp_encode(bytearray(b"xy")) == b"\x00\x00\x00\x02xy"
    assert lp_encode("é") == b"\x00\x00\x00\x02\xc3\xa9"  # length counts UTF-8 bytes
    assert lp_encode(0) == b"\x00\x00\x00\x08" + bytes(8)
    assert lp_encode(2**64 - 1) == b"\x00\x00\x00\x08" + b"\xff" * 8


@pytest.mark.parametrize("value", [-1, 2**64, -(2**70)])
def test_lp_encode_rejects_integers_outside_u64(value: int) -> None:
    with pytest.raises(ProtocolError):
        lp_encode(value)


@pytest.mark.parametrize("value", [True, False])
def test_lp_encode_rejects_booleans(value: bool) -> None:
    with pytest.raises(TypeError):
        lp_encode(value)


def test_lp_encode_text_and_bytes_of_same_content_agree() -> None:
    # Text is just its UTF-8 bytes; the label first field is what separates purposes.
    assert lp_encode("abc") == lp_encode(b"abc")


def test_lp_encode_is_not_fooled_by_moving_boundaries() -> None:
    assert lp_encode("a", "bc") != lp_encode("ab", "c")
    assert lp_encode("ab", "") != lp_encode("a", "b")
    assert lp_encode("abc") != lp_encode("a", "b", "c")


def _lp_decode(data: bytes) -> list[bytes]:
    fields, offset = [], 0
    while offset < len(data):
        (size,) = struct.unpack_from(">I", data, offset)
        offset += 4
        fields.append(data[offset : offset + size])
        offset += size
    assert offset == len(data)
    return fields


field_values = st.one_of(st.binary(max_size=40), st.text(max_size=20), st.integers(0, 2**64 - 1))


@given(st.lists(field_values, max_size=8))
def test_lp_encode_decodes_back_to_its_fields(fields: list[bytes | str | int]) -> None:
    def raw(value: bytes | str | int) -> bytes:
        if isinstance(value, int):
            return value.to_bytes(8, "big")
        return value.encode() if isinstance(value, str) else value

    assert _lp_decode(lp_encode(*fields)) == [raw(f) for f in fields]


@given(st.lists(st.binary(max_size=8), max_size=5), st.lists(st.binary(max_size=8), max_size=5))
def test_lp_encode_is_injective(a: list[bytes], b: list[bytes]) -> None:
    if a != b:
        assert lp_encode(*a) != lp_encode(*b)


# --------------------------------------------------------------------------- canonical JSON


def test_canonical_json_sorts_keys_without_spaces() -> None:
    value = {"b": 1, "a": [True, None, {"d": "x", "c": 2}]}
    assert canonical_json(value) == b'{"a":[true,null,{"c":2,"d":"x"}],"b":1}'


def test_canonical_json_is_utf8_not_escaped() -> None:
    assert canonical_json({"t": "é👋"}) == '{"t":"é👋"}'.encode()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"x": [math.nan]}])
def test_canonical_json_refuses_non_finite_numbers(value: object) -> None:
    with pytest.raises(ValueError):
        canonical_json(value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_is_one_encoding_per_value(value: object) -> None:
    encoded = canonical_json(value)
    assert json.loads(encoded) == value
    assert canonical_json(json.loads(encoded)) == encoded
