"""Live notebook views: ``space.widget()`` (a chat) and ``client.space.widget()`` (a directory).

``chat_state`` is the pure model of a chat view (``bodies`` decides how a body shows,
``looks`` how a person does), ``chat`` its anywidget (``chat.js`` draws it), ``directory``
the channel directory. A chat view needs only an async space and a :class:`LoopRunner`.
"""

from __future__ import annotations

from .chat import ChatWidget, LoopRunner
from .chat_state import ChatState
from .directory import ChannelDirectory

__all__ = ["ChannelDirectory", "ChatState", "ChatWidget", "LoopRunner"]
