"""spacenb.protocol.sessionlog: the packed, sorted handle → (seq, rev, id) map agrees with a
dict and a sorted list, whatever the order of inserts and however small its runs."""

from __future__ import annotations

import bisect
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from spacenb.protocol import sessionlog
from spacenb.protocol.sessionlog import SessionLog

IDS = st.one_of(
    st.binary(min_size=16, max_size=16).map(bytes.hex),
    st.sampled_from(["", "x", "ABCDEF" * 5 + "AB", "0" * 31, "0" * 34, " " + "0" * 32]),
)


def neighbours(plain: dict[int, tuple[int, int, str]], handle: int) -> tuple[int | None, ...]:
    keys = sorted(plain)
    i = bisect.bisect_left(keys, handle)
    return (plain[keys[i - 1]][0] if i else None), (plain[keys[i]][0] if i < len(keys) else None)


@given(
    st.lists(
        st.tuples(st.integers(-300, 300), st.integers(0, 2**63 - 1), st.integers(0, 9), IDS),
        max_size=300,
    ),
    st.integers(1, 4),
)
def test_against_a_dict(ops: list[tuple[int, int, int, str]], load: int) -> None:
    with mock.patch.object(sessionlog, "LOAD", load):  # small runs: many splits
        log = SessionLog()
        plain: dict[int, tuple[int, int, str]] = {}
        for handle, seq, rev, msg_id in ops:
            k, i = log.find(handle)
            assert log.holds(k, i, handle) == (handle in plain) == (handle in log)
            if handle in plain:
                assert log.entry(k, i) == plain[handle]
                log.revise(k, i, rev, msg_id)
                plain[handle] = (plain[handle][0], rev, msg_id)
            else:
                assert (log.seq_before(k, i), log.seq_after(k, i)) == neighbours(plain, handle)
                log.insert(k, i, handle, seq, rev, msg_id)
                plain[handle] = (seq, rev, msg_id)
            assert len(log) == len(plain)
        for handle in sorted(plain):
            k, i = log.find(handle)
            assert log.entry(k, i) == plain[handle]


def test_history_newest_first_keeps_runs_bounded() -> None:
    """Pages of 100 handles, newest page first, each page ascending."""
    log = SessionLog()
    for page in reversed(range(100)):
        for handle in range(page * 100, page * 100 + 100):
            log.insert(*log.find(handle), handle, handle, 0, f"{handle:032x}")
    assert len(log) == 10_000
    assert max(len(run) for run in log._handles) <= 2 * sessionlog.LOAD
    for handle in (0, 1, 4_999, 9_999):
        assert log.entry(*log.find(handle)) == (handle, 0, f"{handle:032x}")
    assert log.seq_after(*log.find(-1)) == 0 and log.seq_before(*log.find(10_000)) == 9_999
