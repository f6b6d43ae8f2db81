"""``client.space.widget()``: the channel directory (list, create, join, then chat).

A handful of plain ipywidgets (a select, a text box, buttons); channel names from other
users are shown as option and label text, never as HTML. Button handlers run in the
kernel like a cell would, so they use the blocking facade.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import ipywidgets as widgets
import pandas as pd

from ..exceptions import SpacenbError

__all__ = ["ChannelDirectory", "Channels", "Chat"]


class Chat(Protocol):
    """A space the directory opened: it shows itself as a widget."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str | None: ...

    def widget(self) -> Any: ...


class Channels(Protocol):
    """What the directory needs of ``client.space`` (the sync facade's ``SpaceAPI`` is one)."""

    def list_channels(self) -> pd.DataFrame: ...

    def join_channel(self, name: str) -> Chat: ...

    def create_channel(self, name: str, *, private: bool = ...) -> Chat: ...


class ChannelDirectory(widgets.VBox):  # type: ignore[misc]
    """Public channels of the relay; join one (or create one) and its chat opens below."""

    def __init__(self, api: Channels, **kwargs: Any) -> None:
        self.api = api
        labels = {"description_width": "initial"}  # as wide as the label: never cut off
        self.channels = widgets.Select(
            options=[], rows=6, description="Channels", style=labels,
            layout=widgets.Layout(width="auto", min_width="320px"),
        )  # fmt: skip
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.join_button = widgets.Button(description="Join", button_style="primary")
        self.name = widgets.Text(
            placeholder="channel name", description="New channel", style=labels
        )
        self.private = widgets.Checkbox(description="private", indent=False)
        self.create_button = widgets.Button(description="Create")
        self.status = widgets.Label()
        # A block, not a flex row: the chat below takes the directory's whole width.
        self.chat = widgets.VBox(layout=widgets.Layout(width="100%"))
        self.space: Chat | None = None
        kwargs.setdefault("layout", widgets.Layout(width="100%"))
        super().__init__(
            [
                widgets.HBox(
                    [self.channels, widgets.VBox([self.refresh_button, self.join_button])]
                ),
                widgets.HBox([self.name, self.private, self.create_button]),
                self.status,
                self.chat,
            ],
            **kwargs,
        )
        self.refresh_button.on_click(lambda _b: self._act("Refreshing…", self.refresh))
        self.join_button.on_click(lambda _b: self._act("Joining…", self.join))
        self.create_button.on_click(lambda _b: self._act("Creating…", self.create))
        self.refresh()

    def _act(self, doing: str, action: Callable[[], object]) -> None:
        """Run a button's action, showing progress and any spacenb error in the status."""
        self.status.value = doing
        try:
            action()
        except SpacenbError as exc:
            self.status.value = f"{type(exc).__name__}: {exc}"

    def refresh(self) -> None:
        """Reload the channel list."""
        frame = self.api.list_channels()
        self.channels.options = list(zip(frame["name"], frame["space_id"], strict=True))
        self.status.value = f"{len(frame)} channel{'' if len(frame) == 1 else 's'}"

    def join(self) -> None:
        """Join the selected channel and open its chat."""
        if self.channels.value is None:
            self.status.value = "Pick a channel first"
            return
        self.open_space(self.api.join_channel(self.channels.value))

    def create(self) -> None:
        """Create a channel named after the text box and open its chat."""
        name = self.name.value.strip()
        if not name:
            self.status.value = "Type a channel name first"
            return
        self.open_space(self.api.create_channel(name, private=self.private.value))
        self.name.value = ""
        self.refresh()

    def open_space(self, space: Chat) -> None:
        """Show ``space``'s chat below the directory (closing the previous one)."""
        for child in self.chat.children:
            child.close()
        self.space = space
        chat = space.widget()
        chat.layout.width = "100%"
        self.chat.children = [chat]
        self.status.value = f"In {space.name or space.id}"
