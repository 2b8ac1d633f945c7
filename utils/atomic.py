"""Files that are either wholly written or not there: checkpoints, pictures, caches, exports."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

# The name of ``atomic_path``'s temporary: ``.<name>.tmp<PID>``, the PID of the process that writes it.
_TEMPORARY = re.compile(r"\..+\.tmp(\d+)")


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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    except (OverflowError, ValueError):  # no process can have this number
        return False
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries under ``folder`` whose writer is gone: a process killed mid-write (SIGKILL, power
    loss) never reaches ``atomic_path``'s cleanup, and its temporary (a whole checkpoint) would stay for ever.
    A temporary of a live process is a write in progress and stays. Returns the removed files."""
    removed = []
    for candidate in Path(folder).rglob(".*.tmp*"):
        match = _TEMPORARY.fullmatch(candidate.name)
        if match and candidate.is_file() and not _process_alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
    return removed
