"""Reading a weights file and mapping transformers tensors onto open_clip's names: the pieces CLIP and SigLIP share
(encoder layers, linear layers, the text tower), each tensor taken exactly once and the result loaded strictly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...errors import DipclipError
from ...files import check_regular_file, read_safetensors


def read_weights(path: str | Path, fix: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or torch (``.bin``/``.pt``) state-dict file; a FIFO or folder is refused
    before it is opened."""
    path = check_regular_file(path, "weights file", fix)
    if str(path).endswith(".safetensors"):
        return read_safetensors(path, "weights file", fix)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise DipclipError(f"cannot read weights file {path} ({type(exc).__name__}); {fix}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DipclipError(f"weights file {path} does not hold a state dict of tensors; {fix}")
    return dict(state)


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)``, the first missing, unexpected or misshapen key refused."""
    wanted = model.state_dict()
    for key in wanted:
        if key not in state:
            raise DipclipError(f"{source}: the converted weights lack {key} (the model needs it); the checkpoint "
                               "does not match its config")
    for key, value in state.items():
        if key not in wanted:
            raise DipclipError(f"{source}: weight {key} has no place in the model; the checkpoint does not match "
                               "its config")
        if tuple(value.shape) != tuple(wanted[key].shape):
            raise DipclipError(f"{source}: weight {key} has shape {tuple(value.shape)} but the model's is "
                               f"{tuple(wanted[key].shape)}; the checkpoint does not match its config")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)


class TensorSource:
    """The folder's tensors, each taken exactly once: whatever is left at the end is refused."""

    def __init__(self, state: dict[str, torch.Tensor], shown: str):
        self.state = dict(state)
        self.shown = shown

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise DipclipError(f"{self.shown} lacks weight {key}, which its config.json implies; the weights do not "
                               "match the config")
        return self.state.pop(key)

    def drop_position_ids(self, key: str) -> None:
        """Old exports keep ``position_ids`` (0..n-1) as a buffer: consumed when it is exactly that."""
        ids = self.state.get(key)
        if ids is not None and torch.equal(ids.flatten().long(), torch.arange(ids.numel())):
            del self.state[key]

    def finish(self) -> None:
        if self.state:
            first = sorted(self.state)[0]
            raise DipclipError(f"{self.shown}: weight {first} (and {len(self.state) - 1} more) has no counterpart in "
                               "the open_clip model; this folder is not a plain CLIP/SigLIP")


def map_encoder_layer(src: TensorSource, hf: str, out: dict, oc: str, timm_names: bool) -> None:
    """One transformers encoder layer: into open_clip's ``ResidualAttentionBlock`` or timm's ``Block``."""
    q_w, k_w, v_w = (src.take(f"{hf}self_attn.{n}_proj.weight") for n in "qkv")
    q_b, k_b, v_b = (src.take(f"{hf}self_attn.{n}_proj.bias") for n in "qkv")
    if timm_names:
        names = {"ln1": "norm1", "ln2": "norm2", "qkv": "attn.qkv", "out": "attn.proj", "fc1": "mlp.fc1",
                 "fc2": "mlp.fc2"}
        out[f"{oc}{names['qkv']}.weight"] = torch.cat([q_w, k_w, v_w])
        out[f"{oc}{names['qkv']}.bias"] = torch.cat([q_b, k_b, v_b])
    else:
        names = {"ln1": "ln_1", "ln2": "ln_2", "out": "attn.out_proj", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}
        out[f"{oc}attn.in_proj_weight"] = torch.cat([q_w, k_w, v_w])
        out[f"{oc}attn.in_proj_bias"] = torch.cat([q_b, k_b, v_b])
    for hf_name, oc_name in (("layer_norm1", names["ln1"]), ("layer_norm2", names["ln2"]),
                             ("self_attn.out_proj", names["out"]), ("mlp.fc1", names["fc1"]),
                             ("mlp.fc2", names["fc2"])):
        for part in ("weight", "bias"):
            out[f"{oc}{oc_name}.{part}"] = src.take(f"{hf}{hf_name}.{part}")


def map_linear(src: TensorSource, hf: str, out: dict, oc: str) -> None:
    for part in ("weight", "bias"):
        out[f"{oc}.{part}"] = src.take(f"{hf}.{part}")


def map_text(src: TensorSource, out: dict, oc: str, layers: int) -> None:
    t = "text_model."
    src.drop_position_ids(f"{t}embeddings.position_ids")
    out[f"{oc}token_embedding.weight"] = src.take(f"{t}embeddings.token_embedding.weight")
    out[f"{oc}positional_embedding"] = src.take(f"{t}embeddings.position_embedding.weight")
    for i in range(layers):
        map_encoder_layer(src, f"{t}encoder.layers.{i}.", out, f"{oc}transformer.resblocks.{i}.", timm_names=False)
    map_linear(src, f"{t}final_layer_norm", out, f"{oc}ln_final")
