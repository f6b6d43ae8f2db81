"""Sign-up: connect + auth of a new user, the relay in its own process.

The client, in this process, signs up ``--count`` new users one after another, each with
an in-memory keystore and with a keystore file (written with ``fsync`` twice: the secret
and the directory entry), then signs the file users in again. The baseline is opening a
websocket to the bare relay (``bench.bare_relay``) in the same way. Also reported: one
``fsync`` of a small file in the same temporary directory (the floor a durable keystore
adds).

``python -m bench.signup [--smoke] [--json] [--count 40]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile

from .bare_relay import BareClient
from .common import Metric, Report, main, now, percentile
from .peers import RelayProcess

MS = 1000.0


async def _timed(count: int, connect: object) -> list[float]:
    times = []
    for i in range(count):
        start = now()
        client = await connect(i)  # type: ignore[operator]
        times.append(now() - start)
        await client.close()
    return times


def fsync_ms(directory: str, count: int = 30) -> float:
    fd = os.open(os.path.join(directory, "fsync-probe"), os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 512)
            start = now()
            os.fsync(fd)
            times.append(now() - start)
    finally:
        os.close(fd)
    return percentile(times, 50) * MS


def run(args: argparse.Namespace) -> Report:
    from spacenb import aio

    report = Report.of("signup", args)
    with (
        RelayProcess("spacenb") as relay,
        RelayProcess("bare") as bare,
        tempfile.TemporaryDirectory() as tmp,
    ):
        target = relay.target

        def spacenb(prefix: str, keystore: str | None) -> object:
            async def connect(i: int) -> object:
                path = ":memory:" if keystore is None else os.path.join(keystore, f"{i}.keys")
                return await aio.connect(
                    target.url, app_key=target.app_key, username=f"{prefix}{i}", keystore=path
                )

            return connect

        async def measure() -> dict[str, list[float]]:
            await _timed(5, spacenb("warm", None))
            await _timed(5, lambda i: BareClient.connect(bare.target.url))
            return {
                "bare": await _timed(args.count, lambda i: BareClient.connect(bare.target.url)),
                "memory": await _timed(args.count, spacenb("m", None)),
                "file": await _timed(args.count, spacenb("f", tmp)),
                "signin": await _timed(args.count, spacenb("f", tmp)),
            }

        times = asyncio.run(measure())
        fsync = fsync_ms(tmp)
    bare_p50 = percentile(times["bare"], 50) * MS
    for name, label in (
        ("memory", "sign-up p50, in-memory keystore"),
        ("file", "sign-up p50, keystore file"),
        ("signin", "sign-in p50, keystore file"),
    ):
        report.add(
            Metric(
                label,
                "ms",
                percentile(times[name], 50) * MS,
                bare_p50,
                better="lower",
                target=10.0 if name != "signin" else None,
            )
        )
        report.add(
            Metric(
                label.replace("p50", "p99"),
                "ms",
                percentile(times[name], 99) * MS,
                percentile(times["bare"], 99) * MS,
                better="lower",
            )
        )
    report.add(Metric("fsync of 512 bytes, p50", "ms", fsync))
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=40, help="users per kind")


if __name__ == "__main__":
    main(run, __doc__ or "", configure, smoke={"count": 4})
