"""Files that are either wholly written or not there: checkpoints, pictures, caches, exports."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write. If the block ends without an error, the
    file is flushed to disk and renamed over ``path`` in one step; either way the temporary is removed,
    so a crash or an error never leaves a half-written ``path`` and an older one survives."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
