"""The blocking facade against a real relay on 127.0.0.1, from every kind of caller."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pandas as pd
import pytest

import spacenb
from spacenb.sync.dataframes import HISTORY_COLUMNS, INVITE_LINK_COLUMNS, schema_dtypes
from spacenb.sync.testing import wait_until
from tests.facade import run_script

T = TypeVar("T")
MakeClient = Callable[[str], spacenb.Client]


def plain(fn: Callable[[], T]) -> T:
    return fn()


def in_running_loop(fn: Callable[[], T]) -> T:
    """As in a Jupyter cell: the calling thread's own event loop is running."""

    async def cell() -> T:
        asyncio.get_running_loop()
        return fn()

    return asyncio.run(cell())


def in_worker_thread(fn: Callable[[], T]) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


CONTEXTS = [plain, in_running_loop, in_worker_thread]


def _channel(make_client: MakeClient, name: str) -> tuple[spacenb.Space, spacenb.Space]:
    """alice creates channel ``name``; bob joins it. Returns (alice's, bob's) space."""
    alice, bob = make_client("alice"), make_client("bob")
    mine = alice.space.create_channel(f"{name}-{alice.username}")
    theirs = bob.space.join_channel(mine.name)
    return mine, theirs


@pytest.mark.parametrize("context", CONTEXTS, ids=lambda f: f.__name__)
def test_messages_history_and_frames(context: Callable[..., Any], make_client: MakeClient) -> None:
    def scenario() -> None:
        mine, theirs = _channel(make_client, "round-trip")
        inbox: list[spacenb.SpaceMessageEvent] = []
        theirs.on_message(inbox.append)
        handle = mine.send_message({"text": "hello"}, content_type="application/json")
        assert isinstance(handle, int)
        wait_until(lambda: inbox, what="bob receives alice's message")
        assert inbox[0].handle == handle and inbox[0].message.body == {"text": "hello"}

        df = theirs.history()
        assert list(df.columns) == list(HISTORY_COLUMNS)
        assert df.dtypes.to_dict() == schema_dtypes(HISTORY_COLUMNS)
        assert df["handle"].tolist() == [handle]
        assert df["sender"].tolist() == [mine.client.username]
        assert df["body"].tolist() == [{"text": "hello"}]
        assert df["sent_at"].iloc[0] == pd.Timestamp(handle, unit="us", tz="UTC")
        assert df.attrs["next_cursor"] is None

        channels = mine.client.space.list_channels()
        assert mine.name in channels["name"].tolist()
        assert mine.client.space.resolve_channel(mine.name) == mine.id
        members = mine.client.space.members(mine.id)
        assert {mine.client.username, theirs.client.username} <= set(members["member_id"])

    context(scenario)


@pytest.mark.parametrize("context", CONTEXTS, ids=lambda f: f.__name__)
def test_errors_are_raised_as_is(context: Callable[..., Any], make_client: MakeClient) -> None:
    alice = make_client("alice")

    def scenario() -> None:
        alice.space.create_channel(f"dup-{alice.username}")
        with pytest.raises(spacenb.ChannelExistsError):
            alice.space.create_channel(f"dup-{alice.username}")
        with pytest.raises(spacenb.ChannelNotFoundError):
            alice.space.join_channel(f"missing-{alice.username}")

    context(scenario)


def test_a_slow_call_times_out_and_the_client_stays_usable(make_client: MakeClient) -> None:
    alice, bob = make_client("alice"), make_client("bob")
    gated = alice.space.create_channel(f"gated-{alice.username}", auto_admit=False)
    bob.timeout = 0.5  # nobody admits bob: his join would wait its full 15 s
    with pytest.raises(spacenb.SpacenbTimeoutError) as info:
        bob.space.join_channel(gated.name)
    assert isinstance(info.value, TimeoutError)
    bob.timeout = 30.0
    assert isinstance(bob.space.list_channels(), pd.DataFrame)


def test_empty_results_are_empty_frames_with_dtypes(make_client: MakeClient) -> None:
    alice = make_client("alice")
    space = alice.space.create_channel(f"empty-{alice.username}")
    history = space.history()
    assert history.empty
    assert history.dtypes.to_dict() == schema_dtypes(HISTORY_COLUMNS)
    assert history.attrs["next_cursor"] is None
    links = alice.space.list_invite_links(space.id)
    assert links.empty
    assert links.dtypes.to_dict() == schema_dtypes(INVITE_LINK_COLUMNS)


def test_history_without_a_content_type_has_none_not_nan(make_client: MakeClient) -> None:
    mine, _ = _channel(make_client, "types")
    mine.send_message("plain")
    mine.send_message({"a": 1}, content_type="application/json")
    assert mine.history()["content_type"].tolist() == [None, "application/json"]


def test_a_server_closes_like_a_client() -> None:
    server = spacenb.serve(shards=0)
    client = spacenb.connect(server.url, app_key=server.app_key, username="closer",
                             keystore=":memory:", timeout=20)  # fmt: skip
    client.close()
    server.close()  # the same as stop()
    with pytest.raises(spacenb.SpacenbError):
        spacenb.connect(server.url, app_key=server.app_key, username="late",
                        keystore=":memory:", timeout=5)  # fmt: skip
    server.close()  # idempotent, like stop()


def test_history_pages_with_the_cursor(make_client: MakeClient) -> None:
    mine, _ = _channel(make_client, "pages")
    handles = [mine.send_message(f"m{i}") for i in range(5)]
    newest = mine.history(limit=3)
    assert newest["handle"].tolist() == handles[2:]
    older = mine.history(before=newest.attrs["next_cursor"], limit=3)
    assert older["handle"].tolist() == handles[:2]
    assert older.attrs["next_cursor"] is None


def test_handlers_run_in_order_on_the_callback_thread(make_client: MakeClient) -> None:
    mine, theirs = _channel(make_client, "order")
    seen: list[tuple[str, str]] = []
    theirs.on_message(lambda e: seen.append((e.message.body, threading.current_thread().name)))
    bodies = [f"n{i}" for i in range(20)]
    for body in bodies:
        mine.send_message(body)
    wait_until(lambda: len(seen) == 20, what="20 messages")
    assert [body for body, _ in seen] == bodies
    assert {name for _, name in seen} == {"spacenb-callbacks"}


def test_a_raising_handler_is_reported_not_fatal(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    mine, theirs = _channel(make_client, "raising")
    seen: list[str] = []

    def fragile(event: spacenb.SpaceMessageEvent) -> None:
        if event.message.body == "boom":
            raise RuntimeError("handler bug")
        seen.append(event.message.body)

    theirs.on_message(fragile)
    with caplog.at_level(logging.ERROR, logger="spacenb"):
        mine.send_message("boom")
        mine.send_message("after")
        wait_until(lambda: seen == ["after"], what="delivery after a raising handler")
    assert any(r.exc_info and "handler bug" in str(r.exc_info[1]) for r in caplog.records)


def test_callbacks_fire_while_the_caller_waits_and_may_block(make_client: MakeClient) -> None:
    mine, theirs = _channel(make_client, "idle")
    replied = threading.Event()

    def echo(event: spacenb.SpaceMessageEvent) -> None:
        if event.sender != theirs.client.username:
            theirs.send_message(f"re: {event.message.body}")  # a blocking call in a handler

    def done(event: spacenb.SpaceMessageEvent) -> None:
        if event.sender == theirs.client.username:
            replied.set()

    theirs.on_message(echo)
    mine.on_message(done)
    mine.send_message("ping")
    assert replied.wait(10), "the handler did not run while this thread was idle"
    assert mine.history()["body"].tolist() == ["ping", "re: ping"]


def test_unsubscribe_and_off(make_client: MakeClient) -> None:
    mine, theirs = _channel(make_client, "off")
    a: list[Any] = []
    b: list[Any] = []
    unsubscribe = theirs.on_message(a.append)
    theirs.on("message", b.append)
    mine.send_message("one")
    wait_until(lambda: a and b, what="both handlers")
    unsubscribe()
    theirs.off("message", b.append)
    marker: list[Any] = []
    theirs.on_message(marker.append)
    mine.send_message("two")
    wait_until(lambda: marker, what="the remaining handler")
    assert len(a) == 1 and len(b) == 1


def test_async_handlers_run_on_the_loop_and_must_not_block(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    mine, theirs = _channel(make_client, "async-handler")
    threads: list[str] = []

    async def handler(event: spacenb.SpaceMessageEvent) -> None:
        threads.append(threading.current_thread().name)
        theirs.send_message("from the loop")  # wrong: must await theirs.aio.send_message

    theirs.on_message(handler)
    with caplog.at_level(logging.ERROR, logger="spacenb"):
        mine.send_message("hi")
        wait_until(
            lambda: any(isinstance(r.exc_info and r.exc_info[1], spacenb.LoopThreadError)
                        for r in caplog.records),
            what="LoopThreadError reported",
        )  # fmt: skip
    assert threads == ["spacenb-loop"]


def test_invite_link_round_trip_and_repr(make_client: MakeClient) -> None:
    alice, carol = make_client("alice"), make_client("carol")
    space = alice.space.create_channel(f"invite-{alice.username}", private=True)
    link = alice.space.create_invite_link(space.id, max_uses=1, role="editor")
    assert isinstance(link, spacenb.aio.InviteLink) and link.token
    assert link.token not in repr(link) and link.token not in link._repr_html_()
    joined = carol.space.join_by_invite(space.id, link.token)
    assert joined.id == space.id
    links = alice.space.list_invite_links(space.id)
    assert links["uses"].tolist() == [1]
    alice.space.revoke_invite_link(space.id, link.token)
    assert alice.space.list_invite_links(space.id)["revoked"].tolist() == [True]


def test_reprs_escape_everything(
    make_client: MakeClient, local_server: spacenb.LocalServer
) -> None:
    alice = make_client("alice")
    space = alice.space.create_channel(f"x<img src=x onerror=alert(1)>-{alice.username}")
    for obj in (alice, space, local_server):
        html = obj._repr_html_()
        assert "<img" not in html and "onerror=alert(1)>" not in html
        assert type(obj).__name__ in repr(obj)
    assert "&lt;img src=x onerror=alert(1)&gt;" in space._repr_html_()
    assert local_server.app_key not in repr(local_server)


def test_under_nest_asyncio_in_a_fresh_process() -> None:
    pytest.importorskip("nest_asyncio")
    code = """
        import asyncio, nest_asyncio
        nest_asyncio.apply()
        import spacenb

        async def cell():
            with spacenb.serve() as srv:
                alice = spacenb.connect(srv.url, app_key=srv.app_key, username="alice",
                                        keystore=":memory:")
                space = alice.space.create_channel("nested")
                space.send_message("hi")
                print(space.history()["body"].tolist())
                alice.close()

        asyncio.run(cell())
    """
    result = run_script(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['hi']"


def test_files_round_trip_with_progress_and_a_safe_repr(make_client: MakeClient) -> None:
    mine, theirs = _channel(make_client, "files")
    data = bytes(range(256)) * 1000
    manifest, stat = mine.put_file(
        data, {"note": "<b>x</b>"}, name="<i>data</i>.bin", progress=True
    )
    assert isinstance(manifest, spacenb.FileManifest) and stat.size == len(data)
    shown = repr(manifest) + manifest._repr_html_()
    assert manifest.key.hex() not in shown and "250.0 KiB" in shown
    assert "<b>" not in manifest._repr_html_() and "<i>" not in manifest._repr_html_()
    calls: list[tuple[int, int]] = []
    got, _ = theirs.get_file(
        manifest.to_dict(), progress=lambda done, total: calls.append((done, total))
    )
    assert got == data
    assert calls[0] == (0, len(data)) and calls[-1] == (len(data), len(data))


def test_exit_without_closing_anything_is_clean_and_quick() -> None:
    result = run_script(
        """
        import spacenb
        srv = spacenb.serve()
        alice = spacenb.connect(srv.url, app_key=srv.app_key, username="alice",
                                keystore=":memory:")
        space = alice.space.create_channel("left-open")
        space.on_message(lambda event: None)
        chat = space.widget()
        space.send_message("bye")
        print("exiting")
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["exiting"]
    assert "Traceback" not in result.stderr and "Task was destroyed" not in result.stderr


def test_state_log_and_trusted_identities_are_dataframes(make_client: MakeClient) -> None:
    from spacenb.sync.dataframes import STATE_LOG_COLUMNS, TRUSTED_IDENTITY_COLUMNS

    alice, bob = make_client("alice"), make_client("bob")
    room = alice.space.create_channel(f"log-{alice.username}", history_policy="rotate")
    bob.space.join_channel(room.name)
    alice.space.set_member_role(room.id, bob.username, "editor")
    epoch = room.rotate()
    assert room.checkpoint() == 4
    log = room.state_log()
    assert dict(log.dtypes) == schema_dtypes(STATE_LOG_COLUMNS)
    assert list(log["kind"]) == ["genesis", "add", "role", "epoch", "checkpoint"]
    assert list(log["seq"]) == [0, 1, 2, 3, 4]
    assert list(log["actor"]) == [alice.username, bob.username, alice.username, alice.username,
                                  alice.username]  # fmt: skip
    assert log["member"].tolist()[1:3] == [bob.username, bob.username]
    assert log["epoch"].tolist()[0] == 0 and log["epoch"].tolist()[3] == epoch
    assert pd.isna(log["epoch"].tolist()[1]) and pd.isna(log["epoch"].tolist()[4])
    assert log["hash"].str.fullmatch("[0-9a-f]{64}").all()

    pins = alice.trusted_identities()
    assert dict(pins.dtypes) == schema_dtypes(TRUSTED_IDENTITY_COLUMNS)
    row = pins.set_index("username").loc[bob.username]
    assert row["fingerprint"] == bob.fingerprint and not row["verified"]
    alice.verify_identity(bob.username, bob.fingerprint)
    assert bool(alice.trusted_identities().set_index("username").loc[bob.username, "verified"])
    assert alice.fingerprint_of(bob.username) == bob.fingerprint


def test_create_channel_exist_ok_joins_the_existing_channel(make_client: MakeClient) -> None:
    alice, bob = make_client("alice"), make_client("bob")
    first = alice.space.create_channel(f"rerun-{alice.username}")
    with pytest.raises(spacenb.ChannelExistsError):
        bob.space.create_channel(first.name)
    again = bob.space.create_channel(first.name, exist_ok=True)
    assert again.id == first.id and again.keyring is not None
    assert alice.space.create_channel(first.name, exist_ok=True).id == first.id
