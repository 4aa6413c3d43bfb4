"""Where dipclip keeps shared caches (few-shot selections, image features), and their housekeeping."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

# A temporary file of an atomic write (``.NAME.XXXX.tmp``) untouched for this long belongs to a write that
# was killed: writes take seconds, and the file's modification time advances while one is under way.
STALE_TEMP_SECONDS = 15 * 60


def cache_root() -> Path:
    """``$DIPCLIP_CACHE_DIR`` or ``~/.cache/dipclip``."""
    return Path(os.environ.get("DIPCLIP_CACHE_DIR") or Path.home() / ".cache" / "dipclip")


def remove_stale_temps(folder: str | Path, min_age_seconds: float = STALE_TEMP_SECONDS) -> int:
    """Remove the atomic-write temporaries (``.*.tmp``, regular files only) in ``folder`` that were last
    modified at least ``min_age_seconds`` ago; returns how many. A missing folder has none."""
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime >= min_age_seconds:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue  # another process removed or replaced it: nothing to do
    return removed
