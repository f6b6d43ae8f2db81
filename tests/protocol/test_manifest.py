"""The file manifest: layout arithmetic, exact JSON round trips, and validation errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spacenb.exceptions import ProtocolError
from spacenb.protocol.manifest import (
    MAX_SHARES,
    FileLayout,
    Manifest,
    SegmentEntry,
    check_share_name,
    share_name,
)

STORES = ("ws://127.0.0.1:7001", "ws://127.0.0.1:7002", "wss://shards.example/3")


def names(tag: int, n: int = 3) -> tuple[str, ...]:
    return tuple(share_name(bytes([tag, j])) for j in range(n))


def make(**changes: Any) -> Manifest:
    """10 bytes in 4-byte segments, 2 of 3: sealed segments of 32, 32, 30 bytes."""
    fields: dict[str, Any] = {
        "file_id": bytes(range(16)),
        "key": bytes(range(32)),
        "size": 10,
        "segment_size": 4,
        "k": 2,
        "n": 3,
        "stores": STORES,
        "segments": (
            SegmentEntry(0, names(0)),
            SegmentEntry(0, names(1)),
            SegmentEntry(0, names(2)),
        ),
        "name": "notes.txt",
        "content_type": "text/plain",
        "metadata": {"caption": "hello", "tags": ["a", "b"], "n": 1.5},
    }
    fields.update(changes)
    return Manifest(**fields)


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize(
    ("size", "segment_size", "count", "last"),
    [(0, 4, 0, None), (1, 4, 1, 1), (4, 4, 1, 4), (8, 4, 2, 4), (9, 4, 3, 1), (10, 1 << 20, 1, 10)],
)
def test_segments_cover_the_file(size: int, segment_size: int, count: int, last: int) -> None:
    layout = FileLayout(size, segment_size, 2, 3)
    assert layout.segment_count == count
    assert sum(layout.plaintext_length(i) for i in range(count)) == size
    if count:
        assert layout.plaintext_length(count - 1) == last


def test_share_size_and_padding() -> None:
    layout = FileLayout(size=10, segment_size=4, k=3, n=5)
    assert [layout.sealed_length(i) for i in range(3)] == [32, 32, 30]  # + 12-byte IV, 16-byte tag
    assert [layout.share_size(i) for i in range(3)] == [11, 11, 10]
    assert [layout.padding(i) for i in range(3)] == [1, 1, 0]
    with pytest.raises(IndexError):
        layout.plaintext_length(3)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((-1, 4, 1, 1), "size"),
        ((10, 0, 1, 1), "segment_size"),
        ((10, 4, 0, 1), "k"),
        ((10, 4, 3, 2), "k"),
        ((10, 4, 1, MAX_SHARES + 1), "n"),
        ((True, 4, 1, 1), "size"),
    ],
)
def test_layout_rejects_bad_parameters(args: tuple[int, int, int, int], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        FileLayout(*args)
    assert info.value.field == field


# --------------------------------------------------------------------------- round trips


def test_round_trip_through_json_is_exact() -> None:
    manifest = make()
    text = json.dumps(manifest.to_dict())
    again = Manifest.from_dict(json.loads(text))
    assert again == manifest
    assert json.dumps(again.to_dict()) == text


def test_dict_form() -> None:
    obj = make().to_dict()
    assert list(obj) == [
        "version", "file_id", "key", "name", "size", "content_type", "metadata",
        "segment_size", "k", "n", "stores", "segments",
    ]  # fmt: skip
    assert obj["version"] == 1
    assert obj["file_id"] == "AAECAwQFBgcICQoLDA0ODw"
    assert obj["segments"][0] == {"padding": 0, "shares": list(names(0))}


def test_metadata_is_normalised_and_copied() -> None:
    source = {"tags": ("a", "b"), "nested": {"x": [1]}}
    manifest = make(metadata=source)
    assert manifest.metadata == {"tags": ["a", "b"], "nested": {"x": [1]}}
    source["nested"]["x"].append(2)  # type: ignore[index]
    manifest.to_dict()["metadata"]["nested"]["x"].append(3)
    assert manifest.metadata["nested"] == {"x": [1]}
    assert Manifest.from_dict(manifest.to_dict()) == manifest


def test_optional_fields_and_empty_file() -> None:
    manifest = make(size=0, segments=(), name=None, content_type=None, metadata={})
    assert Manifest.from_dict(manifest.to_dict()) == manifest


def test_repr_hides_the_key_and_manifest_is_hashable() -> None:
    manifest = make()
    assert "key=" not in repr(manifest)
    assert hash(manifest) == hash(make())


def test_share_names() -> None:
    assert share_name(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert check_share_name("ab" * 32) == "ab" * 32
    for bad in ("AB" * 32, "ab" * 31, "zz" * 32, 7, None):
        with pytest.raises(ProtocolError):
            check_share_name(bad)


# --------------------------------------------------------------------------- validation


def altered(path: str, value: Any) -> dict[str, Any]:
    """The test manifest's dict with one (dotted path) field replaced."""
    obj = make().to_dict()
    target: Any = obj
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return obj


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("version", 2, "version"),
        ("version", "1", "version"),
        ("file_id", "AAEC", "file_id"),
        ("file_id", "not base64!", "file_id"),
        ("key", "AAECAwQFBgcICQoLDA0ODw", "key"),
        ("name", 5, "name"),
        ("name", "x" * 5000, "name"),
        ("size", -1, "size"),
        ("size", 10.0, "size"),
        ("size", 11, "segments[2].padding"),
        ("size", 8, "segments"),
        ("size", 13, "segments"),
        ("content_type", ["text/plain"], "content_type"),
        ("metadata", [], "metadata"),
        ("metadata", {"x": float("nan")}, "metadata"),
        ("metadata", {"x": "y" * (70 << 10)}, "metadata"),
        ("segment_size", 0, "segment_size"),
        ("k", 4, "k"),
        ("k", False, "k"),
        ("n", 1, "k"),
        ("n", 2, "stores"),
        ("stores", STORES[:2], "stores"),
        ("stores", "ws://a", "stores"),
        ("stores.1", "http://127.0.0.1:7002", "stores[1]"),
        ("stores.1", "ws://a b", "stores[1]"),
        ("stores.1", None, "stores[1]"),
        ("segments", [], "segments"),
        ("segments.1", {"padding": 0}, "segments[1]"),
        ("segments.1", "x", "segments[1]"),
        ("segments.1.padding", 1, "segments[1].padding"),
        ("segments.1.padding", None, "segments[1].padding"),
        ("segments.1.shares", list(names(1, 2)), "segments[1].shares"),
        ("segments.1.shares", "abc", "segments[1].shares"),
        ("segments.1.shares.2", "AB" * 32, "segments[1].shares[2]"),
    ],
)
def test_invalid_fields_are_named(path: str, value: Any, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Manifest.from_dict(altered(path, value))
    assert info.value.field == field


def test_missing_and_unknown_fields() -> None:
    obj = make().to_dict()
    del obj["stores"]
    with pytest.raises(ProtocolError) as info:
        Manifest.from_dict(obj)
    assert info.value.field == "stores"
    with pytest.raises(ProtocolError) as info:
        Manifest.from_dict({**make().to_dict(), "extra": 1})
    assert info.value.field == "extra"
    with pytest.raises(ProtocolError) as info:
        Manifest.from_dict([make().to_dict()])
    assert info.value.field == "manifest"


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ProtocolError) as info:
        make(stores=list(STORES))
    assert info.value.field == "stores"
    with pytest.raises(ProtocolError) as info:
        make(file_id="0" * 16)
    assert info.value.field == "file_id"
