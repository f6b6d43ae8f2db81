"""Invite links: expired (a relay on a hand-driven clock), used up, revoked, for another
space, guessed; and a one-use link raced by twenty clients admits exactly one."""

from __future__ import annotations

import asyncio
import secrets
import string

from spacenb.clock import FixedClock
from spacenb.protocol import frames
from tests.server.rawclient import RawClient, user

from .conftest import Figures, StartRelay
from .helpers import dump_tables

RACERS = 20
GUESSES = 3000


async def mint(owner: RawClient, space_id: str, **options: int) -> str:
    """A fresh viewer link to ``space_id``; its token."""
    fields = {"expires_in_sec": None, "max_uses": None, **options}
    link = await owner.call(frames.CreateLink, space_id=space_id, role="viewer", **fields)
    assert link.token is not None
    return str(link.token)


async def redeem(server_url: str, app_key: str, name: str, space_id: str, token: str) -> str:
    """A new user redeems ``token``: ``"joined"`` or the refusal's code."""
    client = await RawClient.open(server_url)
    await client.auth(app_key, name)
    answer = await client.request(frames.Join, space_id=space_id, token=token)
    await client.close()
    return "joined" if isinstance(answer, frames.Response) else answer.code


async def members(owner: RawClient, space_id: str) -> set[str]:
    result = await owner.call(frames.Members, space_id=space_id)
    return {m.member_id for m in result.members}


async def test_expired_used_up_revoked_and_foreign_links_are_refused(
    start_relay: StartRelay, figures: Figures
) -> None:
    clock = FixedClock()
    server = await start_relay(clock=clock)
    owner = await user(server, "owner")
    vault, _ = await owner.create_space(name="vault", private=True)
    annex, _ = await owner.create_space(name="annex", private=True)
    expiring = await mint(owner, vault.space_id, expires_in_sec=60)
    twice = await mint(owner, vault.space_id, max_uses=2)
    revoked = await mint(owner, vault.space_id)
    await owner.call(frames.RevokeLink, space_id=vault.space_id, token=revoked)
    foreign = await mint(owner, annex.space_id)

    async def attempt(name: str, token: str) -> str:
        figures.add("invites.redemptions")
        return await redeem(server.url, server.app_key, name, vault.space_id, token)

    clock.advance(59.999)
    assert await attempt("early", expiring) == "joined"
    clock.advance(0.001)  # exactly 60 s after minting: expired
    assert await attempt("late", expiring) == "invite_invalid"
    assert [await attempt(f"use{i}", twice) for i in range(3)] == [
        "joined", "joined", "invite_invalid"
    ]  # fmt: skip
    assert await attempt("too-late", revoked) == "invite_invalid"
    assert await attempt("wrong-door", foreign) == "invite_invalid"
    assert await members(owner, vault.space_id) == {"owner", "keeper", "early", "use0", "use1"}
    links = (await owner.call(frames.ListLinks, space_id=vault.space_id)).links
    assert sorted(link.uses for link in links) == [0, 1, 2]
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
    server = await start_relay()
    owner = await user(server, "owner")
    vault, _ = await owner.create_space(name="vault", private=True)
    token = await mint(owner, vault.space_id)
    guesser = await user(server, "guesser")
    guesses = [secrets.token_urlsafe(24) for _ in range(GUESSES)] + near_misses(token)
    listed = (await owner.call(frames.ListLinks, space_id=vault.space_id)).links
    guesses.append(listed[0].link_id)  # the link's public id is not its token
    before = dump_tables(server.data_dir)
    for i, guess in enumerate(guesses):  # pipelined: all sent, then all answers read
        request = frames.Join(id=i + 1000, space_id=vault.space_id, token=guess)
        await guesser.send_text(request.to_json())
    answers = [await guesser.next_frame() for _ in guesses]
    assert {(a.id, getattr(a, "code", "ok")) for a in answers} == {
        (i + 1000, "invite_invalid") for i in range(len(guesses))
    }
    assert dump_tables(server.data_dir) == before
    assert await members(owner, vault.space_id) == {"owner", "keeper"}
    assert await redeem(server.url, server.app_key, "invited", vault.space_id, token) == "joined"
    figures.add("invites.guessed_tokens", len(guesses))
    assert all(token not in a.message for a in answers)


async def test_a_one_use_link_raced_by_twenty_admits_exactly_one(
    start_relay: StartRelay, figures: Figures
) -> None:
    server = await start_relay()
    owner = await user(server, "owner")
    vault, _ = await owner.create_space(name="vault", private=True)
    token = await mint(owner, vault.space_id, max_uses=1)
    racers = [await user(server, f"racer{i}") for i in range(RACERS)]
    for racer in racers:  # every request is on the wire before the first answer is read
        await racer.send_text(frames.Join(id=1, space_id=vault.space_id, token=token).to_json())
    answers = await asyncio.gather(*(racer.next_frame() for racer in racers))
    winners = [r.username for r, a in zip(racers, answers, strict=True) if a.id == 1
               and isinstance(a, frames.Response)]  # fmt: skip
    assert len(winners) == 1
    assert sorted(a.code for a in answers if isinstance(a, frames.ErrorFrame)) == [
        "invite_invalid"
    ] * (RACERS - 1)
    assert await members(owner, vault.space_id) == {"owner", "keeper", *winners}
    (link,) = (await owner.call(frames.ListLinks, space_id=vault.space_id)).links
    assert link.uses == 1
    figures.add("invites.racers", RACERS)
