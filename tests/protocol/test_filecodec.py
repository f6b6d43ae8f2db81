"""Segment codec: round trips, any k of n, hash checks before decoding, AAD binding."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spacenb.exceptions import IntegrityError, NotEnoughSharesError, ProtocolError
from spacenb.protocol import crypto
from spacenb.protocol.encoding import lp_encode
from spacenb.protocol.filecodec import EncodedSegment, FileDecoder, FileEncoder
from spacenb.protocol.manifest import DEFAULT_SEGMENT_SIZE, Manifest

STORES = tuple(f"ws://127.0.0.1:{7000 + j}" for j in range(8))


def encode(
    data: bytes, *, k: int = 3, n: int = 5, segment_size: int = 16, key: bytes | None = None
) -> tuple[Manifest, list[EncodedSegment]]:
    encoder = FileEncoder(
        len(data), k=k, n=n, stores=STORES[:n], segment_size=segment_size, key=key
    )
    segments = [
        encoder.encode_segment(i, data[i * segment_size : (i + 1) * segment_size])
        for i in range(encoder.layout.segment_count)
    ]
    return encoder.manifest(), segments


def decode(manifest: Manifest, segments: list[EncodedSegment], nums: tuple[int, ...]) -> bytes:
    decoder = FileDecoder(manifest)
    return b"".join(
        decoder.decode_segment(s.index, {j: s.shares[j] for j in nums}) for s in segments
    )


def flip(data: bytes, index: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 64, 100])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    manifest, segments = encode(data)
    assert manifest.size == size
    assert len(manifest.segments) == len(segments) == -(-size // 16)
    assert decode(manifest, segments, (0, 1, 2)) == data
    assert decode(manifest, segments, (2, 3, 4)) == data


def test_default_segment_size_round_trip() -> None:
    data = os.urandom(DEFAULT_SEGMENT_SIZE * 2 + 5)
    manifest, segments = encode(data, segment_size=DEFAULT_SEGMENT_SIZE)
    assert manifest.segment_size == DEFAULT_SEGMENT_SIZE == 1 << 20
    assert len(segments) == 3
    assert decode(manifest, segments, (1, 3, 4)) == data


def test_any_k_of_n_shares_decode() -> None:
    data = os.urandom(50)
    manifest, segments = encode(data)
    for nums in itertools.combinations(range(5), 3):
        assert decode(manifest, segments, nums) == data
    decoder = FileDecoder(manifest)
    shares = dict(enumerate(segments[0].shares))  # more than k is fine too
    assert decoder.decode_segment(0, shares) == data[:16]


def test_shares_are_named_by_their_sha256() -> None:
    manifest, segments = encode(os.urandom(40))
    for entry, segment in zip(manifest.segments, segments, strict=True):
        assert entry == segment.entry
        layout = manifest.layout
        sizes = {len(share) for share in segment.shares}
        assert sizes == {layout.share_size(segment.index)}
        assert segment.names == tuple(hashlib.sha256(share).hexdigest() for share in segment.shares)


def test_fewer_than_k_shares() -> None:
    manifest, segments = encode(os.urandom(20))
    with pytest.raises(NotEnoughSharesError):
        FileDecoder(manifest).decode_segment(
            0, {0: segments[0].shares[0], 4: segments[0].shares[4]}
        )


def test_corrupt_share_is_rejected_by_hash_before_decoding() -> None:
    manifest, segments = encode(os.urandom(20))
    decoder = FileDecoder(manifest)
    shares = {j: segments[0].shares[j] for j in (0, 3, 4)}
    shares[3] = flip(shares[3])
    assert decoder.invalid_shares(0, shares) == [3]

    class Untouchable:
        def decode(self, *args: object) -> None:
            raise AssertionError("decoded a share that failed its hash check")

    decoder._fec = Untouchable()
    with pytest.raises(IntegrityError, match="do not match"):
        decoder.decode_segment(0, shares)
    shares[3] = segments[0].shares[3][:-1]  # truncated
    assert decoder.invalid_shares(0, shares) == [3]
    assert decoder.invalid_shares(0, {9: b""}) == [9]  # no such share number


def test_swapped_segments_fail_to_authenticate() -> None:
    manifest, segments = encode(os.urandom(48))
    entries = manifest.segments
    swapped = dataclasses.replace(manifest, segments=(entries[1], entries[0], entries[2]))
    decoder = FileDecoder(swapped)
    shares = dict(enumerate(segments[1].shares))  # segment 1's shares match entry 0's hashes
    assert decoder.invalid_shares(0, shares) == []
    with pytest.raises(IntegrityError):
        decoder.decode_segment(0, shares)  # but the AAD says index 1


def test_truncated_file_fails_to_authenticate() -> None:
    manifest, segments = encode(os.urandom(48))
    shorter = dataclasses.replace(manifest, size=32, segments=manifest.segments[:2])
    decoder = FileDecoder(shorter)
    with pytest.raises(IntegrityError):  # the AAD binds the segment count (3, not 2)
        decoder.decode_segment(1, dict(enumerate(segments[1].shares)))


def test_segments_cannot_move_between_files() -> None:
    key = os.urandom(32)
    data = os.urandom(16)
    first, _ = encode(data, key=key)
    second, second_segments = encode(data, key=key)  # same key, another file id
    mixed = dataclasses.replace(first, segments=second.segments)
    with pytest.raises(IntegrityError):
        FileDecoder(mixed).decode_segment(0, dict(enumerate(second_segments[0].shares)))


def test_wrong_key_fails() -> None:
    manifest, segments = encode(os.urandom(16))
    other = dataclasses.replace(manifest, key=os.urandom(32))
    with pytest.raises(IntegrityError):
        FileDecoder(other).decode_segment(0, dict(enumerate(segments[0].shares)))


def test_encoder_misuse() -> None:
    encoder = FileEncoder(20, k=2, n=3, stores=STORES[:3], segment_size=16)
    with pytest.raises(ValueError, match="must be 16 bytes"):
        encoder.encode_segment(0, b"short")
    encoder.encode_segment(1, b"1234")
    with pytest.raises(ValueError, match="segment 0"):
        encoder.manifest()
    with pytest.raises(IndexError):
        encoder.encode_segment(2, b"")


def test_encoder_validates_manifest_fields_up_front() -> None:
    with pytest.raises(ProtocolError) as info:
        FileEncoder(10, k=2, n=3, stores=STORES[:2])
    assert info.value.field == "stores"
    with pytest.raises(ProtocolError) as info:
        FileEncoder(10, k=2, n=3, stores=STORES[:3], metadata={"x": object()})
    assert info.value.field == "metadata"


def test_every_file_gets_a_fresh_key_and_id() -> None:
    first, _ = encode(b"same")
    second, _ = encode(b"same")
    assert first.key != second.key and first.file_id != second.file_id
    assert first.segments != second.segments  # fresh IVs too


@given(
    data=st.binary(max_size=300),
    segment_size=st.integers(1, 40),
    kn=st.integers(1, 6).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))),
    seed=st.randoms(use_true_random=False),
)
def test_round_trip_property(
    data: bytes, segment_size: int, kn: tuple[int, int], seed: object
) -> None:
    k, n = kn
    manifest, segments = encode(data, k=k, n=n, segment_size=segment_size)
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    decoder = FileDecoder(manifest)
    out = b""
    for segment in segments:
        nums = seed.sample(range(n), k)  # type: ignore[attr-defined]
        out += decoder.decode_segment(segment.index, {j: segment.shares[j] for j in nums})
    assert out == data


# --------------------------------------------------------------------------- test vector


def test_file_vector() -> None:
    """tests/vectors/file.json, recomputed from its inputs (PROTOCOL.md, "Files and shards")."""
    doc = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "file.json").read_text())
    (vector,) = doc["vectors"]
    plaintext = bytes.fromhex(vector["plaintext_hex"])
    key, file_id = bytes.fromhex(vector["key_hex"]), bytes.fromhex(vector["file_id_hex"])
    size, k, n = vector["segment_size"], vector["k"], vector["n"]
    count = len(vector["segments"])
    manifest = Manifest.from_dict(vector["manifest"])
    assert manifest.to_dict() == vector["manifest"]
    assert (manifest.key, manifest.file_id, manifest.size) == (key, file_id, len(plaintext))

    info = lp_encode("spacenb/v1/file/key", file_id)
    aead_key = crypto.hkdf_sha256(key, salt=b"", info=info)
    assert aead_key.hex() == vector["segment_key_hex"]

    m = manifest
    encoder = FileEncoder(
        m.size, k=k, n=n, stores=m.stores, segment_size=size, key=key, file_id=file_id,
        name=m.name, content_type=m.content_type, metadata=m.metadata,
    )  # fmt: skip
    decoder = FileDecoder(manifest)
    for seg in vector["segments"]:
        index, iv = seg["index"], bytes.fromhex(seg["iv_hex"])
        chunk = plaintext[index * size : (index + 1) * size]
        assert seg["plaintext_hex"] == chunk.hex()
        aad = lp_encode("spacenb/v1/file/segment", file_id, index, count)
        assert seg["aad_hex"] == aad.hex()
        sealed = iv + crypto.aead_seal(aead_key, iv, chunk, aad)
        assert seg["sealed_hex"] == sealed.hex()
        shares = [bytes.fromhex(h) for h in seg["shares_hex"]]
        assert b"".join(shares[:k]) == sealed + bytes(seg["padding"])  # primary shares
        assert seg["share_names"] == [hashlib.sha256(s).hexdigest() for s in shares]
        assert list(manifest.segments[index].shares) == seg["share_names"]
        encoded = encoder.encode_segment(index, chunk, iv=iv)
        assert list(encoded.shares) == shares
        for nums in itertools.combinations(range(n), k):
            assert decoder.decode_segment(index, {j: shares[j] for j in nums}) == chunk
        with pytest.raises(IntegrityError):
            decoder.decode_segment(index, {0: flip(shares[0]), 1: shares[1]})
    assert encoder.manifest() == manifest
