"""Where dipclip keeps shared caches (few-shot selections, image features)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$DIPCLIP_CACHE_DIR`` or ``~/.cache/dipclip``."""
    return Path(os.environ.get("DIPCLIP_CACHE_DIR") or Path.home() / ".cache" / "dipclip")
