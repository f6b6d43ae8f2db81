"""The chat widget against a real relay, read through what it sends to the front end.

No browser here: :class:`FrontEnd` stands where ``chat.js`` stands. It speaks to the widget
through the comm handler, as the page does, and applies what comes back the way
``chat.js`` does (rows by handle, pending sends by id), recording every message and its
size. The browser tests (test_browser_lab.py) cover the page itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import ipywidgets
import pytest

import spacenb
from spacenb.sync import get_runner
from spacenb.sync.testing import wait_until
from spacenb.widgets import ChannelDirectory, ChatWidget

MakeClient = Callable[[str], spacenb.Client]
XSS = ["<script>window.__xss = 1</script>", '<img src=x onerror="window.__xss = 1">']
WIDGETS = Path(spacenb.widgets.__file__).parent


class FrontEnd:
    """A stand-in for chat.js: says hello, applies changes, answers nothing on its own."""

    def __init__(self, widget: ChatWidget, view: str = "test-view") -> None:
        self.widget = widget
        self.view = view
        self.sent: list[dict[str, Any]] = []
        self.bytes = 0
        self.rows: dict[int, dict[str, Any]] = {}
        self.pending: dict[int, dict[str, Any]] = {}
        self.files: dict[int, bytearray] = {}
        self.resets = 0
        self.more = False
        self._lock = threading.Lock()
        widget.send = self._receive  # type: ignore[method-assign]
        self.say(type="hello")

    def say(self, buffers: list[bytes] | None = None, **content: Any) -> None:
        self.widget._on_front_end(self.widget, {**content, "view": self.view}, buffers or [])

    def _receive(self, content: dict[str, Any], buffers: list[bytes] | None = None) -> None:
        with self._lock:
            self.sent.append(content)
            self.bytes += len(json.dumps(content, separators=(",", ":")))
            if content.get("to") not in (None, self.view):
                return
            if content["t"] == "reset":
                self.resets += 1
                self.rows = {row["h"]: row for row in content["rows"]}
                self.pending = {row["p"]: row for row in content["pending"]}
                self.more = content["more"]
            elif content["t"] == "older":
                self.rows.update({row["h"]: row for row in content["rows"]})
                self.more = content["more"]
            elif content["t"] == "ops":
                for op, value in content["ops"]:
                    if op == "a":
                        self.rows[value["h"]] = value
                    elif op == "d":
                        self.rows.pop(value, None)
                    elif op == "p":
                        self.pending[value["p"]] = value
                    elif op == "r":
                        self.pending.pop(value, None)
            elif content["t"] == "file":
                self.files.setdefault(content["h"], bytearray()).extend(buffers[0])

    def texts(self) -> list[str]:
        with self._lock:
            return [r.get("x", r.get("m", "")) for _, r in sorted(self.rows.items())]

    def kinds(self) -> list[str]:
        return [m["t"] for m in self.sent]


@pytest.fixture
def room(make_client: MakeClient) -> tuple[spacenb.Space, spacenb.Space]:
    """(alice's, bob's) view of a fresh channel."""
    alice, bob = make_client("alice"), make_client("bob")
    mine = alice.space.create_channel(f"room-{alice.username}")
    return mine, bob.space.join_channel(mine.name)


def opened(space: spacenb.Space, **options: Any) -> tuple[ChatWidget, FrontEnd]:
    widget = space.widget(**options)
    wait_until(lambda: not widget.loading, what="the first history page")
    front = FrontEnd(widget)
    wait_until(lambda: front.resets, what="the snapshot")
    return widget, front


def test_changes_travel_as_deltas_never_as_the_window(
    room: tuple[spacenb.Space, spacenb.Space],
) -> None:
    mine, theirs = room
    mine.send_message("before the view opened")
    widget, front = opened(mine)
    assert front.texts() == ["before the view opened"]
    handle = theirs.send_message({"text": "hello"})
    wait_until(lambda: front.texts() == ["before the view opened", "hello"], what="the message")
    assert front.rows[handle] == {"h": handle, "s": theirs.client.username, "x": "hello"}

    theirs.edit_message(handle, {"text": "hello, *edited*"})
    wait_until(lambda: front.rows[handle].get("e") == 1, what="the edit")
    assert front.rows[handle]["m"] == "<p>hello, <em>edited</em></p>"
    theirs.delete_message(handle)
    wait_until(lambda: handle not in front.rows, what="the deletion")
    assert front.resets == 1 and set(front.kinds()) == {"reset", "ops"}
    for message in front.sent[1:]:  # each carries only what changed
        assert len(message["ops"]) <= 2
    assert [row["body"] for row in widget.messages] == ["before the view opened"]


def test_a_flood_is_batched_and_costs_about_its_bodies(
    room: tuple[spacenb.Space, spacenb.Space],
) -> None:
    mine, theirs = room
    _widget, front = opened(mine)
    bodies = [f"message {i:04d} " + "x" * 188 for i in range(300)]  # 200 bytes each

    async def flood() -> None:
        await asyncio.gather(*(theirs.aio.send_message(body) for body in bodies))

    before = front.bytes
    get_runner().run(flood())
    wait_until(lambda: len(front.rows) == 300, timeout=30, what="all 300 messages")
    assert sorted(front.texts()) == sorted(bodies)
    sent = front.bytes - before
    assert sent <= 1.5 * sum(len(b.encode()) for b in bodies)  # row overhead, not windows
    assert len(front.sent) - 1 < 300  # several messages per comm message


def test_own_messages_show_pending_until_stored(
    room: tuple[spacenb.Space, spacenb.Space],
) -> None:
    mine, theirs = room
    widget, front = opened(mine)
    front.say(type="send", text="  \n ")  # blank: not sent
    front.say(type="send", text="line one\nline two")
    wait_until(lambda: front.rows and not front.pending, what="the stored message")
    pends = [op for m in front.sent if m["t"] == "ops" for op in m["ops"] if op[0] == "p"]
    assert pends == [["p", {"p": 1, "s": mine.client.username, "x": "line one\nline two"}]]
    (row,) = front.rows.values()
    assert row["src"] == "line one\nline two" and row["s"] == mine.client.username
    assert theirs.history()["body"].tolist() == ["line one\nline two"]
    assert widget.send_message("   ") is None
    assert isinstance(widget.send_message("from code").result(10), int)
    wait_until(lambda: len(front.rows) == 2 and not widget.pending, what="the second message")


def test_the_author_edits_and_deletes_from_the_view(
    room: tuple[spacenb.Space, spacenb.Space],
) -> None:
    mine, theirs = room
    _widget, front = opened(mine)
    handle = mine.send_message({"text": "draft", "tag": "kept"})
    theirs_handle = theirs.send_message("not yours")
    wait_until(lambda: len(front.rows) == 2, what="both messages")
    assert "src" not in front.rows[theirs_handle]  # no edit for others' messages
    front.say(type="edit", handle=handle, text="final")
    wait_until(lambda: front.rows[handle].get("e") == 1, what="the edit")
    assert theirs.history()["body"].tolist()[0] == {"text": "final", "tag": "kept"}
    front.say(type="delete", handle=handle)
    wait_until(lambda: handle not in front.rows, what="the deletion")
    front.say(type="delete", handle=theirs_handle)  # the owner may delete anyone's
    wait_until(lambda: theirs_handle not in front.rows, what="the owner's deletion")
    kept = mine.send_message("the owner's, kept")
    their_widget, their_front = opened(theirs)
    wait_until(lambda: kept in their_front.rows, what="the owner's message, on their side")
    their_front.say(type="delete", handle=kept)  # refused: shown, not raised
    wait_until(lambda: their_widget.error.startswith("PermissionDeniedError"), what="the refusal")
    assert kept in their_front.rows


def test_older_pages_on_demand(make_client: MakeClient) -> None:
    alice = make_client("alice")
    space = alice.space.create_channel(f"older-{alice.username}")
    handles = [space.send_message(f"m{i}") for i in range(7)]
    widget, front = opened(space, window=3, page=3)
    assert front.texts() == ["m4", "m5", "m6"] and front.more
    front.say(type="load_older", before=handles[4])
    wait_until(lambda: len(front.rows) == 6, what="a second page")
    assert front.more
    front.say(type="load_older", before=handles[1])
    wait_until(lambda: len(front.rows) == 7 and not front.more, what="the start of history")
    assert front.texts() == [f"m{i}" for i in range(7)]
    widget.load_older().result(10)  # from code: nothing older is left
    assert [row["body"] for row in widget.messages] == [f"m{i}" for i in range(7)]


def test_typing_shows_others_and_expires(room: tuple[spacenb.Space, spacenb.Space]) -> None:
    mine, theirs = room
    widget, their_widget = mine.widget(), theirs.widget()
    widget._on_front_end(widget, {"type": "typing"}, [])  # my own signal is never shown
    wait_until(lambda: widget.connection == their_widget.connection == "connected")
    their_widget.send_typing()
    wait_until(lambda: widget.typing_users == [theirs.client.username], what="bob typing")
    wait_until(lambda: widget.typing_users == [], timeout=10, what="the typing signal to expire")
    assert their_widget.typing_users in ([], [mine.client.username])


def test_a_stopped_typing_signal_clears_at_once(
    room: tuple[spacenb.Space, spacenb.Space],
) -> None:
    mine, theirs = room
    widget, _front = opened(mine)
    theirs.send_ephemeral("typing", {"isTyping": True})
    wait_until(lambda: widget.typing_users == [theirs.client.username], what="bob typing")
    theirs.send_ephemeral("typing", {"isTyping": False})
    wait_until(lambda: widget.typing_users == [], timeout=2, what="bob stopped")


def test_presence_and_a_disconnected_space(room: tuple[spacenb.Space, spacenb.Space]) -> None:
    mine, theirs = room
    widget, _front = opened(mine)
    both = sorted([mine.client.username, theirs.client.username])
    wait_until(lambda: widget.online == both, what="both online")
    assert widget.connection == "connected"
    theirs.disconnect()
    wait_until(lambda: widget.online == [mine.client.username], what="bob gone")
    mine.disconnect()
    wait_until(lambda: widget.connection == "disconnected", what="my own state")


def test_a_lost_relay_shows_reconnecting_and_a_failed_send_can_be_retried(
    tmp_path: Path,
) -> None:
    server = spacenb.serve(data_dir=tmp_path, shards=0)
    port = int(server.url.rsplit(":", 1)[1])
    client = spacenb.connect(server.url, app_key=server.app_key, username="alice",
                             keystore=":memory:", timeout=30)  # fmt: skip
    try:
        space = client.space.create_channel("reconnect")
        widget, front = opened(space, send_timeout=1.0)
        wait_until(lambda: widget.connection == "connected", what="connected")
        server.stop()
        wait_until(lambda: widget.connection == "reconnecting", what="reconnecting")
        front.say(type="send", text="typed while the relay was down")
        wait_until(lambda: front.pending and "err" in next(iter(front.pending.values())),
                   timeout=10, what="the failed send")  # fmt: skip
        (failed,) = front.pending.values()
        assert failed["x"] == "typed while the relay was down"
        assert failed["err"] == "the relay did not store it in time"
        assert "[not sent: the relay did not store it in time]" in widget.transcript_text()

        server = spacenb.serve(data_dir=tmp_path, port=port, shards=0)
        wait_until(lambda: widget.connection == "connected", timeout=30, what="reconnected")
        front.say(type="retry", id=failed["p"])
        wait_until(lambda: not front.pending and front.rows, timeout=15, what="the retried send")
        assert space.history()["body"].tolist() == ["typed while the relay was down"]
    finally:
        client.close()
        server.stop()


def test_signing_out_leaves_a_closed_read_only_view(make_client: MakeClient) -> None:
    alice = make_client("alice")
    space = alice.space.create_channel(f"closed-{alice.username}")
    space.send_message("still readable")
    widget, front = opened(space)
    alice.close()
    wait_until(lambda: widget.connection == "closed", what="the closed state")
    assert not space.aio.events.has("message")
    front.say(type="send", text="ignored")  # the composer is disabled; a stray send is dropped
    assert widget.send_message("from code").exception(5) is not None
    assert front.texts() == ["still readable"] and not front.pending
    assert "still readable" in widget.transcript_text()


def test_close_unsubscribes(make_client: MakeClient) -> None:
    alice = make_client("alice")
    space = alice.space.create_channel(f"close-{alice.username}")
    widget = space.widget()
    wait_until(lambda: space.aio.events.has("message"), what="handlers added")
    widget.close()
    wait_until(lambda: not space.aio.events.has("message"), what="handlers removed")


def test_an_attachment_uploads_with_progress_and_downloads(
    room: tuple[spacenb.Space, spacenb.Space],
) -> None:
    mine, theirs = room
    widget, front = opened(mine)
    seen: list[dict[str, Any]] = []
    widget.observe(lambda change: seen.extend(change["new"]), names="transfers")
    data = os.urandom(1_300_000)
    front.say(type="upload", id="u1", name="data.bin", size=len(data), mime="application/x-demo")
    for offset in range(0, len(data), 512 * 1024):
        front.say(type="chunk", id="u1", buffers=[data[offset : offset + 512 * 1024]])
    front.say(type="upload_end", id="u1")
    wait_until(lambda: any("f" in row for row in front.rows.values()), timeout=30,
               what="the file message")  # fmt: skip
    (row,) = front.rows.values()
    assert row["f"] == {"n": "data.bin", "l": "data.bin (1.2 MiB)"}
    labels = [item["label"] for item in seen]
    assert any("sending to the kernel" in label for label in labels)
    assert any(label.startswith("data.bin: uploading") for label in labels)
    assert any("/ 1.2 MiB" in label for label in labels)  # byte-scaled, 1024 a step
    wait_until(lambda: widget.transfers == [], what="the finished upload to leave")

    body = theirs.history()["body"].tolist()[0]
    assert theirs.get_file(body["file"])[0] == data  # a real file message
    front.say(type="download", handle=row["h"])
    wait_until(lambda: len(front.files.get(row["h"], b"")) == len(data), timeout=30,
               what="the download")  # fmt: skip
    assert bytes(front.files[row["h"]]) == data
    header = next(m for m in front.sent if m["t"] == "file")
    assert (header["name"], header["mime"]) == ("data.bin", "application/x-demo")


def test_the_saved_output_is_an_escaped_transcript(make_client: MakeClient) -> None:
    alice, mallory = make_client("alice"), make_client("mallory")
    space = alice.space.create_channel(f"saved-{alice.username}")
    theirs = mallory.space.join_channel(space.name)
    space.send_message({"text": "hello **everyone**"})
    for body in XSS:
        theirs.send_message(body)
    data, _metadata = space.widget()._repr_mimebundle_()  # what a notebook saves
    assert "application/vnd.jupyter.widget-view+json" in data
    text, markup = data["text/plain"], data["text/html"]
    assert text.splitlines()[0] == f"spacenb chat · {space.name} · 3 messages"
    assert text.splitlines()[1].endswith(f"{alice.username} (me): hello **everyone**")
    assert text.splitlines()[2].endswith(f"{mallory.username}: {XSS[0]}")
    assert "<p>hello <strong>everyone</strong></p>" in markup
    assert "<script" not in markup and "<img" not in markup and "&lt;script&gt;" in markup


def test_peer_content_never_becomes_markup(make_client: MakeClient) -> None:
    alice, mallory = make_client("alice"), make_client("mallory")
    directory = alice.space.widget()
    channel = mallory.space.create_channel(f"{XSS[1]}-{mallory.username}")
    directory.refresh()
    directory.channels.value = channel.id
    directory.join_button.click()
    for body in [*XSS, "[x](javascript:alert(1)) **ok**"]:
        channel.send_message(body)
    chat = directory.chat.children[0]
    front = FrontEnd(chat)
    wait_until(lambda: len(front.rows) == 3, what="the hostile messages")
    rows = [row for _, row in sorted(front.rows.items())]
    for row in rows[:2]:  # escaped by markdown-it ("__" is Markdown), or text for textContent
        assert "x" in row or ("&lt;" in row["m"] and "<script" not in row["m"])
        assert "<img" not in row.get("m", "")
    assert rows[2]["m"] == "<p>[x](javascript:alert(1)) <strong>ok</strong></p>"
    assert chat.title == channel.name  # a trait: chat.js shows it with textContent

    # chat.js parses exactly one thing as HTML: row.m, which nh3 cleaned in the kernel.
    source = (WIDGETS / "chat.js").read_text()
    assert source.count("innerHTML") == 1 and "body.innerHTML = row.m;" in source
    for sink in ("outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert sink not in source
    for value in [*_html_values(directory), directory.space._repr_html_()]:
        assert "<script" not in value and "<img" not in value


def _html_values(widget: ipywidgets.Widget) -> list[str]:
    """Every value the front end would parse as HTML, in a widget tree."""
    found = []
    if isinstance(widget, ipywidgets.HTML | ipywidgets.HTMLMath):
        found.append(widget.value)
    for child in getattr(widget, "children", ()):
        found += _html_values(child)
    return found


def test_directory_lists_creates_and_joins_at_full_width(make_client: MakeClient) -> None:
    alice, bob = make_client("alice"), make_client("bob")
    directory = alice.space.widget()
    assert isinstance(directory, ChannelDirectory)
    assert directory.layout.width == directory.chat.layout.width == "100%"
    assert directory.name.style.description_width == "initial"  # "New channel", not cut
    assert directory.channels.style.description_width == "initial"
    directory.name.value = f"dir-{alice.username}"
    directory.create_button.click()
    assert directory.space is not None and directory.space.name == f"dir-{alice.username}"
    chat = directory.chat.children[0]
    assert isinstance(chat, ChatWidget) and chat.layout.width == "100%"
    assert (directory.space.name, directory.space.id) in directory.channels.options

    theirs = bob.space.widget()
    theirs.channels.value = directory.space.id
    theirs.join_button.click()
    assert theirs.space is not None and theirs.space.id == directory.space.id
    theirs.channels.value = None
    theirs.join_button.click()
    assert theirs.status.value == "Pick a channel first"


class ThreadLoop:
    """The smallest LoopRunner: an asyncio loop in a thread of its own, not spacenb's."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture
def own_loop() -> Iterator[ThreadLoop]:
    runner = ThreadLoop()
    yield runner
    runner.stop()


def test_the_widget_needs_only_an_async_space_and_a_loop(
    local_server: spacenb.LocalServer, own_loop: ThreadLoop
) -> None:
    async def sign_in() -> Any:
        client = await spacenb.aio.connect(local_server.url, app_key=local_server.app_key,
                                           username="loop-only", keystore=":memory:")  # fmt: skip
        return client, await client.space.create_channel(f"loop-only-{id(own_loop)}")

    client, space = own_loop.submit(sign_in()).result(30)
    widget = ChatWidget(space, runner=own_loop)
    front = FrontEnd(widget)
    wait_until(lambda: not widget.loading and front.resets, what="the snapshot")
    front.say(type="send", text="through any loop")
    wait_until(lambda: front.texts() == ["through any loop"], what="the message")
    widget.close()
    own_loop.submit(client.close()).result(10)
    # and the widget's code reaches into nothing private of the objects it is given
    for module in ("chat.py", "directory.py"):
        source = (WIDGETS / module).read_text()
        assert "space._" not in source and "client._" not in source and ".aio._" not in source
