"""Checkpoints (PROTOCOL.md, "Checkpoints"): who may sign one, and how a member that reads
a log from scratch (:class:`LogLoader`, :meth:`MemberCore.extend_log`) verifies the last
checkpoint's signature instead of every event before it, while every rule, hash link and
seq is still checked and every event after it is verified in full.

Signature checks are counted with a spy on :func:`spacenb.protocol.crypto.verify`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest

from spacenb.exceptions import ForkError, IntegrityError, PermissionDeniedError, ProtocolError
from spacenb.protocol import crypto
from spacenb.protocol.member import MemberCore, Need, Rejected
from spacenb.protocol.statelog import LogLoader, SpaceState, StateEvent

from .chain import KEEPER, Chain, ident, raw_event, resign, token_for

MALLORY = ident("mallory")


class VerifySpy:
    """Records the bytes of every ECDSA verification (and lets it run)."""

    def __init__(self) -> None:
        self.signed: list[bytes] = []

    def seqs(self, events: list[StateEvent]) -> list[int]:
        """The seqs of ``events`` whose signature was verified, in order of checking."""
        by_bytes = {e.signed_bytes(): e.seq for e in events}
        return [by_bytes[s] for s in self.signed if s in by_bytes]

    def others(self, events: list[StateEvent]) -> int:
        """Verifications of something else (link proofs)."""
        known = {e.signed_bytes() for e in events}
        return sum(1 for s in self.signed if s not in known)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[VerifySpy]:
    recorder = VerifySpy()
    real = crypto.verify

    def verify(key: crypto.PublicKey, signature: bytes, data: bytes) -> None:
        recorder.signed.append(bytes(data))
        real(key, signature, data)

    monkeypatch.setattr(crypto, "verify", verify)
    yield recorder


def channel(joins: int = 6, *, keeper: bool = True) -> Chain:
    """A public channel (keeper admitted) that ``joins`` viewers joined."""
    chain = Chain(keeper=keeper)
    for i in range(joins):
        chain.add(f"user{i}")
    return chain


def fresh(chain: Chain, name: str = "newcomer", **kw: bool) -> MemberCore:
    """A member core that holds nothing of ``chain``'s space."""
    return MemberCore(chain.space_id, name, ident(name), **kw)


# =========================================================================== who may sign


@pytest.mark.parametrize("by", ["alice", KEEPER])
def test_a_checkpoint_by_the_owner_or_the_keeper_is_accepted(by: str) -> None:
    chain = channel(3)
    before = (dict(chain.state.members), chain.state.epoch, dict(chain.state.links))
    event = chain.checkpoint(by)
    assert chain.state.checkpoint_seq == event.seq == chain.state.head_seq
    assert (dict(chain.state.members), chain.state.epoch, dict(chain.state.links)) == before
    assert event.fields() == {}
    assert SpaceState.from_events(chain.events).head == chain.state.head


@pytest.mark.parametrize("by", ["user0", "bob", "mallory"])
def test_a_checkpoint_by_anyone_else_is_refused(by: str) -> None:
    chain = channel(2)
    chain.join("bob", "editor")  # an editor may not either
    with pytest.raises(PermissionDeniedError, match="owner or the keeper"):
        chain.state.check(chain.checkpoint_event(by))


def test_the_keeper_may_not_checkpoint_where_genesis_names_none() -> None:
    chain = channel(2, keeper=False)
    chain.invite("alice", KEEPER)
    chain.add(KEEPER, via="invite")  # a user called keeper, not the genesis keeper
    with pytest.raises(PermissionDeniedError, match="owner or the keeper"):
        chain.state.check(chain.checkpoint_event(KEEPER))


def test_a_removed_keeper_may_not_checkpoint() -> None:
    chain = channel(2)
    chain.remove("alice", KEEPER)
    with pytest.raises(PermissionDeniedError, match="owner or the keeper"):
        chain.state.check(chain.checkpoint_event(KEEPER))
    chain.checkpoint("alice")  # the owner still may


def test_a_checkpoint_is_signed_with_the_genesis_key_and_has_an_empty_body() -> None:
    chain = channel(2)
    forged = chain.checkpoint_event("alice", signer=MALLORY)
    with pytest.raises(IntegrityError):
        chain.state.check(forged)
    with pytest.raises(ProtocolError, match="exactly the fields"):
        chain.state.check(
            raw_event(
                ident("alice"), space_id=chain.space_id, seq=chain.state.head_seq + 1,
                prev=chain.state.head, kind="checkpoint", actor="alice", at_us=chain.now(),
                body=b'{"seq":3}',
            )
        )  # fmt: skip


def test_a_member_that_holds_the_state_verifies_a_checkpoint_like_any_event(
    spy: VerifySpy,
) -> None:
    chain = channel(4)
    core = chain.core("user0")
    event = chain.checkpoint(KEEPER)
    spy.signed.clear()
    assert core.extend_log([event]) == [event]
    assert spy.seqs(chain.events) == [event.seq]
    forged = resign(event, MALLORY)
    other = chain.core("user0", upto=event.seq - 1)
    with pytest.raises(IntegrityError, match="no entitled member could sign"):
        other.extend_log([forged])


# =========================================================================== a fresh reader


def test_a_newcomer_verifies_genesis_the_last_checkpoint_and_what_follows(spy: VerifySpy) -> None:
    chain = channel(5)
    chain.checkpoint(KEEPER)  # seq 6: attested by the one after it
    chain.add("late0")
    first = chain.checkpoint("alice")  # seq 8
    chain.add("late1")
    chain.add("late2")
    core = fresh(chain)
    spy.signed.clear()
    new = core.extend_log(chain.events)
    assert new == chain.events
    assert core.require_state().head == chain.state.head
    assert spy.seqs(chain.events) == [0, first.seq, first.seq + 1, first.seq + 2]


def test_without_trusting_checkpoints_every_event_is_verified(spy: VerifySpy) -> None:
    chain = channel(4)
    chain.checkpoint()
    chain.add("late")
    spy.signed.clear()
    fresh(chain, trust_checkpoints=False).extend_log(chain.events)
    assert sorted(spy.seqs(chain.events)) == list(range(len(chain.events)))


def test_a_log_without_a_checkpoint_is_verified_in_full(spy: VerifySpy) -> None:
    chain = channel(4)
    spy.signed.clear()
    fresh(chain).extend_log(chain.events)
    assert sorted(spy.seqs(chain.events)) == list(range(len(chain.events)))


def test_a_log_read_page_by_page_settles_once(spy: VerifySpy) -> None:
    chain = channel(6)
    cp = chain.checkpoint(KEEPER)
    chain.add("late")
    core = fresh(chain)
    env, _ = chain.seal("user1", head_seq=2)
    spy.signed.clear()
    assert core.extend_log(chain.events[:4], more=True) == []
    assert core.state is None and core.next_log_seq == 4
    assert core.open_message(env, 1) is Need.LOG  # nothing is believed before it settles
    assert core.extend_log(chain.events[4:], more=True) == []
    assert spy.seqs(chain.events) == [0]
    assert core.finish_log() == chain.events
    assert spy.seqs(chain.events) == [0, cp.seq, cp.seq + 1]
    assert core.next_log_seq == len(chain.events)


def test_link_proofs_before_the_checkpoint_are_attested_those_after_are_checked(
    spy: VerifySpy,
) -> None:
    chain = channel(1)
    token = chain.link("alice", max_uses=5)
    chain.add("viajoin", token=token)
    chain.checkpoint(KEEPER)
    chain.add("viajoin2", token=token)
    spy.signed.clear()
    fresh(chain).extend_log(chain.events)
    assert spy.others(chain.events) == 1  # the second add's proof only


def test_the_pins_are_asked_once_the_log_verified() -> None:
    chain = channel(3)
    chain.checkpoint(KEEPER)
    chain.add("late")
    asked: list[str] = []
    core = MemberCore(
        chain.space_id, "newcomer", ident("newcomer"),
        trust=lambda name, sig, dh: asked.append(name) or None,  # type: ignore[func-returns-value]
    )  # fmt: skip
    core.extend_log(chain.events, more=True)
    assert asked == []
    core.finish_log()
    assert asked == ["alice", KEEPER, "user0", "user1", "user2", "late"]


def test_unchecked_events_are_bounded(spy: VerifySpy) -> None:
    """A loader settles early once ``max_unchecked`` events wait: a relay serving an
    endless forged log is caught after that many, not after the end."""
    chain = channel(8)
    forged = [*chain.events[:5], resign(chain.events[5], MALLORY)]
    spy.signed.clear()
    loader = LogLoader(forged[0], max_unchecked=3)
    for event in forged[1:4]:
        loader.feed(event)
    assert sorted(spy.seqs(chain.events)) == [0, 1, 2, 3]  # settled at 3
    loader.feed(forged[4])
    with pytest.raises(IntegrityError):
        loader.feed(forged[5])
        loader.settle()


# =========================================================================== what a relay may try


def test_a_forged_event_before_the_checkpoint_breaks_the_hash_link() -> None:
    chain = channel(5)
    chain.checkpoint(KEEPER)
    events = list(chain.events)
    events[3] = resign(events[3], MALLORY, at_us=events[3].at_us + 1)
    with pytest.raises(IntegrityError, match="hash of the event before it"):
        fresh(chain).extend_log(events)


def test_an_event_before_the_checkpoint_must_still_follow_the_rules() -> None:
    """The rules hold whatever the signatures: a viewer's role change, unsigned or not,
    is refused even where a checkpoint would attest it."""
    chain = channel(3)
    bogus = chain.role_event("user0", "user1", "editor", signer=MALLORY)
    cp = chain.checkpoint_event(KEEPER, seq=bogus.seq + 1, prev=bogus.hash())
    with pytest.raises(IntegrityError, match="no entitled member could sign"):
        fresh(chain).extend_log([*chain.events, bogus, cp])


def test_a_forged_checkpoint_is_refused() -> None:
    chain = channel(4)
    chain.checkpoint(KEEPER)
    events = [*chain.events[:-1], resign(chain.events[-1], MALLORY)]
    with pytest.raises(IntegrityError, match="does not verify"):
        fresh(chain).extend_log(events)


def test_a_rewritten_past_under_a_genuine_checkpoint_is_refused() -> None:
    """The relay rewrites an event before the checkpoint and re-links everything after
    it (re-signing as it can): the genuine checkpoint's signature covers the old prev,
    and a re-signed one is not the keeper's."""
    chain = channel(5)
    cp = chain.checkpoint(KEEPER)
    events = list(chain.events)
    events[2] = resign(events[2], MALLORY)  # user1's add, now signed by mallory
    for i in range(3, len(events)):
        events[i] = dataclasses.replace(events[i], prev=events[i - 1].hash())
    assert events[-1].seq == cp.seq
    with pytest.raises(IntegrityError, match="does not verify"):
        fresh(chain).extend_log(events)
    for i in range(3, len(events)):
        events[i] = resign(events[i], MALLORY, prev=events[i - 1].hash())
    with pytest.raises(IntegrityError, match="does not verify"):
        fresh(chain).extend_log(events)


def test_a_bad_signature_after_the_checkpoint_is_refused() -> None:
    chain = channel(3)
    chain.checkpoint(KEEPER)
    chain.add("late")
    events = [*chain.events[:-1], resign(chain.events[-1], MALLORY)]
    core = fresh(chain)
    with pytest.raises(IntegrityError, match="does not verify"):
        core.extend_log(events)
    assert core.state is None
    assert core.extend_log(chain.events) == chain.events  # a later honest read starts over


def test_a_log_that_skips_or_repeats_differently_is_refused() -> None:
    chain = channel(4)
    chain.checkpoint(KEEPER)
    core = fresh(chain)
    with pytest.raises(IntegrityError, match="skipped"):
        core.extend_log(chain.events[:2] + chain.events[3:])
    core = fresh(chain)
    core.extend_log(chain.events[:3], more=True)
    with pytest.raises(IntegrityError, match="two different"):
        core.extend_log([resign(chain.events[2], MALLORY)], more=True)


# =========================================================================== the keeper's word


def rotate_channel(joins: int = 4) -> Chain:
    """A public rotate channel (keeper admitted) that ``joins`` viewers joined."""
    chain = Chain(keeper=True, policy="rotate")
    for i in range(joins):
        chain.add(f"user{i}")
    return chain


def test_a_keeper_checkpoint_stands_for_the_adds_only(spy: VerifySpy) -> None:
    """Under the keeper's checkpoint a newcomer skips the adds' signatures (and link
    proofs) and verifies every other event, the checkpoint and what follows."""
    chain = rotate_channel(2)  # adds at 1, 2
    token = chain.link("alice", max_uses=5)  # 3
    chain.add("vialink", token=token)  # 4
    chain.join("bob", "editor")  # 5 invite, 6 add
    chain.push(chain.role_event("alice", "user0", "editor"))  # 7
    chain.rotate("bob")  # 8
    chain.leave("user1")  # 9
    chain.delete("user0", 3)  # 10
    cp = chain.checkpoint(KEEPER)  # 11
    chain.add("late")  # 12
    spy.signed.clear()
    core = fresh(chain)
    assert core.extend_log(chain.events) == chain.events
    assert spy.seqs(chain.events) == [0, 3, 5, 7, 8, 9, 10, cp.seq, cp.seq + 1]
    assert spy.others(chain.events) == 0  # vialink's proof: attested with its add


def test_an_owner_checkpoint_before_the_keepers_still_stands_for_everything(
    spy: VerifySpy,
) -> None:
    chain = rotate_channel(2)
    chain.push(chain.role_event("alice", "user0", "editor"))  # 3
    owner = chain.checkpoint("alice")  # 4
    chain.add("mid0")  # 5
    chain.push(chain.remove_event("alice", "user1"))  # 6
    chain.add("mid1")  # 7
    keeper = chain.checkpoint(KEEPER)  # 8
    chain.add("late")  # 9
    spy.signed.clear()
    fresh(chain).extend_log(chain.events)
    assert spy.seqs(chain.events) == [0, owner.seq, 6, keeper.seq, keeper.seq + 1]
    chain.checkpoint("alice")  # 10: the owner's, last, stands for everything before it
    spy.signed.clear()
    fresh(chain).extend_log(chain.events)
    assert spy.seqs(chain.events) == [0, 10]


def _forge(chain: Chain, event: StateEvent) -> StateEvent:
    """Put ``event`` (a forgery) in ``chain`` as the relay's made-up history does."""
    chain.state.apply(event, verify=False)
    chain.events.append(event)
    return event


def _forgeries() -> dict[str, Callable[[Chain], StateEvent]]:
    """Events in another's name that whoever holds the keeper's key might slip under its
    own checkpoint, each signed with that key (not the signer the rules name)."""
    k = ident(KEEPER)
    return {
        "role": lambda c: c.role_event("alice", "user0", "editor", signer=k),
        "remove": lambda c: c.remove_event("alice", "user1", signer=k),
        "leave": lambda c: c.leave_event("user1", signer=k),
        "epoch": lambda c: c.epoch_event("alice", signer=k, key=b"\x07" * 32),
        "link": lambda c: c.link_event("alice", token_for("forged"), role="editor", signer=k),
        "invite": lambda c: c.invite_event("alice", "mallory", "editor", signer=k),
        "delete": lambda c: c.delete_event("alice", 1, "user0", signer=k),
        "unlink": lambda c: c.unlink_event("alice", c.token, signer=k),  # type: ignore[attr-defined]
    }


FORGERIES = _forgeries()


@pytest.mark.parametrize("kind", sorted(FORGERIES))
def test_an_event_forged_under_a_keeper_checkpoint_is_refused(kind: str) -> None:
    """The relay holds ``keeper.key``: it signs a checkpoint over a past with a forged
    role, removal, rotation, link, ... in it. A newcomer verifies those kinds' signatures
    under the keeper's checkpoint, so the forgery is refused and nothing is believed."""
    chain = rotate_channel(3)
    chain.token = chain.link("alice")  # type: ignore[attr-defined]
    honest = chain.fork()
    forged = _forge(chain, FORGERIES[kind](chain))
    assert forged.kind == kind
    chain.checkpoint(KEEPER)  # genuinely the keeper's signature
    core = fresh(chain)
    with pytest.raises(IntegrityError, match="does not verify"):
        core.extend_log(chain.events)
    assert core.state is None
    assert fresh(honest).extend_log(honest.events) == honest.events


def test_under_an_owner_checkpoint_only_the_owner_could_have_signed_it() -> None:
    """The same forged role under a checkpoint only the owner's key can sign: the relay
    cannot make one, and re-signing the owner's breaks its signature."""
    chain = rotate_channel(3)
    _forge(chain, chain.role_event("alice", "user0", "editor", signer=ident(KEEPER)))
    cp = chain.checkpoint_event("alice", signer=ident(KEEPER))
    chain.state.apply(cp, verify=False)
    chain.events.append(cp)
    with pytest.raises(IntegrityError, match="does not verify"):
        fresh(chain).extend_log(chain.events)


def test_a_fake_add_under_a_keeper_checkpoint_puts_the_newcomer_on_a_fork() -> None:
    """The keeper's checkpoint stands for the adds, so whoever holds its key can show a
    newcomer a made-up past of adds (here one in bob's name that bob never signed, after
    the real log's seq 3). The read verifies, but it is a fork: an honest member's message
    bound to the real head is refused as one, and the real log, once served, is a
    ForkError."""
    real = channel(3)
    fabricated = real.fork()
    real.add("bob")  # 4, bob's own
    real.add("carol")  # 5: the real head
    _forge(fabricated, fabricated.add_event("bob", signer=MALLORY))  # 4, not bob's signature
    fabricated.checkpoint(KEEPER)  # 5
    newcomer = fresh(fabricated)
    assert newcomer.extend_log(fabricated.events) == fabricated.events
    state = newcomer.require_state()
    assert state.members["bob"].signing_key == ident("bob").signing_key
    assert state.head_seq == real.state.head_seq and state.head != real.state.head

    for at in (4, 5):
        env, _ = real.seal("user0", "from the real log", head_seq=at)
        rejected = newcomer.open_message(env, 1)
        assert isinstance(rejected, Rejected) and "a fork" in rejected.reason
    env, _ = real.seal("user0", "before the fork", head_seq=3)
    assert newcomer.open_message(env, 1) is Need.KEYS  # shared history: only the keys lack
    with pytest.raises(ForkError, match="differs from the one verified before"):
        newcomer.extend_log(real.events)
    assert newcomer.require_state().head == fabricated.state.head
