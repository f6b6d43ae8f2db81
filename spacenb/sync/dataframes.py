"""Every DataFrame the sync facade returns is built here, from dataclasses.

Like ib_insync's ``util.df``: records go in, one row each, one column per field. Each
result kind has a fixed schema (column → dtype), so an empty result is an empty frame with
the same columns and dtypes as a full one, and ``df.dtypes`` never depends on the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..units import handle_time

__all__ = [
    "CHANNEL_COLUMNS",
    "HISTORY_COLUMNS",
    "INVITE_LINK_COLUMNS",
    "MEMBER_COLUMNS",
    "ROSTER_COLUMNS",
    "STATE_LOG_COLUMNS",
    "TRUSTED_IDENTITY_COLUMNS",
    "channels_frame",
    "history_frame",
    "invite_links_frame",
    "members_frame",
    "roster_frame",
    "schema_dtypes",
    "state_log_frame",
    "to_frame",
    "trusted_identities_frame",
]

UTC_NS = "datetime64[ns, UTC]"

Schema = Mapping[str, str]
Row = Callable[[Any], Mapping[str, Any]]

CHANNEL_COLUMNS: Schema = {"name": "str", "space_id": "str"}
MEMBER_COLUMNS: Schema = {"member_id": "str", "role": "str"}
ROSTER_COLUMNS: Schema = {
    "member_id": "str",
    "role": "str",
    "signing_key": "str",
    "ecdh_key": "str",
    "online": "bool",
}
INVITE_LINK_COLUMNS: Schema = {
    "token": "str",
    "link_id": "str",
    "space_id": "str",
    "role": "str",
    "expires_at": UTC_NS,
    "max_uses": "Int64",
    "uses": "int64",
    "revoked": "bool",
    "created_at": UTC_NS,
}
STATE_LOG_COLUMNS: Schema = {
    "seq": "int64",
    "kind": "str",
    "actor": "str",
    "member": "object",
    "role": "object",
    "epoch": "Int64",
    "at": UTC_NS,
    "hash": "str",
}
TRUSTED_IDENTITY_COLUMNS: Schema = {
    "username": "str",
    "fingerprint": "str",
    "first_seen": UTC_NS,
    "verified": "bool",
}
HISTORY_COLUMNS: Schema = {
    "handle": "int64",
    "sent_at": UTC_NS,
    "sender": "str",
    "channel": "str",
    "epoch": "int64",
    "content_type": "object",  # a string, or None (not NaN) when the sender set none
    "body": "object",
}


def schema_dtypes(columns: Schema) -> dict[str, Any]:
    """The dtype of each column of a frame with this schema, as pandas spells it here
    (``"str"`` is pandas' string dtype from pandas 3 on, ``object`` before)."""
    return {name: pd.api.types.pandas_dtype(dtype) for name, dtype in columns.items()}


def _fields(record: Any) -> Mapping[str, Any]:
    if isinstance(record, Mapping):
        return record
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    raise TypeError(f"cannot make a row from {type(record).__name__}")


def _column(values: list[Any], dtype: str) -> pd.Series:
    if dtype == UTC_NS:
        return pd.Series(pd.to_datetime(pd.Series(values, dtype=object), utc=True)).astype(dtype)
    return pd.Series(values, dtype=dtype)


def to_frame(records: Iterable[Any], columns: Schema, *, row: Row | None = None) -> pd.DataFrame:
    """One row per record (a dataclass or a mapping), with exactly ``columns``' dtypes.

    ``row(record)`` may derive fields the record does not hold by name. Raises
    ``TypeError`` for a record that is neither a dataclass nor a mapping and ``KeyError``
    for a record lacking a column.
    """
    get = row or _fields
    data: dict[str, list[Any]] = {name: [] for name in columns}
    for record in records:
        values = get(record)
        for name, column in data.items():
            column.append(values[name])
    return pd.DataFrame({name: _column(data[name], dtype) for name, dtype in columns.items()})


def channels_frame(channels: Iterable[Any]) -> pd.DataFrame:
    """``list_channels()``: ``name``, ``space_id``."""
    return to_frame(channels, CHANNEL_COLUMNS)


def members_frame(members: Iterable[Any]) -> pd.DataFrame:
    """``members()``: ``member_id``, ``role``."""
    return to_frame(members, MEMBER_COLUMNS)


def roster_frame(roster: Iterable[Any]) -> pd.DataFrame:
    """``roster()``: who is a member, their role, their published keys, and who is online."""
    return to_frame(roster, ROSTER_COLUMNS)


def invite_links_frame(links: Iterable[Any]) -> pd.DataFrame:
    """``list_invite_links()``: one row per link (``token`` is missing unless just minted)."""
    return to_frame(links, INVITE_LINK_COLUMNS)


def _history_row(event: Any) -> Mapping[str, Any]:
    return {
        "handle": event.handle,
        "sent_at": handle_time(event.handle),
        "sender": event.sender,
        "channel": event.channel,
        "epoch": event.epoch,
        "content_type": event.content_type,
        "body": event.message.body,
    }


def history_frame(history: Any) -> pd.DataFrame:
    """``Space.history()``: one row per message, oldest first.

    ``history`` is the async core's ``History(messages, next_cursor)``; the cursor for the
    next (older) page is kept in ``df.attrs["next_cursor"]`` (None at the start), and the
    number of stored messages this member could not read in ``df.attrs["unreadable"]``.
    Built a column at a time from arrays (``sent_at`` from the handles in one step): the
    same frame as :func:`to_frame` with :func:`_history_row` makes, for a fraction of the
    time (pandas aligns no Series, converts no datetime one by one).
    """
    events = history.messages
    count = len(events)

    def objects(values: Iterable[Any]) -> Any:
        # items kept as they are (a list body stays one cell), and no dtype inferred
        return pd.Series(np.fromiter(values, dtype=object, count=count), dtype=object)

    handles = np.fromiter((e.handle for e in events), dtype=np.int64, count=count)
    df = pd.DataFrame(
        {
            "handle": handles,
            # handles are at most 2**53 µs (year 2255): no overflow in nanoseconds
            "sent_at": pd.DatetimeIndex((handles * 1000).view("M8[ns]"), tz="UTC"),
            "sender": pd.array([e.sender for e in events], dtype="str"),
            "channel": pd.array([e.channel for e in events], dtype="str"),
            "epoch": np.fromiter((e.epoch for e in events), dtype=np.int64, count=count),
            "content_type": objects(e.content_type for e in events),
            "body": objects(e.message.body for e in events),
        },
        copy=False,
    )
    df.attrs["next_cursor"] = history.next_cursor
    df.attrs["unreadable"] = history.unreadable
    return df


def state_log_frame(entries: Iterable[Any]) -> pd.DataFrame:
    """``Space.state_log()``: the space's verified state events, oldest first."""
    return to_frame(entries, STATE_LOG_COLUMNS)


def trusted_identities_frame(identities: Iterable[Any]) -> pd.DataFrame:
    """``Client.trusted_identities()``: the identities this client pinned."""
    return to_frame(identities, TRUSTED_IDENTITY_COLUMNS)
