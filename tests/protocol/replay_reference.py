"""The replay guard as it was before :class:`spacenb.protocol.sessionlog.SessionLog` (plain
sorted lists, O(n) inserts at the front): the reference the property test compares the
guard with. Copied from ``spacenb/protocol/member.py`` at 1d12d0d; do not change."""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

from spacenb.protocol.envelope import Message


@dataclass
class _Session:
    handles: list[int] = field(default_factory=list)  # sorted
    seqs: list[int] = field(default_factory=list)  # parallel to handles, so also sorted
    revs: dict[int, tuple[int, str]] = field(default_factory=dict)  # handle -> (rev, id)


class ReferenceGuard:
    def __init__(
        self, marks: Mapping[str, tuple[int, int]] | None = None, max_marks: int = 10_000
    ) -> None:
        self.marks: dict[str, tuple[int, int]] = dict(marks or {})
        self._sessions: dict[str, _Session] = {}
        self.changed = False
        self.max_marks = max_marks

    def knows(self, sender: str, sid: str, handle: int) -> bool:
        session = self._sessions.get(f"{sender}/{sid}")
        return session is not None and handle in session.revs

    def check(self, sender: str, message: Message, handle: int) -> str | None:
        key = f"{sender}/{message.sid}"
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = _Session()
        handles, seqs, seq = session.handles, session.seqs, message.seq
        known = session.revs.get(handle)
        if known is not None:
            if seqs[bisect.bisect_left(handles, handle)] != seq:
                return "an edit keeps the sequence number of the message it replaces"
            rev, msg_id = known
            if message.rev > rev:
                session.revs[handle] = (message.rev, message.id)
                return None
            if message.rev == rev and message.id == msg_id:
                return "duplicate"
            return "replayed older revision of an edited message"
        if not handles or handle > handles[-1]:
            i = len(handles)
        else:
            i = bisect.bisect_left(handles, handle)
        if i > 0 and seqs[i - 1] >= seq:
            return "replayed or reordered message (its sequence number is not above the last)"
        if i < len(handles) and seqs[i] <= seq:
            return "replayed or reordered message (its sequence number is out of order)"
        mark = self.marks.get(key)
        if mark is not None and (
            (handle > mark[0] and seq <= mark[1]) or (handle == mark[0] and seq != mark[1])
        ):
            return "replayed message (older than one already delivered)"
        handles.insert(i, handle)
        seqs.insert(i, seq)
        session.revs[handle] = (message.rev, message.id)
        if mark is None or handle > mark[0]:
            self.marks[key] = (handle, seq)
            self.changed = True
            if len(self.marks) > self.max_marks:
                del self.marks[min(self.marks, key=lambda k: self.marks[k][0])]
        return None
