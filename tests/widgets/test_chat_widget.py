"""The chat widget's state after another client sends, edits, deletes and types.

No browser: the assertions read the synced traits, which is what the front end renders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ipywidgets
import pytest

import spacenb
from spacenb.sync.testing import wait_until
from spacenb.widgets import ChannelDirectory, ChatWidget

MakeClient = Callable[[str], spacenb.Client]
XSS = ["<script>window.__xss = 1</script>", '<img src=x onerror="window.__xss = 1">']


@pytest.fixture
def room(make_client: MakeClient) -> tuple[spacenb.Space, spacenb.Space]:
    """(alice's, bob's) view of a fresh channel."""
    alice, bob = make_client("alice"), make_client("bob")
    mine = alice.space.create_channel(f"room-{alice.username}")
    return mine, bob.space.join_channel(mine.name)


def bodies(widget: ChatWidget) -> list[str]:
    return [row["body"] for row in widget.messages]


def test_live_messages_edits_and_deletions(room: tuple[spacenb.Space, spacenb.Space]) -> None:
    mine, theirs = room
    widget = mine.widget()
    wait_until(lambda: not widget.loading, what="first history page")
    handle = theirs.send_message("hello")
    wait_until(lambda: bodies(widget) == ["hello"], what="the message")
    (row,) = widget.messages
    assert row["sender"] == theirs.client.username and not row["mine"]
    assert row["ts"] == handle // 1000 and row["group_start"]

    theirs.send_message("again")
    wait_until(lambda: len(widget.messages) == 2, what="a second message")
    assert [r["group_start"] for r in widget.messages] == [True, False]

    theirs.edit_message(handle, "hello, edited")
    wait_until(lambda: widget.messages[0]["edited"], what="the edit")
    assert bodies(widget) == ["hello, edited", "again"]

    theirs.delete_message(handle)
    wait_until(lambda: bodies(widget) == ["again"], what="the deletion")


def test_own_messages_are_marked_and_the_composer_skips_blanks(
    room: tuple[spacenb.Space, spacenb.Space],
) -> None:
    mine, theirs = room
    widget = mine.widget()
    assert widget.me == mine.client.username
    # what chat.js sends when Enter is pressed
    widget._on_front_end(widget, {"type": "send", "text": "  \n "}, [])
    widget._on_front_end(widget, {"type": "send", "text": "line one\nline two"}, [])
    wait_until(lambda: widget.messages, what="the sent message")
    (row,) = widget.messages
    assert row["mine"] and row["body"] == "line one\nline two"
    assert theirs.history()["body"].tolist() == ["line one\nline two"]


def test_typing_shows_others_and_expires(room: tuple[spacenb.Space, spacenb.Space]) -> None:
    mine, theirs = room
    widget, their_widget = mine.widget(), theirs.widget()
    widget._on_front_end(widget, {"type": "typing"}, [])  # my own signal is never shown
    their_widget.send_typing()
    wait_until(lambda: widget.typing_users == [theirs.client.username], what="bob typing")
    wait_until(lambda: widget.typing_users == [], timeout=10, what="the typing signal to expire")
    assert their_widget.typing_users in ([], [mine.client.username])


def test_stopped_typing_signal_clears_at_once(
    room: tuple[spacenb.Space, spacenb.Space],
) -> None:
    mine, theirs = room
    widget = mine.widget()
    theirs.send_ephemeral("typing", {"isTyping": True})
    wait_until(lambda: widget.typing_users == [theirs.client.username], what="bob typing")
    theirs.send_ephemeral("typing", {"isTyping": False})
    wait_until(lambda: widget.typing_users == [], timeout=2, what="bob stopped")


def test_presence(room: tuple[spacenb.Space, spacenb.Space]) -> None:
    mine, theirs = room
    widget = mine.widget()
    both = sorted([mine.client.username, theirs.client.username])
    wait_until(lambda: widget.online == both, what="both online")
    theirs.disconnect()
    wait_until(lambda: widget.online == [mine.client.username], what="bob gone")


def test_load_older_reveals_then_fetches_pages(make_client: MakeClient) -> None:
    alice = make_client("alice")
    space = alice.space.create_channel(f"older-{alice.username}")
    for i in range(7):
        space.send_message(f"m{i}")
    widget = space.widget(window=3, page=3)
    wait_until(lambda: bodies(widget) == ["m4", "m5", "m6"], what="the newest page")
    assert widget.can_load_older
    widget._on_front_end(widget, {"type": "load_older"}, [])
    wait_until(lambda: len(widget.messages) == 6, what="a second page")
    widget.load_older().result(10)
    wait_until(lambda: not widget.can_load_older, what="the start of history")
    assert bodies(widget) == [f"m{i}" for i in range(7)]


def test_a_failed_send_is_shown_not_raised(room: tuple[spacenb.Space, spacenb.Space]) -> None:
    mine, theirs = room
    widget = theirs.widget()
    mine.client.space.remove_member(mine.id, theirs.client.username)
    future = widget.send_message("no longer a member")
    assert future is not None
    assert isinstance(future.exception(10), spacenb.SpacenbError)
    wait_until(lambda: widget.error, what="the error in the view")
    assert widget.error.startswith(type(future.exception()).__name__)


def test_close_unsubscribes(make_client: MakeClient) -> None:
    alice = make_client("alice")
    space = alice.space.create_channel(f"close-{alice.username}")
    widget = space.widget()
    assert space.aio.events.has("message")
    widget.close()
    wait_until(lambda: not space.aio.events.has("message"), what="handlers removed")


def test_directory_lists_creates_and_joins(make_client: MakeClient) -> None:
    alice, bob = make_client("alice"), make_client("bob")
    directory = alice.space.widget()
    assert isinstance(directory, ChannelDirectory)
    directory.name.value = f"dir-{alice.username}"
    directory.create_button.click()
    assert directory.space is not None and directory.space.name == f"dir-{alice.username}"
    assert isinstance(directory.chat.children[0], ChatWidget)
    assert (directory.space.name, directory.space.id) in directory.channels.options

    theirs = bob.space.widget()
    theirs.channels.value = directory.space.id
    theirs.join_button.click()
    assert theirs.space is not None and theirs.space.id == directory.space.id
    theirs.channels.value = None
    theirs.join_button.click()
    assert theirs.status.value == "Pick a channel first"


def _html_values(widget: ipywidgets.Widget) -> list[str]:
    """Every value the front end would parse as HTML, in a widget tree."""
    found = []
    if isinstance(widget, ipywidgets.HTML | ipywidgets.HTMLMath):
        found.append(widget.value)
    for child in getattr(widget, "children", ()):
        found += _html_values(child)
    return found


def test_peer_content_never_becomes_markup(make_client: MakeClient) -> None:
    alice, mallory = make_client("alice"), make_client("mallory")
    directory = alice.space.widget()
    channel = mallory.space.create_channel(f"{XSS[1]}-{mallory.username}")
    directory.refresh()
    directory.channels.value = channel.id
    directory.join_button.click()
    for body in XSS:
        channel.send_message(body)
    chat = directory.chat.children[0]
    wait_until(lambda: bodies(chat) == XSS, what="the hostile messages")

    # Bodies travel as JSON data and chat.js only ever assigns them as text.
    source = (Path(spacenb.widgets.__file__).parent / "chat.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in source
    for value in [*_html_values(directory), directory.space._repr_html_()]:
        assert "<script" not in value and "<img" not in value
