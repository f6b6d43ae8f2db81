"""The one way spacenb writes a file only its owner may read: keys, pins, downloads.

A reader never sees half a file, and a crash never leaves one: the bytes go to a temporary
file in the same directory, created with mode 0600, are flushed and fsynced, then renamed
over the target, and the directory is fsynced so the rename itself survives a power cut.
:func:`write_private` takes the whole content; :func:`open_private` streams it (a download
written a segment at a time) and commits only if the ``with`` block ends without error.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["open_private", "write_private"]


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Atomically replace ``path`` with ``data`` (text is UTF-8), readable by the owner only.

    Missing parent directories are created with mode 0700. Raises OSError.
    """
    with open_private(path) as out:
        out.write(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def open_private(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` (mode 0600) only when the block ends cleanly;
    on an exception the partial file is removed and ``path`` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        os.fchmod(fd, 0o600)  # mkstemp already does; explicit, whatever the platform's umask
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform whose directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - e.g. a filesystem that refuses directory fsync
        pass
    finally:
        os.close(fd)
