"""Small file helpers shared by the data modules: atomic JSON writes and portable relative paths."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..files import file_mode


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON so that readers never see a half-written file (temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; honour the umask like open() does
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def relative_path(path: str, image_root: str | Path | None) -> str:
    """``path`` relative to ``image_root`` with forward slashes, as split files and caches store it."""
    if image_root is None:
        return Path(path).as_posix()
    return Path(os.path.relpath(path, image_root)).as_posix()
