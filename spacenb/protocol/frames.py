"""Every frame the client and the relay exchange (PROTOCOL.md, "Frames").

Frames are JSON text objects. Four shapes, told apart by ``t``:

- ``{"t": "req", "id": n, "op": ..., <fields>}``   client → relay, a request;
- ``{"t": "res", "id": n, "result": {<fields>}}``  relay → client, its answer;
- ``{"t": "err", "id": n|null, "code": ..., "message": ...}``  relay → client, a refusal;
- ``{"t": "evt", "ev": ..., <fields>}``            relay → client, pushed.

Each request and event is a frozen, slotted dataclass; its fields and their types are the
schema. One generic codec checks every field against its annotation (type, size, no
unknown or missing fields) and raises :class:`ProtocolError` naming the field for any
malformed input. Binary fields travel as unpadded base64url.

No frame is larger than :data:`MAX_FRAME_BYTES`, either way. Every answer that lists
things is bounded: by a count (``MAX_*_PAGE``) small enough that the page always fits, or,
where items can be large (messages, state events), also by bytes (:func:`fitting`), with a
cursor to the rest (PROTOCOL.md, "Limits").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import (
    Annotated,
    Any,
    ClassVar,
    Generic,
    Literal,
    Self,
    TypeVar,
    dataclass_transform,
)

from .._deprecated import renamed
from ..exceptions import LimitExceededError, ProtocolError, SpacenbError
from .codec import (
    MAX_BYTES_FIELD,
    MAX_FRAME_BYTES,
    MAX_INT,
    MAX_STR,
    Size,
    dumps_frame,
    expect_echo,
    from_obj,
    json_size,
    keep_wire,
    loads_frame,
    to_obj,
)
from .encoding import lp_encode
from .envelope import Envelope
from .keyring import HistoryPolicy
from .statelog import StateEvent
from .wrap import WrappedKey

__all__ = [
    "EVENTS",
    "MAX_BYTES_FIELD",
    "MAX_CHANNELS_PAGE",
    "MAX_FRAME_BYTES",
    "MAX_HISTORY_LIMIT",
    "MAX_KEYS_PAGE",
    "MAX_LOG_PAGE",
    "MAX_PEERS_PAGE",
    "MAX_USER_KEYS",
    "PAGE_BYTES",
    "REQUESTS",
    "UNSENT",
    "ErrorFrame",
    "Event",
    "Request",
    "Response",
    "fitting",
    "parse_client_frame",
    "parse_result",
    "parse_server_frame",
]

PROTOCOL_VERSION = 2
MAX_LOG_PAGE = 1000  # state events per state_log answer (and at most PAGE_BYTES of them)
MAX_HISTORY_LIMIT = 1000  # messages per history answer (and at most PAGE_BYTES of them)
MAX_CHANNELS_PAGE = 1000  # channels per list_channels answer (< 0.5 MiB, whatever names)
MAX_KEYS_PAGE = 1000  # wrapped keys per keys answer, join answer or keys event (< 0.5 MiB)
MAX_PEERS_PAGE = 1000  # usernames in a subscribe answer or a presence event
MAX_USER_KEYS = 1000  # usernames per user_keys request
PAGE_BYTES = MAX_FRAME_BYTES - 1024  # the items of one answer; the rest is its envelope

_T = TypeVar("_T")


def fitting(items: Iterable[_T], budget: int = PAGE_BYTES) -> tuple[list[_T], bool]:
    """The leading ``items`` whose JSON, as a list in a frame, takes at most ``budget``
    bytes, and whether any were left out (the iterable is read one item past the cut).

    Every item that may travel alone fits (a message's ciphertext is at most 256 KiB), so
    a page is never empty while items remain.
    """
    taken: list[_T] = []
    used = 2  # the list's brackets
    for item in items:
        used += json_size(item) + (1 if taken else 0)
        if used > budget and taken:
            return taken, True
        taken.append(item)
    return taken, False


Role = Literal["owner", "editor", "viewer"]


# --------------------------------------------------------------------------- shared records


@dataclass(frozen=True, slots=True)
class SpaceInfo:
    """What the relay knows of a space (never any key)."""

    space_id: str
    owner: str
    policy: HistoryPolicy
    private: bool
    manual_admit: bool
    name: str | None
    epoch: int
    keeper: str | None
    created_at_us: int
    head_seq: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    handle: int
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class ChannelEntry:
    name: str
    space_id: str


@dataclass(frozen=True, slots=True)
class MemberEntry:
    member_id: str
    role: Role


@dataclass(frozen=True, slots=True)
class RosterEntry:
    member_id: str
    role: Role
    signing_key: str
    ecdh_key: str
    online: bool


@dataclass(frozen=True, slots=True)
class UserEntry:
    username: str
    signing_key: str
    ecdh_key: str


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Ok:
    pass


@dataclass(frozen=True, slots=True)
class AppendResult:
    seq: int


@dataclass(frozen=True, slots=True)
class StateLogPage:
    """Events ``since`` … of a space's log, in order, and the relay's head. It may hold
    fewer events than asked (a frame holds at most :data:`PAGE_BYTES` of them): ask again
    from the one after the last while it is below ``head_seq``."""

    events: tuple[StateEvent, ...]
    head_seq: int


@dataclass(frozen=True, slots=True)
class AuthResult:
    username: str
    created: bool
    keeper: str | None
    # The relay's shard stores: the only ones a client fetches shares from (besides those
    # it is told to trust), whatever a manifest says.
    shard_stores: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ResolveResult:
    space_id: str | None


@dataclass(frozen=True, slots=True)
class ChannelList:
    """Public channels by name, at most :data:`MAX_CHANNELS_PAGE`; ``next_after`` (the
    last name) goes to the next ``list_channels`` while there are more."""

    channels: tuple[ChannelEntry, ...]
    next_after: str | None = None


@dataclass(frozen=True, slots=True)
class JoinResult:
    space: SpaceInfo
    role: Role
    keys: tuple[WrappedKey, ...]
    pending: bool


@dataclass(frozen=True, slots=True)
class KeysResult:
    """Wrapped keys by epoch, at most :data:`MAX_KEYS_PAGE`; ``next_epoch`` goes to the
    next ``keys`` request while there are more."""

    keys: tuple[WrappedKey, ...]
    next_epoch: int | None = None


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """``peers``: who is online, up to :data:`MAX_PEERS_PAGE`; the rest follow at once as
    ``presence`` events."""

    peers: tuple[str, ...]
    epoch: int
    head_seq: int


@dataclass(frozen=True, slots=True)
class HandleResult:
    handle: int


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Messages oldest first: at most the ``limit`` asked and at most :data:`PAGE_BYTES`
    of them (the newest that fit); ``next_cursor`` goes to ``before`` for older ones."""

    items: tuple[StoredMessage, ...]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class UserKeysResult:
    users: tuple[UserEntry, ...]


@dataclass(frozen=True, slots=True)
class TicketResult:
    ticket: str
    stores: tuple[str, ...]
    shards_needed: int
    expires_at_us: int


# --------------------------------------------------------------------------- requests

REQUESTS: dict[str, type[Request[Any]]] = {}

# The id of a request built before it is sent: the client builds ``Subscribe(UNSENT,
# space_id=...)`` and its connection stamps the real id (:meth:`Request.stamped`). No
# request on the wire has it: the connection's ids start at 1.
UNSENT = 0

ResultT = TypeVar("ResultT")


@dataclass(frozen=True, slots=True)
class Request(Generic[ResultT]):
    """Base of every client → relay request. ``id`` pairs it with its answer (a client
    builds it :data:`UNSENT` and its connection stamps it); the type parameter is the
    answer's record type (``RESULT`` at run time)."""

    OP: ClassVar[str] = ""
    RESULT: ClassVar[type] = Ok
    # The field the relay passes on to the space as it came (a message's envelope), and
    # whether it comes back to the sender too (stored messages and edits do).
    RELAYED: ClassVar[str] = ""
    ECHOED: ClassVar[bool] = False
    id: int

    def stamped(self, request_id: int) -> Self:
        """This request with id ``request_id`` (the connection's, as it sends it)."""
        return replace(self, id=request_id)

    def to_json(self, request_id: int | None = None) -> str:
        """The frame's text; with ``request_id``, that of :meth:`stamped` (cheaper)."""
        obj = to_obj(self)
        if request_id is not None:
            obj["id"] = request_id  # (the key keeps its place: the same text)
        text = dumps_frame({"t": "req", "op": self.OP, **obj})
        if self.ECHOED:
            expect_echo(getattr(self, self.RELAYED), obj[self.RELAYED])
        return text


_R = TypeVar("_R", bound="Request[Any]")
_E = TypeVar("_E", bound="Event")


# dataclass_transform tells type checkers that the decorated classes are dataclasses, so
# their fields are known to callers (``Auth(id=1, app_key=...)``).
@dataclass_transform(frozen_default=True)
def _request(op: str, result: type = Ok) -> Callable[[type[_R]], type[_R]]:
    def wrap(cls: type[_R]) -> type[_R]:
        cls.OP = op
        cls.RESULT = result
        made: type[_R] = dataclass(frozen=True, slots=True)(cls)
        REQUESTS[op] = made
        return made

    return wrap


@_request("auth", AuthResult)
class Auth(Request[AuthResult]):
    """Sign up (first use of a username) or sign in; proves the identity signing key."""

    app_key: str
    username: str
    signing_key: str
    ecdh_key: str
    signature: Annotated[bytes, Size(64)]


@_request("ping")
class Ping(Request[Ok]):
    pass


@_request("create_space", SpaceInfo)
class CreateSpace(Request[SpaceInfo]):
    """Create a space from its genesis event (registering its name as a channel)."""

    genesis: StateEvent
    keys: tuple[WrappedKey, ...]


@_request("space_info", SpaceInfo)
class GetSpaceInfo(Request[SpaceInfo]):
    space_id: str


@_request("resolve", ResolveResult)
class Resolve(Request[ResolveResult]):
    name: str


@_request("list_channels", ChannelList)
class ListChannels(Request[ChannelList]):
    """Public channels whose name sorts after ``after`` (from the start when None)."""

    after: str | None = None


@_request("join", JoinResult)
class Join(Request[JoinResult]):
    """Join with a signed ``add`` event (None when already a member: learn one's keys)."""

    space_id: str
    event: StateEvent | None


@_request("admit")
class Admit(Request[Ok]):
    """A key-holder admits ``member`` by handing over wrapped group keys."""

    space_id: str
    member: str
    keys: tuple[WrappedKey, ...]


@_request("append", AppendResult)
class Append(Request[AppendResult]):
    """Append a signed state event; ``keys`` carries an ``epoch`` event's wrapped keys."""

    space_id: str
    event: StateEvent
    keys: tuple[WrappedKey, ...]


@_request("state_log", StateLogPage)
class GetStateLog(Request[StateLogPage]):
    """Events ``since`` … (at most ``limit``). A private space's log is served to its
    members, to invited users and to the holder of a link (``link_id`` and ``proof``, the
    link key's signature over :func:`log_read_signed_bytes`)."""

    space_id: str
    since: int
    limit: int
    link_id: str | None = None
    proof: Annotated[bytes, Size(64)] | None = None


@_request("keys", KeysResult)
class FetchKeys(Request[KeysResult]):
    """The group keys wrapped for the caller in this space, from epoch ``since_epoch``."""

    space_id: str
    since_epoch: int | None = None


@_request("add_keys")
class AddKeys(Request[Ok]):
    """Hand over keys the caller wrapped for members the log entitles to them (the rest of
    a rotation's keys, when they do not all fit in its ``append``)."""

    space_id: str
    keys: tuple[WrappedKey, ...]


@_request("subscribe", SubscribeResult)
class Subscribe(Request[SubscribeResult]):
    space_id: str


@_request("unsubscribe")
class UnsubscribeRequest(Request[Ok]):
    space_id: str


@_request("send", HandleResult)
class Send(Request[HandleResult]):
    """Store a message. ``resend`` true: the same envelope again, after a send whose
    outcome was unknown: answered with its handle if the space stored it, else
    ``not_found``, and never stored (PROTOCOL.md, "Requests")."""

    RELAYED: ClassVar[str] = "envelope"
    ECHOED: ClassVar[bool] = True
    envelope: Envelope
    resend: bool | None = None


@_request("edit", HandleResult)
class Edit(Request[HandleResult]):
    RELAYED: ClassVar[str] = "envelope"
    ECHOED: ClassVar[bool] = True
    handle: int
    envelope: Envelope


@_request("ephemeral")
class SendEphemeral(Request[Ok]):
    RELAYED: ClassVar[str] = "envelope"  # (to the others only)
    envelope: Envelope


@_request("history", HistoryPage)
class HistoryRequest(Request[HistoryPage]):
    space_id: str
    before: int | None
    limit: int


@_request("user_keys", UserKeysResult)
class UserKeys(Request[UserKeysResult]):
    usernames: tuple[str, ...]


@_request("shard_ticket", TicketResult)
class ShardTicket(Request[TicketResult]):
    space_id: str


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class Response:
    """A successful answer; ``result`` is parsed by :func:`parse_result`."""

    id: int
    result: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, request_id: int, result: Any) -> Response:
        return cls(request_id, to_obj(result))

    def to_json(self) -> str:
        return dumps_frame({"t": "res", "id": self.id, "result": self.result})


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """A refusal. ``id`` is None when the request could not even be read."""

    id: int | None
    code: str
    message: str

    @classmethod
    def of(cls, request_id: int | None, error: SpacenbError) -> ErrorFrame:
        # The message may quote the peer's input (an unknown field's name): escape any lone
        # surrogate, or the frame could not be sent as UTF-8 text.
        message = str(error).encode("utf-8", "backslashreplace").decode("utf-8")
        return cls(request_id, error.code, message)

    def to_json(self) -> str:
        return dumps_frame({"t": "err", "id": self.id, "code": self.code, "message": self.message})


# --------------------------------------------------------------------------- events

EVENTS: dict[str, type[Event]] = {}


@dataclass(frozen=True, slots=True)
class Event:
    EV: ClassVar[str] = ""

    def to_json(self) -> str:
        return dumps_frame({"t": "evt", "ev": self.EV, **to_obj(self)})


@dataclass_transform(frozen_default=True)
def _event(ev: str) -> Callable[[type[_E]], type[_E]]:
    def wrap(cls: type[_E]) -> type[_E]:
        cls.EV = ev
        made: type[_E] = dataclass(frozen=True, slots=True)(cls)
        EVENTS[ev] = made
        return made

    return wrap


@_event("hello")
class Hello(Event):
    """First frame on every connection: the challenge to sign."""

    server: str
    version: int
    nonce: Annotated[bytes, Size(32)]
    keeper: str | None


@_event("message")
class MessagePushed(Event):
    handle: int
    envelope: Envelope


@_event("edited")
class MessageEdited(Event):
    handle: int
    envelope: Envelope


@_event("ephemeral")
class EphemeralPushed(Event):
    envelope: Envelope


@_event("presence")
class Presence(Event):
    """Who came online in the space and who went (the full list is in ``subscribe``'s
    answer; sending only the change keeps a join into a big channel cheap)."""

    space_id: str
    joined: tuple[str, ...]
    left: tuple[str, ...]


@_event("join_request")
class JoinRequested(Event):
    space_id: str
    member_id: str
    signing_key: str
    ecdh_key: str
    role: Role


@_event("keys")
class KeysPushed(Event):
    space_id: str
    keys: tuple[WrappedKey, ...]


@_event("state")
class StatePushed(Event):
    """A state event the relay appended to a space's log (verify before believing)."""

    space_id: str
    event: StateEvent


# --------------------------------------------------------------------------- entry points


def _frame_id(obj: dict[str, Any]) -> int:
    rid = obj.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid <= MAX_INT:
        raise ProtocolError("request id must be a non-negative integer", field="id")
    return rid


def parse_client_frame(text: str | bytes) -> Request[Any]:
    """Parse a client → relay frame. Raises :class:`ProtocolError` (or
    :class:`LimitExceededError` for an oversize frame); nothing else escapes."""
    obj = loads_frame(text)
    if obj.get("t") != "req":
        raise ProtocolError("expected a request frame (t = 'req')", field="t")
    _frame_id(obj)
    op = obj.get("op")
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(f"unknown operation {op!r}"[:200], field="op")
    req: Request[Any] = from_obj(cls, obj, skip=("t", "op"))
    if cls.RELAYED:
        keep_wire(getattr(req, cls.RELAYED), obj[cls.RELAYED])
    return req


def request_id_of(text: str | bytes) -> int | None:
    """Best effort: the ``id`` of a frame that failed to parse, to address the error
    (also of a frame that is refused only for holding ``NaN`` or ``Infinity``)."""
    if not isinstance(text, str):
        return None  # frames are text: a binary one is not read
    try:
        obj = loads_frame(text)
    except LimitExceededError:
        return None  # not read at all
    except SpacenbError:
        try:
            obj = json.loads(text)  # lenient: NaN and Infinity are read here
        except (ValueError, TypeError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
    try:
        return _frame_id(obj)
    except SpacenbError:
        return None


def parse_server_frame(text: str | bytes) -> Response | ErrorFrame | Event:
    """Parse a relay → client frame; malformed input raises :class:`ProtocolError`."""
    obj = loads_frame(text)
    kind = obj.get("t")
    if kind == "res":
        if set(obj) != {"t", "id", "result"} or not isinstance(obj["result"], dict):
            raise ProtocolError("a response has exactly t, id and an object result", field="result")
        return Response(_frame_id(obj), obj["result"])
    if kind == "err":
        rid = obj.get("id")
        code, message = obj.get("code"), obj.get("message")
        if rid is not None:
            rid = _frame_id(obj)
        if not isinstance(code, str) or not isinstance(message, str):
            raise ProtocolError("an error has a string code and message", field="code")
        return ErrorFrame(rid, code[:64], message[:MAX_STR])
    if kind == "evt":
        ev = obj.get("ev")
        cls = EVENTS.get(ev) if isinstance(ev, str) else None
        if cls is None:
            raise ProtocolError("unknown event", field="ev")
        event: Event = from_obj(cls, obj, skip=("t", "ev"))
        return event
    raise ProtocolError("unknown frame type", field="t")


def parse_result(
    request: type[Request[ResultT]] | Request[ResultT], result: dict[str, Any]
) -> ResultT:
    """Parse a response's ``result`` as the result type of ``request``."""
    parsed: ResultT = from_obj(request.RESULT, result, prefix="result.")
    return parsed


def auth_signed_bytes(
    nonce: bytes, app_key: str, username: str, signing_key: str, ecdh_key: str
) -> bytes:
    """What a user's identity key signs to sign up or sign in on one connection."""
    return lp_encode("spacenb/v1/auth", nonce, app_key, username, signing_key, ecdh_key)


def log_read_signed_bytes(space_id: str, username: str, nonce: bytes) -> bytes:
    """What a link holder signs with the link key to read a private space's log on one
    connection (``nonce`` is the connection's ``hello`` nonce)."""
    return lp_encode("spacenb/v2/link-read", space_id, username, nonce)


# The requests' names before they said what they are (``History`` reads as a page of
# messages, ``Unsubscribe`` as the callable that ``on(...)`` returns): deprecated, and
# gone in 0.3.
__getattr__ = renamed(
    __name__,
    {"History": (__name__, "HistoryRequest"), "Unsubscribe": (__name__, "UnsubscribeRequest")},
)
