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
    assert float(density_levers(model).detach()) == pytest.approx(-2.0 * float(information_density(matrix.detach(), 1)))
    model = coop.build(tiny_backbone, NAMES, coop.prompt_config(lambda_pp=0.5))
    s = torch.linalg.svdvals(matrix.detach())
    expected = 0.5 * float((torch.tensor([0, 1 / 3, 2 / 3, 1.0]) * s).sum() / s.sum())
    assert float(density_levers(model).detach()) == pytest.approx(expected, rel=1e-5)
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
    assert float(kg.extra_loss(model, image_features, logits, torch.tensor([0, 1])).detach()) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        model.context.ctx.add_(torch.randn_like(model.context.ctx))  # (a constant shift would vanish in LayerNorm)
    logits = model.logits(image_features)
    anchor = zeroshot_text_features(tiny_backbone, NAMES, ["a photo of a {}."])
    cos = (model.last_text_features * anchor).sum(-1)
    loss = kg.extra_loss(model, image_features, logits, torch.tensor([0, 1]))
    assert float(loss.detach()) == pytest.approx(8.0 * float((1 - cos).mean().detach()), rel=1e-5) and float(loss.detach()) > 0


META_NET_TINY = 32 * 2 + 2 + 2 * 64 + 64  # Linear(32, 2) + Linear(2, 64) at the tiny widths

EXPECTED_TINY = {
    # the base-to-new recipes: 4 tokens "a photo of a", ProGrad and DePT 16 tokens
    "coop": 4 * 64, "dip": 4 + 64, "kgcoop": 4 * 64, "prograd": 16 * 64, "cocoop": 4 * 64 + META_NET_TINY,
    "coop+dip": 4 + 64, "kgcoop+dip": 4 + 64, "prograd+dip": 16 + 64, "cocoop+dip": 4 + 64 + META_NET_TINY,
    # one vision layer: MaPLe's depth is clipped to 1 (context + one Linear(64, 64)); deeper in test_methods_deep
    "maple": 2 * 64 + 64 * 64 + 64, "maple+dip": 2 + 64 + 64 * 64 + 64,
    "promptsrc": 4 * 64 + 4 * 64, "promptsrc+dip": 4 + 64 + 4 * 64,
    # DePT on the 2 base classes: cwT on text and image (2 x (32 + 32)) and a Linear(32, 2) head
    "dept": 16 * 64 + 128 + 32 * 2 + 2, "dept+dip": 16 + 64 + 128 + 32 * 2 + 2,
}


def test_every_method_trains_evaluates_and_round_trips(tmp_path, tiny_config_path, image_tree, tiny_backbone):
    assert {name.partition("+")[0] for name in EXPECTED_TINY} == set(METHODS)
    for method, count in EXPECTED_TINY.items():
        out = tmp_path / method
        metrics = api.train(method, model=str(tiny_config_path), data=str(image_tree), dataset="imagefolder",
                            shots=2, epochs=2, batch_size=3, progress=False, out=out, subsample="base")
        assert metrics["trainable_params"] == count and metrics["method"] == method
        assert set(metrics["results"]) == {"base", "new"}
        again = api.evaluate(out / "adapter", data=str(image_tree), dataset="imagefolder", subsample="base",
                             backbone=tiny_backbone)
        assert again["results"]["base"] == metrics["results"]["base"], method


def test_parameter_counts_at_vit_b16_widths(b16_text_backbone):
    backbone = b16_text_backbone
    expected = {"coop": 2048, "dip": 516, "kgcoop": 2048, "prograd": 2048, "cocoop": 35_360,
                "cocoop+dip": 33_828, "kgcoop+dip": 516,
                "dept": 2048 + 4 * 512 + 3 * 512 + 3, "dept+dip": 516 + 4 * 512 + 3 * 512 + 3}  # 3 classes here
    for name, count in expected.items():
        method = get_method(name)
        assert method.build(backbone, NAMES, method.prompt_config()).num_trainable() == count, name


def test_dip_switch_starts_from_the_methods_own_initial_model(tiny_backbone):
    features = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    for name in ("coop", "kgcoop", "prograd", "cocoop", "dept"):
        full, low = get_method(name), get_method(f"{name}+dip")
        assert low.prompt_defaults.parameterization == "dip" and low.name == f"{name}+dip"
        for init in ("zero-delta", "residual-svd"):
            a = full.build(tiny_backbone, NAMES, full.prompt_config()).eval()
            b = low.build(tiny_backbone, NAMES, low.prompt_config(dip_init=init)).eval()
            with torch.no_grad():
                assert (a.logits(features) - b.logits(features)).abs().max() <= 1e-4, (name, init)
    with pytest.raises(Exception, match=r"unknown method 'coop\+lora'"):
        get_method("coop+lora")


def test_prograd_projects_conflicting_gradients(tiny_backbone):
    prograd = get_method("prograd")
    model = prograd.build(tiny_backbone, NAMES, prograd.prompt_config())
    features = torch.nn.functional.normalize(torch.randn(6, 32), dim=-1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    before = model.context.ctx.detach().clone()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1.0)
    prograd.training_step(model, features, labels, optimizer)
    step = model.context.ctx.detach() - before  # = -g (lr 1, no momentum)
    loss, logits = prograd.loss(model, features, labels)
    target = prograd.zero_shot_logits(model, features).softmax(-1)
    with torch.no_grad():
        model.context.ctx.copy_(before)
    loss, logits = prograd.loss(model, features, labels)
    kl = torch.nn.functional.kl_div(logits.log_softmax(-1), target, reduction="batchmean")
    (g_ce,) = torch.autograd.grad(loss, [model.context.ctx], retain_graph=True)
    (g_kl,) = torch.autograd.grad(kl, [model.context.ctx])
    dot = (g_ce * g_kl).sum()
    expected = g_ce - dot / g_kl.square().sum() * g_kl if dot < 0 else g_ce
    assert torch.allclose(-step, expected, atol=1e-6)
    assert float((-step * g_kl).sum()) >= -1e-6  # never against the zero-shot direction


def test_dept_fuses_its_head_on_training_classes_only(tiny_backbone):
    dept = get_method("dept")
    model = dept.build(tiny_backbone, NAMES, dept.prompt_config()).eval()
    features = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    with torch.no_grad():
        fused = model.logits(features)
        text = torch.nn.functional.normalize(model.class_prompts(model.context()), dim=-1)
        similarity = tiny_backbone.logit_scale * features @ text.t()
        head = model.head(features)  # cwT is the identity at init
        assert torch.allclose(fused, 0.3 * similarity + 0.7 * head, atol=1e-5)
        assert model.image_conditioned
        model.set_classnames(["tree", "car"])
        assert not model.image_conditioned
        other = torch.nn.functional.normalize(model.class_prompts(model.context()), dim=-1)
        assert torch.allclose(model.logits(features), tiny_backbone.logit_scale * features @ other.t(), atol=1e-5)
    groups = model.param_groups()
    assert [g["lr_scale"] for g in groups] == [1.0, 6.5]
    assert sum(p.numel() for p in groups[1]["params"]) == 4 * 32 + 32 * 3 + 3
