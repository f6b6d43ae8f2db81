"""The file manifest: the capability that lets its holder fetch and decrypt one file.

Like a Tahoe-LAFS read cap, the manifest carries every parameter needed to rebuild the file
(key, sizes, erasure-coding ``k`` of ``n``, padding, the SHA-256 name of every share and the
store each share lives on), so nothing else has to be looked up. It is a JSON object (sent
inside a sealed message) whose layout PROTOCOL.md, "Files and shards", specifies.

This module also holds the byte-layout arithmetic (:class:`FileLayout`) and share naming, so
that the codec, the shard store and the validator agree on one definition of each.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ProtocolError
from . import crypto
from .encoding import b64d, b64e, canonical_json

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "FILE_ID_SIZE",
    "MANIFEST_VERSION",
    "MAX_SEGMENT_SIZE",
    "MAX_SHARES",
    "SEGMENT_OVERHEAD",
    "FileLayout",
    "Manifest",
    "SegmentEntry",
    "check_share_name",
    "share_name",
]

MANIFEST_VERSION = 1
DEFAULT_SEGMENT_SIZE = 1 << 20  # 1 MiB: a few segments in flight stay small, zfec runs fast
MAX_SEGMENT_SIZE = 8 << 20
MAX_SHARES = 256  # zfec's limit on n
MAX_SIZE = 2**53 - 1  # exactly representable in every JSON implementation
FILE_ID_SIZE = 16
SEGMENT_OVERHEAD = crypto.GCM_IV_SIZE + crypto.GCM_TAG_SIZE  # IV before, tag after
MAX_TEXT = 4096  # characters in the name, content type or a store URL
MAX_METADATA_BYTES = 64 << 10  # canonical JSON of the metadata object

_SHARE_NAME = re.compile(r"[0-9a-f]{64}")
_FIELDS = (
    "version", "file_id", "key", "name", "size", "content_type", "metadata",
    "segment_size", "k", "n", "stores", "segments",
)  # fmt: skip


def share_name(share: bytes | memoryview) -> str:
    """A share's name: the lowercase hex SHA-256 of its bytes."""
    return hashlib.sha256(share).hexdigest()


def check_share_name(value: object, *, field: str = "name") -> str:
    """Return ``value`` if it is a share name (64 lowercase hex digits), else raise."""
    if not isinstance(value, str) or not _SHARE_NAME.fullmatch(value):
        raise ProtocolError("a share name is 64 lowercase hex digits", field=field)
    return value


def _check_int(value: object, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError("expected an integer", field=name)
    if not low <= value <= high:
        raise ProtocolError(f"must be in [{low}, {high}]", field=name)
    return value


def _check_text(value: object, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError("expected a string" + (" or null" if optional else ""), field=name)
    if len(value) > MAX_TEXT:
        raise ProtocolError(f"longer than {MAX_TEXT} characters", field=name)
    return value


@dataclass(frozen=True, slots=True)
class FileLayout:
    """How a file of ``size`` bytes is cut into segments and each segment into shares.

    Segment ``i`` holds plaintext bytes ``[i*segment_size, (i+1)*segment_size)``; only the
    last one may be shorter, and an empty file has no segments. A segment is sealed to
    ``IV (12) || ciphertext || tag (16)``, zero-padded to a multiple of ``k`` and split
    into ``k`` blocks of ``share_size(i)`` bytes, from which zfec makes ``n`` shares.
    Raises :class:`ProtocolError` for out-of-range parameters.
    """

    size: int
    segment_size: int
    k: int
    n: int

    def __post_init__(self) -> None:
        _check_int(self.size, "size", 0, MAX_SIZE)
        _check_int(self.segment_size, "segment_size", 1, MAX_SEGMENT_SIZE)
        _check_int(self.n, "n", 1, MAX_SHARES)
        _check_int(self.k, "k", 1, self.n)

    @property
    def segment_count(self) -> int:
        return -(-self.size // self.segment_size)

    def plaintext_length(self, index: int) -> int:
        """Plaintext bytes in segment ``index``."""
        if not 0 <= index < self.segment_count:
            raise IndexError(f"segment {index} out of range")
        return min(self.segment_size, self.size - index * self.segment_size)

    def sealed_length(self, index: int) -> int:
        """Bytes of segment ``index`` once sealed (IV, ciphertext and tag)."""
        return self.plaintext_length(index) + SEGMENT_OVERHEAD

    def share_size(self, index: int) -> int:
        """Bytes in each of the ``n`` shares of segment ``index``."""
        return -(-self.sealed_length(index) // self.k)

    def padding(self, index: int) -> int:
        """Zero bytes appended to sealed segment ``index`` before it is split into ``k``."""
        return self.share_size(index) * self.k - self.sealed_length(index)


@dataclass(frozen=True, slots=True)
class SegmentEntry:
    """One segment in a manifest: its padding and the names of its ``n`` shares, in order."""

    padding: int
    shares: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Manifest:
    """Everything needed to fetch, verify and decrypt one file. Holding it grants reading.

    Share ``j`` of every segment lives on ``stores[j]``. Construction validates every field
    (types, ranges, and that segments and padding match the layout) and raises
    :class:`ProtocolError` naming the first bad field. ``metadata`` is normalised to plain
    JSON so that :meth:`from_dict` of :meth:`to_dict` gives back an equal manifest; treat
    it as read-only.
    """

    file_id: bytes
    key: bytes = field(repr=False)
    size: int
    segment_size: int
    k: int
    n: int
    stores: tuple[str, ...]
    segments: tuple[SegmentEntry, ...]
    name: str | None = None
    content_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if self.version != MANIFEST_VERSION:
            raise ProtocolError(f"unsupported manifest version {self.version!r}", field="version")
        if not isinstance(self.file_id, bytes) or len(self.file_id) != FILE_ID_SIZE:
            raise ProtocolError(f"a file id is {FILE_ID_SIZE} bytes", field="file_id")
        if not isinstance(self.key, bytes) or len(self.key) != crypto.AES_KEY_SIZE:
            raise ProtocolError(f"a file key is {crypto.AES_KEY_SIZE} bytes", field="key")
        _check_text(self.name, "name", optional=True)
        _check_text(self.content_type, "content_type", optional=True)
        object.__setattr__(self, "metadata", _normalise_metadata(self.metadata))
        layout = self.layout
        self._check_stores()
        if not isinstance(self.segments, tuple) or len(self.segments) != layout.segment_count:
            raise ProtocolError(
                f"expected {layout.segment_count} segments for size {self.size}", field="segments"
            )
        for i, entry in enumerate(self.segments):
            _check_segment(entry, f"segments[{i}]", layout.padding(i), self.n)

    def _check_stores(self) -> None:
        if not isinstance(self.stores, tuple) or len(self.stores) != self.n:
            raise ProtocolError(f"expected a list of n={self.n} store URLs", field="stores")
        for j, url in enumerate(self.stores):
            name = f"stores[{j}]"
            _check_text(url, name)
            if not url.startswith(("ws://", "wss://")) or any(c.isspace() for c in url):
                raise ProtocolError("a store URL is ws:// or wss://", field=name)

    @property
    def layout(self) -> FileLayout:
        return FileLayout(self.size, self.segment_size, self.k, self.n)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict (binary fields as base64url)."""
        return {
            "version": self.version,
            "file_id": b64e(self.file_id),
            "key": b64e(self.key),
            "name": self.name,
            "size": self.size,
            "content_type": self.content_type,
            "metadata": _normalise_metadata(self.metadata),
            "segment_size": self.segment_size,
            "k": self.k,
            "n": self.n,
            "stores": list(self.stores),
            "segments": [{"padding": s.padding, "shares": list(s.shares)} for s in self.segments],
        }

    @classmethod
    def from_dict(cls, obj: object) -> Manifest:
        """Parse and validate a manifest dict; :class:`ProtocolError` names the bad field."""
        if not isinstance(obj, dict):
            raise ProtocolError("a manifest is a JSON object", field="manifest")
        unknown = sorted(set(map(str, obj)) - set(_FIELDS))
        if unknown:
            raise ProtocolError("unknown field", field=unknown[0])
        missing = [name for name in _FIELDS if name not in obj]
        if missing:
            raise ProtocolError("missing", field=missing[0])
        return cls(
            version=_check_int(obj["version"], "version", 0, MAX_SIZE),
            file_id=b64d(obj["file_id"], field="file_id"),
            key=b64d(obj["key"], field="key"),
            name=obj["name"],
            size=obj["size"],
            content_type=obj["content_type"],
            metadata=obj["metadata"],
            segment_size=obj["segment_size"],
            k=obj["k"],
            n=obj["n"],
            stores=_tuple(obj["stores"], "stores"),
            segments=tuple(
                _segment_from_obj(item, f"segments[{i}]")
                for i, item in enumerate(_tuple(obj["segments"], "segments"))
            ),
        )


def _tuple(value: object, name: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ProtocolError("expected a list", field=name)
    return tuple(value)


def _segment_from_obj(obj: object, name: str) -> SegmentEntry:
    if not isinstance(obj, dict) or set(obj) != {"padding", "shares"}:
        raise ProtocolError("a segment is {padding, shares}", field=name)
    return SegmentEntry(obj["padding"], _tuple(obj["shares"], f"{name}.shares"))


def _check_segment(entry: object, name: str, padding: int, n: int) -> None:
    if not isinstance(entry, SegmentEntry):
        raise ProtocolError("expected a SegmentEntry", field=name)
    if _check_int(entry.padding, f"{name}.padding", 0, MAX_SHARES) != padding:
        raise ProtocolError(f"padding must be {padding} for this layout", field=f"{name}.padding")
    if not isinstance(entry.shares, tuple) or len(entry.shares) != n:
        raise ProtocolError(f"expected n={n} share names", field=f"{name}.shares")
    for j, share in enumerate(entry.shares):
        check_share_name(share, field=f"{name}.shares[{j}]")


def _normalise_metadata(value: object) -> dict[str, Any]:
    """A deep copy of ``value`` as plain JSON (dicts, lists, str, numbers, bool, null)."""
    if not isinstance(value, dict):
        raise ProtocolError("metadata is a JSON object", field="metadata")
    try:
        text = canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"not JSON-serialisable: {exc}", field="metadata") from None
    if len(text) > MAX_METADATA_BYTES:
        raise ProtocolError(f"larger than {MAX_METADATA_BYTES} bytes as JSON", field="metadata")
    result: dict[str, Any] = json.loads(text)
    return result
