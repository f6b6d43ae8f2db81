"""Old public names keep working, with a DeprecationWarning naming the new one (until 0.3)."""

from __future__ import annotations

import importlib

import pytest

import spacenb
import spacenb.aio.events
import spacenb.sync.dataframes
import spacenb.sync.display
import spacenb.sync.tutorial

MOVED_MODULES = [
    ("spacenb.events", "spacenb.aio.events", "SpaceMessageEvent"),
    ("spacenb.dataframes", "spacenb.sync.dataframes", "history_frame"),
    ("spacenb.display", "spacenb.sync.display", "Displayable"),
    ("spacenb.tutorial", "spacenb.sync.tutorial", "open_server"),
]


@pytest.mark.parametrize(("old", "new", "name"), MOVED_MODULES)
def test_a_moved_module_forwards_with_a_warning(old: str, new: str, name: str) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} is deprecated; use {new}.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_a_moved_module_still_says_what_it_lacks() -> None:
    import spacenb.events

    with pytest.raises(AttributeError):
        _ = spacenb.events.NoSuchEvent  # type: ignore[attr-defined]


def test_the_events_stay_at_the_top_level_without_a_warning(
    recwarn: pytest.WarningsRecorder,
) -> None:
    assert spacenb.SpaceMessageEvent is spacenb.aio.events.SpaceMessageEvent
    assert spacenb.TrustedIdentity is spacenb.aio.events.TrustedIdentity
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize(
    ("old", "new"), [("History", "HistoryRequest"), ("Unsubscribe", "UnsubscribeRequest")]
)
def test_renamed_requests_keep_their_old_names(old: str, new: str) -> None:
    from spacenb.protocol import frames

    with pytest.warns(DeprecationWarning, match=f"frames.{old} is deprecated"):
        cls = getattr(frames, old)
    assert cls is getattr(frames, new)
    assert frames.REQUESTS[cls.OP] is cls


def test_the_relays_request_handler_type_keeps_its_old_name() -> None:
    from spacenb.server import handlers

    with pytest.warns(DeprecationWarning, match="handlers.Handler is deprecated"):
        old = handlers.Handler
    assert old is handlers.RequestHandler
