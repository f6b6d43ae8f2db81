"""What the replay guard remembers of one sender session: handle → (seq, rev, id), sorted.

History is read newest first, so every older page lands at the front of what a session
has seen: a plain sorted list costs O(n) per such insert. :class:`SessionLog` keeps its
entries in sorted runs of at most ``2 * LOAD`` (a run that grows past it is split in two):
finding a handle is two bisections, O(log n), and an insert moves at most one run's items
(and, once per ``LOAD`` inserts, the list of runs), wherever it lands. Entries are packed
(``array`` of 64-bit handles, sequence numbers and revisions, message ids as 16 raw
bytes): about 40 bytes each instead of ~230 for a dict entry, a tuple and an id string,
which is most of what a reader of 100,000 messages keeps besides their bodies.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left

__all__ = ["LOAD", "SessionLog"]

LOAD = 256
_ID = 16  # a message id is 32 lowercase hex digits (Message.from_bytes checks it)
_NO_ID = bytes(_ID)


def _packed(msg_id: str) -> bytes | None:
    """The id's 16 bytes, or None if it is not 32 lowercase hex digits."""
    try:
        raw = bytes.fromhex(msg_id)
    except ValueError:
        return None
    return raw if len(raw) == _ID and raw.hex() == msg_id else None


class SessionLog:
    """A sorted map handle → (seq, rev, id). A position ``(k, i)`` from :meth:`find` is
    valid until the next :meth:`insert`."""

    __slots__ = ("_handles", "_ids", "_maxes", "_other_ids", "_revs", "_seqs")

    def __init__(self) -> None:
        self._handles: list[array[int]] = []  # runs: consecutive, each sorted and non-empty
        self._seqs: list[array[int]] = []  # parallel to the runs of handles
        self._revs: list[array[int]] = []
        self._ids: list[bytearray] = []  # 16 bytes per entry
        self._maxes: list[int] = []  # the last handle of each run
        self._other_ids: dict[int, str] = {}  # by handle: ids that are not 32 hex digits

    def __len__(self) -> int:
        return sum(len(run) for run in self._handles)

    def __contains__(self, handle: int) -> bool:
        k, i = self.find(handle)
        return self.holds(k, i, handle)

    def find(self, handle: int) -> tuple[int, int]:
        """Where ``handle`` is, or would be inserted: run ``k``, index ``i``."""
        maxes = self._maxes
        if not maxes:
            return 0, 0
        if handle > maxes[-1]:
            k = len(maxes) - 1
            return k, len(self._handles[k])
        k = bisect_left(maxes, handle)
        return k, bisect_left(self._handles[k], handle)

    def holds(self, k: int, i: int, handle: int) -> bool:
        runs = self._handles
        return k < len(runs) and i < len(runs[k]) and runs[k][i] == handle

    def entry(self, k: int, i: int) -> tuple[int, int, str]:
        """``(seq, rev, id)`` at a position that :meth:`holds` an entry."""
        handle = self._handles[k][i]
        msg_id = self._other_ids.get(handle) if self._other_ids else None
        if msg_id is None:
            msg_id = self._ids[k][i * _ID : (i + 1) * _ID].hex()
        return self._seqs[k][i], self._revs[k][i], msg_id

    def seq_before(self, k: int, i: int) -> int | None:
        """The sequence number of the entry just before the position, if any."""
        if i:
            return self._seqs[k][i - 1]
        return self._seqs[k - 1][-1] if k else None

    def seq_after(self, k: int, i: int) -> int | None:
        """The sequence number of the entry at the position (the next one after a handle
        that is not held), if any."""
        seqs = self._seqs
        if k < len(seqs) and i < len(seqs[k]):
            return seqs[k][i]
        return None

    def insert(self, k: int, i: int, handle: int, seq: int, rev: int, msg_id: str) -> None:
        """Add an entry at the position :meth:`find` gave for ``handle``."""
        raw = self._id_bytes(handle, msg_id)
        if not self._handles:
            self._handles.append(array("q", (handle,)))
            self._seqs.append(array("q", (seq,)))
            self._revs.append(array("q", (rev,)))
            self._ids.append(bytearray(raw))
            self._maxes.append(handle)
            return
        handles, seqs, revs, ids = self._handles[k], self._seqs[k], self._revs[k], self._ids[k]
        handles.insert(i, handle)
        seqs.insert(i, seq)
        revs.insert(i, rev)
        ids[i * _ID : i * _ID] = raw
        self._maxes[k] = handles[-1]
        if len(handles) > 2 * LOAD:
            cut = LOAD
            self._handles.insert(k + 1, handles[cut:])
            self._seqs.insert(k + 1, seqs[cut:])
            self._revs.insert(k + 1, revs[cut:])
            self._ids.insert(k + 1, ids[cut * _ID :])
            del handles[cut:], seqs[cut:], revs[cut:], ids[cut * _ID :]
            self._maxes.insert(k, handles[-1])

    def revise(self, k: int, i: int, rev: int, msg_id: str) -> None:
        """A new revision of the entry at a position that :meth:`holds` one."""
        raw = self._id_bytes(self._handles[k][i], msg_id)
        self._revs[k][i] = rev
        self._ids[k][i * _ID : (i + 1) * _ID] = raw

    def _id_bytes(self, handle: int, msg_id: str) -> bytes:
        raw = _packed(msg_id)
        if raw is None:
            self._other_ids[handle] = msg_id
            return _NO_ID
        self._other_ids.pop(handle, None)
        return raw
