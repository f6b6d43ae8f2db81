"""Shared helpers of the reliability suite: polling, inboxes, a MITM relay that can also
inject raw bytes, a dump of the relay's SQLite tables, forged and altered envelopes (bound
to a state-log head, as protocol v2 requires), and the secret encodings a scan of the data
directory looks for."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

import spacenb.aio as aio
from spacenb.aio.events import SpaceMessageEvent
from spacenb.protocol import frames
from spacenb.protocol.envelope import new_session_id, seal_envelope
from spacenb.protocol.keys import IdentityKeys
from spacenb.protocol.statelog import SpaceState
from spacenb.server.storage import DB_FILENAME
from tests.aio.conftest import Inbox, wait_until
from tests.aio.mitm import MitmRelay

__all__ = [
    "Chatter",
    "Inbox",
    "Mitm",
    "all_history",
    "altered",
    "dump_tables",
    "encodings_of",
    "event_json",
    "flip_b64",
    "forged_envelope",
    "live_feed_checked",
    "no_errors_logged",
    "sign_in",
    "wait_until",
]

TableDump = dict[str, list[tuple[Any, ...]]]


def no_errors_logged(records: Iterable[logging.LogRecord]) -> None:
    """Nothing logged an error: no unexpected exception, no failed handler, and no future
    whose exception nobody read (asyncio reports those when they are freed, hence the
    collection first). Pass ``caplog.records``."""
    gc.collect()
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]


class Mitm(MitmRelay):
    """The aio tests' MITM relay, plus raw injection (text that is not JSON, binary)."""

    async def inject_raw(self, data: str | bytes) -> None:
        """Send ``data`` as one websocket message to every client, as if from the relay."""
        for conn in list(self._downstream):
            with contextlib.suppress(ConnectionClosed):
                await conn.send(data)

    async def drop_clients(self) -> None:
        """Close every client's connection, as a network failure would."""
        for conn in list(self._downstream):
            await conn.close()


def event_json(event: frames.Event) -> dict[str, Any]:
    """An event as the JSON object the relay would push (for :meth:`Mitm.inject`)."""
    obj: dict[str, Any] = json.loads(event.to_json())
    return obj


def dump_tables(data_dir: Path, *, skip_spaces: Iterable[str] = ()) -> TableDump:
    """Every row of every table of the relay's database, sorted, read through a second
    connection (the file is in WAL mode, so this sees exactly what is committed).

    Rows of ``messages`` (and their ``message_ids``) in ``skip_spaces`` are left out: a
    bystander's traffic is allowed to change the database while a test checks that
    nothing else does.
    """
    skipped = set(skip_spaces)
    with contextlib.closing(sqlite3.connect(data_dir / DB_FILENAME)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        dump: TableDump = {}
        for table in sorted(tables):
            cursor = db.execute(f"SELECT * FROM {table}")
            columns = [c[0] for c in cursor.description]
            rows = cursor.fetchall()
            if table in ("messages", "message_ids"):
                at = columns.index("space_id")
                rows = [r for r in rows if r[at] not in skipped]
            dump[table] = sorted(rows, key=repr)
    return dump


def encodings_of(secret: bytes) -> set[bytes]:
    """``secret`` as it could appear in a file: raw, hex (both cases), and base64 in both
    alphabets at each of the three alignments it could have inside a longer encoding (the
    characters that depend only on the secret, so a match inside any larger blob counts)."""
    found = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for offset in range(3):
        padded = b"\0" * offset + secret
        start = (8 * offset + 5) // 6  # the first character free of the prefix's bits
        end = 8 * len(padded) // 6  # the last character made of the secret's bits only
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            stable = encode(padded)[start:end]
            if len(stable) >= 16:
                found.add(stable)
    return found


async def all_history(space: aio.AsyncSpace) -> list[SpaceMessageEvent]:
    """Every stored message this member can read, oldest first (all pages)."""
    messages: list[SpaceMessageEvent] = []
    before: int | None = None
    while True:
        page = await space.history(before=before, limit=frames.MAX_HISTORY_LIMIT)
        assert page.unreadable == 0, f"{page.unreadable} stored messages did not verify"
        messages[:0] = page.messages
        if page.next_cursor is None:
            return messages
        before = page.next_cursor


async def sign_in(url: str, app_key: str, username: str) -> aio.AsyncClient:
    """A signed-in async client with an in-memory keystore."""
    return await aio.connect(url, app_key=app_key, username=username, keystore=":memory:")


async def live_feed_checked(delivered: Inbox, stored: list[int], timeout: float = 30.0) -> int:
    """Wait until a receiver is delivered the last stored handle, then check that from the
    first message it was delivered it got every stored one, once, in order (what was
    stored before or while it joined is its history, not its live feed). The count."""
    last = stored[-1]
    await wait_until(lambda: bool(delivered.items) and delivered.items[-1].handle >= last, timeout)
    handles = [e.handle for e in delivered.items]
    assert handles == [h for h in stored if h >= handles[0]], "a gap or a duplicate"
    return len(handles)


class Chatter:
    """Two users of a public channel exchanging stored messages in the background: the
    "another client connected throughout" of the bad-input tests. :meth:`check` proves
    they were unaffected: every message sent was stored and delivered, once, in order.
    """

    def __init__(self, clients: list[aio.AsyncClient], sender: aio.AsyncSpace,
                 receiver: aio.AsyncSpace) -> None:  # fmt: skip
        self.clients = clients
        self.sender = sender
        self.receiver = receiver
        self.space_id = sender.id
        self.acked: list[int] = []
        self.received = Inbox()
        self.rejected = Inbox()
        receiver.on_message(self.received)
        receiver.on_rejected(self.rejected)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, url: str, app_key: str, interval: float = 0.02) -> Chatter:
        clients = [await sign_in(url, app_key, name) for name in ("chatter-a", "chatter-b")]
        sender = await clients[0].space.create_channel("lounge")
        receiver = await clients[1].space.join_channel("lounge")
        chatter = cls(clients, sender, receiver)
        chatter._task = asyncio.create_task(chatter._chat(interval))
        return chatter

    async def _chat(self, interval: float) -> None:
        while not self._stop.is_set():
            self.acked.append(await self.sender.send_message({"n": len(self.acked)}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def check(self, timeout: float = 30.0) -> int:
        """Stop chatting; assert every acknowledged message was delivered once, in order,
        and equals the stored history. Returns how many messages were exchanged."""
        self._stop.set()
        assert self._task is not None
        await self._task  # re-raises a failed send
        try:
            await wait_until(lambda: len(self.received.items) >= len(self.acked), timeout)
            delivered = [e.handle for e in self.received.items]
            stored = [e.handle for e in await all_history(self.receiver)]
            assert delivered == stored == self.acked
            assert [e.message.body["n"] for e in self.received.items] == list(
                range(len(self.acked))
            )
            assert not self.rejected.items
        finally:
            for client in self.clients:
                await client.close()
        return len(self.acked)


def forged_envelope(
    identity: IdentityKeys,
    key: bytes,
    state: SpaceState,
    body: Any,
    *,
    source: str,
    kind: str = "msg",
    subject: str = "default",
    epoch: int | None = None,
    seq: int | None = None,
    sid: str | None = None,
    rev: int = 0,
) -> dict[str, Any]:
    """An envelope (as JSON) for ``state``'s space sealed with ``key`` and signed by
    ``identity`` under the name ``source``, bound to ``state``'s head: what a malicious
    relay, or a member, could make. Its session is fresh unless ``sid`` is given."""
    envelope, _ = seal_envelope(
        identity, key, kind=kind, source=source, target=state.space_id,  # type: ignore[arg-type]
        subject=subject, epoch=state.epoch if epoch is None else epoch, content_type=None,
        body=body, head_seq=state.head_seq, head=state.head,
        seq=time.time_ns() // 1000 if seq is None else seq,
        sid=sid or new_session_id(), rev=rev,
    )  # fmt: skip
    return event_json(frames.EphemeralPushed(envelope))["envelope"]


def flip_b64(text: str) -> str:
    """A base64url field with one bit of its middle byte flipped."""
    from spacenb.protocol.encoding import b64d, b64e

    raw = bytearray(b64d(text))
    raw[len(raw) // 2] ^= 1
    return b64e(bytes(raw))


def altered(envelope: dict[str, Any], field: str, other_space: str = "") -> dict[str, Any]:
    """A copy of an envelope (JSON) with one routing, state-binding, sealed or signature
    field changed (``head_seq`` moves past the log's head; ``head`` names another hash)."""
    changed = dict(envelope)
    if field in ("iv", "ciphertext", "signature", "head"):
        changed[field] = flip_b64(changed[field])
    elif field in ("epoch", "head_seq"):
        changed[field] += 1
    elif field == "kind":
        changed["kind"] = "msg" if changed["kind"] == "eph" else "eph"
    elif field == "source":
        changed["source"] = "mallory"
    elif field == "target":
        changed["target"] = other_space
    else:
        changed[field] += "x"
    return changed
