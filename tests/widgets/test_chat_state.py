"""The chat view's pure model: wire rows, pages, pending sends, typing, transcripts."""

from __future__ import annotations

import json

import pytest

from spacenb.aio.events import SpaceMessageEvent
from spacenb.protocol.envelope import Message
from spacenb.widgets.chat_state import ChatState, is_typing
from spacenb.widgets.looks import AVATAR_COLORS

T0 = 1_767_225_600_000_000  # 2026-01-01 00:00:00 UTC
XSS = '<img src=x onerror="window.__xss = 1"><script>window.__xss = 1</script>'


def msg(handle: int, sender: str = "bob", body: object = "hi") -> SpaceMessageEvent:
    return SpaceMessageEvent(sender, "default", 0, None, handle, Message(str(handle), 0, body))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_wire_rows_are_compact() -> None:
    state = ChatState("alice")
    assert state.add(msg(T0, "bob", {"text": "hello, alice"})) == {
        "h": T0,
        "s": "bob",
        "x": "hello, alice",
    }
    assert state.add(msg(T0 + 1, "alice", "**me**")) == {
        "h": T0 + 1,
        "s": "alice",
        "m": "<p><strong>me</strong></p>",
        "src": "**me**",  # only your own messages carry the text an edit starts from
    }
    people = state.people(state.newest(2))
    assert people == {"bob": ["BO", people["bob"][1]], "alice": ["AL", people["alice"][1]]}
    assert people["bob"][1] != people["alice"][1] and people["bob"][1] in AVATAR_COLORS


def test_readable_rows_for_code() -> None:
    state = ChatState("alice")
    state.add(msg(T0, "alice", {"text": "hello"}))
    (row,) = state.view()
    assert row["handle"] == T0 and row["sent_at"].isoformat() == "2026-01-01T00:00:00+00:00"
    assert (row["sender"], row["mine"], row["kind"], row["body"]) == (
        "alice",
        True,
        "text",
        "hello",
    )
    assert row["html"] is None and not row["edited"] and row["file"] is None


def test_rows_are_ordered_by_handle_whatever_the_arrival_order() -> None:
    state = ChatState("alice")
    for handle in (3, 1, 2):
        state.add(msg(T0 + handle))
    assert [r["h"] - T0 for r in state.newest(10)] == [1, 2, 3]
    assert state.oldest == T0 + 1


def test_edit_marks_edited_and_unknown_handles_are_ignored() -> None:
    state = ChatState("alice")
    state.add(msg(T0, body="draft"))
    assert state.edit(msg(T0, body="final")) == {"h": T0, "s": "bob", "x": "final", "e": 1}
    assert state.edit(msg(T0 + 1, body="never loaded")) is None
    assert state.add(msg(T0, body="final"))["e"] == 1  # a re-delivery keeps the mark


def test_deleted_messages_vanish() -> None:
    state = ChatState("alice")
    state.add(msg(T0))
    state.add(msg(T0 + 1))
    assert state.delete(T0)
    assert not state.delete(T0)
    assert [r["h"] for r in state.newest(10)] == [T0 + 1]
    assert T0 not in state and T0 + 1 in state


def test_pages_and_older_rows() -> None:
    state = ChatState("alice")
    assert state.more_on_relay  # nothing read yet
    for handle in range(10, 15):
        state.add(msg(T0 + handle))
    assert [r["h"] - T0 for r in state.newest(3)] == [12, 13, 14]
    rows, more = state.older(T0 + 12, 10)
    assert [r["h"] - T0 for r in rows] == [10, 11] and more  # the relay may have more
    assert state.add_page([msg(T0 + 1), msg(T0 + 2), msg(T0 + 10)], next_cursor=None) == 2
    assert state.loaded_before(T0 + 12) == 4
    rows, more = state.older(T0 + 10, 1)
    assert [r["h"] - T0 for r in rows] == [2] and more  # one more loaded
    rows, more = state.older(T0 + 2, 5)
    assert [r["h"] - T0 for r in rows] == [1] and not more
    assert state.newest(0) == []


def test_pending_sends_fail_and_clear() -> None:
    state = ChatState("alice")
    one, two = state.pend("first"), state.pend("second")
    assert state.pending_wire(one) == {"p": one.id, "s": "alice", "x": "first"}
    state.fail(two.id, "ConnectionLostError")
    assert state.all_pending()[1] == {
        "p": two.id,
        "s": "alice",
        "x": "second",
        "err": "ConnectionLostError",
    }
    assert state.unpend(one.id) and not state.unpend(one.id)
    assert [p["p"] for p in state.all_pending()] == [two.id]


def test_transcripts_show_what_the_view_shows_and_escape_it() -> None:
    state = ChatState("alice")
    state.add(msg(T0, "bob", {"text": "hello **alice**"}))
    state.add(msg(T0 + 1_000_000, "mallory", XSS))
    state.add(msg(T0 + 2_000_000, "alice", {"k": "<b>json</b>"}))
    state.edit(msg(T0 + 2_000_000, "alice", ["edited"]))
    state.fail(state.pend("a <i>draft</i>").id, "offline")
    text = state.transcript_text("<general>")
    assert text.splitlines() == [
        "spacenb chat · <general> · 3 messages",
        "[2026-01-01 00:00:00+00:00] bob: hello **alice**",
        f"[2026-01-01 00:00:01+00:00] mallory: {XSS}",
        '[2026-01-01 00:00:02+00:00] alice (me): ["edited"] (edited)',
        "[not sent: offline] alice (me): a <i>draft</i>",
    ]
    markup = state.transcript_html("<general>")
    assert "<strong>&lt;general&gt;</strong>" in markup
    assert "<p>hello <strong>alice</strong></p>" in markup  # Markdown, as the view shows it
    assert "&lt;img src=x" in markup and "<img" not in markup and "<script" not in markup
    assert "<i>" not in markup and "&lt;i&gt;draft" in markup
    assert "<em>(edited)</em>" in markup and "not sent: offline" in markup


def test_an_empty_transcript() -> None:
    state = ChatState("alice")
    assert state.transcript_text("room") == "spacenb chat · room · 0 messages"
    assert "No messages." in state.transcript_html("room")


def test_multiline_text_is_indented_in_the_text_transcript() -> None:
    state = ChatState("alice")
    state.add(msg(T0, "bob", "one\ntwo"))
    assert state.transcript_text("r").splitlines()[1:] == [
        "[2026-01-01 00:00:00+00:00] bob: one",
        "                                 two",
    ]


def test_wire_rows_are_json() -> None:
    state = ChatState("alice")
    state.add(msg(T0, "bob", {"file": {"name": "a.bin", "size": 3, "key": "k", "segments": []}}))
    (row,) = state.newest(1)
    assert row == {"h": T0, "s": "bob", "f": {"n": "a.bin", "l": "a.bin (3 B)"}}
    assert json.loads(json.dumps(row)) == row


def test_typing_shows_others_only_and_expires() -> None:
    clock = FakeClock()
    state = ChatState("alice", typing_ttl=4.0, clock=clock)
    assert not state.typing_signal("alice")
    assert state.typing_signal("bob")
    assert not state.typing_signal("bob")  # already shown
    assert state.typing() == ["bob"]
    assert state.next_expiry() == pytest.approx(4.0)
    clock.now += 3.9
    assert state.typing() == ["bob"]
    clock.now += 0.2
    assert state.typing() == []
    assert state.next_expiry() is None


def test_a_stop_signal_clears_typing() -> None:
    state = ChatState("alice", clock=FakeClock())
    assert state.typing_signal("bob")
    assert state.typing_signal("bob", active=False)
    assert state.typing() == []
    assert not state.typing_signal("carol", active=False)  # nothing to clear


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"isTyping": True}, True),
        ({"isTyping": False}, False),
        ({"is_typing": False}, False),
        (False, False),
        (True, True),
        ("anything", True),
        ({"isTyping": "no"}, True),
    ],
)
def test_typing_payload_shapes(payload: object, expected: bool) -> None:
    assert is_typing(payload) is expected


def test_a_message_ends_its_senders_typing() -> None:
    state = ChatState("alice", clock=FakeClock())
    state.typing_signal("bob")
    state.add(msg(T0, "bob"))
    assert state.typing() == []
