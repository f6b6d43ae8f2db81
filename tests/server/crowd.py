"""Big spaces and directories, made fast: state events and channels written straight into
a running relay's storage, as if thousands of users had joined or created channels.

Each added member signs its own ``add`` (with one identity shared by the whole crowd, so
that making 100,000 of them costs 100,000 signatures, not key pairs), or, for tests that
only read pages off the relay (which replays its stored log without verifying it again),
is not signed at all.
"""

from __future__ import annotations

from spacenb.protocol.encoding import canonical_json
from spacenb.protocol.keys import IdentityKeys
from spacenb.protocol.statelog import StateEvent, make_event
from spacenb.server import RunningServer
from spacenb.server.sqlite import SQLiteStorage

CROWD = IdentityKeys.from_seed(b"spacenb tests: the crowd")


def crowd_name(i: int) -> str:
    return f"m{i:06d}"


def add_members(server: RunningServer, space_id: str, count: int, *, signed: bool = True) -> None:
    """Append ``count`` members (``m000000`` …) to a public space's log, each through its
    own ``add`` via ``open``, and make the relay read the log again."""
    relay = server.relay
    state = relay.state(space_id)
    assert state is not None and not state.private
    seq, prev = state.head_seq, state.head
    rows = []
    for i in range(count):
        seq += 1
        body = {
            "member": crowd_name(i), "signing_key": CROWD.signing_key,
            "ecdh_key": CROWD.ecdh_key, "role": "viewer", "via": "open", "link_id": None,
            "proof": None,
        }  # fmt: skip
        if signed:
            event = make_event(CROWD, space_id=space_id, seq=seq, prev=prev, kind="add",
                               actor=crowd_name(i), at_us=seq, body=body)  # fmt: skip
        else:
            event = StateEvent(space_id, seq, prev, "add", crowd_name(i), seq,
                               canonical_json(body), bytes(64))  # fmt: skip
        prev = event.hash()
        rows.append((space_id, seq, event.prev, "add", event.actor, seq, event.body,
                     event.signature))  # fmt: skip
    db = _db(server)
    db.executemany("INSERT INTO state_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    relay.core._states.pop(space_id, None)  # replayed from storage on next use


def add_channels(server: RunningServer, count: int, *, prefix: str = "channel") -> None:
    """Register ``count`` public channels (``channel000000`` …), each its own (empty)
    space, whose ids are placeholders: only the directory is there."""
    spaces, channels = [], []
    for i in range(count):
        space_id = f"spc.crowd-{prefix}-{i:06d}"
        spaces.append((space_id, 0, 0, i))
        channels.append((f"{prefix}{i:06d}", space_id))
    db = _db(server)
    db.executemany(
        "INSERT INTO spaces (space_id, private, deleted_upto, created_at_us) VALUES (?,?,?,?)",
        spaces,
    )
    db.executemany("INSERT INTO channels VALUES (?, ?)", channels)


def _db(server: RunningServer):  # type: ignore[no-untyped-def]
    storage = server.relay.storage
    assert isinstance(storage, SQLiteStorage)
    storage.commit()
    return storage._db
