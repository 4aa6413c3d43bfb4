"""Transformers model folders: recognising one from ``--model``/``--pretrained`` (or the weights file inside it,
as an adapter records it), and what the folder says besides its weights (preprocessing, tokenizer files, a name)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ...errors import DipclipError
from ...files import check_regular_file, read_json
from ..tokenizers import TOKENIZER_FILES, folder_files_sha256  # noqa: F401 - convert re-exports the list

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
PREPROCESSOR_NAME = "preprocessor_config.json"
FIX = "give a folder written by transformers' save_pretrained (config.json + model.safetensors or pytorch_model.bin)"


def expand(path: str) -> Path:
    return Path(os.path.expanduser(str(path)))


def _model_type_of(folder: Path) -> str | None:
    """The ``model_type`` of ``folder/config.json`` when it is a readable JSON object with one, else None."""
    config = folder / CONFIG_NAME
    try:
        check_regular_file(config, "config", "")
        raw = read_json(config, "transformers config", FIX)
    except DipclipError:
        return None
    kind = raw.get("model_type")
    return kind if isinstance(kind, str) else None


def is_transformers_weights_file(path: str) -> bool:
    """True for ``FOLDER/model.safetensors`` or ``FOLDER/pytorch_model.bin`` next to a transformers
    ``config.json`` (one with a ``model_type``): how an adapter records a converted backbone's weights."""
    file = expand(path)
    return file.name in WEIGHT_NAMES and _model_type_of(file.parent) is not None


def transformers_weights(model: str | None, pretrained: str | None) -> str | None:
    """The weights file to convert when ``--model``/``--pretrained`` name a transformers folder, else None.

    A transformers folder may come as ``--pretrained FOLDER`` (``--model`` absent) or ``--model FOLDER
    --pretrained FOLDER``; the weights file inside it (``FOLDER/model.safetensors``, what an adapter records)
    works as ``--pretrained`` too. A folder carries its own architecture, so any other ``--model`` is refused.
    A bare name (``openai``) is an open_clip tag even if a folder of that name happens to exist, unless
    ``--model`` is absent or that same folder."""
    if pretrained is None or pretrained == "none":
        if model is not None and expand(model).is_dir() and (expand(model) / CONFIG_NAME).exists():
            raise DipclipError(f"--model {model} is a transformers folder, which holds its own weights: pass "
                               f"--pretrained {model} (and drop --model)")
        return None
    target = expand(pretrained)
    if target.is_dir():
        explicit_path = os.sep in pretrained or pretrained.startswith(("~", "."))
        same_folder = model is not None and expand(model).is_dir() and _same(expand(model), target)
        if model is not None and not same_folder:
            if not explicit_path and not (target / CONFIG_NAME).exists():
                return None  # an open_clip tag that happens to be a folder name here
            raise DipclipError(f"--pretrained {pretrained} is a folder (a transformers CLIP/SigLIP model) that "
                               f"carries its own architecture; drop --model {model} (or give that same folder)")
        return str(weights_in(target))
    if target.is_file() or _is_special(target):
        if is_transformers_weights_file(pretrained):
            if model is not None and not (expand(model).is_dir() and _same(expand(model), target.parent)):
                raise DipclipError(f"--pretrained {pretrained} belongs to a transformers folder that carries its own "
                                   f"architecture; drop --model {model}")
            return str(target)
    return None


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _is_special(path: Path) -> bool:
    """Exists but is neither a file nor a folder (a FIFO, socket, device): refused later, never opened."""
    return os.path.exists(path) and not path.is_file() and not path.is_dir()


def weights_in(folder: Path) -> Path:
    """The weights file of a transformers folder (``model.safetensors``, else ``pytorch_model.bin``)."""
    if not (folder / CONFIG_NAME).exists():
        raise DipclipError(f"folder {folder} holds no {CONFIG_NAME}, so it is not a transformers model folder; "
                           f"{FIX}, or give a weights file")
    for name in WEIGHT_NAMES:
        if os.path.lexists(folder / name):
            return folder / name
    sharded = [name for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
               if (folder / name).exists()]
    if sharded:
        raise DipclipError(f"{folder} holds a sharded checkpoint ({sharded[0]}), which dipclip does not read; "
                           "save it unsharded (save_pretrained(..., max_shard_size='100GB'))")
    raise DipclipError(f"transformers folder {folder} holds no weights (looked for {' or '.join(WEIGHT_NAMES)}); "
                       f"{FIX}")


def display_name(folder: Path) -> str:
    """``ORG/NAME`` for a Hugging Face cache snapshot (``models--ORG--NAME/snapshots/<rev>``), else the folder name."""
    parts = folder.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return folder.name or str(folder)


def read_preprocessing(folder: Path, defaults: tuple) -> tuple[tuple, tuple]:
    path = folder / PREPROCESSOR_NAME
    if not os.path.lexists(path):
        return defaults
    raw = read_json(path, "preprocessor config", "fix or remove preprocessor_config.json")
    found = []
    for key, default in zip(("image_mean", "image_std"), defaults, strict=True):
        value = raw.get(key, default)
        if (not isinstance(value, list | tuple) or len(value) != 3
                or not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in value)
                or (key == "image_std" and not all(x > 0 for x in value))):
            raise DipclipError(f"preprocessor config {path}: {key} is {value!r}, not three finite numbers"
                               f"{' above 0' if key == 'image_std' else ''}; fix or remove the file")
        found.append(tuple(float(x) for x in value))
    return found[0], found[1]


def check_tokenizer_files(folder: Path) -> None:
    """Refuse a tokenizer file that is not a regular file (a FIFO would block the tokenizer's reader forever)."""
    folder_files_sha256(folder)
