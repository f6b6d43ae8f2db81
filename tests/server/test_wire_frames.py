"""The relay's own framing of the frames it writes (``relay.server_text_frame``) against
websockets' (``Frame.serialize``, which it stands for: the relay serves without
extensions), at every length class of RFC 6455's header (7-bit, 16-bit, 64-bit)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from spacenb.server.relay import server_text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 1 << 20])
def test_each_header_length(size: int) -> None:
    payload = b"a" * size
    assert server_text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


@given(st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_any_text(payload: bytes) -> None:
    assert server_text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)
