"""The chat widget under a flood, measured in a real browser: JupyterLab in headless Chromium.

A relay runs in its own process (``spacenb serve``) and a sender in another, which sends
``--messages`` messages as fast as it can (``--in-flight`` at a time). A reader's kernel,
started by a JupyterLab server, shows the channel's ``space.widget()`` in a page that
Playwright drives through Debian's chromium. The page records when the last message
reaches the DOM and the time of every animation frame during the flood; Playwright counts
the bytes of every websocket frame the page receives from the kernel.

Figures (issue 14's targets in brackets):

- last message in the DOM after the last send returned [≤ 2 s];
- frame time p95 during the flood [≤ 50 ms], and the mean;
- bytes sent to the page / bytes of the bodies [≤ 2];
- the sender's rate, for context.

``--spacenb PATH`` runs the reader's kernel on another copy of spacenb (a checkout of an
older commit) to measure the widget as it was; the relay and the sender always use this
one. Not a timed test: run it by hand (``python -m bench.widget_flood``); it needs
``/usr/bin/chromium``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Metric, Report, main, percentile

ROOT = Path(__file__).resolve().parents[1]

READER = """\
import os
import spacenb

client = spacenb.connect(os.environ["SPACENB_URL"], app_key=os.environ["SPACENB_APP_KEY"],
                         username="reader", keystore=os.environ["SPACENB_KEYS"])
space = client.space.join_channel("flood")
space.widget()
"""

SENDER = """\
import asyncio, json, sys, time
import spacenb.aio as aio

url, app_key, count, in_flight, size = sys.argv[1:6]
count, in_flight, size = int(count), int(in_flight), int(size)


def body(i):
    head = f"flood {i:05d} "
    if i % 10 == 5:  # one in ten uses Markdown
        head += "**bold** and a [link](https://example.org) "
    return head + "x" * max(0, size - len(head))


async def run():
    client = await aio.connect(url, app_key=app_key, username="sender", keystore=":memory:")
    space = await client.space.create_channel("flood")
    await space.send_message("the flood starts when the page is ready")
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # go (the loop keeps answering pings)
    bodies = [body(i) for i in range(count)]
    gate = asyncio.Semaphore(in_flight)

    async def one(text):
        async with gate:
            await space.send_message(text)

    first = time.time()
    await asyncio.gather(*(one(b) for b in bodies))
    last = time.time()
    print(json.dumps({"first": first, "last": last,
                      "body_bytes": sum(len(b.encode()) for b in bodies),
                      "last_text": bodies[-1][:12]}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # done
    await client.close()


asyncio.run(run())
"""

# Installed before the flood: frame times, and when the last message appears.
PROBE = """(lastText) => {
  window.__frames = [];
  window.__lastSeen = null;
  let previous = performance.now();
  const tick = (t) => {
    window.__frames.push(t - previous);
    previous = t;
    if (window.__lastSeen === null) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  const list = document.querySelector('.spacenb-chat');
  const seen = () => {
    for (const body of list.querySelectorAll('.spacenb-body')) {
      if (body.textContent.includes(lastText)) return true;
    }
    return false;
  };
  new MutationObserver((_, observer) => {
    if (window.__lastSeen === null && seen()) {
      window.__lastSeen = Date.now();
      observer.disconnect();
    }
  }).observe(list, {childList: true, subtree: true, characterData: true});
}"""


def _relay() -> tuple[subprocess.Popen[str], str, str]:
    relay = subprocess.Popen(
        [sys.executable, "-m", "spacenb", "serve", "--port", "0", "--shards", "0"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert relay.stdout is not None
    url = relay.stdout.readline().split()[-1]
    app_key = relay.stdout.readline().split()[-1]
    return relay, url, app_key


def run(args: argparse.Namespace) -> Report:
    import nbformat

    from tests.widgets.browser import CHROMIUM, JupyterServer, browser

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is needed (apt-get install chromium)")
    report = Report.of("widget_flood", args)
    relay, url, app_key = _relay()
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, url, app_key, str(args.messages), str(args.in_flight),
         str(args.body_bytes)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert sender.stdin is not None and sender.stdout is not None
    jupyter = None
    try:
        assert json.loads(sender.stdout.readline())["ready"]
        work = Path(tempfile.mkdtemp(prefix="spacenb-flood-"))
        root = work / "notebooks"
        root.mkdir()
        kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebook = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell(READER)], metadata={"kernelspec": kernel}
        )
        nbformat.write(notebook, root / "flood.ipynb")
        env = {"SPACENB_URL": url, "SPACENB_APP_KEY": app_key, "SPACENB_KEYS": str(work / "keys")}
        if args.spacenb:
            env["PYTHONPATH"] = str(Path(args.spacenb).resolve())
        jupyter = JupyterServer(root, env)
        with browser() as chromium:
            page = chromium.new_page(viewport={"width": 1100, "height": 900})
            received = {"bytes": 0, "counting": False}

            def on_socket(socket: Any) -> None:
                if "/api/kernels/" not in socket.url:
                    return

                def frame(payload: str | bytes) -> None:
                    if received["counting"]:
                        size = len(payload.encode() if isinstance(payload, str) else payload)
                        received["bytes"] += size

                socket.on("framereceived", frame)

            page.on("websocket", on_socket)
            page.goto(jupyter.url("lab/tree/flood.ipynb"), timeout=180_000)
            page.locator(".jp-Notebook").wait_for(timeout=180_000)
            for attempt in range(3):  # a click that comes too early does nothing
                page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
                page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()
                try:
                    page.locator(".spacenb-body", has_text="the flood starts").wait_for(
                        timeout=60_000
                    )
                    break
                except Exception:
                    if attempt == 2:
                        raise
            time.sleep(2)  # let the page settle
            last_text = f"flood {args.messages - 1:05d}"
            page.evaluate(PROBE, last_text)
            received["counting"] = True
            sender.stdin.write("go\n")
            sender.stdin.flush()
            sent = json.loads(sender.stdout.readline())
            page.wait_for_function(
                "window.__lastSeen !== null", timeout=args.timeout * 1000, polling=100
            )
            time.sleep(1)  # what follows the last message (status, typing) counts too
            page.evaluate("0")  # let Playwright deliver the frames received meanwhile
            received["counting"] = False
            seen = page.evaluate("window.__lastSeen") / 1000
            frames = page.evaluate("window.__frames")[1:]
    finally:
        if sender.poll() is None:
            with_stdin = sender.stdin
            if with_stdin is not None and not with_stdin.closed:
                with_stdin.write("done\n")
                with_stdin.flush()
            try:
                sender.wait(15)
            except subprocess.TimeoutExpired:
                sender.kill()
        if jupyter is not None:
            jupyter.stop()
        relay.terminate()
        relay.wait(15)

    rate = args.messages / max(sent["last"] - sent["first"], 1e-9)
    report.add(Metric("sender rate", "msg/s", rate, note="as fast as the sender can"))
    report.add(
        Metric("last message in the DOM after the last send", "s", seen - sent["last"],
               better="lower", target=2.0)
    )  # fmt: skip
    report.add(
        Metric("frame time p95 during the flood", "ms", percentile(frames, 95),
               better="lower", target=50.0)
    )  # fmt: skip
    report.add(Metric("frame time mean", "ms", sum(frames) / len(frames), better="lower"))
    report.add(
        Metric("bytes to the page / body bytes", "×", received["bytes"] / sent["body_bytes"],
               better="lower", target=2.0)
    )  # fmt: skip
    report.notes.append(
        f"{args.messages} bodies of {args.body_bytes} B ({sent['body_bytes']:,} B), "
        f"{received['bytes']:,} B of websocket frames from the kernel to the page, "
        f"{len(frames)} frames; reader kernel on {args.spacenb or 'this checkout'}"
    )
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=10_000, help="messages in the flood")
    parser.add_argument("--body-bytes", type=int, default=200, help="bytes per body")
    parser.add_argument("--in-flight", type=int, default=16, help="sends in flight")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the DOM")
    parser.add_argument("--spacenb", default="", help="run the reader's kernel on this copy")


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0], configure, smoke={"messages": 200, "timeout": 120})
