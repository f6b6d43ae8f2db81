"""After a dropped connection or a relay restart, nothing is missed or delivered twice."""

from __future__ import annotations

import spacenb.aio as aio
from spacenb.server.app import start_server
from tests.faults import drop_connection

from .conftest import Inbox, wait_until


async def test_dropped_socket_reconnects_and_catches_up(connect):
    alice = await connect("alice")
    bob = await connect("bob")
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    inbox = Inbox()
    b.on_message(inbox)
    await a.send_message(0)
    await inbox.wait(1)
    await drop_connection(bob.connection)
    for i in range(1, 6):
        await a.send_message(i)
    await inbox.wait(6)
    await a.send_message(6)
    await inbox.wait(7)
    assert [e.message.body for e in inbox.items] == list(range(7))
    assert bob.connection.reconnects >= 1
    await wait_until(lambda: "bob" in a.peers())


async def test_relay_restart_mid_conversation(tmp_path):
    data = tmp_path / "relay"
    srv = await start_server(data_dir=data, shards=0)
    port = int(srv.url.rsplit(":", 1)[1])
    app_key = srv.app_key
    alice = await aio.connect(srv.url, app_key=app_key, username="alice", keystore=tmp_path / "ks")
    bob = await aio.connect(srv.url, app_key=app_key, username="bob", keystore=tmp_path / "ks")
    a = await alice.space.create_channel("general")
    b = await bob.space.join_channel("general")
    inbox = Inbox()
    b.on_message(inbox)
    for i in range(3):
        await a.send_message(i)
    await inbox.wait(3)
    await srv.stop()
    srv = await start_server(data_dir=data, port=port, shards=0)
    try:
        assert srv.app_key == app_key
        await wait_until(lambda: alice.connection.is_open and bob.connection.is_open, 20)
        for i in range(3, 8):
            await a.send_message(i)
        await inbox.wait(8)
        await wait_until(lambda: len(inbox.items) >= 8)
        assert [e.message.body for e in inbox.items] == list(range(8))
        page = await b.history(limit=100)
        assert [m.message.body for m in page.messages] == list(range(8))
    finally:
        await alice.close()
        await bob.close()
        await srv.stop()
