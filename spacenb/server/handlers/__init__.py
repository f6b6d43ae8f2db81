"""The request table: every op of PROTOCOL.md's request table, its handler, and how the
relay treats it. This file is the one place that says which function answers which
request (as h11 keeps its state machine in one file); the handlers live one module per
area (:mod:`.auth`, :mod:`.spaces`, :mod:`.membership`, :mod:`.messages`).

The table is read-only. A relay takes its table as an argument
(:class:`~spacenb.server.core.RelayCore`, ``start_server(table=...)``), defaulting to
:data:`REQUEST_TABLE`; a test that wants a handler to misbehave builds its own table with
:func:`with_handler` and starts a relay on it.

The columns:

- ``before_auth``: accepted before ``auth`` succeeds (only ``auth`` and ``ping``);
- ``metered``: takes a token of the user's bucket (``send``, ``edit``, ``ephemeral``);
- ``batched``: its write joins the message batch, committed once per event-loop turn
  (group commit) before the answer goes out (``send``);
- ``page``: its answer is a page, milliseconds of work, which the websockets adapter
  answers one at a time in all so that pages cannot hold up messages for long.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..._deprecated import renamed
from ...protocol import frames
from . import auth, membership, messages, spaces

if TYPE_CHECKING:
    from ..core import RelayCore, Session

__all__ = ["REQUEST_TABLE", "RequestHandler", "Route", "with_handler"]

# ``handler(core, session, request) -> result`` (see :mod:`.base`); not the client's
# ``spacenb.typing.Handler``, an event callback.
RequestHandler = Callable[["RelayCore", "Session", Any], Any]


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the request table."""

    handler: RequestHandler
    before_auth: bool = False
    metered: bool = False
    batched: bool = False
    page: bool = False


REQUEST_TABLE: Mapping[str, Route] = MappingProxyType({
    # signing in
    frames.Auth.OP: Route(auth.auth, before_auth=True),
    frames.Ping.OP: Route(auth.ping, before_auth=True),
    # spaces, the directory, keys of users, shard tickets
    frames.CreateSpace.OP: Route(spaces.create_space),
    frames.GetSpaceInfo.OP: Route(spaces.space_info),
    frames.GetStateLog.OP: Route(spaces.state_log, page=True),
    frames.Resolve.OP: Route(spaces.resolve),
    frames.ListChannels.OP: Route(spaces.list_channels, page=True),
    frames.UserKeys.OP: Route(spaces.user_keys),
    frames.ShardTicket.OP: Route(spaces.shard_ticket),
    # joining, group keys and the state log
    frames.Join.OP: Route(membership.join),
    frames.Admit.OP: Route(membership.admit),
    frames.FetchKeys.OP: Route(membership.keys, page=True),
    frames.AddKeys.OP: Route(membership.add_keys),
    frames.Append.OP: Route(membership.append),
    # messages and live state
    frames.Subscribe.OP: Route(messages.subscribe),
    frames.UnsubscribeRequest.OP: Route(messages.unsubscribe),
    frames.Send.OP: Route(messages.send, metered=True, batched=True),
    frames.Edit.OP: Route(messages.edit, metered=True),
    frames.SendEphemeral.OP: Route(messages.ephemeral, metered=True),
    frames.HistoryRequest.OP: Route(messages.history, page=True),
})  # fmt: skip


def with_handler(
    op: str, handler: RequestHandler, table: Mapping[str, Route] = REQUEST_TABLE
) -> Mapping[str, Route]:
    """A copy of ``table`` whose ``op`` is answered by ``handler`` (the row's other
    columns kept)."""
    rows = dict(table)
    rows[op] = replace(rows[op], handler=handler)
    return MappingProxyType(rows)


# The name before it said which handler it is: deprecated, and gone in 0.3.
__getattr__ = renamed(__name__, {"Handler": (__name__, "RequestHandler")})
