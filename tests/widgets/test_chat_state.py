"""The chat view's pure model: rows, grouping, avatars, typing expiry, the window."""

from __future__ import annotations

import pytest

from spacenb.events import SpaceMessageEvent
from spacenb.protocol.envelope import Message
from spacenb.widgets.chat_state import GROUP_GAP_US, ChatState, avatar_color, initials, is_typing

T0 = 1_767_225_600_000_000


def msg(handle: int, sender: str = "bob", body: object = "hi") -> SpaceMessageEvent:
    return SpaceMessageEvent(sender, "default", 0, None, handle, Message(str(handle), 0, body))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rows_carry_what_the_view_shows() -> None:
    state = ChatState("alice")
    state.add(msg(T0 + 5_000, "alice", "me here"))
    (row,) = state.view()
    assert row == {
        "handle": T0 + 5_000,
        "ts": (T0 + 5_000) // 1000,
        "sender": "alice",
        "mine": True,
        "body": "me here",
        "content_type": "",
        "edited": False,
        "group_start": True,
        "initials": "AL",
        "color": avatar_color("alice"),
    }


def test_consecutive_messages_of_one_sender_are_grouped() -> None:
    state = ChatState("alice")
    for handle, sender in [(1, "bob"), (2, "bob"), (3, "carol"), (4, "bob")]:
        state.add(msg(T0 + handle, sender))
    state.add(msg(T0 + 4 + GROUP_GAP_US + 1, "bob"))  # a long pause starts a new group
    assert [r["group_start"] for r in state.view()] == [True, False, True, True, True]


def test_rows_are_ordered_by_handle_whatever_the_arrival_order() -> None:
    state = ChatState("alice")
    for handle in (3, 1, 2):
        state.add(msg(T0 + handle))
    assert [r["handle"] - T0 for r in state.view()] == [1, 2, 3]


def test_avatars_are_stable_and_distinct() -> None:
    assert initials("ada lovelace") == "AL"
    assert initials("bob") == "BO"
    assert initials("carol_smith-2") == "CS"
    assert initials("") == "?"
    assert avatar_color("bob") == avatar_color("bob")
    assert len({avatar_color(n) for n in ("alice", "bob", "carol", "dave")}) > 1


def test_non_text_bodies_are_shown_as_json() -> None:
    state = ChatState("alice")
    state.add(msg(T0, body={"k": [1, "é"]}))
    assert state.view()[0]["body"] == '{"k":[1,"é"]}'


def test_edit_marks_edited_and_unknown_handles_are_ignored() -> None:
    state = ChatState("alice")
    state.add(msg(T0, body="draft"))
    assert state.edit(msg(T0, body="final"))
    assert not state.edit(msg(T0 + 1, body="never loaded"))
    (row,) = state.view()
    assert row["body"] == "final" and row["edited"]


def test_deleted_messages_vanish() -> None:
    state = ChatState("alice")
    state.add(msg(T0))
    state.add(msg(T0 + 1))
    assert state.delete(T0)
    assert not state.delete(T0)
    assert [r["handle"] for r in state.view()] == [T0 + 1]


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


def test_window_reveal_and_pages() -> None:
    state = ChatState("alice", window=3)
    assert state.can_load_older  # nothing read yet
    for handle in range(10, 15):
        state.add(msg(T0 + handle))
    assert [r["handle"] - T0 for r in state.view()] == [12, 13, 14]
    assert state.hidden == 2
    assert state.reveal(1) == 1 and len(state.view()) == 4
    assert state.reveal(5) == 1 and state.hidden == 0
    added = state.add_page([msg(T0 + 1), msg(T0 + 2), msg(T0 + 10)], next_cursor=None)
    assert added == 2  # the duplicate handle is merged
    assert [r["handle"] - T0 for r in state.view()][:3] == [1, 2, 10]
    assert not state.can_load_older


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ChatState("alice", window=0)
