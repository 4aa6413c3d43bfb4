import json

import pytest
import torch

from dipclip.backbones.loading import load_backbone
from dipclip.errors import DipclipError
from dipclip.methods import PromptConfig, get_method
from dipclip.prompts import LowRankContext

NAMES = ["cat", "golden retriever", "sea_lion"]


def reference_features(backbone, sentences):
    ids = backbone.tokenize(sentences)
    return torch.nn.functional.normalize(backbone.model.encode_text(ids), dim=-1)


@pytest.mark.parametrize("method,extra", [
    ("coop", {}),
    ("dip", {"dip_init": "zero-delta"}),
    ("dip", {"dip_init": "residual-svd"}),
])
def test_init_prompt_equals_encode_text_of_the_sentence(tiny_backbone, method, extra):
    m = get_method(method)
    model = m.build(tiny_backbone, NAMES, m.prompt_config(**extra))
    ours = model.text_features(merged=True)
    expected = reference_features(tiny_backbone, [f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    assert (ours - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("position,sentence", [
    ("middle", "a photo {} of a."),
    ("front", "{} a photo of a."),
])
def test_class_positions_match_the_equivalent_sentence(tiny_backbone, position, sentence):
    m = get_method("coop")
    model = m.build(tiny_backbone, NAMES, m.prompt_config(class_position=position))
    expected = reference_features(tiny_backbone, [sentence.format(n.replace("_", " ")) for n in NAMES])
    assert (model.text_features() - expected).abs().max() <= 1e-5


def test_class_specific_context_trains_per_class(tiny_backbone):
    m = get_method("coop")
    model = m.build(tiny_backbone, NAMES, m.prompt_config(class_specific=True))
    assert model.num_trainable() == len(NAMES) * 4 * 64
    expected = reference_features(tiny_backbone, [f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    assert (model.text_features() - expected).abs().max() <= 1e-5
    dip = get_method("dip")
    low = dip.build(tiny_backbone, NAMES, dip.prompt_config(class_specific=True, dip_init="residual-svd"))
    assert low.num_trainable() == len(NAMES) * (4 + 64)
    assert (low.text_features(merged=True) - expected).abs().max() <= 1e-5
    with pytest.raises(DipclipError, match="class-specific"):
        model.set_classnames(["a", "b"])


def test_class_specific_random_context_is_an_independent_draw_per_class(tiny_backbone):
    """CoOp's CSC random init: one N(0, 0.02) context per class, not one context repeated."""
    m = get_method("coop")
    cfg = m.prompt_config(class_specific=True, init_text="", n_ctx=4, init_seed=3)
    ctx = m.build(tiny_backbone, NAMES, cfg).context.ctx.detach()
    expected = torch.randn(len(NAMES), 4, 64, generator=torch.Generator().manual_seed(3)) * 0.02
    assert ctx.shape == (len(NAMES), 4, 64)
    assert torch.equal(ctx, expected)
    assert not torch.equal(ctx[0], ctx[1]) and not torch.equal(ctx[1], ctx[2])
    shared = m.build(tiny_backbone, NAMES, m.prompt_config(init_text="", n_ctx=4, init_seed=3)).context.ctx.detach()
    assert torch.equal(shared, torch.randn(4, 64, generator=torch.Generator().manual_seed(3)) * 0.02)


@pytest.fixture(scope="module")
def width512_backbone(tmp_path_factory):
    config = {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 1},
    }
    path = tmp_path_factory.mktemp("w512") / "text512.json"
    path.write_text(json.dumps(config))
    return load_backbone(str(path), "none")


def test_parameter_counts_at_vit_b16_text_width(width512_backbone):
    coop, dip = get_method("coop"), get_method("dip")
    assert coop.build(width512_backbone, NAMES, coop.prompt_config()).num_trainable() == 2048
    assert dip.build(width512_backbone, NAMES, dip.prompt_config()).num_trainable() == 516
    assert dip.build(width512_backbone, NAMES, dip.prompt_config(rank=2)).num_trainable() == 2 * (4 + 512)
    random16 = coop.build(width512_backbone, NAMES, coop.prompt_config(n_ctx=16, init_text=""))
    assert random16.num_trainable() == 16 * 512


def test_dip_inits_start_at_the_init_and_dropout_only_in_training():
    torch.manual_seed(0)
    init = torch.randn(4, 16)
    for mode in ("zero-delta", "residual-svd"):
        ctx = LowRankContext(init, rank=1, init_mode=mode, dropout=0.5)
        assert torch.allclose(ctx.merged(), init, atol=1e-6)
    ctx = LowRankContext(init, rank=1, init_mode="residual-svd", dropout=0.5)
    # residual-svd: A0 @ B0 is the best rank-1 approximation of init, P0 the rest
    u, s, vh = torch.linalg.svd(init.double())
    best = (s[0] * torch.outer(u[:, 0], vh[0])).float()
    assert torch.allclose(ctx.A @ ctx.B, best, atol=1e-5)
    ctx.train()
    assert not torch.allclose(ctx(), ctx.merged())
    ctx.eval()
    assert torch.equal(ctx(), ctx.merged())


def test_random_context_and_bad_prompt_options(tiny_backbone):
    coop = get_method("coop")
    model = coop.build(tiny_backbone, NAMES, coop.prompt_config(init_text="", n_ctx=8))
    assert model.context.ctx.shape == (8, 64)
    assert 0.015 < float(model.context.ctx.detach().std()) < 0.025
    with pytest.raises(DipclipError, match="has 4 tokens but n_ctx is 2"):
        coop.build(tiny_backbone, NAMES, coop.prompt_config(n_ctx=2))
    with pytest.raises(DipclipError, match="class list is empty"):
        coop.build(tiny_backbone, [], coop.prompt_config())
    with pytest.raises(DipclipError, match="unknown class position"):
        PromptConfig(class_position="left").validate()
    with pytest.raises(DipclipError, match="DIP rank must be between 1 and n_ctx"):
        PromptConfig(rank=5).validate()
    with pytest.raises(DipclipError, match="does not fit the text context"):
        coop.build(tiny_backbone, ["word " * 80], coop.prompt_config())
