"""The one way spacenb writes a file that must survive a crash whole: keys, tickets, shares,
downloads.

A reader never sees half a file, and a crash never leaves one: the bytes go to a temporary
file (in the same directory, or in ``tmp_dir`` on the same filesystem), created with mode
0600, are flushed and fsynced, then renamed over the target, and the directory is fsynced
so the rename itself survives a power cut. :func:`write_private` takes the whole content;
:func:`open_private` streams it (a download written a segment at a time) and commits only
if the ``with`` block ends without error.

Every file is readable by its owner only unless ``mode`` says otherwise (the relay's
public ticket key, ``relay.pub``, is 0644 for shard stores run by other users).
``exclusive=True`` creates the file and fails if it already exists, as ``O_EXCL`` does:
two processes making the same secret at once cannot both win.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["open_private", "write_private"]


def write_private(
    path: str | os.PathLike[str],
    data: bytes | memoryview | str,
    *,
    exclusive: bool = False,
    mode: int = 0o600,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Atomically replace ``path`` with ``data`` (text is UTF-8; bytes or a memoryview are
    written as they are), readable by the owner only
    (or with ``mode``). Missing parent directories are created with mode 0700.

    Raises ``FileExistsError`` if ``exclusive`` and ``path`` exists (it is left as it
    was), OSError if the file cannot be written.
    """
    with open_private(path, exclusive=exclusive, mode=mode, tmp_dir=tmp_dir) as out:
        out.write(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def open_private(
    path: str | os.PathLike[str],
    *,
    exclusive: bool = False,
    mode: int = 0o600,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` (mode 0600, or ``mode``) only when the block ends
    cleanly; on an exception the partial file is removed and ``path`` is left as it was.

    The partial file is made in ``tmp_dir`` (a directory on the same filesystem, which its
    owner empties after a crash) or, by default, beside ``path`` as ``.<name>.*.part``.
    With ``exclusive``, the commit raises ``FileExistsError`` if ``path`` exists by then.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tmp_dir) if tmp_dir is not None else target.parent
    fd, tmp = tempfile.mkstemp(dir=staging, prefix=f".{target.name}.", suffix=".part")
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600; explicit, whatever the platform's umask
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        if exclusive:
            os.link(tmp, target)  # fails if the target exists; never replaces it
            os.unlink(tmp)
        else:
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
