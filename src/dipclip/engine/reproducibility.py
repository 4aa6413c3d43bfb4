"""Seeds and atomic files: what makes a run repeatable and resumable."""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import file_mode


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a generator for DataLoader shuffling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch starts from its own seed, so a resumed run draws exactly what an uninterrupted one does."""
    return seed * 100_003 + epoch


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; a result file gets the mode open() would give it
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# an indented JSON array holding only numbers (or null): written on one line, so a confusion matrix or a
# per-epoch list stays a line per row, not a line per number (only matches that span lines: never a string)
_NUMBER_ARRAY = re.compile(r"\[(?:\s*(?:-?[0-9][0-9.eE+-]*|null)\s*,)*\s*(?:-?[0-9][0-9.eE+-]*|null)\s*\]")


def _one_line(match: re.Match) -> str:
    text = match.group(0)
    if "\n" not in text:
        return text
    return "[" + ", ".join(part.strip() for part in text[1:-1].split(",")) + "]"


def atomic_write_json(path: str | Path, payload: Any) -> None:
    text = _NUMBER_ARRAY.sub(_one_line, json.dumps(payload, indent=2, sort_keys=False))
    atomic_write_bytes(path, (text + "\n").encode())


def atomic_torch_save(path: str | Path, payload: Any) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
