"""Upload files to shard stores and download them again (PROTOCOL.md, "Files and shards").

:func:`upload` reads its source a segment at a time, seals and erasure-codes each segment
(:mod:`spacenb.protocol.filecodec`) and sends share ``j`` to store ``j``, with a few
segments in flight on one pipelined websocket per store. :func:`download` and
:func:`download_to` fetch any ``k`` shares of each segment, check every share against its
SHA-256 name, fall back to other stores when a share is missing, corrupt or its store is
down, and never return bytes that did not authenticate. Memory stays bounded by a few
segments (except for :func:`download`, which returns the whole file).

This module needs no relay connection: a ticket (for uploads) or a manifest (for
downloads) is all it takes. A manifest is written by whoever sent it, so a download given
``allowed_stores`` dials only those stores (a client passes its relay's own and those it
was told to trust): a manifest cannot make a reader connect anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import itertools
import mimetypes
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Collection,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from ..exceptions import (
    IntegrityError,
    NotEnoughSharesError,
    NotFoundError,
    ProtocolError,
    SpacenbError,
)
from ..privatefile import open_private
from ..protocol.filecodec import EncodedSegment, FileDecoder, FileEncoder
from ..protocol.manifest import DEFAULT_SEGMENT_SIZE, FileLayout, Manifest
from .shardlink import ShardLink, ShardLinks

__all__ = ["FileSource", "FileStat", "Progress", "download", "download_to", "upload"]

T = TypeVar("T")
FileSource = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes]
Progress = Callable[[int, int], object]
"""Called as ``progress(done_bytes, total_bytes)``: once at the start, then per segment."""

WINDOW = 4  # segments in flight per transfer
HEDGE_AFTER = 1.0  # seconds without a share arriving before another store is asked too
_THREAD_MIN = 64 << 10  # coding work on segments this big runs in a worker thread


@dataclass(frozen=True, slots=True)
class FileStat:
    """What one upload or download did."""

    size: int  # file bytes
    segments: int
    k: int
    n: int
    segment_size: int
    bytes_uploaded: int  # share bytes sent (0 for a download)
    bytes_fetched: int  # share bytes received (0 for an upload)
    seconds: float
    stores_used: tuple[str, ...]  # stores that took or served at least one share
    stores_failed: tuple[str, ...] = ()  # unreachable, slow, or missing or corrupt shares
    shares_rejected: int = 0  # fetched shares whose hash did not match their name

    @property
    def throughput(self) -> float:
        """File bytes per second."""
        return self.size / self.seconds if self.seconds > 0 else float("inf")


class _Tally:
    """Counters of one transfer, frozen into a :class:`FileStat` at the end."""

    def __init__(self, layout: FileLayout, stores: Sequence[str]) -> None:
        self.layout = layout
        self.stores = stores
        self.started = time.perf_counter()
        self.sent = 0
        self.received = 0
        self.rejected = 0
        self.used: dict[str, None] = {}  # sets that keep their order
        self.failed: dict[str, None] = {}

    def stat(self) -> FileStat:
        layout = self.layout
        order = list(self.stores).index
        return FileStat(
            size=layout.size,
            segments=layout.segment_count,
            k=layout.k,
            n=layout.n,
            segment_size=layout.segment_size,
            bytes_uploaded=self.sent,
            bytes_fetched=self.received,
            seconds=time.perf_counter() - self.started,
            stores_used=tuple(sorted(self.used, key=order)),
            stores_failed=tuple(sorted(self.failed, key=order)),
            shares_rejected=self.rejected,
        )


_workers: ThreadPoolExecutor | None = None


async def _cpu(size: int, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` off the event loop when the segment is big enough to stall it.

    The work goes to a small pool of its own (one thread per core): more threads would not
    code faster, and each extra thread keeps its own malloc arena of freed segment buffers.
    """
    if size < _THREAD_MIN:
        return fn(*args)
    global _workers
    if _workers is None:
        _workers = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="spacenb-files")
    return await asyncio.get_running_loop().run_in_executor(_workers, functools.partial(fn, *args))


async def _run_windowed(
    jobs: AsyncGenerator[Awaitable[T], None], on_result: Callable[[T], Awaitable[None]]
) -> None:
    """Run ``jobs`` with at most :data:`WINDOW` in flight; hand results over in order.

    The first failure cancels the rest and is raised.
    """
    pending: deque[asyncio.Future[T]] = deque()
    try:
        async with contextlib.aclosing(jobs):
            async for job in jobs:
                pending.append(asyncio.ensure_future(job))
                for future in pending:
                    if future.done():
                        future.result()  # raises a failure at once, not in its turn
                while len(pending) >= WINDOW or (pending and pending[0].done()):
                    await on_result(await pending.popleft())
        while pending:
            await on_result(await pending.popleft())
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


# ---------------------------------------------------------------------------- sources


class _Source:
    """A file to upload: its size, a default name, and exact sequential reads."""

    def __init__(
        self,
        size: int,
        name: str | None,
        *,
        stream: IO[bytes] | None = None,
        view: memoryview | None = None,
        owned: bool = False,
    ) -> None:
        self.size = size
        self.name = name
        self._stream = stream
        self._view = view  # bytes-like sources are read in place, never copied whole
        self._offset = 0
        self._owned = owned

    @classmethod
    def open(cls, source: FileSource) -> _Source:
        """Blocking: open a path, wrap bytes, or measure (or spool) a file object."""
        if isinstance(source, bytes | bytearray | memoryview):
            view = memoryview(source).cast("B")
            return cls(len(view), None, view=view)
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            stream = open(path, "rb")  # noqa: SIM115 - closed by close()
            size = os.fstat(stream.fileno()).st_size
            return cls(size, path.name, stream=stream, owned=True)
        if not hasattr(source, "read"):
            raise TypeError("upload takes bytes, a path, or a binary file object")
        raw_name = getattr(source, "name", None)
        name = os.path.basename(raw_name) if isinstance(raw_name, str) else None
        if source.seekable():
            start = source.tell()
            size = source.seek(0, io.SEEK_END) - start
            source.seek(start)
            return cls(size, name, stream=source)
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - an unseekable stream: learn its size
        shutil.copyfileobj(source, spool, DEFAULT_SEGMENT_SIZE)
        size = spool.tell()
        spool.seek(0)
        return cls(size, name, stream=spool, owned=True)

    def read(self, length: int) -> bytes:
        """Exactly ``length`` bytes; :class:`ProtocolError` if the source ends early."""
        if self._view is not None:
            chunk = bytes(self._view[self._offset : self._offset + length])
            self._offset += length
            return chunk
        assert self._stream is not None
        chunks = []
        missing = length
        while missing:
            chunk = self._stream.read(missing)
            if not chunk:
                raise ProtocolError("the source shrank while it was uploaded", field="source")
            chunks.append(chunk)
            missing -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        if self._owned and self._stream is not None:
            self._stream.close()


# ---------------------------------------------------------------------------- upload


async def upload(
    source: FileSource,
    *,
    ticket: str,
    space_id: str,
    stores: Sequence[str],
    shards_needed: int,
    metadata: Mapping[str, Any] | None = None,
    name: str | None = None,
    content_type: str | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> tuple[Manifest, FileStat]:
    """Encrypt, erasure-code and store ``source``; return its manifest and a stat.

    ``source`` is bytes, a path or a binary file object (read from its current position).
    Share ``j`` of each segment goes to ``stores[j]``, so ``n = len(stores)`` and any
    ``shards_needed`` (``k``) stores suffice to read the file back. ``name`` defaults to the
    file's name, ``content_type`` to a guess from the name. Every store must accept every
    share, so that the file can lose any ``n - k`` of them later: with fewer than ``k``
    stores reachable it raises :class:`NotEnoughSharesError` (naming each store and why);
    with ``k`` or more but not all, the unreachable store's :class:`ConnectionLostError`
    (or :class:`SpacenbTimeoutError`). A refused ticket raises
    :class:`PermissionDeniedError`, a store's full quota :class:`QuotaExceededError`, a
    bad parameter :class:`ProtocolError`.
    """
    src = await asyncio.to_thread(_Source.open, source)
    try:
        name = src.name if name is None else name
        if content_type is None and name:
            content_type = mimetypes.guess_type(name)[0]
        encoder = FileEncoder(
            src.size,
            k=shards_needed,
            n=len(stores),
            stores=stores,
            segment_size=segment_size,
            name=name,
            content_type=content_type,
            metadata=metadata,
        )
        tally = _Tally(encoder.layout, stores)
        async with ShardLinks(timeout=timeout) as links:
            targets = (
                await _open_all(links, stores, shards_needed)
                if encoder.layout.segment_count
                else []
            )
            await _upload_segments(src, encoder, targets, tally, space_id, ticket, progress)
        return encoder.manifest(), tally.stat()
    finally:
        await asyncio.to_thread(src.close)


async def _open_all(links: ShardLinks, stores: Sequence[str], k: int) -> list[ShardLink]:
    """A link to every store; :class:`NotEnoughSharesError` if fewer than ``k`` can be
    reached, else the first failure if any cannot."""
    unique = list(dict.fromkeys(stores))
    opened = await asyncio.gather(*(links.link(url) for url in unique), return_exceptions=True)
    failed: dict[str, BaseException] = {}
    for url, result in zip(unique, opened, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # a cancellation
            failed[url] = result
    if failed:
        reachable = sum(url not in failed for url in stores)
        if reachable < k:
            raise NotEnoughSharesError(
                f"only {reachable} of {len(stores)} shard stores can be reached and {k} are "
                "needed to store a file: "
                + "; ".join(f"{url}: {exc}" for url, exc in failed.items())
            )
        raise next(iter(failed.values()))
    return [await links.link(url) for url in stores]


async def _upload_segments(
    src: _Source,
    encoder: FileEncoder,
    targets: list[ShardLink],
    tally: _Tally,
    space_id: str,
    ticket: str,
    progress: Progress | None,
) -> None:
    layout = encoder.layout
    done = 0
    if progress is not None:
        progress(0, layout.size)

    def read_and_encode(index: int) -> EncodedSegment:
        return encoder.encode_segment(index, src.read(layout.plaintext_length(index)))

    async def put_segment(encoded: EncodedSegment) -> int:
        index = encoded.index
        sends = [
            link.put(space_id=space_id, ticket=ticket, name=name, data=share)
            for link, name, share in zip(targets, encoded.names, encoded.shares, strict=True)
        ]
        tally.sent += sum(map(len, encoded.shares))
        del encoded  # each share is dropped once sent, not held until the stores answer
        await asyncio.gather(*sends)
        return layout.plaintext_length(index)

    async def jobs() -> AsyncGenerator[Awaitable[int], None]:
        # One segment is read and encoded at a time (encoding outpaces the stores); the puts
        # of up to WINDOW segments overlap.
        for index in range(layout.segment_count):
            yield put_segment(await _cpu(layout.segment_size, read_and_encode, index))

    async def finished(length: int) -> None:
        nonlocal done
        done += length
        if progress is not None:
            progress(done, layout.size)

    await _run_windowed(jobs(), finished)
    tally.used.update(dict.fromkeys(link.url for link in targets))


# ---------------------------------------------------------------------------- download


def _as_manifest(manifest: Manifest | Mapping[str, Any]) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else Manifest.from_dict(dict(manifest))


async def download(
    manifest: Manifest | Mapping[str, Any],
    *,
    progress: Progress | None = None,
    timeout: float = 30.0,
    allowed_stores: Collection[str] | None = None,
) -> tuple[bytes, FileStat]:
    """Fetch, verify and decrypt the file ``manifest`` describes (a manifest or its dict).

    With ``allowed_stores``, stores of the manifest not in it are never dialed (they count
    as failed). Raises :class:`NotEnoughSharesError` (naming what was found where) if some
    segment has fewer than ``k`` good shares within reach, :class:`IntegrityError` if a
    segment does not authenticate, :class:`ProtocolError` for a malformed manifest.
    """
    # BytesIO grows in place and getvalue() hands its buffer over: the file is in memory
    # once, not twice as with joining a list of segments.
    buffer = io.BytesIO()

    async def keep(data: bytes) -> None:
        buffer.write(data)

    stat = await _download(_as_manifest(manifest), keep, progress, timeout, allowed_stores)
    return buffer.getvalue(), stat


async def download_to(
    manifest: Manifest | Mapping[str, Any],
    target: str | os.PathLike[str] | IO[bytes],
    *,
    progress: Progress | None = None,
    timeout: float = 30.0,
    allowed_stores: Collection[str] | None = None,
) -> FileStat:
    """Like :func:`download`, but stream the file into ``target`` (a path or a binary file
    object) a segment at a time. A path is written beside it as ``.<name>.*.part`` (mode
    0600, :mod:`spacenb.privatefile`) and renamed into place only once the whole file has
    been verified.
    """
    manifest = _as_manifest(manifest)

    if not isinstance(target, str | os.PathLike):
        stream = target

        async def write(data: bytes) -> None:
            await _cpu(len(data), stream.write, data)

        return await _download(manifest, write, progress, timeout, allowed_stores)

    private = open_private(target)  # entered and left in a thread: they fsync
    out = await asyncio.to_thread(private.__enter__)
    try:

        async def write_file(data: bytes) -> None:
            await _cpu(len(data), out.write, data)

        stat = await _download(manifest, write_file, progress, timeout, allowed_stores)
    except BaseException as exc:
        await asyncio.to_thread(private.__exit__, type(exc), exc, exc.__traceback__)
        raise
    await asyncio.to_thread(private.__exit__, None, None, None)
    return stat


async def _download(
    manifest: Manifest,
    sink: Callable[[bytes], Awaitable[None]],
    progress: Progress | None,
    timeout: float,
    allowed_stores: Collection[str] | None = None,
) -> FileStat:
    layout = manifest.layout
    tally = _Tally(layout, manifest.stores)
    done = 0
    if progress is not None:
        progress(0, layout.size)
    async with ShardLinks(timeout=timeout) as links:
        fetcher = _SegmentFetcher(manifest, links, tally, allowed_stores)

        async def jobs() -> AsyncGenerator[Awaitable[bytes], None]:
            for index in range(layout.segment_count):
                yield fetcher.fetch(index)

        async def deliver(data: bytes) -> None:
            nonlocal done
            await sink(data)
            done += len(data)
            if progress is not None:
                progress(done, layout.size)

        await _run_windowed(jobs(), deliver)
    return tally.stat()


class _SegmentFetcher:
    """Gathers ``k`` good shares of a segment, trying further stores as others fail."""

    def __init__(
        self,
        manifest: Manifest,
        links: ShardLinks,
        tally: _Tally,
        allowed_stores: Collection[str] | None = None,
    ) -> None:
        self.manifest = manifest
        self.decoder = FileDecoder(manifest)
        self.links = links
        self.tally = tally
        self._decoding = asyncio.Semaphore(2)  # bounds the memory of decodes in flight
        self._refused = (
            {url for url in manifest.stores if url not in allowed_stores}
            if allowed_stores is not None
            else set()
        )
        for url in self._refused:
            self._failed(url)

    def _candidates(self) -> list[int]:
        """Share numbers to try: stores that have not failed yet first, then primary
        shares (decoding them is a plain concatenation), then parity shares; never a
        store that is not allowed."""
        stores = self.manifest.stores
        allowed = [j for j in range(self.manifest.n) if stores[j] not in self._refused]
        return sorted(allowed, key=lambda j: (stores[j] in self.tally.failed, j))

    async def fetch(self, index: int) -> bytes:
        """Segment ``index``'s plaintext; :class:`NotEnoughSharesError` if it cannot be had.

        A store that fails is replaced at once. When no share has come for
        :data:`HEDGE_AFTER` seconds, the stores asked are marked slow and one more is asked
        beside them, so a hung store costs a second, not the request timeout. Shares are
        hashed once, when the segment is decoded; only if that finds a corrupt share are
        they hashed again, to tell which ones to replace.
        """
        k, stores = self.manifest.k, self.manifest.stores
        size = self.manifest.layout.plaintext_length(index)
        candidates = iter(self._candidates())
        running: dict[asyncio.Task[bytes | memoryview | None], int] = {}
        shares: dict[int, bytes | memoryview] = {}
        problems: list[str] = [
            f"{url}: not a shard store of this relay nor an allowed one (not dialed)"
            for url in sorted(self._refused)
        ]

        def launch(count: int) -> None:
            for j in itertools.islice(candidates, count):
                running[asyncio.create_task(self._fetch_share(index, j, problems))] = j

        launch(k)
        try:
            while True:
                while running and len(shares) < k:
                    finished, _ = await asyncio.wait(
                        running, timeout=HEDGE_AFTER, return_when=asyncio.FIRST_COMPLETED
                    )
                    if not finished:
                        for j in running.values():
                            self._failed(stores[j])
                        launch(1)
                    for task in finished:
                        j = running.pop(task)
                        data = task.result()
                        if data is None:
                            launch(1)
                        else:
                            shares[j] = data
                if len(shares) < k:
                    raise NotEnoughSharesError(
                        f"segment {index}: found {len(shares)} good shares, {k} needed; "
                        + "; ".join(problems)
                    )
                try:
                    async with self._decoding:
                        return await _cpu(size, self.decoder.decode_segment, index, shares)
                except IntegrityError:
                    bad = await _cpu(size, self.decoder.invalid_shares, index, shares)
                    if not bad:
                        raise
                for j in bad:
                    del shares[j]
                    self._failed(stores[j])
                    self.tally.rejected += 1
                    problems.append(f"share {j} on {stores[j]}: corrupt (hash mismatch)")
                launch(len(bad))
        finally:
            for task in running:
                task.cancel()

    def _failed(self, url: str) -> None:
        self.tally.failed[url] = None

    async def _fetch_share(
        self, index: int, j: int, problems: list[str]
    ) -> bytes | memoryview | None:
        """Share ``j`` of segment ``index`` (unverified), or None with the reason noted."""
        url = self.manifest.stores[j]
        try:
            link = await self.links.link(url)
            data = await link.get(self.manifest.segments[index].shares[j])
        except SpacenbError as exc:
            self._failed(url)
            why = "missing" if isinstance(exc, NotFoundError) else f"unavailable ({exc})"
            problems.append(f"share {j} on {url}: {why}")
            return None
        self.tally.received += len(data)
        self.tally.used[url] = None
        return data
