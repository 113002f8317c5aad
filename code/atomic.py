"""Writing a file whole or not at all, and never through a link: a temporary file beside it, then a rename.

A rename replaces the name, not what a link at that name points to, so a run folder holding a link (or a file
hard-linked to a user's) cannot make us write into another file; a process killed mid-write leaves the old file.
Every checkpoint, figure, config.yaml and metrics.json goes through `atomic_write` (text: `write_text_atomically`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """An open binary file whose contents replace `path` when the block ends without error (nothing otherwise).

    The file gets the permissions of any new file (0666 less the umask), so a shared results folder stays
    readable; a temporary file left by a write that was killed is removed by the next write to the same path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # what mkstemp below names them
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """`text` as the whole of `path` (UTF-8), through `atomic_write`."""
    with atomic_write(path) as f:
        f.write(text.encode())
    return Path(path)
