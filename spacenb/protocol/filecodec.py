"""Files as encrypted, erasure-coded, content-named shares, one segment at a time.

Encrypt, then erasure-code (as Tahoe-LAFS does): each segment is sealed with AES-256-GCM
under a key derived from the file's random key, its associated data binding the file id,
the segment index and the segment count, so segments cannot be reordered, truncated or
swapped between files. The sealed segment is zero-padded, split into ``k`` blocks and
expanded by zfec into ``n`` shares, any ``k`` of which rebuild it. Each share is named by
its SHA-256; a decoder checks every share's hash before it uses it.

:class:`FileEncoder` and :class:`FileDecoder` work a segment at a time, so a caller that
streams holds only the segments it has in flight. Both are pure (no I/O) and safe to call
from worker threads for different segments. PROTOCOL.md, "Files and shards", is the spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import zfec

from ..exceptions import IntegrityError, NotEnoughSharesError
from . import crypto
from .encoding import lp_encode
from .manifest import (
    DEFAULT_SEGMENT_SIZE,
    FILE_ID_SIZE,
    FileLayout,
    Manifest,
    SegmentEntry,
    share_name,
)

__all__ = [
    "EncodedSegment",
    "FileDecoder",
    "FileEncoder",
    "segment_aad",
    "segment_key",
]


def segment_key(file_key: bytes, file_id: bytes) -> bytes:
    """The AES-256-GCM key for a file's segments, derived from the manifest's file key."""
    return crypto.hkdf_sha256(file_key, salt=b"", info=lp_encode("spacenb/v1/file/key", file_id))


def segment_aad(file_id: bytes, index: int, count: int) -> bytes:
    """The associated data of segment ``index`` of ``count``."""
    return lp_encode("spacenb/v1/file/segment", file_id, index, count)


@dataclass(frozen=True, slots=True)
class EncodedSegment:
    """The ``n`` shares of one segment (share ``j`` goes to store ``j``) and their names.

    The first ``k`` shares are read-only views of the sealed, padded segment (they hold
    it in memory until all of them are dropped); the parity shares are bytes."""

    index: int
    shares: tuple[bytes | memoryview, ...]
    entry: SegmentEntry

    @property
    def names(self) -> tuple[str, ...]:
        return self.entry.shares


class FileEncoder:
    """Seals and erasure-codes one file of a known ``size``, a segment at a time.

    The manifest's other fields are given (and validated) up front, so a bad store list,
    name or metadata fails before any work is done: :class:`ProtocolError` naming the
    field. Feed every segment (any order, each once) to :meth:`encode_segment`, then call
    :meth:`manifest`. ``key`` and ``file_id`` default to fresh random values; pass them only
    to reproduce test vectors.
    """

    def __init__(
        self,
        size: int,
        *,
        k: int,
        n: int,
        stores: Sequence[str],
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        name: str | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        key: bytes | None = None,
        file_id: bytes | None = None,
    ) -> None:
        self.layout = FileLayout(size, segment_size, k, n)
        self._header = Manifest(  # the manifest of an empty file: validates every other field
            file_id=crypto.random_bytes(FILE_ID_SIZE) if file_id is None else file_id,
            key=crypto.random_bytes(crypto.AES_KEY_SIZE) if key is None else key,
            size=0,
            segment_size=segment_size,
            k=k,
            n=n,
            stores=tuple(stores),
            segments=(),
            name=name,
            content_type=content_type,
            metadata=dict(metadata or {}),
        )
        self.file_id = self._header.file_id
        self._aead_key = segment_key(self._header.key, self.file_id)
        self._fec = zfec.Encoder(k, n)
        self._entries: dict[int, SegmentEntry] = {}

    def encode_segment(
        self, index: int, plaintext: bytes, *, iv: bytes | None = None
    ) -> EncodedSegment:
        """Seal segment ``index`` and make its ``n`` named shares.

        Raises :class:`ValueError` if ``plaintext`` is not exactly the segment's length.
        ``iv`` exists for test vectors; leave it unset otherwise.
        """
        layout = self.layout
        expected = layout.plaintext_length(index)
        if len(plaintext) != expected:
            raise ValueError(f"segment {index} must be {expected} bytes, got {len(plaintext)}")
        nonce = crypto.random_bytes(crypto.GCM_IV_SIZE) if iv is None else iv
        aad = segment_aad(self.file_id, index, layout.segment_count)
        ciphertext = crypto.aead_seal(self._aead_key, nonce, plaintext, aad)
        padding = layout.padding(index)
        padded = b"".join((nonce, ciphertext, bytes(padding)))
        del ciphertext
        size = layout.share_size(index)
        # The k primary shares are views of the padded segment (no copy); zfec computes
        # only the n - k parity shares from them.
        view = memoryview(padded)
        blocks = tuple(view[j * size : (j + 1) * size] for j in range(layout.k))
        del padded, view
        parity = self._fec.encode(blocks, tuple(range(layout.k, layout.n)))
        shares = blocks + tuple(bytes(share) for share in parity)
        entry = SegmentEntry(padding, tuple(share_name(share) for share in shares))
        self._entries[index] = entry
        return EncodedSegment(index, shares, entry)

    def manifest(self) -> Manifest:
        """The manifest of the whole file; :class:`ValueError` if a segment is missing."""
        count = self.layout.segment_count
        missing = [i for i in range(count) if i not in self._entries]
        if missing:
            raise ValueError(f"segment {missing[0]} has not been encoded")
        segments = tuple(self._entries[i] for i in range(count))
        return replace(self._header, size=self.layout.size, segments=segments)


class FileDecoder:
    """Verifies, decodes and decrypts the segments of the file a manifest describes."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.layout = manifest.layout
        self._aead_key = segment_key(manifest.key, manifest.file_id)
        self._fec = zfec.Decoder(manifest.k, manifest.n)

    def invalid_shares(self, index: int, shares: Mapping[int, bytes | memoryview]) -> list[int]:
        """The numbers among ``shares`` (share number → bytes) of segment ``index`` that are
        out of range or whose length or SHA-256 does not match the manifest."""
        names = self.manifest.segments[index].shares
        size = self.layout.share_size(index)
        return [
            num
            for num, data in shares.items()
            if not 0 <= num < self.layout.n or len(data) != size or share_name(data) != names[num]
        ]

    def decode_segment(self, index: int, shares: Mapping[int, bytes | memoryview]) -> bytes:
        """Rebuild segment ``index``'s plaintext from at least ``k`` shares (number → bytes).

        Every share given is checked against its name before any is used. Raises
        :class:`NotEnoughSharesError` with fewer than ``k`` shares, :class:`IntegrityError`
        if a share's hash does not match (see :meth:`invalid_shares` for which) or the
        segment does not authenticate.
        """
        layout = self.layout
        if len(shares) < layout.k:
            raise NotEnoughSharesError(
                f"segment {index}: {len(shares)} shares given, {layout.k} needed"
            )
        bad = self.invalid_shares(index, shares)
        if bad:
            raise IntegrityError(f"segment {index}: shares {bad} do not match their hashes")
        nums = sorted(shares)[: layout.k]  # primary shares first: no arithmetic needed
        if nums == list(range(layout.k)):
            padded = b"".join(shares[j] for j in nums)
        else:
            padded = b"".join(self._fec.decode(tuple(shares[j] for j in nums), tuple(nums)))
        sealed = memoryview(padded)[: layout.sealed_length(index)]
        iv = bytes(sealed[: crypto.GCM_IV_SIZE])
        aad = segment_aad(self.manifest.file_id, index, layout.segment_count)
        ciphertext = sealed[crypto.GCM_IV_SIZE :]  # AES-GCM reads the view: no copy
        plaintext = crypto.aead_open(self._aead_key, iv, ciphertext, aad)
        if len(plaintext) != layout.plaintext_length(index):
            raise IntegrityError(f"segment {index} has the wrong length")
        return plaintext
