"""Where a script will write, checked before it starts: a run whose results cannot be saved must not run first."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from utils.errors import UserError


def check_output_path(flag: str, path: str | Path, *, folder: bool = True) -> Path:
    """``path`` if this process can write it (a folder, or with ``folder=False`` a file), else one UserError naming
    ``flag``, ``path`` and what is wrong: a file where a folder is needed (``path`` itself or a folder above it), a
    folder where a file is needed, or a folder that refuses new entries (permissions, a read-only or virtual file
    system; tried for real, since root passes every permission test). Leaves nothing behind."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    if path.exists() and not path.is_dir() and folder:
        raise UserError(f"{flag} {path}: is a file, not a folder")
    start = path if folder else path.parent
    existing = next(p for p in (start, *start.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: cannot be created: {existing} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as error:
        raise UserError(f"{flag} {path}: not writable: cannot create anything in {existing} "
                        f"({error.strerror})") from None
    return path
