"""Every image tower open_clip builds: frozen features equal open_clip's ``encode_image``; deep vision prompts
(MaPLe, PromptSRC) on the ViT-style ones equal a reference that runs the tower's own forward with the prompt
tokens spliced in by hooks; towers without a token sequence are refused in one line."""

from __future__ import annotations

import pytest
import torch

from dipclip.backbones.build import build_from_config
from dipclip.backbones.loading import Backbone
from dipclip.backbones.vision_tower import VisionTower, is_class_token_vit
from dipclip.errors import DipclipError

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
VIT = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}


def _register_tiny_timm_models() -> None:
    """Tiny timm trunks (32 px, 2 layers, width 32) under names a config's ``timm_model_name`` can give:
    open_clip's ``TimmModel`` passes no size arguments to timm, so the size must be in the registered model."""
    import timm
    from timm.models import register_model
    from timm.models.eva import _create_eva
    from timm.models.vision_transformer import _create_vision_transformer

    vit = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2)
    variants = {
        "dipclip_test_vit_token": (_create_vision_transformer, dict(vit, reg_tokens=1)),
        "dipclip_test_vit_avg": (_create_vision_transformer, dict(vit, class_token=False, reg_tokens=2,
                                                                  global_pool="avg")),
        "dipclip_test_vit_siglip": (_create_vision_transformer, dict(vit, class_token=False, global_pool="map")),
        "dipclip_test_eva02": (_create_eva, dict(vit, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, use_rot_pos_emb=True,
                                                 ref_feat_shape=(4, 4))),
    }
    for name, (create, args) in variants.items():
        if timm.is_model(name):
            continue

        def entry(pretrained: bool = False, _name=name, _create=create, _args=args, **kwargs):
            return _create(_name, pretrained=pretrained, **dict(_args, **kwargs))

        entry.__name__ = name
        entry.__module__ = __name__
        register_model(entry)


_register_tiny_timm_models()


def _timm(name: str, pool: str, proj: str = "linear", embed_dim: int = 32) -> dict:
    return {"embed_dim": embed_dim, "text_cfg": TEXT,
            "vision_cfg": {"image_size": 32, "timm_model_name": name, "timm_pool": pool, "timm_proj": proj}}


def _vit(**vision) -> dict:
    return {"embed_dim": 32, "vision_cfg": VIT | vision, "text_cfg": TEXT}


COCA = {"embed_dim": 32, "text_cfg": TEXT | {"embed_cls": True, "output_tokens": True},
        "vision_cfg": VIT | {"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2,
                             "output_tokens": True},
        "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}

TOKEN_TOWERS = {
    "open_clip-vit-token": _vit(),
    "open_clip-vit-avg": _vit(pool_type="avg"),
    "open_clip-vit-attentional-pool": _vit(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2),
    "coca": COCA,
    "timm-vit-token": _timm("dipclip_test_vit_token", "token"),
    "timm-vit-avg-registers": _timm("dipclip_test_vit_avg", "avg"),
    "timm-siglip-map": _timm("dipclip_test_vit_siglip", "map", proj="none"),
    "timm-eva02-token": _timm("dipclip_test_eva02", "token"),
    "timm-eva02-avg": _timm("dipclip_test_eva02", "avg"),
}
OTHER_TOWERS = {
    "modified-resnet": {"embed_dim": 32, "text_cfg": TEXT,
                        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}},
    "timm-convnext": _timm("test_convnext", "avg"),
}

_models: dict[str, torch.nn.Module] = {}


def model_for(family: str) -> torch.nn.Module:
    if family not in _models:
        _models[family] = build_from_config((TOKEN_TOWERS | OTHER_TOWERS)[family]).float().eval().requires_grad_(False)
    return _models[family]


def encode_image(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """open_clip's own image features, unnormalised (CoCa normalises unless told not to)."""
    with torch.no_grad():
        return model.encode_image(images, normalize=False).float()


def backbone_for(model: torch.nn.Module) -> Backbone:
    """A Backbone around ``model`` for ``encode_images`` (the text side is not used here)."""
    return Backbone(model=model, text=None, tokenizer=None, name="test", pretrained="none", identity="test",
                    image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def hooked_reference(model: torch.nn.Module, images: torch.Tensor, prompts: torch.Tensor,
                     deep: list[torch.Tensor]) -> torch.Tensor:
    """The tower's own ``encode_image`` with the prompt tokens spliced in by hooks: appended to the input of
    the pre-norm, replaced at the input of blocks 1.., dropped before the final norm / pooling. For EVA they
    go right after the prefix tokens and every attention counts them as prefix (so rope skips them, as it
    skips the class token): a different token order, the same result up to float rounding."""
    visual, n = model.visual, prompts.shape[0]
    trunk = getattr(visual, "trunk", None)
    eva = trunk is not None and type(trunk).__name__ == "Eva"
    at = trunk.num_prefix_tokens if eva else None  # where the prompts sit (None: at the end)

    def insert(x, tokens):
        tokens = tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x, tokens], 1) if at is None else torch.cat([x[:, :at], tokens, x[:, at:]], 1)

    def remove(x):
        return x[:, :-n] if at is None else torch.cat([x[:, :at], x[:, at + n:]], 1)

    if trunk is None:
        pre_norm, blocks, last = visual.ln_pre, visual.transformer.resblocks, visual.transformer
    else:
        pre_norm, blocks, last = trunk.norm_pre, trunk.blocks, trunk.norm
    handles = [pre_norm.register_forward_pre_hook(lambda _m, args: (insert(args[0], prompts), *args[1:]))]
    for index, block in enumerate(blocks):
        if 0 < index <= len(deep):
            handles.append(block.register_forward_pre_hook(
                lambda _m, args, tokens=deep[index - 1]: (insert(remove(args[0]), tokens), *args[1:])))
        if eva:
            block.attn.num_prefix_tokens += n
    if trunk is None:
        handles.append(last.register_forward_hook(lambda _m, _args, out: remove(out)))
    else:
        handles.append(last.register_forward_pre_hook(lambda _m, args: (remove(args[0]), *args[1:])))
    try:
        return encode_image(model, images)
    finally:
        for handle in handles:
            handle.remove()
        if eva:
            for block in blocks:
                block.attn.num_prefix_tokens -= n


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Clearly different features (relative: timm's initialisation gives some towers small outputs)."""
    return bool((a - b).norm() > 1e-3 * b.norm())


@pytest.mark.parametrize("family", [*TOKEN_TOWERS, *OTHER_TOWERS])
def test_encode_images_equals_open_clips_encode_image(family):
    model = model_for(family)
    images = torch.randn(3, 3, 32, 32)
    full = encode_image(model, images)
    assert full.shape == (3, 32)
    backbone = backbone_for(model)
    assert (backbone.vision is not None) == (family == "open_clip-vit-token")  # the shortcut only where exact
    assert is_class_token_vit(model.visual) == (family == "open_clip-vit-token")
    ours = backbone.encode_images(images, normalize=False)
    assert (ours - full).abs().max() <= 1e-5
    normalized = torch.nn.functional.normalize(full, dim=-1)
    assert (backbone.encode_images(images) - normalized).abs().max() <= 1e-5


@pytest.mark.parametrize("family", TOKEN_TOWERS)
def test_vision_tower_without_prompts_is_encode_image(family):
    model = model_for(family)
    tower = VisionTower(model)
    images = torch.randn(3, 3, 32, 32)
    full = encode_image(model, images)
    with torch.no_grad():
        assert (tower(images) - full).abs().max() <= 1e-5
        assert (tower(images, torch.zeros(0, tower.width)) - full).abs().max() <= 1e-5
        assert (tower(images, None, [torch.randn(2, tower.width)]) - full).abs().max() <= 1e-5
    assert tower.layers == 2 and tower.width == (64 if "open_clip" in family or family == "coca" else 32)


@pytest.mark.parametrize("family", TOKEN_TOWERS)
def test_vision_tower_deep_prompts_equal_the_hooked_reference(family):
    model = model_for(family)
    tower = VisionTower(model)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    prompts = torch.randn(3, tower.width, generator=generator)
    deep = [torch.randn(3, tower.width, generator=generator)]
    with torch.no_grad():
        plain, shallow, both = tower(images), tower(images, prompts), tower(images, prompts, deep)
    assert changed(shallow, plain) and changed(both, shallow)
    assert (shallow - hooked_reference(model, images, prompts, [])).abs().max() <= 1e-5
    assert (both - hooked_reference(model, images, prompts, deep)).abs().max() <= 1e-5
    if tower.class_token_shortcut:  # the last block for every token, as open_clip runs it
        tower.class_token_shortcut = False
        try:
            with torch.no_grad():
                assert (tower(images, prompts, deep) - both).abs().max() <= 1e-5
        finally:
            tower.class_token_shortcut = True


def test_deep_prompts_are_not_rotated_by_evas_rope():
    """Rope covers the patch positions only: moving a prompt token's content within the prompt block
    (swapping two prompts) permutes nothing the pooled feature sees, so the feature is unchanged."""
    model = model_for("timm-eva02-avg")
    tower = VisionTower(model)
    images, prompts = torch.randn(2, 3, 32, 32), torch.randn(2, tower.width)
    with torch.no_grad():
        assert (tower(images, prompts) - tower(images, prompts.flip(0))).abs().max() <= 1e-5


@pytest.mark.parametrize("family", OTHER_TOWERS)
def test_towers_without_a_token_sequence_are_refused_in_one_line(family):
    with pytest.raises(DipclipError) as refused:
        VisionTower(model_for(family))
    message = str(refused.value)
    assert "\n" not in message
    assert ("ModifiedResNet" if family == "modified-resnet" else "timm ConvNeXt") in message
    assert "coop, dip, cocoop, kgcoop, prograd, dept" in message


def test_maple_trains_a_step_on_a_timm_vit(tmp_path):
    import json

    from dipclip.backbones.loading import load_backbone
    from dipclip.methods import get_method

    config = tmp_path / "timm-vit.json"
    config.write_text(json.dumps(_timm("dipclip_test_vit_token", "token") | {"text_cfg": TEXT | {"layers": 2}}))
    backbone = load_backbone(str(config), "none", device="cpu", announce=False)
    maple = get_method("maple")
    model = maple.build(backbone, ["cat", "dog", "bird"], maple.prompt_config())
    assert model.depth == 2
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(model.logits(images), labels)
    loss.backward()
    assert all(p.grad is not None for p in model.projections.parameters())
    assert model.projections[1].weight.grad.abs().sum() > 0  # the deep vision prompt reaches the loss
    optimizer.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainable, strict=True))
    assert not any(p.requires_grad for p in backbone.model.parameters())
