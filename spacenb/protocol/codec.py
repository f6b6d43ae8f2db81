"""The generic codec behind every frame (PROTOCOL.md, "Frames").

A frame or record is a frozen dataclass; its annotations are its schema. For each class a
*plan* is built once: per field, a converter that checks the JSON value (type, size,
range) and turns it into the Python value, and one that turns it back. Any malformed input
raises :class:`ProtocolError` naming the field; nothing else escapes.

A binary field whose size the protocol fixes says so in its annotation,
``Annotated[bytes, Size(12)]`` (exactly 12 bytes) or ``Annotated[bytes, Size(16, 1024)]``;
a bare ``bytes`` holds at most :data:`MAX_BYTES_FIELD`. No frame, either way, is larger
than :data:`MAX_FRAME_BYTES`: :func:`dumps_frame` refuses to build one (so neither side
ever sends one) and :func:`loads_frame` refuses to read one. :func:`json_size` tells what
a record will weigh in a frame without encoding it, so answers can be cut to fit.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import orjson as _orjson  # 2-3x faster frames (BENCHMARKS.md, "JSON codec")

from ..exceptions import LimitExceededError, ProtocolError, SpacenbError
from .encoding import b64d, b64e

__all__ = [
    "MAX_BYTES_FIELD",
    "MAX_FRAME_BYTES",
    "MAX_INT",
    "MAX_LIST",
    "MAX_STR",
    "Size",
    "dumps_frame",
    "echoed",
    "expect_echo",
    "from_obj",
    "json_size",
    "keep_wire",
    "loads_frame",
    "memoized",
    "to_obj",
]

MAX_FRAME_BYTES = 1 << 20  # 1 MiB of JSON text (UTF-8) per frame, either way
MAX_STR = 4096  # characters in any text field
MAX_BYTES_FIELD = 256 << 10  # 256 KiB in any binary field (decoded)
MAX_LIST = 10_000  # items in any list field
MAX_INT = 2**53 - 1  # exactly representable in every JSON implementation


@dataclass(frozen=True, slots=True)
class Size:
    """The size in bytes a binary field must have once decoded: exactly ``least`` when
    ``most`` is left out, else ``least`` to ``most``."""

    least: int
    most: int | None = None

    @property
    def upper(self) -> int:
        return self.least if self.most is None else self.most

    def check(self, data: bytes, name: str) -> bytes:
        if self.most is None and len(data) != self.least:
            raise ProtocolError(f"must be exactly {self.least} bytes, got {len(data)}", field=name)
        if not self.least <= len(data) <= self.upper:
            raise ProtocolError(
                f"must be {self.least} to {self.upper} bytes, got {len(data)}", field=name
            )
        return data


Decoder = Callable[[Any, str], Any]
Encoder = Callable[[Any], Any]
_NONE = type(None)


def _decode_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError("expected true or false", field=name)
    return value


def _decode_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError("expected an integer", field=name)
    if not 0 <= value <= MAX_INT:
        raise ProtocolError("integer out of range", field=name)
    return value


def _decode_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError("expected a string", field=name)
    if len(value) > MAX_STR:
        raise ProtocolError(f"longer than {MAX_STR} characters", field=name)
    if not value.isascii() and not _is_unicode(value):
        raise ProtocolError("not valid Unicode (a lone surrogate)", field=name)
    return value


def _decode_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, str) and len(value) > MAX_BYTES_FIELD * 4 // 3 + 4:
        raise ProtocolError(f"longer than {MAX_BYTES_FIELD} bytes", field=name)
    data = b64d(value, field=name)
    if len(data) > MAX_BYTES_FIELD:
        raise ProtocolError(f"longer than {MAX_BYTES_FIELD} bytes", field=name)
    return data


def _sized_bytes_decoder(size: Size) -> Decoder:
    limit = size.upper * 4 // 3 + 4  # refuse an overlong text before decoding it

    def decode_sized(value: Any, name: str) -> bytes:
        if isinstance(value, str) and len(value) > limit:
            raise ProtocolError(
                f"longer than {size.upper} bytes"
                if size.most is not None
                else f"must be exactly {size.least} bytes",
                field=name,
            )
        return size.check(b64d(value, field=name), name)

    return decode_sized


_SIMPLE_DECODERS: dict[Any, Decoder] = {
    bool: _decode_bool,
    int: _decode_int,
    str: _decode_str,
    bytes: _decode_bytes,
}
_DECODERS: dict[Any, Decoder] = {}
_ENCODERS: dict[Any, Encoder] = {}


def _decoder(tp: Any) -> Decoder:
    """The checking converter for annotation ``tp``, built once per annotation."""
    dec = _DECODERS.get(tp)
    if dec is None:
        dec = _DECODERS[tp] = _compile_decoder(tp)
    return dec


def _compile_decoder(tp: Any) -> Decoder:
    simple = _SIMPLE_DECODERS.get(tp)
    if simple is not None:
        return simple
    origin = get_origin(tp)
    if origin is Annotated:
        inner_tp, *extras = get_args(tp)
        sizes = [e for e in extras if isinstance(e, Size)]
        if inner_tp is bytes and sizes:
            return _sized_bytes_decoder(sizes[0])
        return _decoder(inner_tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        nullable = _NONE in args
        (inner_tp,) = (a for a in args if a is not _NONE)
        inner = _decoder(inner_tp)

        def decode_union(value: Any, name: str) -> Any:
            if value is None and nullable:
                return None
            return inner(value, name)

        return decode_union
    if origin is Literal:
        choices = get_args(tp)
        message = "must be one of " + ", ".join(repr(a) for a in choices)

        def decode_literal(value: Any, name: str) -> Any:
            if not isinstance(value, str) or value not in choices:
                raise ProtocolError(message, field=name)
            return value

        return decode_literal
    if origin is tuple:
        item = _decoder(get_args(tp)[0])

        def decode_list(value: Any, name: str) -> tuple[Any, ...]:
            if not isinstance(value, list):
                raise ProtocolError("expected a list", field=name)
            if len(value) > MAX_LIST:
                raise ProtocolError(f"more than {MAX_LIST} items", field=name)
            return tuple(item(v, f"{name}[{i}]") for i, v in enumerate(value))

        return decode_list
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        record: type = tp

        def decode_record(value: Any, name: str) -> Any:
            if not isinstance(value, dict):
                raise ProtocolError("expected an object", field=name)
            return from_obj(record, value, prefix=f"{name}.")

        return decode_record
    raise TypeError(f"unsupported frame field type {tp!r}")  # pragma: no cover


def _encoder(tp: Any) -> Encoder:
    """The JSON converter for values annotated ``tp`` (None means: as it is)."""
    enc = _ENCODERS.get(tp)
    if enc is None:
        enc = _ENCODERS[tp] = _compile_encoder(tp)
    return enc


def _same(value: Any) -> Any:
    return value


def _encode_bytes(value: Any) -> str:
    return b64e(bytes(value))


def _compile_encoder(tp: Any) -> Encoder:
    if tp is bytes:
        return _encode_bytes
    origin = get_origin(tp)
    if origin is Annotated:
        return _encoder(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        (inner_tp,) = (a for a in get_args(tp) if a is not _NONE)
        inner = _encoder(inner_tp)
        if inner is _same:
            return _same
        return lambda value: None if value is None else inner(value)
    if origin is tuple:
        item = _encoder(get_args(tp)[0])
        if item is _same:
            return list
        return lambda value: [item(v) for v in value]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return to_obj
    return _same


def _is_unicode(text: str) -> bool:
    """False for text holding a lone UTF-16 surrogate: JSON can escape one (``"\\udc80"``),
    but it cannot be encoded as UTF-8, so storing, signing or echoing it would fail."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to read and write one record type: its fields with their converters."""

    names: frozenset[str]
    decoders: tuple[tuple[str, Decoder, bool], ...]  # name, converter, may be left out
    encoders: tuple[tuple[str, Encoder], ...]
    sizers: tuple[tuple[str, Callable[[Any], int]], ...]  # name, its value's JSON size
    fixed_size: int  # braces, commas and ``"name":`` of every field


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = [f for f in dataclasses.fields(cls) if f.init]
        plan = _PLANS[cls] = _Plan(
            frozenset(f.name for f in fields),
            # Only nullable fields (``state_log``'s link proof) may be left out; a default such as a
            # signature's b"" exists for building frames, not for reading them.
            tuple((f.name, _decoder(hints[f.name]), f.default is None) for f in fields),
            tuple((f.name, _encoder(hints[f.name])) for f in fields),
            tuple((f.name, _sizer(hints[f.name])) for f in fields),
            2 + max(len(fields) - 1, 0) + sum(len(f.name) + 3 for f in fields),
        )
    return plan


def from_obj(
    cls: type, obj: dict[str, Any], *, prefix: str = "", skip: tuple[str, ...] = ()
) -> Any:
    plan = _plan(cls)
    allowed = plan.names if not skip else _allowed(cls, plan, skip)
    if not allowed.issuperset(obj):
        unknown = set(obj) - allowed
        raise ProtocolError("unknown field", field=prefix + sorted(map(str, unknown))[0])
    read = _READERS.get(cls)
    if read is None:
        read = _READERS[cls] = _compile_reader(cls, plan)
    return read(obj, prefix)


_ALLOWED: dict[tuple[type, tuple[str, ...]], frozenset[str]] = {}


def _allowed(cls: type, plan: _Plan, skip: tuple[str, ...]) -> frozenset[str]:
    """A record's field names and the frame keys around it (``t``, ``op``)."""
    allowed = _ALLOWED.get((cls, skip))
    if allowed is None:
        allowed = _ALLOWED[(cls, skip)] = plan.names | frozenset(skip)
    return allowed


def reference_from_obj(
    cls: type, obj: dict[str, Any], *, prefix: str = "", skip: tuple[str, ...] = ()
) -> Any:
    """:func:`from_obj` as the plan states it, field by field through each converter,
    without the compiled reader: the definition the compiled readers are tested against
    (``tests/protocol/test_codec_fast.py``). Not used on any path."""
    plan = _plan(cls)
    unknown = set(obj) - plan.names - set(skip)
    if unknown:
        raise ProtocolError("unknown field", field=prefix + sorted(map(str, unknown))[0])
    kw: dict[str, Any] = {}
    for name, decode, optional in plan.decoders:
        if name not in obj:
            if optional:
                continue
            raise ProtocolError("missing", field=prefix + name)
        kw[name] = decode(obj[name], prefix + name)
    try:
        return cls(**kw)
    except SpacenbError as exc:
        raise ProtocolError(str(exc), field=prefix.rstrip(".") or None) from None


_READERS: dict[type, Callable[[dict[str, Any], str], Any]] = {}
_MISSING = object()
# Values these converters take as they are, tested inline; anything else is handed to
# the converter itself, which accepts it or raises the error it always did.
_INLINE: dict[Decoder, str] = {
    _decode_int: "type(v) is int and 0 <= v <= MAX_INT",
    _decode_str: "type(v) is str and len(v) <= MAX_STR and v.isascii()",
    _decode_bool: "type(v) is bool",
}


def _text_length(size: int) -> int:
    """The length of the unpadded base64url text of ``size`` bytes."""
    return (4 * size + 2) // 3


def _inline(tp: Any, env: dict[str, Any], i: int) -> str | None:
    """An expression of ``v``: its converted value when ``v`` is plainly good (the
    commonest case, tested inline), else ``FALLBACK``, the field's converter itself, which
    accepts it or raises its error. None when ``tp`` has no inline test."""
    origin = get_origin(tp)
    if origin is Annotated:
        inner_tp, *extras = get_args(tp)
        sizes = [e for e in extras if isinstance(e, Size)]
        if inner_tp is bytes and sizes:
            size = sizes[0]
            # Unpadded base64url text of a length in this range decodes (if it decodes)
            # to a size in the field's range: only b64d's own checks remain.
            least, most = _text_length(size.least), _text_length(size.upper)
            fits = f"len(v) == {least}" if least == most else f"{least} <= len(v) <= {most}"
            return f"(b64d(v, field=NAME) if type(v) is str and {fits} else FALLBACK)"
        return _inline(inner_tp, env, i)
    if tp is bytes:
        most = _text_length(MAX_BYTES_FIELD)
        return f"(b64d(v, field=NAME) if type(v) is str and len(v) <= {most} else FALLBACK)"
    if origin is Literal:
        env[f"c{i}"] = get_args(tp)
        return f"(v if type(v) is str and v in c{i} else FALLBACK)"
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if _NONE in args:
            (inner_tp,) = (a for a in args if a is not _NONE)
            inner = _inline(inner_tp, env, i)
            if inner is not None:
                return f"(None if v is None else {inner})"
        return None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        plan = _plan(tp)
        env[f"n{i}"] = plan.names
        env[f"r{i}"] = _reader(tp, plan)
        return f"(r{i}(v, NAME + '.') if type(v) is dict and n{i}.issuperset(v) else FALLBACK)"
    test = _INLINE.get(_decoder(tp))
    return None if test is None else f"(v if {test} else FALLBACK)"


def _reader(cls: type, plan: _Plan) -> Callable[[dict[str, Any], str], Any]:
    read = _READERS.get(cls)
    if read is None:
        read = _READERS[cls] = _compile_reader(cls, plan)
    return read


def _compile_reader(cls: type, plan: _Plan) -> Callable[[dict[str, Any], str], Any]:
    """One function per record type that checks and converts its fields in order, then
    builds it: the loop of :func:`reference_from_obj` unrolled (as ``dataclasses`` builds
    ``__init__``), with the commonest checks inline (a nested record's reader called
    directly, base64 text of a fitting length decoded at once). It accepts and refuses
    exactly what the converters do, with the same errors."""
    hints = typing.get_type_hints(cls, include_extras=True)
    env: dict[str, Any] = {
        "cls": cls,
        "ProtocolError": ProtocolError,
        "SpacenbError": SpacenbError,
        "MISSING": _MISSING,
        "MAX_INT": MAX_INT,
        "MAX_STR": MAX_STR,
        "b64d": b64d,
    }
    lines = ["def read(obj, prefix):", "    get = obj.get"]
    key = _ECHOED.get(cls, (None,))[0]
    if key is not None:
        # A record this process wrote and now reads back unchanged (a sender's own
        # message, pushed back): the very record, if every value is the one written,
        # of the same type (``1`` is not ``true``). See :func:`expect_echo`.
        same = " and ".join(f"type(v[{f!r}]) is type(w[{f!r}])" for f, _, _ in plan.decoders)
        env["ECHOES"] = _ECHOES
        lines += [
            "    if ECHOES:",
            f"        k = get({key!r})",
            "        hit = ECHOES.get(k) if type(k) is str else None",
            "        if hit is not None:",
            "            w, v = hit[0], obj",
            f"            if w == v and {same or 'True'}:",
            "                del ECHOES[k]",
            "                return hit[1]",
        ]
    names = []
    for i, (fname, decode, optional) in enumerate(plan.decoders):
        env[f"d{i}"] = decode
        name = f"prefix + {fname!r}"
        fallback = f"d{i}(v, {name})"
        lines.append(f"    v = get({fname!r}, MISSING)")
        if optional:
            lines.append(f"    if v is MISSING:\n        a{i} = None")
            lines.append("    else:")
        else:
            lines.append("    if v is MISSING:")
            lines.append(f"        raise ProtocolError('missing', field={name})")
            lines.append("    if True:")
        expr = _inline(hints[fname], env, i)
        if expr is None:
            lines.append(f"        a{i} = {fallback}")
        else:
            expr = expr.replace("FALLBACK", fallback).replace("NAME", f"({name})")
            lines.append(f"        a{i} = {expr}")
        names.append(f"a{i}")
    lines += [
        "    try:",
        f"        return cls({', '.join(names)})",
        "    except SpacenbError as exc:",
        "        raise ProtocolError(str(exc), field=prefix.rstrip('.') or None) from None",
    ]
    exec("\n".join(lines), env)  # the source is built here, from field names only
    reader: Callable[[dict[str, Any], str], Any] = env["read"]
    return reader


def to_obj(value: Any) -> dict[str, Any]:
    if _WIRES:
        kept = _WIRES.pop(id(value), None)
        if kept is not None and kept[0] is value:
            return kept[1]
    if type(value) in _MEMOIZED:
        return _memo(value)[0]
    return _to_obj(value)


# --------------------------------------------------------------------------- passed on

# Records that travel on unchanged (BENCHMARKS.md, "Issue 16: Python out of the message
# path"): the relay pushes a send's envelope as it came, and the sender reads its own
# envelope back in that push. Only small records (their bulk field's text at most
# _PASSED_ON_TEXT characters: where the Python around the codec counts) are remembered,
# at most this many of each, then all forgotten: the relay's push follows its read in the
# same call; a sender's echo comes back once its send is answered.
_PASSED_ON = 256
_RELAYED_KEPT = 16
_PASSED_ON_TEXT = 16 << 10
_ECHOED: dict[type, tuple[str, str]] = {}  # record type -> its tell-apart and bulk fields
_ECHOES: dict[str, tuple[dict[str, Any], Any]] = {}  # that field's text -> (object, record)
_WIRES: dict[int, tuple[Any, dict[str, Any]]] = {}  # id(record) -> (record, its object)
_FLAT: dict[type, tuple[tuple[tuple[str, Any], ...], tuple[str, ...]] | None] = {}


def echoed(key: str, bulk: str) -> Callable[[type[_R]], type[_R]]:
    """Class decorator for a flat record (no nested record or list) that travels on
    unchanged (an envelope: pushed by the relay as it came, and back to its sender), told
    apart by its text field ``key``, and whose field ``bulk`` is its largest: see
    :func:`expect_echo` and :func:`keep_wire`."""

    def mark(cls: type[_R]) -> type[_R]:
        _ECHOED[cls] = (key, bulk)
        return cls

    return mark


def _flat_checks(cls: type) -> tuple[tuple[tuple[str, Any], ...], tuple[str, ...]] | None:
    """Per field of a flat record: ``(name, (least, most))``, the length its base64url
    text may have, for a binary field, else ``(name, converter)``; and the field names in
    order. None if the record is not flat."""
    if cls in _FLAT:
        return _FLAT[cls]
    hints = typing.get_type_hints(cls, include_extras=True)
    checks: list[tuple[str, Any]] = []
    flat: tuple[tuple[tuple[str, Any], ...], tuple[str, ...]] | None = None
    for name, decode, _ in _plan(cls).decoders:
        tp = hints[name]
        sizes = [e for e in get_args(tp)[1:] if isinstance(e, Size)]
        inner = get_args(tp)[0] if get_origin(tp) is Annotated else tp
        if inner is bytes:
            upper = sizes[0].upper if sizes else MAX_BYTES_FIELD
            least = sizes[0].least if sizes else 0
            checks.append((name, (_text_length(least), _text_length(upper))))
        elif inner in (str, int, bool) or get_origin(inner) is Literal:
            checks.append((name, decode))
        else:
            break
    else:
        flat = (tuple(checks), tuple(name for name, _ in checks))
    _FLAT[cls] = flat
    return flat


def _readable(cls: type, obj: dict[str, Any]) -> bool:
    """Whether the reader would take ``obj``, which :func:`to_obj` made (so its binary
    fields hold canonical base64url of their bytes: only their lengths need checking)."""
    check = _READABLE.get(cls)
    if check is None:
        check = _READABLE[cls] = _compile_readable(cls)
    return check(obj)


_READABLE: dict[type, Callable[[dict[str, Any]], bool]] = {}


def _compile_readable(cls: type) -> Callable[[dict[str, Any]], bool]:
    """:func:`_readable` for one flat record type, its tests inline where the reader has
    them (else the field's converter, in a ``try``)."""
    flat = _flat_checks(cls)
    if flat is None:
        return lambda obj: False
    env: dict[str, Any] = {"SpacenbError": SpacenbError, "MAX_INT": MAX_INT, "MAX_STR": MAX_STR}
    lines = ["def readable(obj):", f"    if len(obj) != {len(flat[1])}:", "        return False"]
    for i, (name, check) in enumerate(flat[0]):
        lines.append(f"    v = obj.get({name!r}, obj)")  # (obj: a value no field has)
        if type(check) is tuple:
            lines.append(f"    if type(v) is not str or not {check[0]} <= len(v) <= {check[1]}:")
            lines.append("        return False")
            continue
        env[f"d{i}"] = check
        lines.append(f"    if not ({_INLINE.get(check, 'False')}):")
        lines.append("        try:")
        lines.append(f"            d{i}(v, {name!r})")
        lines.append("        except SpacenbError:")
        lines.append("            return False")
    lines.append("    return True")
    exec("\n".join(lines), env)  # the source is built here, from field names only
    readable: Callable[[dict[str, Any]], bool] = env["readable"]
    return readable


def expect_echo(record: Any, obj: dict[str, Any]) -> None:
    """``obj``, :func:`to_obj` of ``record`` (of an :func:`echoed` type), is being sent and
    may come back: the reader, given an object equal to it with values of the same types,
    returns ``record`` itself instead of decoding it again (once). Only a record the
    reader would take from ``obj`` is remembered, so that one coming back is refused as
    it would be without this."""
    fields = _ECHOED.get(type(record))
    if fields is None or not _readable(type(record), obj):
        return
    key, bulk = fields
    if len(obj[bulk]) > _PASSED_ON_TEXT:
        return
    if len(_ECHOES) >= _PASSED_ON:
        _ECHOES.clear()
    _ECHOES[obj[key]] = (obj, record)


def keep_wire(record: Any, obj: dict[str, Any]) -> None:
    """``record`` was just read from ``obj`` and may be written again (a send's envelope,
    pushed to the space): the next :func:`to_obj` of it gives ``obj`` back (with its keys
    in field order) instead of encoding it again: the same object, as the reader took
    only canonical values (base64url that decodes to exactly its bytes, plain ints and
    strings). Only for an :func:`echoed` type, and a small record."""
    fields = _ECHOED.get(type(record))
    flat = _flat_checks(type(record))
    if fields is None or flat is None or len(obj[fields[1]]) > _PASSED_ON_TEXT:
        return
    names = flat[1]
    if tuple(obj) != names:
        obj = {name: obj.get(name) for name in names}
    if len(_WIRES) >= _RELAYED_KEPT:
        _WIRES.clear()
    _WIRES[id(record)] = (record, obj)


def _to_obj(value: Any) -> dict[str, Any]:
    write = _WRITERS.get(type(value))
    if write is None:
        write = _WRITERS[type(value)] = _compile_writer(type(value))
    return write(value)


def reference_to_obj(value: Any) -> dict[str, Any]:
    """:func:`to_obj` as the plan states it, through each field's encoder, without the
    compiled writer (the definition it is tested against; not used on any path)."""
    return {name: encode(getattr(value, name)) for name, encode in _plan(type(value)).encoders}


_WRITERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _compile_writer(cls: type) -> Callable[[Any], dict[str, Any]]:
    """One function per record type that builds its JSON object in one expression: the
    plan's encoders, with ``bytes`` values (the commonest binary case) base64url-encoded
    inline and values written as they are taken as they are."""
    env: dict[str, Any] = {"b64e": b64e}
    items = []
    for i, (fname, encode) in enumerate(_plan(cls).encoders):
        env[f"e{i}"] = encode
        if encode is _same:
            items.append(f"{fname!r}: value.{fname}")
        elif encode is _encode_bytes:
            items.append(f"{fname!r}: b64e(x) if type(x := value.{fname}) is bytes else e{i}(x)")
        else:
            items.append(f"{fname!r}: e{i}(value.{fname})")
    exec(f"def write(value):\n    return {{{', '.join(items)}}}", env)
    writer: Callable[[Any], dict[str, Any]] = env["write"]
    return writer


_MEMOIZED: set[type] = set()
_MEMO: dict[Any, tuple[dict[str, Any], int]] = {}
_MEMO_MAX = 20_000  # records remembered (about 1 KiB each), then forgotten all at once

_R = TypeVar("_R")


def memoized(cls: type[_R]) -> type[_R]:
    """Class decorator for an immutable record that is sent many times over (a state
    event: in every log a newcomer reads): its JSON form and size are computed once per
    record, not once per frame."""
    _MEMOIZED.add(cls)
    return cls


def _memo(value: Any) -> tuple[dict[str, Any], int]:
    known = _MEMO.get(value)
    if known is None:
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        known = _MEMO[value] = (_to_obj(value), _json_size(value))
    return known


def frame_bytes(text: str) -> int:
    """The size of a frame's text in UTF-8 bytes (what the websocket carries)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def loads_frame(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, bytes | bytearray):
        raise ProtocolError("frames are JSON text, not binary", field="frame")
    size = frame_bytes(text)
    if size > MAX_FRAME_BYTES:
        raise LimitExceededError(
            f"a frame of {size} bytes is larger than the frame limit, "
            f"MAX_FRAME_BYTES = {MAX_FRAME_BYTES} bytes"
        )
    obj = _loads(text)
    if not isinstance(obj, dict):
        raise ProtocolError("a frame is a JSON object", field="frame")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    """The frame's JSON value. orjson reads every valid frame; what it refuses (lone
    surrogate escapes, integers past 64 bits, nesting past 1,024) goes to the stdlib, so
    that what is accepted stays as with the stdlib alone, except ``NaN`` and ``Infinity``,
    which are not JSON (RFC 8259) and which no field takes: both refuse them
    (:func:`~spacenb.protocol.frames.request_id_of` still finds such a frame's id, so
    that its error names the request)."""
    try:
        return _orjson.loads(text)
    except _orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ProtocolError("not valid JSON", field="frame") from None


# What the stdlib refuses to write, orjson must refuse too (then the stdlib raises).
_PASSTHROUGH = _orjson.OPT_PASSTHROUGH_DATACLASS | _orjson.OPT_PASSTHROUGH_DATETIME


def _dumps(obj: dict[str, Any]) -> str:
    """The same text as ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``;
    what orjson cannot write (lone surrogates, integers past 64 bits) the stdlib does."""
    try:
        text: str = _orjson.dumps(obj, option=_PASSTHROUGH).decode("utf-8")
        return text
    except TypeError:  # orjson.JSONEncodeError
        pass
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def dumps_frame(obj: dict[str, Any]) -> str:
    """The frame's JSON text. Raises :class:`LimitExceededError` if it would be larger
    than :data:`MAX_FRAME_BYTES`: such a frame is never sent."""
    text = _dumps(obj)
    # A character is at most 4 UTF-8 bytes: only a long text needs measuring.
    if len(text) > MAX_FRAME_BYTES // 4 and frame_bytes(text) > MAX_FRAME_BYTES:
        raise LimitExceededError(
            f"a frame of {frame_bytes(text)} bytes would be larger than the frame limit, "
            f"MAX_FRAME_BYTES = {MAX_FRAME_BYTES} bytes"
        )
    return text


_encode_json_str = json.encoder.encode_basestring


def _str_size(text: str) -> int:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text) + 2
    return frame_bytes(_encode_json_str(text))


Sizer = Callable[[Any], int]
_SIZERS: dict[Any, Sizer] = {}


def _bytes_size(value: Any) -> int:
    return (4 * len(value) + 2) // 3 + 2  # unpadded base64url, quoted


def _int_size(value: Any) -> int:
    return len(str(value))


def _bool_size(value: Any) -> int:
    return 4 if value else 5


def _sizer(tp: Any) -> Sizer:
    """How many bytes a value annotated ``tp`` takes in a frame, built once per annotation."""
    sizer = _SIZERS.get(tp)
    if sizer is None:
        sizer = _SIZERS[tp] = _compile_sizer(tp)
    return sizer


def _compile_sizer(tp: Any) -> Sizer:
    simple = {bytes: _bytes_size, int: _int_size, str: _str_size, bool: _bool_size}.get(tp)
    if simple is not None:
        return simple
    origin = get_origin(tp)
    if origin is Annotated:
        return _sizer(get_args(tp)[0])
    if origin is Literal:
        return _str_size
    if origin in (Union, types.UnionType):
        (inner_tp,) = (a for a in get_args(tp) if a is not _NONE)
        inner = _sizer(inner_tp)
        return lambda value: 4 if value is None else inner(value)
    if origin is tuple:
        item = _sizer(get_args(tp)[0])
        return lambda value: 2 + sum(map(item, value)) + max(len(value) - 1, 0)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return json_size
    raise TypeError(f"unsupported frame field type {tp!r}")  # pragma: no cover


def json_size(record: Any) -> int:
    """The UTF-8 size of ``record`` (a frame record) as the codec writes it in a frame,
    computed without encoding it: ``json_size(r) == len(dumps_frame(to_obj(r)).encode())``.
    """
    if type(record) in _MEMOIZED:
        return _memo(record)[1]
    return _json_size(record)


def _json_size(record: Any) -> int:
    plan = _plan(type(record))
    size = plan.fixed_size
    for name, sizer in plan.sizers:
        size += sizer(getattr(record, name))
    return size
