"""ECDSA verification of history pages in worker processes (both cores, despite the GIL).

A page of stored envelopes costs its reader one signature check each, about half of all
the work of reading history. :class:`VerifyPool` hands those checks to worker processes
(one per core, started on first use and kept until :meth:`VerifyPool.close`): each batch
is ``(signing key text, signature, signed bytes)`` triples, answered with one byte per
triple, 1 if it verifies. Nothing else moves: the member core still makes every decision
(head, membership, epoch, replay) in this process, and it skips its own check of a
signature only for the very envelope object whose exact signed bytes a worker verified
under the very key the core would use (:meth:`MemberCore.open_message`'s ``verified``).

The workers are plain ``python -m spacenb._verify_worker`` children talking over their
standard input and output (length-prefixed pickles, ours in both directions), not
``multiprocessing``: that would re-run an unguarded ``__main__`` script in each worker.
A worker that fails or dies makes its batch fail; the caller then verifies in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
import sys
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["MIN_PAGE", "VerifyPool", "close_shared", "in_chunks", "shared", "wait"]

MIN_PAGE = 64  # smaller pages are checked in-process: the round trip would cost more
CHUNKS_PER_WORKER = 4  # the member opens one chunk while the workers check the next
# Each chunk costs the member a pipe round trip (~0.2 ms of its CPU): a page of 100 goes
# as two chunks of 50, not seven of 16 (BENCHMARKS.md, "Issue 16: files and history").
_MIN_CHUNK = 50
_LEN = struct.Struct(">I")

Triple = tuple[str, bytes, bytes]  # signing key text, signature, signed bytes


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lock = asyncio.Lock()

    async def verify(self, triples: Sequence[Triple]) -> bytes:
        assert self.process.stdin is not None and self.process.stdout is not None
        keys: dict[str, int] = {}
        items = [(keys.setdefault(k, len(keys)), sig, data) for k, sig, data in triples]
        blob = pickle.dumps((list(keys), items), protocol=pickle.HIGHEST_PROTOCOL)
        async with self.lock:
            self.process.stdin.write(_LEN.pack(len(blob)) + blob)
            await self.process.stdin.drain()
            (size,) = _LEN.unpack(await self.process.stdout.readexactly(_LEN.size))
            answer = await self.process.stdout.readexactly(size)
        if len(answer) != len(triples):
            raise RuntimeError("verify worker answered the wrong number of checks")
        return answer


class VerifyPool:
    """Worker processes checking signatures; ``workers`` defaults to the core count."""

    def __init__(self, workers: int | None = None) -> None:
        self.size = max(1, workers or os.cpu_count() or 1)
        self._workers: list[_Worker] = []
        self._starting: asyncio.Lock | None = None
        self._next = 0

    async def _ensure(self) -> list[_Worker]:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            while len(self._workers) < self.size:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "spacenb._verify_worker",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 20,
                )
                self._workers.append(_Worker(process))
        return self._workers

    def start(self) -> None:
        """Start the workers in the background (a page is on its way)."""
        if len(self._workers) < self.size:
            task = asyncio.ensure_future(self._ensure())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def verify(self, triples: Sequence[Triple]) -> bytes:
        """One byte per triple, 1 where the signature verifies. Raises if a worker fails."""
        workers = await self._ensure()
        worker = workers[self._next % len(workers)]
        self._next += 1
        try:
            return await worker.verify(triples)
        except BaseException:
            await self._discard(worker)
            raise

    async def _discard(self, worker: _Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()
        with contextlib.suppress(Exception):
            await worker.process.wait()

    async def close(self) -> None:
        """Stop the workers (they also exit by themselves when this process does)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            if worker.process.stdin is not None:
                worker.process.stdin.close()
        for worker in workers:
            try:
                await asyncio.wait_for(worker.process.wait(), 5.0)
            except TimeoutError:
                await self._discard(worker)


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, VerifyPool] = (
    weakref.WeakKeyDictionary()
)


def shared() -> VerifyPool:
    """This event loop's pool (its workers are children of this process)."""
    loop = asyncio.get_running_loop()
    pool = _POOLS.get(loop)
    if pool is None:
        pool = _POOLS[loop] = VerifyPool()
    return pool


async def close_shared() -> None:
    """Stop this event loop's workers, if it has any (``AsyncClient.close`` calls it; a
    later large page on this loop starts new ones)."""
    pool = _POOLS.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


class _Signed(Protocol):
    @property
    def envelope(self) -> Any: ...


class _KeyLookup(Protocol):
    def signing_key_at(self, name: str, seq: int) -> str | None: ...


Chunk = tuple[int, int, "asyncio.Task[list[str | None]] | None"]


def in_chunks(items: Sequence[_Signed], state: _KeyLookup) -> list[Chunk]:
    """Start checking the signatures of a page's envelopes in the workers, in chunks:
    ``(start, end, task)``, the task giving per envelope the signing key (text) under which
    its signature verified, or None (not verified there: the member checks it itself)."""
    pool = shared()
    size = max(_MIN_CHUNK, -(-len(items) // (pool.size * CHUNKS_PER_WORKER)))
    chunks: list[Chunk] = []
    for start in range(0, len(items), size):
        part = items[start : start + size]
        keys = [state.signing_key_at(i.envelope.source, i.envelope.head_seq) for i in part]
        triples = [
            (key, i.envelope.signature, i.envelope.signed_bytes())
            for i, key in zip(part, keys, strict=True)
            if key is not None
        ]
        task = asyncio.ensure_future(_checked(pool, keys, triples))
        chunks.append((start, start + len(part), task))
    return chunks


async def _checked(
    pool: VerifyPool, keys: list[str | None], triples: list[Triple]
) -> list[str | None]:
    answer = iter(await pool.verify(triples))
    return [key if key is not None and next(answer) else None for key in keys]


async def wait(task: asyncio.Task[list[str | None]] | None, count: int) -> list[str | None]:
    """A chunk's verified keys; all None (check in-process) without a task or if it failed."""
    if task is None:
        return [None] * count
    try:
        return await task
    except Exception:  # a worker could not start or died: verify in this process
        return [None] * count
