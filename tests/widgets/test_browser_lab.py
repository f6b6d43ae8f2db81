"""The chat widget in JupyterLab itself (and the keys in Notebook 7), in headless Chromium.

One Jupyter server and one JupyterLab page for the module: the notebook connects "alice"
to a relay this test process runs (so it can stop and restart it), shows her chat and the
channel directory; "bob", in this process, talks to her. The tests run in file order
against that one page and each checks what it did: Enter and Shift+Enter (the cell is not
re-run), keys that never reach the notebook, Escape; Markdown and hostile bodies; edit and
delete; an attachment with its progress and a download; the reader's place kept while
messages arrive; reconnecting, a failed send and its retry; the saved transcript; the
directory's width; light and dark screenshots in test-artifacts/.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spacenb

from .browser import JupyterServer, browser, require_chromium, screenshot, settle, wait_for

require_chromium()
pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

CHANNEL = "lab-browser"
XSS = '<img src=x onerror="window.__xss = 1"><script>window.__xss = 1</script>'
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}
NOTEBOOK = [
    """\
import os
import spacenb

client = spacenb.connect(os.environ["SPACENB_URL"], app_key=os.environ["SPACENB_APP_KEY"],
                         username="USER", keystore=os.environ["SPACENB_KEYS"])
space = client.space.join_channel(os.environ["SPACENB_CHANNEL"])
chat = space.widget(send_timeout=3)
chat""",
    "client.space.widget()",
]


class Lab:
    """The page, the relay behind it, and bob."""

    def __init__(self, tmp: Path) -> None:
        import nbformat

        self.data = tmp / "relay"
        self.server = spacenb.serve(data_dir=self.data, shards=3, shards_needed=2)
        self.port = int(self.server.url.rsplit(":", 1)[1])
        self.bob = spacenb.connect(self.server.url, app_key=self.server.app_key,
                                   username="bob", keystore=":memory:", timeout=30)  # fmt: skip
        self.channel = self.bob.space.create_channel(CHANNEL)
        self.channel.send_message({"text": "welcome, **alice**: this is the *lab* channel"})
        self.bob.space.create_channel("a-channel-with-a-long-name")
        root = tmp / "notebooks"
        root.mkdir()
        self.notebook = root / "chat.ipynb"
        for path, user, cells in (
            (self.notebook, "alice", NOTEBOOK),
            (root / "chat7.ipynb", "carol", NOTEBOOK[:1]),  # for Notebook 7, its own kernel
        ):
            code = [nbformat.v4.new_code_cell(c.replace("USER", user)) for c in cells]
            notebook = nbformat.v4.new_notebook(cells=code, metadata={"kernelspec": KERNEL})
            nbformat.write(notebook, path)
        try:
            self.jupyter = JupyterServer(root, {"SPACENB_URL": self.server.url,
                                                "SPACENB_APP_KEY": self.server.app_key,
                                                "SPACENB_CHANNEL": CHANNEL,
                                                "SPACENB_KEYS": str(tmp / "keys")})  # fmt: skip
        except BaseException:
            self.bob.close()
            self.server.stop()
            raise

    def restart_relay(self) -> None:
        self.server = spacenb.serve(data_dir=self.data, port=self.port, shards=3, shards_needed=2)

    def bodies(self) -> list[Any]:
        return self.channel.history(limit=200)["body"].tolist()

    def close(self) -> None:
        self.bob.close()
        self.server.stop()
        self.jupyter.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    setup = Lab(tmp_path_factory.mktemp("lab"))
    try:
        yield setup
    finally:
        setup.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as launched:
        yield launched


@pytest.fixture(scope="module")
def page(lab: Lab, chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(lab.jupyter.url("lab/tree/chat.ipynb"), timeout=180_000)
    page.locator(".jp-Notebook").wait_for(timeout=180_000)
    run_all(page)
    page.evaluate("window.__marker = document.querySelector('.spacenb-chat')")
    yield page
    context.close()


def dismiss_dialogs(page: Any) -> list[str]:
    """Accept any modal dialog JupyterLab put up (on a loaded machine a slow kernel start
    can bring up "Select Kernel"): it would take every click. Returns what they said."""
    said = []
    dialogs = page.locator(".jp-Dialog")
    for _ in range(3):
        if not dialogs.count():
            break
        said.append(dialogs.first.inner_text())
        accept = dialogs.first.locator(".jp-Dialog-button.jp-mod-accept")
        if accept.count():
            accept.first.click()
        else:
            page.keyboard.press("Escape")
        settle(page)
    return said


def menu(page: Any, *path: str) -> None:
    """Click through JupyterLab's menu bar: ``menu(page, "Run", "Run All Cells")``."""
    dismiss_dialogs(page)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{path[0]}$")).click()
    for i, label in enumerate(path[1:]):
        item = page.locator(
            ".lm-Menu-content .lm-Menu-itemLabel", has_text=re.compile(f"^{label}$")
        )
        item.last.hover() if i < len(path) - 2 else item.last.click()


def run_all(page: Any) -> None:
    """Run every cell and wait for the chat, trying again if the first click came too
    early for the notebook (its keys are kept on disk, so a second run signs in again)."""
    for attempt in range(3):
        menu(page, "Run", "Run All Cells")
        try:
            # a deadline, not a speed bound: a kernel's start on a loaded 2-core machine
            # has taken over a minute
            connected = chat(page).locator(".spacenb-status[data-state='connected']")
            connected.wait_for(timeout=150_000)
            return
        except Exception:
            if attempt == 2:
                raise


def chat(page: Any) -> Any:
    return page.locator(".jp-Cell").first.locator(".spacenb-chat")


def composer(page: Any) -> Any:
    return chat(page).get_by_role("textbox", name="Message", exact=True)


def rows(page: Any) -> Any:
    return chat(page).locator(".spacenb-list .spacenb-msg")


def test_bodies_render_as_markdown_and_hostile_ones_stay_text(lab: Lab, page: Any) -> None:
    welcome = rows(page).first.locator(".spacenb-body")
    welcome.locator("strong", has_text="alice").wait_for()
    assert welcome.inner_text().strip() == "welcome, alice: this is the lab channel"
    lab.channel.send_message(XSS)
    lab.channel.send_message("[a link](https://example.org) and [not one](javascript:alert(1))")
    rows(page).nth(2).wait_for()
    assert rows(page).nth(1).inner_text().endswith(XSS)
    link = rows(page).nth(2).locator("a")
    assert link.count() == 1 and link.get_attribute("href") == "https://example.org"
    assert link.get_attribute("target") == "_blank" and "noopener" in link.get_attribute("rel")
    assert "javascript:alert(1)" in rows(page).nth(2).inner_text()  # as text, not a link
    assert page.evaluate("window.__xss") is None
    assert chat(page).locator(".spacenb-list img, .spacenb-list script").count() == 0
    assert chat(page).get_by_role("log").get_attribute("aria-live") == "polite"


def test_enter_sends_and_shift_enter_adds_a_newline(lab: Lab, page: Any) -> None:
    prompt = page.locator(".jp-Cell").first.locator(".jp-InputPrompt").inner_text()
    cells = page.locator(".jp-Notebook .jp-Cell").count()
    box = composer(page)
    box.click()
    box.press_sequentially("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    assert box.input_value() == "first line\nsecond line"
    box.press("Enter")
    wait_for(lambda: "first line\nsecond line" in lab.bodies(), "the message at the relay")
    assert box.input_value() == ""
    chat(page).locator(".spacenb-body", has_text="second line").wait_for()
    # the cell did not run again: same prompt, same widget element, same cells
    assert page.locator(".jp-Cell").first.locator(".jp-InputPrompt").inner_text() == prompt
    assert page.evaluate("window.__marker === document.querySelector('.spacenb-chat')")
    assert page.locator(".jp-Notebook .jp-Cell").count() == cells


def test_no_key_reaches_the_notebook_and_escape_leaves(page: Any) -> None:
    cells = page.locator(".jp-Notebook .jp-Cell").count()
    box = composer(page)
    box.click()
    prompt = page.locator(".jp-Cell").first.locator(".jp-InputPrompt").inner_text()
    for key in ("Control+Enter", "Alt+Enter"):  # run the cell, run and insert (in a cell)
        box.press(key)  # in the empty composer: sends nothing, runs nothing
    for key in ("a", "b", "d", "d", "m", "Shift+Enter", "x"):
        box.press(key)  # in command mode: insert above/below, delete, markdown, run...
    assert page.locator(".jp-Notebook .jp-Cell").count() == cells
    assert page.locator(".jp-Cell").first.locator(".jp-InputPrompt").inner_text() == prompt
    assert box.input_value() == "abddm\nx"  # every key stayed in the box
    box.press("Escape")
    assert page.evaluate("document.activeElement.classList.contains('spacenb-log')")
    box.fill("")


def test_the_author_edits_and_deletes_on_hover(lab: Lab, page: Any) -> None:
    box = composer(page)
    box.fill("to be edited")
    box.press("Enter")
    found = rows(page).filter(has_text="to be edited")
    found.wait_for()
    row = chat(page).locator(f".spacenb-msg[data-handle='{found.get_attribute('data-handle')}']")
    row.hover()
    row.get_by_role("button", name="Edit").click()
    editor = row.get_by_role("textbox", name="Edit message")
    editor.fill("edited in the browser")
    editor.press("Enter")
    edited = rows(page).filter(has_text="edited in the browser")
    edited.locator(".spacenb-edited").wait_for()
    wait_for(lambda: "edited in the browser" in lab.bodies(), "the edit at the relay")
    theirs = rows(page).filter(has_text="welcome")
    theirs.hover()
    assert theirs.locator(".spacenb-actions").count() == 0  # only the author has controls

    edited.hover()
    edited.get_by_role("button", name="Delete").click()
    confirm = edited.get_by_role("button", name="Delete")
    assert edited.get_by_text("Delete this message?").is_visible()
    edited.get_by_role("button", name="Cancel").click()  # asked first: nothing happens
    assert "edited in the browser" in lab.bodies()
    edited = rows(page).filter(has_text="edited in the browser")
    edited.hover()
    edited.get_by_role("button", name="Delete").click()
    confirm = edited.get_by_role("button", name="Delete")
    confirm.click()
    edited.wait_for(state="detached")
    wait_for(lambda: "edited in the browser" not in lab.bodies(), "the deletion at the relay")


def test_an_attachment_uploads_with_progress_and_downloads(
    lab: Lab, page: Any, tmp_path: Path
) -> None:
    page.evaluate(
        """() => {
          window.__progress = [];
          const box = document.querySelector('.spacenb-transfers');
          new MutationObserver(() => {
            for (const bar of box.querySelectorAll('progress')) {
              window.__progress.push([bar.value, bar.max, bar.nextSibling.textContent]);
            }
          }).observe(box, {childList: true, subtree: true});
        }"""
    )
    data = os.urandom(6 * 1024 * 1024 + 123)
    source = tmp_path / "measurements.bin"
    source.write_bytes(data)
    with page.expect_file_chooser() as chooser:
        chat(page).get_by_role("button", name="Attach a file").click()
    chooser.value.set_files(str(source))
    chip = chat(page).locator(".spacenb-file", has_text="measurements.bin")
    chip.wait_for(timeout=120_000)
    assert chip.inner_text().strip() == "↓ measurements.bin (6.0 MiB)"
    seen = page.evaluate("window.__progress")
    labels = [label for _, _, label in seen]
    assert any("sending to the kernel" in label for label in labels)
    assert any(": uploading" in label for label in labels)
    assert any(0 < done < total for done, total, _ in seen)  # shown on its way, not only done
    assert all(re.search(r"\d(\.\d)? (B|KiB|MiB) / \d", label) for label in labels)
    file_body = next(b for b in lab.bodies() if isinstance(b, dict) and "file" in b)
    assert lab.channel.get_file(file_body["file"])[0] == data

    with page.expect_download(timeout=120_000) as download:
        chip.click()
    saved = tmp_path / "downloaded.bin"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "measurements.bin"
    assert saved.read_bytes() == data


def test_the_place_is_kept_while_messages_arrive(lab: Lab, page: Any) -> None:
    for i in range(60):
        lab.channel.send_message(f"filler {i}")
    rows(page).filter(has_text="filler 59").wait_for()
    log = chat(page).locator(".spacenb-log")
    log.evaluate("log => { log.scrollTop = 300; }")
    settle(page, 3)
    first_seen = """log => {
        for (const row of log.querySelectorAll('.spacenb-list .spacenb-msg')) {
          const box = row.getBoundingClientRect();
          if (box.bottom > log.getBoundingClientRect().top + 1)
            return [row.dataset.handle, box.top, row.innerText];
        }
    }"""
    before = log.evaluate(first_seen)
    for i in range(30):
        lab.channel.send_message(f"arrived while reading {i}")
    unread = chat(page).locator(".spacenb-unread")
    unread.filter(has_text="30 new messages").wait_for()
    settle(page, 3)
    assert log.evaluate(first_seen) == before  # the same row, at the same place
    screenshot(chat(page), "chat-lab-scrolled-up.png")
    unread.click()
    rows(page).filter(has_text="arrived while reading 29").wait_for()
    settle(page, 3)
    assert log.evaluate("log => log.scrollHeight - log.scrollTop - log.clientHeight < 2")
    assert unread.is_hidden()


def test_reconnecting_a_failed_send_and_its_retry(lab: Lab, page: Any) -> None:
    status = chat(page).locator(".spacenb-status")
    lab.server.stop()
    chat(page).locator(".spacenb-status[data-state='reconnecting']").wait_for()
    assert status.inner_text() == "Reconnecting… you are offline"
    assert chat(page).locator(".spacenb-online").inner_text() == "alice (me): offline"
    box = composer(page)
    box.fill("sent while the relay is down")
    box.press("Enter")
    pending = chat(page).locator(".spacenb-pending", has_text="sent while the relay is down")
    pending.get_by_text("Sending…").wait_for()
    pending.get_by_role("button", name="Retry").wait_for(timeout=30_000)
    assert "Not sent: the relay did not store it in time" in pending.inner_text()
    screenshot(chat(page), "chat-lab-reconnecting.png")
    lab.restart_relay()
    chat(page).locator(".spacenb-status[data-state='connected']").wait_for(timeout=60_000)
    pending.get_by_role("button", name="Retry").click()
    rows(page).filter(has_text="sent while the relay is down").wait_for(timeout=30_000)
    pending.wait_for(state="detached")
    wait_for(lambda: "sent while the relay is down" in lab.bodies(), "the retried message")


def test_the_directory_gives_its_chat_the_full_width(page: Any) -> None:
    directory = page.locator(".jp-Cell").nth(1)
    select = directory.locator("select")
    select.wait_for()
    select.select_option(label=CHANNEL)
    directory.get_by_role("button", name="Join").click()
    inner = directory.locator(".spacenb-chat")
    inner.locator(".spacenb-status[data-state='connected']").wait_for(timeout=60_000)
    width = inner.evaluate("el => el.getBoundingClientRect().width")
    area = directory.locator(".jp-OutputArea-output").first
    assert width >= 0.9 * area.evaluate("el => el.getBoundingClientRect().width")
    for label in directory.locator(".widget-label").all():
        assert label.evaluate("el => el.scrollWidth <= el.clientWidth"), label.inner_text()
    screenshot(directory, "directory-lab.png")


def test_light_and_dark_screenshots(page: Any) -> None:
    page.locator(".jp-Cell").first.scroll_into_view_if_needed()
    light = screenshot(chat(page), "chat-lab-light.png")
    menu(page, "Settings", "Theme", "JupyterLab Dark")
    page.locator("body[data-jp-theme-light='false']").wait_for(state="attached")
    settle(page, 3)
    dark = screenshot(chat(page), "chat-lab-dark.png")
    background = (
        chat(page).locator(".spacenb-log").evaluate("el => getComputedStyle(el).backgroundColor")
    )
    red, green, blue = (int(v) for v in re.findall(r"\d+", background)[:3])
    assert red + green + blue < 3 * 80  # the log follows the dark theme
    menu(page, "Settings", "Theme", "JupyterLab Light")
    page.locator("body[data-jp-theme-light='true']").wait_for(state="attached")
    assert light.stat().st_size and dark.stat().st_size


def test_the_saved_notebook_carries_a_transcript(lab: Lab, page: Any) -> None:
    page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
    before = lab.notebook.stat().st_mtime_ns
    menu(page, "File", "Save Notebook")
    wait_for(lambda: lab.notebook.stat().st_mtime_ns != before, "the saved notebook")
    saved = json.loads(lab.notebook.read_text())
    (output,) = saved["cells"][0]["outputs"]
    assert "application/vnd.jupyter.widget-view+json" in output["data"]
    text = "".join(output["data"]["text/plain"])
    markup = "".join(output["data"]["text/html"])
    assert text.startswith(f"spacenb chat · {CHANNEL} · ")
    assert "bob: welcome, **alice**: this is the *lab* channel" in text
    assert "<strong>alice</strong>" in markup and "<script" not in markup
    assert "<img" not in markup


@pytest.fixture
def notebook7(lab: Lab, chromium: Any) -> Iterator[Any]:
    page = chromium.new_page(viewport={"width": 1000, "height": 800})
    page.set_default_timeout(60_000)
    page.goto(lab.jupyter.url("notebooks/chat7.ipynb"), timeout=180_000)
    page.locator(".jp-Notebook").wait_for(timeout=180_000)
    yield page
    page.close()


def test_enter_and_shift_enter_in_notebook_7(lab: Lab, notebook7: Any) -> None:
    page = notebook7
    run_all(page)
    cells = page.locator(".jp-Notebook .jp-Cell").count()
    box = composer(page)
    box.click()
    box.press_sequentially("from notebook 7")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    box.press("Enter")
    wait_for(lambda: "from notebook 7\nsecond line" in lab.bodies(), "the message at the relay")
    assert page.locator(".jp-Notebook .jp-Cell").count() == cells
    assert box.input_value() == ""
    screenshot(chat(page), "chat-notebook7.png")
