"""Live notebook views: ``space.widget()`` (a chat) and ``client.space.widget()`` (a directory).

``chat_state`` is the pure model of a chat view, ``chat`` its anywidget (``chat.js`` draws
it), ``directory`` the channel directory.
"""

from __future__ import annotations

from .chat import ChatWidget
from .chat_state import ChatState
from .directory import ChannelDirectory

__all__ = ["ChannelDirectory", "ChatState", "ChatWidget"]
