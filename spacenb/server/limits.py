"""What one relay allows each user, address and connection: the operator's limits.

The frame limit and the page sizes belong to the protocol (:mod:`spacenb.protocol.frames`)
and are the same for every relay; the limits here are each relay's own, with the defaults
PROTOCOL.md ("Limits") lists. ``start_server(limits=Limits(...))`` and
``spacenb serve --limit NAME=VALUE`` set them.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
from dataclasses import dataclass
from typing import Any

from ..exceptions import UsageError
from ..protocol.relayrules import TokenBucket

__all__ = ["Limits", "TokenBucket", "raise_open_file_limit"]

log = logging.getLogger("spacenb.server")


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on connections, rates, memory and storage. ``None`` means no cap."""

    # connections
    sign_in_timeout: float = 10.0  # seconds from accept to a successful auth
    max_unauthenticated: int = 2048  # not yet signed in, in all (~16 KiB each when idle)
    max_unauthenticated_per_address: int = 64  # not yet signed in, from one address
    max_connections_per_address: int = 256  # signed in, from one address
    max_connections_per_user: int = 32  # signed in as one user
    open_files: int | None = 65536  # soft RLIMIT_NOFILE raised to this (at most the hard)
    # memory
    max_buffered: int = 4 << 20  # bytes queued to one connection before it is dropped
    # rates: one token bucket per user for send, edit and ephemeral
    message_rate: float | None = 200.0  # tokens per second
    message_burst: int = 2000  # bucket size
    # storage, per user, in all spaces: stored messages and their ciphertext bytes
    max_messages_per_user: int | None = 1_000_000
    max_message_bytes_per_user: int | None = 1 << 30
    # each local shard store
    shard_bytes_per_user: int | None = 10 << 30  # bytes of shares uploaded by one user
    shard_store_bytes: int | None = None  # bytes of shares in all
    shard_min_free_bytes: int = 1 << 30  # refuse a share that would leave less disk free
    # the keeper
    checkpoint_every: int = 128  # state events between the keeper's checkpoints (0: none)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise UsageError(f"must be a non-negative number, got {value!r}", field=f.name)

    @classmethod
    def unlimited(cls) -> Limits:
        """No rate or storage caps (benchmarks); connection and memory caps stay."""
        return cls(
            message_rate=None,
            max_messages_per_user=None,
            max_message_bytes_per_user=None,
            shard_bytes_per_user=None,
            shard_min_free_bytes=0,
        )

    def replace(self, **changes: Any) -> Limits:
        """A copy with ``changes``; :class:`UsageError` for an unknown name."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise UsageError(f"no such limit (known: {', '.join(sorted(names))})", field=unknown[0])
        return dataclasses.replace(self, **changes)

    def with_setting(self, setting: str) -> Limits:
        """A copy with ``"name=value"`` applied (``none`` for no cap), as the command
        line gives it; :class:`UsageError` for a bad one."""
        name, sep, text = setting.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise UsageError(f"expected NAME=VALUE, got {setting!r}", field="limit")
        text = text.strip().lower()
        value: int | float | None
        if text in ("none", "unlimited"):
            value = None
        else:
            try:
                value = float(text) if "." in text or "e" in text else int(text, 0)
            except ValueError:
                raise UsageError(f"not a number: {text!r}", field=name) from None
        return self.replace(**{name: value})


def raise_open_file_limit(wanted: int | None) -> int:
    """Raise the soft RLIMIT_NOFILE to ``wanted`` (at most the hard limit), so that a few
    thousand idle sockets do not exhaust the process's file descriptors; never lowers it.
    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is None:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:  # pragma: no cover - a locked-down system
            log.warning("could not raise the open-file limit to %d: %s", target, exc)
            return soft
        log.info("raised the open-file limit from %d to %d", soft, target)
        return target
    return soft
