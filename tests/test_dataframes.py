"""Every facade DataFrame: columns, dtypes (also when empty), derived fields."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import pytest

from spacenb.aio import History, InviteLink
from spacenb.aio.events import SpaceMessageEvent
from spacenb.protocol.envelope import Message
from spacenb.protocol.frames import ChannelEntry, MemberEntry, RosterEntry
from spacenb.sync import dataframes as d

HANDLE = 1_767_225_600_123_456  # 2026-01-01 00:00:00.123456 UTC


def event(handle: int, body: object, content_type: str | None = None) -> SpaceMessageEvent:
    return SpaceMessageEvent("alice", "default", 3, content_type, handle, Message("ab", 0, body))


def dtypes(df: pd.DataFrame) -> dict[str, object]:
    return df.dtypes.to_dict()


@pytest.mark.parametrize(
    ("build", "schema"),
    [
        (d.channels_frame, d.CHANNEL_COLUMNS),
        (d.members_frame, d.MEMBER_COLUMNS),
        (d.roster_frame, d.ROSTER_COLUMNS),
        (d.invite_links_frame, d.INVITE_LINK_COLUMNS),
    ],
)
def test_empty_frames_keep_columns_and_dtypes(build, schema) -> None:  # type: ignore[no-untyped-def]
    df = build([])
    assert df.empty
    assert dtypes(df) == d.schema_dtypes(schema)


def test_records_become_rows() -> None:
    assert d.channels_frame([ChannelEntry("general", "spc.x")]).to_dict("records") == [
        {"name": "general", "space_id": "spc.x"}
    ]
    assert d.members_frame([MemberEntry("bob", "viewer")])["role"].tolist() == ["viewer"]
    roster = d.roster_frame([RosterEntry("bob", "editor", "sig.a", "dh.b", True)])
    assert dtypes(roster) == d.schema_dtypes(d.ROSTER_COLUMNS)
    assert roster["online"].tolist() == [True]


def test_invite_links_missing_values() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    links = d.invite_links_frame(
        [InviteLink(None, "l1", "spc.x", "viewer", None, None, 0, False, created)]
    )
    assert dtypes(links) == d.schema_dtypes(d.INVITE_LINK_COLUMNS)
    row = links.iloc[0]
    assert pd.isna(row["token"]) and pd.isna(row["expires_at"]) and pd.isna(row["max_uses"])
    assert row["created_at"] == pd.Timestamp(created)


def test_history_frame_derives_time_from_the_handle() -> None:
    df = d.history_frame(
        History((event(HANDLE, "hi"), event(HANDLE + 1, [1, 2], "x/y")), 42, unreadable=3)
    )
    assert dtypes(df) == d.schema_dtypes(d.HISTORY_COLUMNS)
    assert str(df["sent_at"].dtype) == "datetime64[ns, UTC]"
    assert df["handle"].dtype == "int64" and df["epoch"].dtype == "int64"
    assert df["sent_at"].iloc[0] == pd.Timestamp("2026-01-01 00:00:00.123456", tz="UTC")
    assert df["body"].tolist() == ["hi", [1, 2]]
    assert df["content_type"].tolist() == [None, "x/y"]  # missing is None, never NaN
    assert df.attrs["next_cursor"] == 42
    assert df.attrs["unreadable"] == 3


def test_empty_history() -> None:
    df = d.history_frame(History((), None))
    assert df.empty and dtypes(df) == d.schema_dtypes(d.HISTORY_COLUMNS)
    assert df.attrs == {"next_cursor": None, "unreadable": 0}


def test_handle_time_is_exact_to_the_microsecond() -> None:
    assert d.handle_time(HANDLE) == datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


def test_to_frame_takes_mappings_and_rejects_other_records() -> None:
    @dataclass
    class Point:
        x: int

    schema = {"x": "int64"}
    assert d.to_frame([Point(1), {"x": 2}], schema)["x"].tolist() == [1, 2]
    with pytest.raises(TypeError):
        d.to_frame([object()], schema)
    with pytest.raises(KeyError):
        d.to_frame([{"y": 1}], schema)
