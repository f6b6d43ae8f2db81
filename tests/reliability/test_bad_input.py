"""Bad input: fuzzed requests to the relay, fuzzed frames pushed to a client, raw garbage.

Every case is answered with an error frame (never ``server_error``), dropped, or closes
its connection cleanly; the relay keeps serving; two users chatting in another channel the
whole time (:class:`Chatter`) see every message once and in order; a refused request
leaves every table of the database exactly as it was.

The fuzzers start from a valid frame of every op (``frames.REQUESTS``; ``append`` once
per kind of state event) and every event (``frames.EVENTS``) and change one thing
(``fuzzing.mutations``). Events and envelopes in the bases are signed by the fuzzer and
bound to the real state-log head, so a mutation reaches the relay's deeper checks. They
run as an *outsider* (signed in, member of nothing, holding the vault's invite token:
nothing it sends may change anything) and as a *member* (a viewer of the target space:
it may change what a viewer may, but a refused request still changes nothing).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import spacenb.aio as aio
from spacenb.exceptions import AuthenticationError
from spacenb.protocol import crypto, frames
from spacenb.protocol.envelope import Envelope, new_session_id, seal_envelope
from spacenb.protocol.frames import EVENTS, MAX_FRAME_BYTES, REQUESTS
from spacenb.protocol.keyring import Keyring
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair
from spacenb.protocol.statelog import (
    SpaceState,
    key_commitment,
    link_keys_from_token,
    make_event,
    new_link_token,
)
from spacenb.protocol.wrap import wrap_group_key
from spacenb.server.app import RunningServer, start_server
from spacenb.sync.runner import Runner
from tests.server.rawclient import RawClient, user

from .conftest import Figures
from .fuzzing import MAX_INT, garbage_frames, is_request_id, mutations
from .helpers import (
    Chatter,
    Inbox,
    Mitm,
    dump_tables,
    event_json,
    sign_in,
    wait_until,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
KNOWN_CODES = {
    "bad_frame", "bad_key", "integrity", "auth_failed", "forbidden", "channel_exists",
    "not_found", "missing", "invite_invalid", "no_key", "stale_state", "too_large",
    "rate_limited", "quota_exceeded", "too_many_connections",
}  # fmt: skip  # every code of PROTOCOL.md's table but server_error and unsupported_version
# The client world is stateful (what one example injects stays in the receiver), so a
# failure is reported as it happened, not shrunk against a state that has moved on.
FUZZ_STATEFUL = settings(FUZZ, phases=[Phase.explicit, Phase.reuse, Phase.generate])
REQUEST_ID = 7


def random_key() -> bytes:
    return crypto.random_bytes(crypto.AES_KEY_SIZE)


async def test_lone_surrogates_are_bad_frames(relay: RunningServer) -> None:
    """JSON may escape a lone UTF-16 surrogate, which no UTF-8 text can hold: in a field
    value or a field name it is a ``bad_frame`` (it used to reach SQLite and fail as a
    ``server_error``, or be echoed in an error frame that could not be sent at all)."""
    client = await user(relay, "surrogates")
    cases = [
        ({"t": "req", "id": 1, "op": "space_info", "space_id": "spc.\udc80"}, "space_id"),
        ({"t": "req", "id": 2, "op": "user_keys", "usernames": ["\ud800"]}, "usernames[0]"),
        ({"t": "req", "id": 3, "op": "ping", "\ud800": 1}, "\\ud800"),
    ]
    for frame, where in cases:
        await client.send_text(json.dumps(frame))
        answer = await client.next_frame()
        assert isinstance(answer, frames.ErrorFrame)
        assert (answer.id, answer.code) == (frame["id"], "bad_frame")
        assert answer.message.startswith(where)
    assert await client.call(frames.Ping) == frames.Ok()
    await client.close()


# --------------------------------------------------------------------------- relay world


def request_bases(
    me: RawClient,
    *,
    state: SpaceState,
    key: bytes,
    owner: frames.UserEntry,
    handle: int,
    own_handle: int | None,
    token: str,
) -> dict[str, list[dict[str, Any]]]:
    """Valid frames of every op, as ``me`` would send them about ``state``'s space: sealed
    and wrapped with ``key`` (the real group key for a member, a random one for an
    outsider), events signed by ``me`` and envelopes bound to the head of ``state`` (the
    outsider is handed a copy of the log, as if it had leaked). ``append`` has a frame for
    every event kind, so mutations reach every rule of the state log; ``join`` has the
    caller's add through the link of ``token``."""
    space_id = state.space_id
    me.logs[space_id] = SpaceState.from_events(state.events)
    ring = Keyring(space_id, "static", {0: key})
    new_space = SpaceKeyPair.generate()
    myself = frames.UserEntry(me.me, me.keys.signing_key, me.keys.ecdh_key)
    auth_signed = frames.auth_signed_bytes(
        me.hello.nonce, "app", me.me, myself.signing_key, myself.ecdh_key
    )
    created = Keyring(new_space.space_id, "static", {0: key})
    genesis = me.genesis(new_space, created, name=f"new-{me.me}")
    link_keys = link_keys_from_token(token)
    link_id, read_proof = me.link_proof(space_id, link_keys)
    rotated = crypto.random_bytes(32)
    events = {
        "invite": {"member": "newcomer", "role": "viewer", "signing_key": None,
                   "ecdh_key": None},
        "role": {"member": owner.username, "role": "editor"},
        "remove": {"member": owner.username},
        "leave": {"member": me.me},
        "epoch": {"epoch": 1, "recipients": sorted({owner.username, me.me}),
                  "key_commitment": key_commitment(space_id, 1, rotated)},
        "link": me.link_body(new_link_token()),
        "unlink": {"link_id": link_id},
        "delete": {"handle": handle, "author": owner.username},
    }  # fmt: skip
    rid = REQUEST_ID
    appends = [
        frames.Append(
            rid,
            space_id,
            me.make(space_id, kind, body),
            tuple(me.wrap(ring, 1, r, key=rotated) for r in (owner, myself))
            if kind == "epoch"
            else (),
        )
        for kind, body in events.items()
    ]
    appends.append(frames.Append(rid, space_id, me.add_event(state, token=token), ()))
    appends.append(frames.Append(rid, space_id, genesis, ()))
    requests: list[frames.Request[Any]] = [
        frames.Auth(
            rid, "app", me.me, myself.signing_key, myself.ecdh_key, me.keys.sign(auth_signed)
        ),
        frames.Ping(rid),
        frames.CreateSpace(rid, genesis, (me.wrap(created, 0, myself),)),
        frames.GetSpaceInfo(rid, space_id),
        frames.Resolve(rid, "vault"),
        frames.ListChannels(rid),
        frames.GetStateLog(rid, space_id, 0, 100, None, None),
        frames.GetStateLog(rid, space_id, 1, 10, link_id, read_proof),
        frames.Join(rid, space_id, None),
        frames.Join(rid, space_id, me.add_event(state, token=token)),
        frames.Admit(rid, space_id, owner.username, (me.wrap(ring, 0, owner),)),
        *appends,
        frames.FetchKeys(rid, space_id),
        frames.AddKeys(rid, space_id, (me.wrap(ring, 0, owner),)),
        frames.Subscribe(rid, space_id),
        frames.UnsubscribeRequest(rid, space_id),
        frames.Send(rid, me.seal(ring, "fuzz")),
        frames.Edit(rid, handle, me.seal(ring, "fuzz edit")),
        frames.SendEphemeral(rid, me.seal(ring, "fuzz signal", kind="eph")),
        frames.HistoryRequest(rid, space_id, None, 10),
        frames.UserKeys(rid, (owner.username, me.me)),
        frames.ShardTicket(rid, space_id),
    ]
    if own_handle is not None:
        requests.append(frames.Edit(rid, own_handle, me.seal(ring, "my own edit")))
    bases: dict[str, list[dict[str, Any]]] = {}
    for request in requests:
        bases.setdefault(request.OP, []).append(json.loads(request.to_json()))
    assert set(bases) == set(REQUESTS), "a request op has no base frame: add it here"
    for frame in (f for group in bases.values() for f in group):
        frames.parse_client_frame(json.dumps(frame))  # every base is valid
    return bases


@dataclass
class RelayWorld:
    """A relay, a private channel ``vault`` owned by ``owner`` (with a message and an
    invite link), the two fuzzers, and the chatting bystanders. ``member`` is a viewer of
    the vault (invited) with a message of its own; ``outsider`` is a member of nothing
    but holds the link's token (it may read the log through it, never change anything)."""

    server: RunningServer
    chatter: Chatter
    owner: aio.AsyncClient
    fuzzers: dict[str, RawClient]
    bases: dict[str, dict[str, list[dict[str, Any]]]]
    snapshot: Any = None

    @classmethod
    async def start(cls, data_dir: Path) -> RelayWorld:
        server = await start_server(data_dir, shards=2, shards_needed=1)
        chatter = await Chatter.start(server.url, server.app_key)
        owner = await sign_in(server.url, server.app_key, "owner")
        vault = await owner.space.create_channel("vault", private=True)
        handle = await vault.send_message("the owner's message")
        link = await owner.space.create_invite_link(vault.id)
        assert link.token is not None
        await vault.invite("member")
        member = await user(server, "member")
        await member.join(vault.id)
        keys = await member.event("keys", space_id=vault.id)
        group_key = (await member.keyring(vault.id, keys.keys)).key(0)
        own = await member.send(Keyring(vault.id, "static", {0: group_key}), "the member's")
        outsider = await user(server, "outsider")
        state = await member.sync(vault.id)
        common = {"state": state, "owner": await member.user("owner"), "handle": handle,
                  "token": link.token}  # fmt: skip
        bases = {
            "member": request_bases(member, key=group_key, own_handle=own, **common),
            "outsider": request_bases(outsider, key=random_key(), own_handle=None, **common),
        }
        world = cls(server, chatter, owner, {"member": member, "outsider": outsider}, bases)
        world.snapshot = world.dump()
        return world

    def dump(self) -> Any:
        return dump_tables(self.server.data_dir, skip_spaces={self.chatter.space_id})

    async def try_request(self, actor: str, frame: dict[str, Any]) -> str:
        """Send one frame as ``actor``; check the answer and the database; the outcome."""
        client = self.fuzzers[actor]
        client.events.clear()
        await client.send_text(json.dumps(frame))
        answer = await client.next_frame(timeout=15)
        rid = frame.get("id")
        assert answer.id == (rid if is_request_id(rid) else None), answer
        after = self.dump()
        if isinstance(answer, frames.ErrorFrame):
            assert answer.code in KNOWN_CODES, answer
            assert after == self.snapshot, f"refused ({answer.code}) but the database changed"
            return answer.code
        assert actor == "member" or after == self.snapshot, f"{frame.get('op')} changed data"
        self.snapshot = after
        return "ok"

    async def stop(self) -> None:
        for client in self.fuzzers.values():
            await client.close()
        await self.owner.close()
        await self.server.stop()


@pytest.mark.parametrize("actor", ["outsider", "member"])
def test_fuzzed_requests_are_refused_and_change_nothing(
    actor: str, loop_thread: Runner, tmp_path: Path, figures: Figures
) -> None:
    world = loop_thread.run(RelayWorld.start(tmp_path / "relay"), timeout=60)
    try:

        @FUZZ
        @given(data=st.data())
        def example(data: st.DataObject) -> None:
            op = data.draw(st.sampled_from(sorted(REQUESTS)), label="op")
            base = data.draw(st.sampled_from(world.bases[actor][op]), label="base")
            kind, _where, frame = data.draw(mutations(REQUESTS[op], base))
            outcome = loop_thread.run(world.try_request(actor, frame), timeout=30)
            figures.add(f"bad_input.requests.{actor}")
            figures.add(f"bad_input.requests.answer.{outcome}")
            figures.add(f"bad_input.requests.mutation.{kind}")

        example()
        figures.add("bad_input.chatter_messages", loop_thread.run(world.chatter.check(), 60))
    finally:
        loop_thread.run(world.stop(), timeout=30)


# --------------------------------------------------------------------------- client world


@dataclass
class ClientWorld:
    """``sender`` and ``receiver`` share a static channel; the receiver's relay is a MITM
    that injects fuzzed frames between genuine ones. ``bases`` holds valid frames of every
    event: forged by ``mallory`` (registered, not a member) or genuine ones replayed.
    Nothing changes the channel's state log meanwhile, so the receiver's verified log must
    stay exactly as it was."""

    server: RunningServer
    mitm: Mitm
    clients: list[aio.AsyncClient]
    sender: aio.AsyncSpace
    receiver: aio.AsyncSpace
    delivered: Inbox
    others: Inbox  # edits and signals: nothing the sender did, so nothing may arrive
    bases: dict[str, list[dict[str, Any]]]
    sent: dict[int, Any]
    log: tuple[int, bytes, set[str]]  # the receiver's verified log: head and members

    @classmethod
    async def start(cls, data_dir: Path) -> ClientWorld:
        server = await start_server(data_dir, shards=0)
        mitm = Mitm(server.url)
        await mitm.start()
        routes = {"sender": server.url, "receiver": mitm.url, "mallory": server.url}
        clients = [await sign_in(url, server.app_key, name) for name, url in routes.items()]
        sender = await clients[0].space.create_channel("plaza")
        receiver = await clients[1].space.join_channel("plaza")
        delivered, others, signals = Inbox(), Inbox(), Inbox()
        receiver.on_message(delivered)
        receiver.on_message_edited(others)
        receiver.on_ephemeral(signals)
        first = await sender.send_message("genuine")
        await sender.send_ephemeral("typing", True)
        await delivered.wait(1)
        await signals.wait(1)
        genuine_msg = next(f for f in mitm.seen if f.get("ev") == "message")
        genuine_eph = next(f for f in mitm.seen if f.get("ev") == "ephemeral")
        receiver.on_ephemeral(others)
        mallory = clients[2].identity
        state = receiver.core.require_state()
        world = cls(
            server, mitm, clients, sender, receiver, delivered, others,
            event_bases(SpaceState.from_events(receiver.core.require_state().events), mallory,
                        clients[1].identity, first, genuine_msg, genuine_eph),
            {first: "genuine"}, (state.head_seq, state.head, set(state.members)),
        )  # fmt: skip
        return world

    async def try_event(self, frame: dict[str, Any] | str | bytes, n: int) -> None:
        """Inject one frame, then check the receiver still gets a genuine message (and
        everything it delivered so far was genuine) and its key stayed the same."""
        keyring = self.receiver.keyring
        assert keyring is not None
        key = keyring.key(0)
        if isinstance(frame, dict):
            await self.mitm.inject(frame)
        else:
            await self.mitm.inject_raw(frame)
        handle = await self.sender.send_message({"sentinel": n})
        self.sent[handle] = {"sentinel": n}
        await wait_until(lambda: handle in {e.handle for e in self.delivered.items}, 10)
        got = [(e.handle, e.sender, e.message.body) for e in self.delivered.items]
        assert got == [(h, "sender", body) for h, body in self.sent.items()]
        assert not self.others.items, self.others.items
        assert keyring.epochs == [0] and keyring.key(0) == key
        state = self.receiver.core.require_state()  # no forged event entered the log
        assert (state.head_seq, state.head, set(state.members)) == self.log
        assert self.receiver.client.connection.is_open
        assert self.receiver.client.connection.reconnects == 0

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        await self.mitm.stop()
        await self.server.stop()


def event_bases(
    state: SpaceState,
    mallory: IdentityKeys,
    receiver: IdentityKeys,
    handle: int,
    genuine_msg: dict[str, Any],
    genuine_eph: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    """Valid frames of every event type, each a lie: forged by mallory (bound to the real
    log head, so only the signer's membership, signature or seal gives it away), a state
    event mallory signed, or genuine frames replayed."""
    space_id = state.space_id

    def forged(kind: str) -> Envelope:
        envelope, _ = seal_envelope(
            mallory, random_key(), kind=kind, source="mallory", target=space_id,  # type: ignore[arg-type]
            subject="default", epoch=0, content_type=None, body="forged",
            head_seq=state.head_seq, head=state.head, seq=1, sid=new_session_id(),
        )  # fmt: skip
        return envelope

    def signed_by_mallory(kind: str, body: dict[str, Any], actor: str = "mallory") -> Any:
        return make_event(
            mallory, space_id=space_id, seq=state.head_seq + 1, prev=state.head, kind=kind,
            actor=actor, at_us=state.events[-1].at_us + 1, body=body,
        )  # fmt: skip

    bogus_key = wrap_group_key(
        random_key(), space_id=space_id, epoch=0, recipient="receiver",
        recipient_ecdh=receiver.public("receiver").ecdh_public_key(), wrapper="mallory",
        wrapper_identity=mallory,
    )  # fmt: skip
    events: list[frames.Event] = [
        frames.Hello("spacenb", frames.PROTOCOL_VERSION, crypto.random_bytes(32), "keeper"),
        frames.MessagePushed(handle + 10**9, forged("msg")),
        frames.MessageEdited(handle, forged("msg")),
        frames.EphemeralPushed(forged("eph")),
        frames.Presence(space_id, ("mallory",), ("sender", "receiver")),
        frames.JoinRequested(space_id, "mallory", mallory.signing_key, mallory.ecdh_key, "viewer"),
        frames.KeysPushed(space_id, (bogus_key,)),
        frames.StatePushed(space_id, signed_by_mallory("delete", {"handle": handle,
                                                                  "author": "sender"})),
    ]  # fmt: skip
    bases: dict[str, list[dict[str, Any]]] = {e.EV: [event_json(e)] for e in events}
    assert set(bases) == set(EVENTS), "an event has no base frame: add it here"
    lies = [
        # mallory in the owner's name, and an add of mallory that no link or invitation allows
        signed_by_mallory("remove", {"member": "receiver"}, actor="sender"),
        signed_by_mallory("add", {"member": "mallory", "signing_key": mallory.signing_key,
                                  "ecdh_key": mallory.ecdh_key, "role": "editor",
                                  "via": "invite", "link_id": None, "proof": None}),
        state.events[-1],  # a genuine event again: already verified, nothing new
    ]  # fmt: skip
    bases["state"] += [event_json(frames.StatePushed(space_id, e)) for e in lies]
    replayed_msg = {**genuine_msg, "handle": genuine_msg["handle"] + 1}
    bases["message"].append(replayed_msg)
    bases["edited"].append({**genuine_msg, "ev": "edited"})  # a duplicate of the original
    bases["ephemeral"].append(genuine_eph)
    bases["ephemeral"].append({"t": "evt", "ev": "ephemeral", "envelope": genuine_msg["envelope"]})
    bases["message"].append({**replayed_msg, "envelope": genuine_eph["envelope"]})
    return bases


answers = st.fixed_dictionaries(
    {"t": st.sampled_from(["res", "err"]), "id": st.integers(10**6, MAX_INT)},
    optional={"result": st.just({}), "code": st.just("forbidden"), "message": st.text()},
)


@st.composite
def pushed_frames(draw: st.DrawFn, bases: dict[str, list[dict[str, Any]]]) -> tuple[str, Any]:
    """A mutated event, a genuine-looking lie unchanged, an answer to no request, or junk."""
    choice = draw(st.sampled_from(["event", "event", "event", "lie", "answer", "garbage"]))
    if choice == "garbage":
        return "garbage", draw(garbage_frames)
    if choice == "answer":
        return "answer", draw(answers)
    ev = draw(st.sampled_from(sorted(bases)))
    base = draw(st.sampled_from(bases[ev]))
    if choice == "lie":
        return f"lie.{ev}", base
    kind, _where, frame = draw(mutations(EVENTS[ev], base))
    return f"{kind}.{ev}", frame


def test_fuzzed_pushed_frames_deliver_nothing_bogus(
    loop_thread: Runner, tmp_path: Path, figures: Figures
) -> None:
    world = loop_thread.run(ClientWorld.start(tmp_path / "relay"), timeout=60)
    counter = iter(range(10**6))
    try:

        @FUZZ_STATEFUL
        @given(pushed=pushed_frames(world.bases))
        def example(pushed: tuple[str, Any]) -> None:
            label, frame = pushed
            loop_thread.run(world.try_event(frame, next(counter)), timeout=30)
            figures.add("bad_input.pushed_frames")
            figures.add(f"bad_input.pushed.{label.split('.')[0]}")

        example()
    finally:
        loop_thread.run(world.stop(), timeout=30)


# --------------------------------------------------------------------------- raw garbage


async def expect_error(client: RawClient, data: str | bytes, code: str = "bad_frame") -> None:
    await client.send_text(data)
    answer = await client.next_frame(timeout=15)
    assert isinstance(answer, frames.ErrorFrame), (data[:80], answer)
    assert answer.code == code, (data[:80], answer)


def test_raw_garbage_on_live_connections(
    loop_thread: Runner, tmp_path: Path, figures: Figures
) -> None:
    """Non-JSON, binary, deeply nested, wrong shapes, unknown ops, oversize frames and every
    request before authentication: each refused, nothing stored, the relay serving."""

    async def start() -> tuple[RunningServer, Chatter, dict[str, RawClient], Any]:
        server = await start_server(tmp_path / "relay", shards=0)
        chatter = await Chatter.start(server.url, server.app_key)
        connections = {"anonymous": await RawClient.open(server.url),
                       "signed-in": await user(server, "garbler")}  # fmt: skip
        return server, chatter, connections, dump(server, chatter)

    def dump(server: RunningServer, chatter: Chatter) -> Any:
        return dump_tables(server.data_dir, skip_spaces={chatter.space_id})

    server, chatter, connections, before = loop_thread.run(start(), timeout=60)
    try:

        @FUZZ
        @given(who=st.sampled_from(sorted(connections)), data=garbage_frames)
        def example(who: str, data: str | bytes) -> None:
            loop_thread.run(expect_error(connections[who], data), timeout=30)
            figures.add("bad_input.garbage_frames")

        example()

        async def fixed_cases() -> None:
            anonymous, signed_in = connections["anonymous"], connections["signed-in"]
            bases = request_bases(
                signed_in, state=await signed_in.sync(chatter.space_id), key=random_key(),
                owner=await signed_in.user("chatter-a"), handle=1, own_handle=None,
                token=new_link_token(),
            )  # fmt: skip
            for op in sorted(set(REQUESTS) - {"auth", "ping"}):
                for base in bases[op]:
                    await expect_error(anonymous, json.dumps(base), "forbidden")
                    figures.add("bad_input.before_auth")
            for client in connections.values():
                await expect_error(client, '{"t": "req", "id": 1, "op": "fly"}')  # unknown op
            pad = "x" * (MAX_FRAME_BYTES + 1000)
            for client in connections.values():
                await expect_error(client, '{"t":"req","id":1,"op":"ping","p":"' + pad + '"}',
                                   "too_large")  # fmt: skip
                assert await client.call(frames.Ping) == frames.Ok()
            async with ws_connect(server.url, max_size=None) as ws:  # over websockets' limit
                await ws.recv()
                await ws.send("x" * (3 * MAX_FRAME_BYTES))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 15)
                assert ws.close_code == 1009
            bad_key = await RawClient.open(server.url)  # a wrong app key: refused and closed
            with pytest.raises(AuthenticationError):
                await bad_key.auth("not-the-app-key", "intruder")
            with pytest.raises(ConnectionClosed):
                await bad_key.call(frames.Ping)
            figures.add("bad_input.oversize_and_auth_cases", 4)
            for client in connections.values():
                assert await client.call(frames.Ping) == frames.Ok()
                await client.close()

        loop_thread.run(fixed_cases(), timeout=60)
        assert dump(server, chatter) == before
        figures.add("bad_input.chatter_messages", loop_thread.run(chatter.check(), 60))
    finally:
        loop_thread.run(server.stop(), timeout=30)


def test_known_codes_are_the_protocol_table() -> None:
    """KNOWN_CODES is PROTOCOL.md's error table but the two no request should get."""
    text = (Path(__file__).resolve().parents[2] / "PROTOCOL.md").read_text()
    table = text[text.index("| `bad_frame` |") :]
    table = table[: table.index("\n\n")]
    codes = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    assert codes - {"server_error", "unsupported_version"} == KNOWN_CODES
