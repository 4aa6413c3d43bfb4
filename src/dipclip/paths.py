"""Where dipclip keeps shared caches (few-shot selections, image features), and their housekeeping."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Collection
from pathlib import Path

# A temporary file of an atomic write (``.NAME.XXXX.tmp``) untouched for this long belongs to a write that
# was killed: writes take seconds, and the file's modification time advances while one is under way.
STALE_TEMP_SECONDS = 15 * 60
# ``tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")``, as every atomic write here names its temporary
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def cache_root() -> Path:
    """``$DIPCLIP_CACHE_DIR`` or ``~/.cache/dipclip``."""
    return Path(os.environ.get("DIPCLIP_CACHE_DIR") or Path.home() / ".cache" / "dipclip")


_UNWRITABLE: set[str] = set()  # cache folders already reported unwritable by this process


def cache_unwritable(what: str, folder: str | Path, exc: OSError, bypass: str = "") -> None:
    """Warn once per folder and process that a cache cannot be written (read-only, full, not a folder): a
    cache only saves time, so the run goes on without it; the fix is the cache's own setting, not --out."""
    from .errors import warn

    if str(folder) in _UNWRITABLE:
        return
    _UNWRITABLE.add(str(folder))
    warn(f"cannot write the {what} in {folder} ({exc.strerror or type(exc).__name__}); the run goes on without "
         f"it: set DIPCLIP_CACHE_DIR to a writable folder{bypass}")


def remove_stale_temps(folder: str | Path, min_age_seconds: float = STALE_TEMP_SECONDS,
                       suffixes: Collection[str] | None = None) -> int:
    """Remove the atomic-write temporaries (``.NAME.XXXXXXXX.tmp``, regular files only) in ``folder`` that
    were last modified at least ``min_age_seconds`` ago, only those whose NAME ends with one of ``suffixes``
    when given; returns how many. A missing folder has none."""
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or (suffixes is not None and not match["name"].endswith(tuple(suffixes))):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime >= min_age_seconds:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue  # another process removed or replaced it: nothing to do
    return removed
