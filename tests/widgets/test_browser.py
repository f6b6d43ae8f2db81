"""End to end in headless Chromium: Voilà serves a notebook showing a channel's chat widget.

Another client's messages must appear on the page (pushed from the kernel's spacenb loop
while no cell runs), hostile bodies must show as text, Enter in the composer must send and
Shift+Enter add a newline. A screenshot is saved to ``test-artifacts/chat-widget.png``.
JupyterLab and Notebook 7: test_browser_lab.py. Skips only without /usr/bin/chromium.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import spacenb
from spacenb.sync.testing import wait_until
from tests.facade import script_env

from .browser import ARTIFACTS, browser, free_port, listening, require_chromium

require_chromium()
pytestmark = pytest.mark.browser

XSS = '<img src=x onerror="window.__xss = 1"><script>window.__xss = 1</script>'

NOTEBOOK_CODE = """\
import os
import uuid
import spacenb

username = f"viewer-{uuid.uuid4().hex[:8]}"  # each page load runs a fresh kernel
client = spacenb.connect(os.environ["SPACENB_URL"], app_key=os.environ["SPACENB_APP_KEY"],
                         username=username, keystore=":memory:")
space = client.space.join_channel(os.environ["SPACENB_CHANNEL"])
space.widget()
"""


@pytest.fixture
def voila(
    tmp_path: Path, local_server: spacenb.LocalServer, make_client: Callable[[str], spacenb.Client]
) -> Iterator[tuple[str, spacenb.Space]]:
    """Voilà serving the chat notebook for a fresh channel; yields (url, alice's space)."""
    import nbformat

    alice = make_client("alice")
    space = alice.space.create_channel(f"browser-{alice.username}")
    space.send_message("welcome to the browser test")
    notebook = tmp_path / "chat.ipynb"
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK_CODE)]), notebook
    )
    port = free_port()
    env = script_env(
        SPACENB_URL=local_server.url,
        SPACENB_APP_KEY=local_server.app_key,
        SPACENB_CHANNEL=space.name or space.id,
    )
    log = (tmp_path / "voila.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1", "--show_tracebacks=True"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: listening(port) or process.poll() is not None, timeout=60, what="voila")
        if process.poll() is not None:
            pytest.fail(f"voila exited: {(tmp_path / 'voila.log').read_text()[-3000:]}")
        yield url, space
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_messages_from_another_client_appear_in_the_page(
    voila: tuple[str, spacenb.Space],
) -> None:
    from playwright.sync_api import expect

    url, space = voila
    with browser() as chromium:
        page = chromium.new_page(viewport={"width": 900, "height": 640})
        page.goto(url, timeout=120_000)
        chat = page.locator(".spacenb-chat")
        failed = page.locator("[data-mime-type='application/vnd.jupyter.stderr']")
        expect(chat.or_(failed).first).to_be_visible(timeout=120_000)
        assert not failed.count(), failed.first.inner_text()
        bodies = chat.locator(".spacenb-body")
        expect(bodies.first).to_contain_text("welcome to the browser test", timeout=30_000)

        space.send_message("hello from alice, live")
        space.send_message(XSS)
        expect(bodies.filter(has_text="hello from alice, live")).to_have_count(1, timeout=30_000)
        expect(bodies.last).to_contain_text(XSS, timeout=30_000)  # shown as text
        assert page.evaluate("window.__xss") is None
        assert chat.locator(".spacenb-list img, .spacenb-list script").count() == 0
        expect(chat.get_by_role("log")).to_have_attribute("aria-live", "polite")

        composer = chat.get_by_role("textbox", name="Message", exact=True)
        composer.click()
        composer.press_sequentially("typed in the browser")
        composer.press("Shift+Enter")
        composer.press_sequentially("on two lines")
        composer.press("Enter")
        wait_until(
            lambda: "typed in the browser\non two lines" in space.history()["body"].tolist(),
            timeout=30,
            what="the browser's message at the relay",
        )
        expect(bodies.filter(has_text="typed in the browser")).to_have_count(1, timeout=30_000)

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat-widget.png"), full_page=True)
    assert (ARTIFACTS / "chat-widget.png").stat().st_size > 0
