"""Signature checks in worker processes (``spacenb.aio.verify_pool``): real workers."""

from __future__ import annotations

import asyncio

import pytest

from spacenb.aio import verify_pool
from spacenb.protocol import crypto
from spacenb.protocol.keys import encode_public_key


def _triples() -> list[tuple[str, bytes, bytes]]:
    signer = crypto.generate_private_key()
    other = crypto.generate_private_key()
    key = encode_public_key(signer.public_key(), "sig")
    good = [(key, crypto.sign(signer, m), m) for m in (b"a", b"b", b"c")]
    return [
        *good,
        (key, crypto.sign(signer, b"x"), b"y"),  # signed bytes altered
        (encode_public_key(other.public_key(), "sig"), good[0][1], b"a"),  # another key
        ("not a key", good[0][1], b"a"),
        (key, b"\0" * 64, b"a"),
    ]


async def test_workers_answer_each_check() -> None:
    pool = verify_pool.VerifyPool(workers=2)
    try:
        triples = _triples()
        assert await pool.verify(triples) == bytes([1, 1, 1, 0, 0, 0, 0])
        assert await pool.verify(triples[3:]) == bytes(4)  # again, the other worker
    finally:
        await pool.close()


async def test_a_dead_worker_fails_its_batch_and_the_member_checks_itself() -> None:
    pool = verify_pool.VerifyPool(workers=1)
    try:
        (worker,) = await pool._ensure()
        worker.process.kill()
        await worker.process.wait()
        keys = [t[0] for t in _triples()]
        task = asyncio.ensure_future(verify_pool._checked(pool, list(keys), _triples()))
        assert await verify_pool.wait(task, len(keys)) == [None] * len(keys)
        assert await pool.verify(_triples()[:1]) == b"\1"  # a new worker took its place
    finally:
        await pool.close()


@pytest.mark.parametrize("count", [1, 200])
async def test_a_forged_signature_is_never_passed_as_verified(count: int) -> None:
    pool = verify_pool.VerifyPool(workers=2)
    try:
        triples = _triples()
        keys: list[str | None] = [t[0] for t in triples] * count
        answer = await verify_pool._checked(pool, keys, triples * count)
        assert answer == ([t[0] for t in triples[:3]] + [None] * 4) * count
    finally:
        await pool.close()
