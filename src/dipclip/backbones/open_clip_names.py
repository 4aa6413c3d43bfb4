"""open_clip model names and pretrained tags (``--model ViT-B-16 --pretrained openai``): the name checked, the
weights found offline in the Hugging Face cache or open_clip's URL cache, and downloaded only when the network is
there; a missing download fails in seconds with a message that says what was looked for and where."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ..errors import DipclipError
from . import tokenizers
from .build import build_from_config


def check_model_name(model: str) -> None:
    """Refuse a name open_clip does not know, with the close ones it does."""
    import open_clip

    if model not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if model.lower().replace("/", "-") in m.lower()][:8]
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `python -c 'import open_clip; print(open_clip.list_models())'`"
        raise DipclipError(f"unknown open_clip model {model!r} (or a config JSON path that does not exist){hint}")


def named_tokenizer(model: str, cache_dir: str | None) -> tokenizers.Tokenizer:
    """The tokenizer of an open_clip model name, from its built-in config (offline)."""
    import open_clip

    return tokenizers.for_config(open_clip.get_model_config(model) or {}, cache_dir)


def load_open_clip_name(model: str, pretrained: str, cache_dir: str | None):
    """``(clip_model, tokenizer, identity, name)`` of an open_clip name and tag (``"none"``: random weights)."""
    import open_clip

    check_model_name(model)
    if pretrained == "none":
        model_cfg = open_clip.get_model_config(model)
        clip_model = build_from_config(model_cfg)
        return clip_model, named_tokenizer(model, None), f"{model}/none", model
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise DipclipError(
            f"unknown pretrained tag {pretrained!r} for {model}; known tags: {', '.join(tags) or 'none'} "
            "(or give a weights file path, or 'none' for random weights)"
        )
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    weights = _find_cached_weights(tag_cfg, cache_dir)
    if weights is None:
        weights = _download_or_explain(model, pretrained, tag_cfg, cache_dir)
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    clip_model = open_clip.create_model(
        model, pretrained=weights, precision="fp32", device="cpu", force_quick_gelu=quick_gelu
    )
    return clip_model, named_tokenizer(model, cache_dir), f"{model}/{pretrained}", model


def _hub_files(tag_cfg: dict) -> tuple[str, list[str]]:
    hub = tag_cfg.get("hf_hub", "")
    repo_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return repo_id, names


def _find_cached_weights(tag_cfg: dict, cache_dir: str | None) -> str | None:
    """Look in the Hugging Face cache and in open_clip's URL cache without touching the network."""
    repo_id, names = _hub_files(tag_cfg)
    if repo_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for filename in names:
                found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
        except ImportError:
            pass
    url = tag_cfg.get("url", "")
    if url:
        url_cache = Path(cache_dir or os.path.expanduser("~/.cache/clip"))
        candidate = url_cache / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


def _network_available(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get("DIPCLIP_OFFLINE"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _download_or_explain(model: str, pretrained: str, tag_cfg: dict, cache_dir: str | None) -> str:
    from huggingface_hub import constants

    repo_id, names = _hub_files(tag_cfg)
    where = cache_dir or constants.HF_HUB_CACHE
    looked_for = f"{repo_id}/{' or '.join(names)} in {where}"
    if tag_cfg.get("url"):
        looked_for += f", and {os.path.basename(tag_cfg['url'])} in {cache_dir or '~/.cache/clip'}"
    if not _network_available():
        raise DipclipError(
            f"weights for {model}/{pretrained} are not available offline: looked for {looked_for}; "
            "download them on a connected machine, or pass the file with --pretrained PATH"
        )
    import open_clip

    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        return open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001
        raise DipclipError(f"download of {model}/{pretrained} failed ({type(exc).__name__}); looked for {looked_for}") from None
