import pytest
import torch

from dipclip import api
from dipclip.density import information_density
from dipclip.methods import METHODS, get_method
from dipclip.methods.base import density_levers
from dipclip.methods.zeroshot import zeroshot_text_features

NAMES = ["cat", "dog", "bird"]


def test_direct_optimisation_and_positional_penalty_values(tiny_backbone):
    coop = get_method("coop")
    model = coop.build(tiny_backbone, NAMES, coop.prompt_config(lambda_do=2.0))
    matrix = model.context.ctx
    assert float(density_levers(model)) == pytest.approx(-2.0 * float(information_density(matrix, 1)))
    model = coop.build(tiny_backbone, NAMES, coop.prompt_config(lambda_pp=0.5))
    s = torch.linalg.svdvals(matrix.detach())
    expected = 0.5 * float((torch.tensor([0, 1 / 3, 2 / 3, 1.0]) * s).sum() / s.sum())
    assert float(density_levers(model)) == pytest.approx(expected, rel=1e-5)
    assert density_levers(coop.build(tiny_backbone, NAMES, coop.prompt_config())) is None


def test_direct_optimisation_raises_density_during_training(tmp_path, tiny_config_path, image_tree):
    common = dict(model=str(tiny_config_path), data=str(image_tree), dataset="imagefolder", shots=4, epochs=3,
                  batch_size=4, progress=False, lr=0.01)
    plain = api.train("coop", out=tmp_path / "plain", **common)
    pushed = api.train("coop", out=tmp_path / "do", lambda_do=5.0, **common)
    assert pushed["density"]["id_prompt"] > plain["density"]["id_prompt"]
    assert pushed["config"]["prompt"]["lambda_do"] == 5.0


def test_kgcoop_loss_is_zero_at_the_hand_crafted_prompt(tiny_backbone):
    kg = get_method("kgcoop")
    model = kg.build(tiny_backbone, NAMES, kg.prompt_config())
    image_features = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    logits = model.logits(image_features)
    assert float(kg.extra_loss(model, image_features, logits, torch.tensor([0, 1]))) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        model.context.ctx.add_(torch.randn_like(model.context.ctx))  # (a constant shift would vanish in LayerNorm)
    logits = model.logits(image_features)
    anchor = zeroshot_text_features(tiny_backbone, NAMES, ["a photo of a {}."])
    cos = (model.last_text_features * anchor).sum(-1)
    loss = kg.extra_loss(model, image_features, logits, torch.tensor([0, 1]))
    assert float(loss) == pytest.approx(8.0 * float((1 - cos).mean()), rel=1e-5) and float(loss) > 0


def test_every_method_trains_with_its_parameter_count(tmp_path, tiny_config_path, image_tree):
    expected = {"coop": 4 * 64, "dip": 4 + 64, "kgcoop": 4 * 64}
    assert set(expected) <= set(METHODS)
    for method, count in expected.items():
        metrics = api.train(method, model=str(tiny_config_path), data=str(image_tree), dataset="imagefolder",
                            shots=2, epochs=1, batch_size=3, progress=False, out=tmp_path / method)
        assert metrics["trainable_params"] == count and metrics["method"] == method
