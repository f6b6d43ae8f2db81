"""Hypothesis strategies that break a valid frame: the schema of every request and event
(``spacenb.protocol.frames``) tells which fields exist, how deep they nest and what type
each has, so the same mutations apply to every op the relay accepts and every event the
client accepts.

A mutation starts from a *valid* frame (one the codec parses) and changes exactly one
thing, always to something different from the original:

- ``replace``: a field (top-level or nested, e.g. ``envelope.iv`` or ``keys[0].epoch``)
  gets an arbitrary JSON value (almost always of the wrong type, or text holding a lone
  surrogate);
- ``retype``: a field gets another value of its own type (a well-formed frame carrying a
  wrong value: another space id, a foreign signature, a random envelope...);
- ``drop``: a field or header goes missing;
- ``extra``: an unknown field appears (top-level or nested);
- ``header``: ``t``, ``id``, ``op`` or ``ev`` becomes something no frame may carry.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
from typing import Any, Union, get_args, get_origin

from hypothesis import strategies as st

from spacenb.protocol import frames
from spacenb.protocol.encoding import b64e
from tests.protocol.test_frames import fields_of, json_values, valid

__all__ = ["MAX_INT", "Mutation", "garbage_frames", "is_request_id", "mutations", "to_json"]

MAX_INT = frames.MAX_INT
Path = tuple[str | int, ...]
Mutation = tuple[str, str, dict[str, Any]]  # (kind, where, mutated frame object)
# Weighted towards changing a value: parsing rejects missing, extra and header faults at
# once, while a wrong value of the right type goes on to the handlers' own checks.
KINDS = ("replace", "replace", "retype", "retype", "retype", "drop", "extra", "header")

# JSON may escape a lone UTF-16 surrogate ("\\udc80"): valid JSON text, but not Unicode.
lone_surrogates = st.tuples(
    st.text(max_size=8), st.characters(categories=["Cs"]), st.text(max_size=8)
).map("".join)
junk_values = json_values | lone_surrogates


def to_json(value: Any) -> Any:
    """A frame field value as it travels (bytes as base64url, dataclasses as objects)."""
    if isinstance(value, bytes):
        return b64e(value)
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: to_json(getattr(value, name)) for name in fields_of(type(value))}
    return value


def _record_type(tp: Any) -> type | None:
    """The dataclass a field holds (directly, optionally, or as tuple items), if any."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType, tuple):
        inner = [a for a in get_args(tp) if a is not type(None) and a is not Ellipsis]
        return _record_type(inner[0]) if len(inner) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def field_paths(
    cls: type, obj: dict[str, Any], skip: tuple[str, ...] = ()
) -> list[tuple[Path, Any]]:
    """Every field present in ``obj`` (a frame object of ``cls``), nested records
    included (the first item of a list of records), with its annotation."""
    found: list[tuple[Path, Any]] = []
    for name, tp in fields_of(cls).items():
        if name in skip or name not in obj:
            continue
        found.append(((name,), tp))
        record = _record_type(tp)
        value = obj[name]
        if record is None:
            continue
        if isinstance(value, dict):
            found += [((name, *p), t) for p, t in field_paths(record, value)]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            found += [((name, 0, *p), t) for p, t in field_paths(record, value[0])]
    return found


def _get(obj: Any, path: Path) -> Any:
    for step in path:
        obj = obj[step]
    return obj


def _parent(obj: Any, path: Path) -> Any:
    return _get(obj, path[:-1])


def _where(path: Path) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else f".{step}"
    return text.lstrip(".")


def _differs(original: Any) -> Any:
    # JSON text comparison: 1 and True, or 1 and 1.0, are different frames on the wire.
    reference = json.dumps(original, sort_keys=True)
    return lambda v: json.dumps(v, sort_keys=True) != reference


def is_request_id(value: Any) -> bool:
    """Whether a frame's ``id`` is one the codec reads (an int in range; a bool is not)."""
    return type(value) is int and 0 <= value <= MAX_INT


def _bad_header(name: str, cls: type) -> st.SearchStrategy[Any]:
    """Values of a header field that no frame of this direction accepts."""
    if name == "id":
        return json_values.filter(lambda v: not is_request_id(v))
    if name == "op":
        return json_values.filter(lambda v: not (isinstance(v, str) and v in frames.REQUESTS))
    if name == "ev":
        return json_values.filter(lambda v: not (isinstance(v, str) and v in frames.EVENTS))
    shape = "req" if issubclass(cls, frames.Request) else "evt"
    return json_values.filter(lambda v: v != shape)


@st.composite
def mutations(draw: st.DrawFn, cls: type, base: dict[str, Any]) -> Mutation:
    """One mutation of ``base``, a valid frame object of request or event class ``cls``."""
    headers = ("t", "id", "op") if issubclass(cls, frames.Request) else ("t", "ev")
    paths = field_paths(cls, base, skip=headers)
    kind = draw(st.sampled_from(KINDS if paths else ("drop", "extra", "header")))
    frame = copy.deepcopy(base)
    if kind == "header":
        name = draw(st.sampled_from(headers))
        frame[name] = draw(_bad_header(name, cls))
        return kind, name, frame
    if kind == "extra":
        nested = [p for p, _ in paths if isinstance(_get(base, p), dict)]
        nested += [(*p, 0) for p, _ in paths if isinstance(_get(base, p), list)
                   and _get(base, p) and isinstance(_get(base, p)[0], dict)]  # fmt: skip
        at = draw(st.sampled_from([(), *nested]))
        target = _get(frame, at)
        key = draw((st.text(max_size=8) | lone_surrogates).filter(lambda k: k not in target))
        target[key] = draw(json_values)
        return kind, _where((*at, key)), frame
    if kind == "drop":
        path = draw(st.sampled_from([(h,) for h in headers] + [p for p, _ in paths]))
        del _parent(frame, path)[path[-1]]
        return kind, _where(path), frame
    path, tp = draw(st.sampled_from(paths))
    parent = _parent(frame, path)
    values = junk_values if kind == "replace" else valid(tp).map(to_json)
    parent[path[-1]] = draw(values.filter(_differs(parent[path[-1]])))
    return kind, _where(path), frame


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


garbage_frames: st.SearchStrategy[str | bytes] = st.one_of(
    st.binary(max_size=256),  # a binary websocket message
    st.text(max_size=256),  # text that is (almost never) JSON
    json_values.map(json.dumps),  # JSON, but not a request object
    st.dictionaries(st.text(max_size=8), json_values, max_size=6).map(json.dumps),
    st.integers(100, 50_000).map(_nested),  # deeply nested arrays
    st.integers(100, 50_000).map(lambda d: '{"a":' * d + "1" + "}" * d),  # nested objects
)
"""Frames that are not requests at all: every one must be answered ``bad_frame``."""
