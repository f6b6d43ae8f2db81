"""The facade inside a real Jupyter kernel (its loop runs in the cells' thread).

nbclient runs the notebook; a message from another client must reach a facade handler and
the chat widget while the cell's thread only waits, and the widget state nbclient stores
must hold it: trait updates made on spacenb's loop thread reached the comm. The widget's
saved output is a transcript of what it showed. (nbclient files messages by cell, so only
a browser shows updates that arrive while no cell runs: tests/widgets/test_browser_lab.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[2]

CELLS = [
    """\
import asyncio
import spacenb
from spacenb.sync.testing import wait_until

asyncio.get_running_loop()  # the kernel's loop runs in this thread
srv = spacenb.serve()
alice = spacenb.connect(srv.url, app_key=srv.app_key, username="alice", keystore=":memory:")
bob = spacenb.connect(srv.url, app_key=srv.app_key, username="bob", keystore=":memory:")
space = alice.space.create_channel("kernel")
theirs = bob.space.join_channel("kernel")
inbox = []
space.on_message(lambda event: inbox.append(event.message.body))
chat = space.widget()
chat""",
    """\
theirs.send_message("sent between cells")
wait_until(lambda: inbox and chat.messages, what="the message")  # this thread idles, polling""",
    """\
print(inbox, [row["body"] for row in chat.messages])
print(space.history()[["sender", "body"]].to_dict("records"))
chat  # displayed again: its saved transcript now holds the message""",
    "alice.close(); bob.close(); srv.stop()",
]


def test_facade_and_widget_in_a_kernel() -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
        store_widget_state=True,
    )
    client.execute()
    text = "".join(out.get("text", "") for out in notebook.cells[2].outputs)
    assert "['sent between cells'] ['sent between cells']" in text
    assert "{'sender': 'bob', 'body': 'sent between cells'}" in text
    states = notebook.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    chats = [s["state"] for s in states.values() if "connection" in s["state"]]
    # set on the loop thread: presence, then the closed state when alice signed out
    assert chats[0]["online"] == ["alice", "bob"] and chats[0]["connection"] == "closed"
    (first,) = notebook.cells[0].outputs
    assert first["data"]["text/plain"] == "spacenb chat · kernel · 0 messages"
    again = notebook.cells[2].outputs[-1]["data"]
    assert again["text/plain"].splitlines()[1].endswith("bob: sent between cells")
    assert "<td><p>sent between cells</p></td>" in again["text/html"]
