"""Invite links: expired (a relay on a hand-driven clock), used up, revoked, for another
space, guessed; and a one-use link raced by twenty clients admits exactly one.

In protocol v2 the relay never sees a token: the owner's signed ``link`` event records the
link's public key, and a redeemer proves it holds the token by signing with the private
key the token stands for, first to read the private space's log (``state_log`` with a
link proof), then in its own ``add`` event (a proof bound to it and to the head it
extends). Each refusal is checked on both paths: the client's ordinary one (read the log
as a link holder, then join) and a stronger attacker's who already has the log (a leaked
copy) and sends its ``add`` straight away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import string

from spacenb.clock import Clock, FixedClock
from spacenb.exceptions import InviteError, SpacenbError
from spacenb.protocol import crypto, frames
from spacenb.protocol.encoding import b64e
from spacenb.protocol.keys import LinkKeyPair
from spacenb.protocol.statelog import (
    SpaceState,
    link_id_of_key,
    link_keys_from_token,
    link_proof_bytes,
)
from spacenb.server.app import RunningServer
from tests.server.rawclient import RawClient, user

from .conftest import Figures, StartRelay
from .helpers import dump_tables

RACERS = 20
GUESSES = 3000


async def redeem(
    server: RunningServer, name: str, space_id: str, token: str, clock: Clock | None = None
) -> str:
    """A new user redeems ``token`` as the client does (reads the log as a link holder,
    signs its ``add`` on the head, joins): ``"joined"`` or the first refusal's code."""
    client = await user(server, name)
    if clock is not None:
        client.clock = clock
    try:
        await client.join(space_id, token)
    except SpacenbError as exc:
        return exc.code
    finally:
        await client.close()
    return "joined"


async def leaked_add(
    server: RunningServer,
    name: str,
    log: SpaceState,
    token: str,
    clock: Clock | None = None,
    at_us: int | None = None,
) -> str:
    """A new user who has the space's log already (``log``, a leaked copy) signs an ``add``
    through ``token``'s link on its head and joins at once: ``"joined"`` or the code."""
    client = await user(server, name)
    if clock is not None:
        client.clock = clock
    try:
        copy = SpaceState.from_events(log.events)
        event = client.add_event(copy, token=token, at_us=at_us)
        await client.call(frames.Join, space_id=log.space_id, event=event)
    except SpacenbError as exc:
        return exc.code
    finally:
        await client.close()
    return "joined"


async def members(owner: RawClient, space_id: str) -> set[str]:
    return set((await owner.sync(space_id)).members)


async def test_expired_used_up_revoked_and_foreign_links_are_refused(
    start_relay: StartRelay, figures: Figures
) -> None:
    clock = FixedClock()
    server = await start_relay(clock=clock)
    owner = await user(server, "owner")
    owner.clock = clock
    vault, _ = await owner.create_space(name="vault", private=True)
    annex, _ = await owner.create_space(name="annex", private=True)
    expires_at_us = clock.now_us() + 60_000_000
    expiring = await owner.create_link(vault.space_id, expires_at_us=expires_at_us)
    twice = await owner.create_link(vault.space_id, max_uses=2)
    revoked = await owner.create_link(vault.space_id)
    await owner.unlink(vault.space_id, revoked)
    foreign = await owner.create_link(annex.space_id)
    names = iter(f"user{i}" for i in range(100))

    async def attempt(token: str) -> tuple[str, str]:
        """The client's path, and the leaked-log path (on the log as it is now)."""
        figures.add("invites.redemptions", 2)
        log = await owner.sync(vault.space_id)
        leaked = await leaked_add(server, next(names), log, token, clock)
        return await redeem(server, next(names), vault.space_id, token, clock), leaked

    clock.advance(59.999)
    assert await redeem(server, "early", vault.space_id, expiring, clock) == "joined"
    clock.advance(0.001)  # exactly 60 s after minting: expired
    assert await attempt(expiring) == ("invite_invalid", "invite_invalid")
    # An add dated before the expiry by its signer's clock: the relay's own clock decides.
    log = await owner.sync(vault.space_id)
    figures.add("invites.redemptions")
    assert await leaked_add(server, "liar", log, expiring, at_us=expires_at_us - 1) == (
        "invite_invalid"
    )
    assert [await redeem(server, f"use{i}", vault.space_id, twice, clock) for i in range(2)] == [
        "joined", "joined"
    ]  # fmt: skip
    figures.add("invites.redemptions", 3)
    assert await attempt(twice) == ("invite_invalid", "invite_invalid")
    assert await attempt(revoked) == ("invite_invalid", "invite_invalid")
    # Another space's link proves nothing in this one: the log stays closed (forbidden),
    # and an add through it names a link this log does not have.
    assert await attempt(foreign) == ("forbidden", "invite_invalid")

    state = await owner.sync(vault.space_id)
    assert set(state.members) == {"owner", "keeper", "early", "use0", "use1"}
    assert sorted(link.uses for link in state.links.values()) == [0, 1, 2]
    assert [link.revoked for link in state.links.values()] == [False, False, True]
    assert await members(owner, annex.space_id) == {"owner", "keeper"}


def near_misses(token: str) -> list[str]:
    """Tokens one edit away from a real one, and other shapes a guesser might try."""
    alphabet = string.ascii_letters + string.digits + "-_"
    changed = [
        token[:i] + next(c for c in alphabet if c != token[i]) + token[i + 1 :]
        for i in range(len(token))
    ]
    return [
        *changed, token[:-1], token + "A", token.swapcase(), token.upper(), " " + token,
        "", " ", "\u00e9" * 32, "x" * 4096, "null",
    ]  # fmt: skip


async def test_guessed_tokens_are_all_refused_and_change_nothing(
    start_relay: StartRelay, figures: Figures
) -> None:
    """A guesser who even has the private space's log (so it can sign adds on the real
    head) tries thousands of tokens and near misses of the real one, and the link's public
    id with proofs made by keys of its own; it also tries to read the log with guessed
    link proofs. Nothing is accepted and nothing changes; the real token still works."""
    server = await start_relay()
    owner = await user(server, "owner")
    vault, _ = await owner.create_space(name="vault", private=True)
    token = await owner.create_link(vault.space_id)
    log = SpaceState.from_events((await owner.sync(vault.space_id)).events)
    (link,) = log.links.values()
    guesser = await user(server, "guesser")
    guesses = [secrets.token_urlsafe(32) for _ in range(GUESSES)] + near_misses(token)
    guesses.append(link.link_id)  # the link's public id is not its token
    well_formed: list[LinkKeyPair] = []
    for guess in guesses:
        try:
            well_formed.append(link_keys_from_token(guess))  # 32 bytes of base64url
        except InviteError:
            figures.add("invites.guesses_malformed")  # refused before any frame is sent
    assert all(k.link_key != link.link_key for k in well_formed)
    impostors = [LinkKeyPair.from_token_bytes(crypto.random_bytes(32)) for _ in range(20)]

    def add(link_id: str, signer: LinkKeyPair) -> frames.Join:
        """The guesser's add through ``link_id``, proved with ``signer``."""
        proof = signer.sign(link_proof_bytes(vault.space_id, "guesser", log.head))
        event = guesser.make(
            vault.space_id, "add",
            {"member": "guesser", "signing_key": guesser.keys.signing_key,
             "ecdh_key": guesser.keys.ecdh_key, "role": link.role, "via": "link",
             "link_id": link_id, "proof": b64e(proof)},
        )  # fmt: skip
        return frames.Join(id=0, space_id=vault.space_id, event=event)

    guesser.logs[vault.space_id] = log
    requests: list[tuple[frames.Request[object], str]] = []
    for keys in well_formed:
        requests.append((add(link_id_of_key(keys.link_key), keys), "invite_invalid"))
        link_id, proof = guesser.link_proof(vault.space_id, keys)
        read = frames.GetStateLog(0, vault.space_id, 0, 10, link_id, proof)
        requests.append((read, "forbidden"))
    for keys in impostors:  # the real link id, proofs by keys that are not the link's
        requests.append((add(link.link_id, keys), "integrity"))
        _, proof = guesser.link_proof(vault.space_id, keys)
        requests.append((frames.GetStateLog(0, vault.space_id, 0, 10, link.link_id, proof),
                         "forbidden"))  # fmt: skip
    before = dump_tables(server.data_dir)
    for i, (request, _code) in enumerate(requests):  # pipelined: all sent, then all read
        await guesser.send_text(dataclasses.replace(request, id=i + 1000).to_json())
    answers = [await guesser.next_frame(timeout=30) for _ in requests]
    assert [(a.id, getattr(a, "code", "ok")) for a in answers] == [
        (i + 1000, code) for i, (_request, code) in enumerate(requests)
    ]
    assert dump_tables(server.data_dir) == before
    assert await members(owner, vault.space_id) == {"owner", "keeper"}
    assert await redeem(server, "invited", vault.space_id, token) == "joined"
    figures.add("invites.guessed_tokens", len(guesses))
    figures.add("invites.guessed_requests", len(requests))
    assert all(token not in getattr(a, "message", "") for a in answers)


async def test_a_one_use_link_raced_by_twenty_admits_exactly_one(
    start_relay: StartRelay, figures: Figures
) -> None:
    """Twenty holders of a one-use link read the log and send their adds, all on the same
    head, before any answer is read: one is appended; the others no longer follow the
    head (``stale_state``). Each loser then does what a client does, reads the log again:
    the link is used up (``invite_invalid``); and an add on the new head is refused too."""
    server = await start_relay()
    owner = await user(server, "owner")
    vault, _ = await owner.create_space(name="vault", private=True)
    token = await owner.create_link(vault.space_id, max_uses=1)
    racers = [await user(server, f"racer{i}") for i in range(RACERS)]
    adds = []
    for racer in racers:
        racer.links[vault.space_id] = link_keys_from_token(token)
        adds.append(racer.add_event(await racer.sync(vault.space_id), token=token))
    for racer, event in zip(racers, adds, strict=True):  # all on the wire, then all read
        await racer.send_text(frames.Join(id=1, space_id=vault.space_id, event=event).to_json())
    answers = await asyncio.gather(*(racer.next_frame() for racer in racers))
    winners = [r.me for r, a in zip(racers, answers, strict=True) if isinstance(a, frames.Response)]
    losers = [r for r, a in zip(racers, answers, strict=True) if isinstance(a, frames.ErrorFrame)]
    assert len(winners) == 1 and all(a.id == 1 for a in answers)
    assert sorted(a.code for a in answers if isinstance(a, frames.ErrorFrame)) == [
        "stale_state"
    ] * (RACERS - 1)
    log = await owner.sync(vault.space_id)
    for racer in losers:
        link_id, proof = racer.link_proof(vault.space_id, racer.links[vault.space_id])
        answer = await racer.request(
            frames.GetStateLog, space_id=vault.space_id, since=0, limit=10, link_id=link_id,
            proof=proof,
        )  # fmt: skip
        assert isinstance(answer, frames.ErrorFrame) and answer.code == "invite_invalid"
        racer.logs[vault.space_id] = SpaceState.from_events(log.events)
        retry = racer.add_event(racer.logs[vault.space_id], token=token)
        answer = await racer.request(frames.Join, space_id=vault.space_id, event=retry)
        assert isinstance(answer, frames.ErrorFrame) and answer.code == "invite_invalid"
    state = await owner.sync(vault.space_id)
    assert set(state.members) == {"owner", "keeper", *winners}
    (link,) = state.links.values()
    assert link.uses == 1
    figures.add("invites.racers", RACERS)
    for racer in racers:
        await racer.close()
