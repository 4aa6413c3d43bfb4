"""Build a frozen CLIP backbone from what users have: an open_clip name + tag, an OpenAI ``.pt`` file,
an open_clip config JSON, or dipclip's own embedded model.

Weights always load in fp32 (bf16 autocast is applied at run time on CUDA), every parameter is frozen,
and a missing download fails in seconds with a message that says what was looked for and where.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from ..errors import DipclipError, warn
from ..files import read_json, read_safetensors
from . import embedded, tokenizers
from .build import build_from_config, file_sha256
from .precision import autocast_for
from .text_towers import TextTowerBase, text_tower_for
from .vision_tower import VisionTower, is_class_token_vit

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def normalize_image_features(raw: torch.Tensor) -> torch.Tensor:
    """L2-normalised image features from the projected fp32 ones: the one place image features are normalised
    (:meth:`Backbone.encode_images`, the feature store's stored copies, DePT's similarity logits)."""
    return nn.functional.normalize(raw, dim=-1)


@dataclass
class Backbone:
    """A frozen CLIP with its own tokenizer and the facts adapters are checked against."""

    model: nn.Module
    text: TextTowerBase
    tokenizer: tokenizers.Tokenizer
    name: str
    pretrained: str
    identity: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_arg: str | None = None  # what the user passed as --model, so an adapter can rebuild its backbone
    model_config: dict | None = None  # the config JSON's content, so it rebuilds without that file
    weights_file: str | None = None  # the absolute path of a --pretrained weights file
    known_tokens: frozenset[int] | None = None  # a pruned vocabulary (dipclip-tiny); None: the full one
    _warned_words: set[str] = field(default_factory=set, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP-style models' learned logit bias (``scale * cos + bias``); None for CLIP-style ones. A bias
        shared by every class changes no softmax, cross-entropy, KL or argmax: it matters only for sigmoid
        probabilities and for exported logits."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.reshape(())

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """The model's own logits of normalised features: ``scale * image @ text.T`` (+ the logit bias)."""
        logits = self.logit_scale * image_features @ text_features.t()
        bias = self.logit_bias
        return logits if bias is None else logits + bias.to(logits.dtype)

    @cached_property
    def content_start(self) -> int:
        """Position of a text's first token: after SOS for CLIP (1), 0 for SigLIP's tokenizer (no BOS), after
        [CLS] or <s> for BERT-style ones. Found by tokenizing two one-letter texts and seeing where they differ."""
        a, b = self.tokenizer(["x"])[0], self.tokenizer(["y"])[0]
        differ = (a != b).nonzero()
        if len(differ) != 1:
            raise DipclipError(f"cannot find where text starts in {self.name}'s tokenizer ('x' and 'y' differ at "
                               f"{len(differ)} positions, expected 1)")
        return int(differ[0, 0])

    def to(self, device: torch.device | str) -> Backbone:
        self.model.to(device)
        self.text.to(device)
        return self

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if self.known_tokens is not None:
            self._warn_unknown_words(texts)
        return self.tokenizer(texts).to(self.device)

    def unknown_words(self, texts: list[str]) -> list[str]:
        """Words of ``texts`` with a token outside :attr:`known_tokens` (they would embed as zero vectors)."""
        if self.known_tokens is None:
            return []
        found: list[str] = []
        for text in texts:
            for word in text.split():
                if any(token not in self.known_tokens for token in self.tokenizer.encode(word)):
                    shown = word.strip(".,;:!?\"'()[]{}").lower() or word
                    if shown not in found:
                        found.append(shown)
        return found

    def _warn_unknown_words(self, texts: list[str]) -> None:
        """One line per new set of unknown words: silently zero-embedded class names give wrong numbers."""
        new = [word for word in self.unknown_words(texts) if word not in self._warned_words]
        if not new:
            return
        self._warned_words.update(new)
        shown = ", ".join(repr(word) for word in new[:12]) + (f" and {len(new) - 12} more" if len(new) > 12 else "")
        if os.environ.get("RANK", "0") == "0":
            warn(f"{self.name} does not know the word(s) {shown} (in class names or templates): they embed as "
                 "zero vectors and carry no meaning; use words it knows, or a full CLIP such as --model ViT-B-16 "
                 "--pretrained openai")

    @cached_property
    def vision(self) -> VisionTower | None:
        """The image tower with the class-token shortcut (open_clip ViTs pooled by their class token), or None
        for every other tower (ResNet, timm, attention or average pooling), which runs open_clip's own
        ``encode_image``."""
        return VisionTower(self.model) if is_class_token_vit(self.model.visual) else None

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """L2-normalised image features in fp32 (the image tower is frozen, so never with grad);
        ``normalize=False`` gives the projected features before normalisation (DePT's head takes those)."""
        if self.vision is not None:
            features = self.vision(images)
        else:
            with autocast_for(images.device):
                features = self.model.encode_image(images, normalize=False)  # CoCa normalises by default
        return normalize_image_features(features.float()) if normalize else features.float()

    def describe(self) -> dict:
        return {
            "model": self.name,
            "model_arg": self.model_arg,
            "pretrained": self.pretrained,
            "identity": self.identity,
            "text_width": self.text.width,
            "embed_dim": self.text.output_dim,
            "image_size": self.image_size,
            **({"model_config": self.model_config} if self.model_config is not None else {}),
            **({"weights_file": self.weights_file} if self.weights_file is not None else {}),
        }


def resolve_device(device: str | None) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is absent is a user error."""
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise DipclipError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DipclipError(f"--device {device} asked for CUDA but no CUDA GPU is available; use --device cpu")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DipclipError(f"--device {device} asked for MPS but it is not available; use --device cpu")
    return resolved


def load_backbone(
    model: str | None = None,
    pretrained: str | None = None,
    device: str | torch.device | None = "cpu",
    cache_dir: str | None = None,
    announce: bool = True,
    model_config: dict | None = None,
) -> Backbone:
    """Build a frozen CLIP.

    - ``model`` an open_clip name (``ViT-B-16``) and ``pretrained`` one of its tags (``openai``);
    - ``pretrained`` a weights file: an OpenAI checkpoint (TorchScript archive or state dict, the
      architecture read from the tensors, so ``model`` may be omitted), or an open_clip checkpoint for
      the given ``model``;
    - ``model`` a path to an open_clip model config JSON (``{"embed_dim", "vision_cfg", "text_cfg"}``);
    - ``pretrained="none"``: random weights (seeded, identical at every load); never the default, because
      a model that silently has random weights gives numbers that look like results;
    - ``pretrained`` the name of an embedded dipclip model (see :mod:`dipclip.backbones.embedded`);
    - ``pretrained="hf-hub:ORG/NAME"``: open_clip's hub form, read offline from the Hugging Face cache
      (``model`` absent or the same string; see :mod:`dipclip.backbones.hub`);
    - ``pretrained`` a Hugging Face ``transformers`` CLIP or SigLIP folder (``config.json`` + weights), with
      ``model`` absent or the same folder, converted exactly to open_clip (:mod:`dipclip.backbones.convert`);
      the backbone then records the weights file inside it as ``pretrained``/``weights_file`` (that file
      works as ``--pretrained`` too), so an adapter rebuilds it.

    ``announce`` prints one ``weights: ...`` line to stderr, so every run says what it runs on.
    ``model_config``: the content of the config JSON ``model`` names (an adapter records it), used instead
    of reading that file, so an adapter evaluates from any folder.
    """
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    require_weights(model, pretrained)
    if embedded.is_embedded(pretrained) and model is not None:
        raise DipclipError(f"--pretrained {pretrained} is dipclip's own model with its own architecture; "
                           f"drop --model {model}, or give weights for {model} with --pretrained TAG|FILE")
    hugging_face = _from_hugging_face(model, pretrained, cache_dir)  # hf-hub:ORG/NAME or a transformers folder
    if hugging_face is not None:
        (clip_model, tokenizer, identity, name), model, pretrained = hugging_face
    elif embedded.is_embedded(pretrained):
        clip_model, tokenizer, identity, name = embedded.load_embedded(pretrained)
    elif pretrained != "none" and _looks_like_file(pretrained):  # a file called "none" is not weights
        clip_model, tokenizer, identity, name = _from_weights_file(model, pretrained, model_config)
    elif model is None:
        raise DipclipError(
            "--model is required unless --pretrained is a weights file; e.g. --model ViT-B-16 --pretrained openai"
        )
    elif model_config is not None or model.endswith(".json"):
        clip_model, tokenizer, identity, name = _from_config_file(model, pretrained, model_config)
    else:
        clip_model, tokenizer, identity, name = _from_open_clip_name(model, pretrained, cache_dir)

    clip_model = clip_model.float().eval().requires_grad_(False)
    clip_model.to(torch_device)
    visual = clip_model.visual
    size = getattr(visual, "image_size", 224)
    image_size = int(size[0] if isinstance(size, tuple | list) else size)
    mean = tuple(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
    std = tuple(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
    text = text_tower_for(clip_model, tokenizer.context_length).to(torch_device)
    backbone = Backbone(
        model=clip_model, text=text, tokenizer=tokenizer, name=name, pretrained=pretrained,
        identity=identity, image_size=image_size, mean=mean, std=std, model_arg=model,
        model_config=model_config if model_config is not None else _config_of(model),
        weights_file=(os.path.abspath(os.path.expanduser(pretrained))
                      if pretrained != "none" and not embedded.is_embedded(pretrained) and _is_file(pretrained)
                      else None),
        known_tokens=embedded.embedded_vocabulary(pretrained) if embedded.is_embedded(pretrained) else None,
    )
    if announce and os.environ.get("RANK", "0") == "0":
        print(weights_line(backbone), file=sys.stderr, flush=True)
    return backbone


def _from_hugging_face(model: str | None, pretrained: str, cache_dir: str | None):
    """``((clip_model, tokenizer, identity, name), model, pretrained)`` for ``hf-hub:ORG/NAME`` or a transformers
    CLIP/SigLIP folder (or its weights file), else None. A folder comes back as ``model=None`` and ``pretrained``
    the absolute path of its weights file (an adapter records and reloads that)."""
    from . import convert, hub

    if hub.is_hub(pretrained) or hub.is_hub(model):
        return hub.load_hub(model, pretrained, cache_dir), model, pretrained
    weights = convert.transformers_weights(model, pretrained)
    if weights is None:
        return None
    return convert.load_transformers(weights), None, os.path.abspath(weights)


def require_weights(model: str | None, pretrained: str | None) -> None:
    """Refuse a backbone without ``pretrained``: random weights only when asked for with ``"none"``."""
    if pretrained is None:
        raise DipclipError(_missing_weights_message(model))


def _missing_weights_message(model: str | None) -> str:
    if model is not None:
        return (f"--model {model} without --pretrained would run on random weights; give the weights "
                "(--pretrained openai, or a weights file), or pass `--pretrained none` for random weights")
    return ("no backbone given; pass --pretrained dipclip-tiny (the shipped small CLIP), --model ViT-B-16 "
            "--pretrained openai, or --pretrained FILE (an OpenAI .pt or open_clip checkpoint)")


def weights_line(backbone: Backbone) -> str:
    """The one line every run prints about its weights (random ones say so loudly)."""
    if backbone.pretrained == "none":
        return (f"weights: RANDOM (--pretrained none) for {backbone.name}: results are those of an untrained "
                f"CLIP [{backbone.identity}]")
    return f"weights: {backbone.pretrained} for {backbone.name} [{backbone.identity}]"


def _looks_like_file(pretrained: str) -> bool:
    if os.path.isfile(os.path.expanduser(pretrained)):
        return True
    if pretrained.lower().endswith(WEIGHT_SUFFIXES) or os.sep in pretrained:
        raise DipclipError(f"weights file not found: {pretrained}; check the path given to --pretrained")
    return False


def _tokenizer_for_config(model_cfg: dict) -> tokenizers.Tokenizer:
    return tokenizers.for_config(model_cfg)


def _is_file(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.expanduser(path))


def _config_of(model: str | None) -> dict | None:
    """The model config of a config-file ``model`` (already read once, so it is valid), else None."""
    return read_model_config(model) if model is not None and model.endswith(".json") else None


def read_model_config(path: str) -> dict:
    """The open_clip model config in a JSON file (a plain config or an ``open_clip_config.json``)."""
    config_path = Path(path).expanduser()
    if not os.path.lexists(config_path):
        raise DipclipError(f"model config not found: {path}; give an open_clip config JSON or a model name")
    raw = read_json(config_path, "model config", "give an open_clip model config JSON (embed_dim, vision_cfg, "
                    "text_cfg)")
    model_cfg = raw.get("model_cfg", raw)  # accept both plain configs and open_clip_config.json files
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(model_cfg) or not all(
            isinstance(model_cfg[key], dict) for key in ("vision_cfg", "text_cfg")):
        raise DipclipError(f"model config {path} needs embed_dim, vision_cfg and text_cfg (open_clip format)")
    return model_cfg


def _from_config_file(path: str, pretrained: str, model_cfg: dict | None = None):
    model_cfg = model_cfg if model_cfg is not None else read_model_config(path)
    if pretrained != "none":
        raise DipclipError(
            f"--pretrained {pretrained!r} is neither 'none' nor an existing weights file (with a config JSON as "
            "--model, give a checkpoint path or 'none')"
        )
    model = build_from_config(model_cfg)
    canonical = json.dumps(model_cfg, sort_keys=True).encode()
    identity = f"config-sha256:{hashlib.sha256(canonical).hexdigest()[:16]}/none"
    return model, _tokenizer_for_config(model_cfg), identity, Path(path).stem


def _from_weights_file(model: str | None, pretrained: str, model_cfg: dict | None = None):
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    path = str(Path(pretrained).expanduser())
    identity = f"sha256:{file_sha256(path)}"
    if model is None or _is_openai_file(path):
        state = _read_openai_checkpoint(path, pretrained)
        try:
            clip_model = build_model_from_openai_state_dict(dict(state), quick_gelu=True, cast_dtype=None)
            # open_clip loads through fp16 parameters; reload in fp32 so fp32 checkpoints stay exact.
            clip_model.float().load_state_dict({k: v.float() for k, v in state.items()})
        except (KeyError, RuntimeError, ValueError) as exc:
            raise DipclipError(
                f"{pretrained} is not an OpenAI CLIP checkpoint ({type(exc).__name__}: {str(exc)[:120]}); for an "
                "open_clip checkpoint also pass --model NAME"
            ) from None
        name = model or f"openai:{Path(path).stem}"
        ctx = clip_model.positional_embedding.shape[0]
        return clip_model, tokenizers.clip_bpe(ctx), identity, name
    if model_cfg is not None or model.endswith(".json"):
        model_cfg = model_cfg if model_cfg is not None else read_model_config(model)
        clip_model = build_from_config(model_cfg)
        state = _read_state_dict(path)
        try:
            clip_model.load_state_dict(state)
        except RuntimeError as exc:
            raise DipclipError(f"{pretrained} does not match config {model}: {str(exc).splitlines()[0]}") from None
        return clip_model, _tokenizer_for_config(model_cfg), identity, Path(model).stem
    _check_model_name(model)
    try:
        clip_model = open_clip.create_model(model, pretrained=path, precision="fp32", device="cpu")
    except RuntimeError as exc:
        raise DipclipError(f"cannot load {pretrained} into {model}: {str(exc).splitlines()[0]}") from None
    return clip_model, _named_tokenizer(model, None), identity, model


def _read_openai_checkpoint(path: str, shown: str) -> dict:
    """State dict of an OpenAI checkpoint: a TorchScript archive (as `clip.load` downloads) or a plain dict."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            state = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        state = _read_state_dict(path)
    # Not weights: the causal mask some exports keep as a buffer, and the metadata OpenAI stores as tensors.
    for key in ("attn_mask", "input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    if "visual.proj" not in state and "visual.attnpool.positional_embedding" not in state:
        raise DipclipError(f"{shown} is not an OpenAI CLIP checkpoint (no visual.proj or visual.attnpool weights); "
                           "for an open_clip checkpoint also pass --model NAME")
    return dict(state)


def _is_openai_file(path: str) -> bool:
    """TorchScript archives are zip files with a `code/` folder; plain OpenAI state dicts have `visual.proj`
    or `visual.attnpool` keys at the top level."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any("/code/" in name for name in archive.namelist()[:2000]):
                return True
    try:
        state = _read_state_dict(path)
    except DipclipError:
        return False
    return "visual.proj" in state or "visual.attnpool.positional_embedding" in state


def _read_state_dict(path: str) -> dict:
    if path.endswith(".safetensors"):
        return read_safetensors(path, "weights file", "check the file given to --pretrained")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise DipclipError(f"cannot read weights file {path} ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DipclipError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _check_model_name(model: str) -> None:
    import open_clip

    if model not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if model.lower().replace("/", "-") in m.lower()][:8]
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `python -c 'import open_clip; print(open_clip.list_models())'`"
        raise DipclipError(f"unknown open_clip model {model!r} (or a config JSON path that does not exist){hint}")


def _named_tokenizer(model: str, cache_dir: str | None) -> tokenizers.Tokenizer:
    """The tokenizer of an open_clip model name, from its built-in config (offline)."""
    import open_clip

    return tokenizers.for_config(open_clip.get_model_config(model) or {}, cache_dir)


def _from_open_clip_name(model: str, pretrained: str, cache_dir: str | None):
    import open_clip

    _check_model_name(model)
    if pretrained == "none":
        model_cfg = open_clip.get_model_config(model)
        clip_model = build_from_config(model_cfg)
        return clip_model, _named_tokenizer(model, None), f"{model}/none", model
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
    return clip_model, _named_tokenizer(model, cache_dir), f"{model}/{pretrained}", model


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
