"""What the tests of a relay that misbehaves on purpose share (issue 12, "Why").

Every such test runs the real relay and puts :class:`~tests.reliability.evil.EvilRelay`, a
rewriting, injecting, answering proxy, between it and some clients (the ``evil`` fixture
of conftest.py); the relay's operator also holds the data directory, so the keeper's key.
Each attack of the issue is performed and must be detected, reported (``on_rejected``
and/or a raised :class:`IntegrityError`/:class:`ForkError`/:class:`IdentityChangedError`)
and never delivered, while the honest members go on working. What an honest client
*sends* is checked too (no ``admit`` to a made-up user, no key to a removed member).

The attacks, by family: the keeper's key (``test_malicious_relay_keeper_key.py``), who gets
a key (``..._admission.py``), forged state events (``..._state_events.py``), false keys
and replayed messages (``..._messages.py``), hidden events, forks and checkpoints
(``..._forks.py``).
"""

from __future__ import annotations

from typing import Any

import spacenb.aio as aio
from spacenb.protocol import frames
from spacenb.protocol.keys import IdentityKeys, decode_public_key
from spacenb.protocol.statelog import StateEvent
from spacenb.protocol.wrap import WrappedKey, wrap_group_key
from spacenb.server.app import RunningServer

from .evil import EvilRelay
from .helpers import Inbox, wait_until

IMPOSTOR = IdentityKeys.generate()  # a key the relay made up, in a member's name
GHOST = IdentityKeys.generate()  # a user the relay made up


async def channel_with_members(
    server: RunningServer, connect: Any, members: int, *, head: int | None = None
) -> tuple[aio.AsyncSpace, list[aio.AsyncClient], list[StateEvent]]:
    """alice's channel ``general`` joined by ``user0`` .. ``user{members-1}``, once her
    verified log reaches ``head`` (the last add unless given): her space, the members'
    clients and the log's events."""
    alice = await connect(server, "alice")
    space = await alice.space.create_channel("general")
    joined = []
    for i in range(members):
        joined.append(user := await connect(server, f"user{i}"))
        await user.space.join_channel("general")
    end = members if head is None else head
    await wait_until(lambda: space.core.require_state().head_seq == end)
    return space, joined, list(space.core.require_state().events)


def watch(space: aio.AsyncSpace) -> tuple[Inbox, Inbox]:
    """Inboxes of a space's delivered messages and of its rejections."""
    messages, rejected = Inbox(), Inbox()
    space.on_message(messages)
    space.on_rejected(rejected)
    return messages, rejected


def bodies(inbox: Inbox) -> list[Any]:
    return [event.message.body for event in inbox.items]


async def reported(rejected: Inbox, *words: str, sender: str | None = None) -> Any:
    """Wait for a rejection whose reason contains every word (case-insensitive)."""

    def match() -> Any:
        for event in rejected.items:
            reason = event.reason.lower()
            if all(w.lower() in reason for w in words) and sender in (None, event.sender):
                return event
        return None

    await wait_until(lambda: match() is not None)
    return match()


def stored(server: RunningServer, space_id: str) -> list[frames.StoredMessage]:
    """The messages the relay stores for a space, oldest first (what it holds on disk)."""
    items, _cursor = server.relay.storage.history(space_id, None, frames.MAX_HISTORY_LIMIT)
    return items


def signer_of(space: aio.AsyncSpace, name: str) -> Any:
    state = space.core.require_state()
    key = state.verify_key_at(name, state.head_seq)
    assert key is not None
    return key


def wrap_as(
    wrapper: str, identity: IdentityKeys, key: bytes, space: aio.AsyncSpace, epoch: int, to: str
) -> WrappedKey:
    """``key`` wrapped by ``wrapper`` for member ``to`` (their key from the log)."""
    state = space.core.require_state()
    return wrap_group_key(
        key,
        space_id=space.id,
        epoch=epoch,
        recipient=to,
        recipient_ecdh=decode_public_key(state.members[to].ecdh_key, "dh"),
        wrapper=wrapper,
        wrapper_identity=identity,
    )


def admits(evil: EvilRelay, member: str) -> list[frames.Admit]:
    """Every ``admit`` frame a client behind the proxy sent for ``member``."""
    return [r for r in evil.requests(frames.Admit) if r.member == member]


def _add_body(
    member: str,
    identity: IdentityKeys,
    via: str,
    *,
    link_id: str | None = None,
    proof: str | None = None,
) -> dict[str, Any]:
    """The body of ``member``'s own ``add`` event (which ``identity`` signs)."""
    return {
        "member": member,
        "signing_key": identity.signing_key,
        "ecdh_key": identity.ecdh_key,
        "role": "viewer",
        "via": via,
        "link_id": link_id,
        "proof": proof,
    }
