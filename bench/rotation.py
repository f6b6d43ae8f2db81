"""Rotation: ``rotate()`` in a ``rotate`` channel with ``--members`` members.

The members are registered by clients that sign up, join (the keeper admits them) and
disconnect, spread over ``--processes`` processes; the owner, in its own process, then
times ``space.rotate()`` (read the roster, mint the key, wrap it for every member, the
relay verifies and stores every wrapped key) ``--rounds`` times.

The baseline, in the owner's process just before, is the cryptographic floor of the same
rotation in a bare ``cryptography`` loop: per member an ephemeral P-256 key, ECDH, HKDF,
AES-256-GCM of the 32-byte key and an ECDSA signature (the wrap), and one ECDSA
verification (the relay's check).

``python -m bench.rotation [--smoke] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Sequence

from .common import (
    Link,
    Metric,
    Report,
    Worker,
    expect_all,
    main,
    now,
    partition,
    raise_nofile,
)
from .peers import RelayProcess, Target, open_peer

MS = 1000.0


def floor_seconds(members: int) -> float:
    """Seconds a bare loop takes to wrap, sign and verify a 32-byte key for ``members``."""
    import os

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    curve, algorithm = ec.SECP256R1(), ec.ECDSA(hashes.SHA256())
    signer = ec.generate_private_key(curve)
    verifier = signer.public_key()
    recipients = [ec.generate_private_key(curve).public_key() for _ in range(min(members, 50))]
    group_key = os.urandom(32)
    start = now()
    for i in range(members):
        ephemeral = ec.generate_private_key(curve)
        shared = ephemeral.exchange(ec.ECDH(), recipients[i % len(recipients)])
        kek = HKDF(hashes.SHA256(), 32, salt=b"salt", info=b"info").derive(shared)
        iv = os.urandom(12)
        blob = iv + AESGCM(kek).encrypt(iv, group_key, b"info")
        signature = signer.sign(blob, algorithm)
        verifier.verify(signature, blob, algorithm)
    return now() - start


async def joiners_worker(link: Link, target: Target, usernames: Sequence[str]) -> None:
    """Sign up each username, join the channel, disconnect; 4 at a time."""
    raise_nofile()
    gate = asyncio.Semaphore(4)

    async def join(username: str) -> None:
        async with gate:
            peer = await open_peer(target, username)
            await peer.close()

    await asyncio.gather(*(join(u) for u in usernames))
    link.send("done")


async def owner_worker(link: Link, target: Target, members: int) -> None:
    """Connects as the channel's owner; each ``("rotate", None)`` answers the floor of a
    rotation for ``members`` and the seconds ``rotate()`` took."""
    from spacenb import aio

    client = await aio.connect(
        target.url, app_key=target.app_key, username="owner", keystore=":memory:"
    )
    space = await client.space.create_channel(target.channel, history_policy="rotate")
    link.send("ready")
    while (await link.recv())[0] == "rotate":
        floor = floor_seconds(members)
        start = now()
        epoch = await space.rotate()
        link.send("done", {"seconds": now() - start, "floor": floor, "epoch": epoch})
    await client.close()


def run(args: argparse.Namespace) -> Report:
    report = Report.of("rotation", args)
    with RelayProcess("spacenb", shards=0) as relay:
        target = relay.target
        with Worker(owner_worker, target, args.members, name="rotation-owner") as owner:
            owner.expect("ready", 60)
            start = now()
            usernames = [f"m{i}" for i in range(args.members - 1)]  # the owner is a member
            joiners = [
                Worker(joiners_worker, target, chunk, name=f"joiners-{i}")
                for i, chunk in enumerate(partition(usernames, args.processes))
            ]
            try:
                expect_all(joiners, "done", 1800)
            finally:
                for joiner in joiners:
                    joiner.stop()
            registered = now() - start
            rounds = []
            for _ in range(args.rounds):
                owner.send("rotate")
                rounds.append(owner.expect("done", 300))
    seconds = statistics.median(r["seconds"] for r in rounds)
    floor = statistics.median(r["floor"] for r in rounds)
    report.add(
        Metric(
            f"rotate() with {args.members} members",
            "ms",
            seconds * MS,
            floor * MS,
            better="lower",
            target=500,
        )
    )
    report.notes += [
        "baseline: per member, a bare ECIES wrap + ECDSA sign + ECDSA verify",
        f"rounds: {[round(r['seconds'] * MS) for r in rounds]} ms; "
        f"{args.members - 1} members registered in {registered:.1f} s",
    ]
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", type=int, default=1_000, help="members, owner included")
    parser.add_argument("--processes", type=int, default=4, help="processes registering them")
    parser.add_argument("--rounds", type=int, default=3, help="rotations timed (median)")


if __name__ == "__main__":
    main(run, __doc__ or "", configure, smoke={"members": 20, "processes": 2, "rounds": 2})
