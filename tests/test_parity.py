"""Numerical parity with the authors' code: dipclip against golden numbers written by the official repositories.

``tools/parity/make_golden.py`` ran each method's own model and training code (CoOp, Dassl, KgCoOp,
ProGrad, MaPLe, PromptSRC, DePT at the commits in tests/golden/README.md) in fp32 on CPU on a tiny random
OpenAI-format CLIP and fixed inputs; this file runs dipclip on the same checkpoint (rebuilt here, its digest
checked) and inputs. dipclip is configured explicitly with the official settings (n_ctx, init, templates),
and starts from the official initial learned tensors where those are random, so each comparison is about
the model, loss, gradient and update math. Tolerances: 1e-5 on logits and losses (absolute, plus 1e-5 of
the largest magnitude), 1e-4 relative to the largest magnitude on gradients and updates.

Where dipclip still differs from the authors, the test is written as it should pass and marked
``xfail(strict=True)`` with the reason, so it turns into a failure (remove the mark) once fixed.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from dipclip.backbones.loading import load_backbone
from dipclip.engine.trainer import learning_rate, make_optimizer
from dipclip.methods import OptimConfig, get_method
from dipclip.methods.zeroshot import zeroshot_text_features

GOLDEN = Path(__file__).parent / "golden"
TOOLS = Path(__file__).parents[1] / "tools" / "parity"
LOGIT_TOL = 1e-5
GRAD_RTOL = 1e-4


def _load_tiny_clip():
    spec = importlib.util.spec_from_file_location("parity_tiny_clip", TOOLS / "tiny_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny = _load_tiny_clip()


def golden(method: str) -> dict:
    return json.loads((GOLDEN / f"{method}.json").read_text())


def golden_init(method: str) -> dict[str, torch.Tensor]:
    path = GOLDEN / f"{method}.init.safetensors"
    if not path.exists():
        return {}
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory, one_thread):
    state = tiny.openai_state_dict()
    assert tiny.state_digest(state) == golden("coop")["meta"]["checkpoint_digest"], \
        "the tiny checkpoint is not the one the golden files were made with"
    path = tmp_path_factory.mktemp("parity") / "tiny-openai-clip.pt"
    torch.save(state, path)
    return load_backbone(None, str(path), device="cpu")


@pytest.fixture(scope="module")
def data():
    images, labels = tiny.inputs()
    return images, labels, tiny.batches()


def expected(rec: dict) -> torch.Tensor:
    """A recorded tensor in full (records of small tensors hold every value)."""
    return torch.tensor(rec["values"], dtype=torch.float32).double().view(rec["shape"])


def assert_close(actual: torch.Tensor, rec: dict, what: str, rtol: float, atol: float = 0.0) -> None:
    """max |actual - official| <= atol + rtol * max |official|, on every value when the record has them,
    else on the recorded sum, norm and first values."""
    a = actual.detach().double().cpu()
    assert list(a.shape) == rec["shape"], f"{what}: shape {list(a.shape)}, official {rec['shape']}"
    if "values" in rec:
        e = expected(rec)
        scale = e.abs().max().item()
        err = (a - e).abs().max().item()
    else:
        scale = max(abs(rec["sum"]), rec["norm"], 1e-30)
        head = torch.tensor(rec["head"], dtype=torch.float32).double()
        err = max(abs(a.sum().item() - rec["sum"]) / max(a.numel() ** 0.5, 1), abs(a.norm().item() - rec["norm"]),
                  (a.flatten()[: len(head)] - head).abs().max().item())
    assert err <= atol + rtol * scale, f"{what}: max |dipclip - official| = {err:.3g} (official scale {scale:.3g})"


def rel_err(actual: torch.Tensor, rec: dict) -> float:
    e = expected(rec)
    return ((actual.detach().double().cpu() - e).abs().max() / e.abs().max()).item()


def image_features(backbone, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone.encode_images(images)


def run_steps(method, model, batches, case: dict, named: dict[str, torch.nn.Parameter], image_input=False):
    """dipclip's own training_step on the official batches, at the official per-step lrs; returns the
    losses and the gradients read just before every optimiser step (as the golden files record them)."""
    optimizer = make_optimizer(model.param_groups(), OptimConfig(lr=case["lr"]))
    by_id = {id(p): name for name, p in named.items()}
    grads: list[dict[str, torch.Tensor]] = []

    def hook(opt, args, kwargs):
        grads.append({by_id[id(p)]: p.grad.detach().clone() for g in opt.param_groups for p in g["params"]
                      if p.grad is not None and id(p) in by_id})

    optimizer.register_step_pre_hook(hook)
    losses = []
    model.train()
    for (images, labels), step in zip(batches, case["steps"], strict=True):
        lrs = step["lr"][0]
        for group, lr in zip(optimizer.param_groups, lrs if len(lrs) == len(optimizer.param_groups)
                             else lrs * len(optimizer.param_groups), strict=True):
            group["lr"] = lr
        inputs = images if image_input else image_features(model.backbone, images)
        loss, _ = method.training_step(model, inputs, labels, optimizer)
        losses.append(float(loss))
    model.eval()
    return losses, grads


def check_training(case: dict, losses: list[float], grads: list[dict], named: dict, loss_key: str = "loss",
                   names: dict[str, str] | None = None) -> None:
    """Loss at every step, the full gradient at step 0, gradient summaries after, final tensors."""
    names = names or {n: n for n in named}
    for index, (loss, step) in enumerate(zip(losses, case["steps"], strict=True)):
        official = step["summary"][loss_key]
        assert abs(loss - official) <= LOGIT_TOL * max(1.0, abs(official)), \
            f"loss at step {index}: dipclip {loss:.7g}, official {official:.7g}"
    for index, (ours, step) in enumerate(zip(grads, case["steps"], strict=True)):
        for ours_name, official_name in names.items():
            assert_close(ours[ours_name], step["grads"][official_name], f"grad of {official_name} at step {index}",
                         GRAD_RTOL)
    for ours_name, official_name in names.items():
        rec = case["learned"][official_name]
        final = named[ours_name].detach().double()
        # the update itself (the init dominates the tensor after 4 small steps); dipclip started from the
        # official init, so final - official init is dipclip's update
        init = expected(rec["init"]) if "values" in rec["init"] else None
        if init is not None and "values" in rec["final"]:
            official_delta = {"shape": rec["final"]["shape"],
                              "values": (expected(rec["final"]) - init).flatten().tolist()}
            assert_close(final - init, official_delta, f"update of {official_name}", GRAD_RTOL)
        assert_close(final, rec["final"], f"{official_name} after training", GRAD_RTOL)


def load_official_init(param: torch.nn.Parameter, rec: dict, init_file: dict, key: str) -> None:
    with torch.no_grad():
        value = expected(rec) if "values" in rec else init_file[key].double()
        param.copy_(value.view_as(param).to(param.dtype))


# ------------------------------------------------------------------------------------------- checkpoint


def test_tiny_checkpoint_loads_as_the_official_clip_loaded_it(backbone):
    """Same checkpoint, same image and text towers: zero-shot logits of the dataset template agree."""
    case = golden("zeroshot")["cases"]["ZeroshotCLIP/OxfordPets"]
    text = zeroshot_text_features(backbone, tiny.CLASSNAMES, case["templates"])
    assert_close(text, case["text_features"], "zero-shot text features", LOGIT_TOL, LOGIT_TOL)


# ------------------------------------------------------------------------------------------- zero-shot


@pytest.mark.parametrize("case_name", ["ZeroshotCLIP/OxfordPets", "ZeroshotCLIP/DescribableTextures",
                                       "ZeroshotCLIP2/ImageNet", "ZeroshotCLIP2/OxfordPets"])
def test_zeroshot_logits(backbone, data, case_name):
    case = golden("zeroshot")["cases"][case_name]
    images, _, _ = data
    text = zeroshot_text_features(backbone, tiny.CLASSNAMES, case["templates"])
    logits = backbone.logit_scale * image_features(backbone, images[: tiny.BATCH]) @ text.t()
    assert_close(text, case["text_features"], f"{case_name} text features", LOGIT_TOL, LOGIT_TOL)
    assert_close(logits, case["logits"], f"{case_name} logits", LOGIT_TOL, LOGIT_TOL)


def test_zeroshot_ensemble_templates_are_the_official_ones():
    from dipclip.methods.zeroshot import ENSEMBLE_TEMPLATES

    cases = golden("zeroshot")["cases"]
    assert list(ENSEMBLE_TEMPLATES) == cases["ZeroshotCLIP2/ImageNet"]["templates"]
    # outside ImageNet the authors add the dataset's own template as an eighth
    assert cases["ZeroshotCLIP2/OxfordPets"]["templates"] == [*ENSEMBLE_TEMPLATES, "a photo of a {}, a type of pet."]


# ------------------------------------------------------------------------------------------- lr schedule


def _dipclip_lrs(optim: OptimConfig, epochs: int, scales: list[float]) -> list[list[float]]:
    return [[learning_rate(optim, e, epochs) * s for s in scales] for e in range(epochs)]


def _assert_schedule(ours: list[list[float]], official: list[list[float]], what: str) -> None:
    assert len(ours) == len(official)
    for epoch, (a, b) in enumerate(zip(ours, official, strict=True)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"{what}: epoch {epoch} lr {a}, Dassl {b}"


@pytest.mark.xfail(strict=True, reason="dipclip anneals cos(pi*e/E) from epoch 1; Dassl (WARMUP_RECOUNT) runs "
                   "epoch e>=1 at 0.5*lr*(1+cos(pi*(e-1)/E)) (dassl/optim/lr_scheduler.py ConstantWarmupScheduler)")
def test_lr_schedule_is_dassls():
    case = golden("coop")["cases"]["ctxv1"]
    optim = OptimConfig(lr=case["lr"])
    for epochs, table in case["lr_by_epoch"].items():
        _assert_schedule(_dipclip_lrs(optim, int(epochs), [1.0]), table, f"E={epochs}")


def test_lr_schedule_warmup_epoch_is_the_constant_warmup_lr():
    """What already agrees: epoch 0 at WARMUP_CONS_LR, the peak lr of the recipe afterwards."""
    case = golden("coop")["cases"]["ctxv1"]
    optim = OptimConfig(lr=case["lr"])
    table = case["lr_by_epoch"]["10"]
    assert learning_rate(optim, 0, 10) == table[0][0] == 1e-5
    assert max(row[0] for row in table) == optim.lr


# ------------------------------------------------------------------------------------------- CoOp


def _coop_model(backbone, case: dict, init_file: dict, case_name: str, **prompt):
    method = get_method("coop")
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(**prompt))
    rec = case["learned"]["prompt_learner.ctx"]["init"]
    load_official_init(model.context.ctx, rec, init_file, f"{case_name}/prompt_learner.ctx")
    return method, model


COOP_CASES = {
    "ctxv1": dict(n_ctx=4, init_text="a photo of a"),
    "rand16": dict(n_ctx=16, init_text=""),
    "csc_rand4": dict(n_ctx=4, init_text="", class_specific=True),
}


@pytest.mark.parametrize("case_name", list(COOP_CASES))
def test_coop_logits_loss_gradients_and_updates(backbone, data, case_name):
    case = golden("coop")["cases"][case_name]
    images, _, batches = data
    method, model = _coop_model(backbone, case, golden_init("coop"), case_name, **COOP_CASES[case_name])
    with torch.no_grad():
        logits = model.logits(image_features(backbone, images[: tiny.BATCH]))
    assert_close(logits, case["logits_step0"], "logits at step 0", LOGIT_TOL, LOGIT_TOL)
    named = {"prompt_learner.ctx": model.context.ctx}
    losses, grads = run_steps(method, model, batches, case, named)
    check_training(case, losses, grads, named)


def test_coop_text_init_is_the_official_one(backbone):
    case = golden("coop")["cases"]["ctxv1"]
    method = get_method("coop")
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(n_ctx=4, init_text="a photo of a"))
    assert_close(model.context.ctx, case["learned"]["prompt_learner.ctx"]["init"], "CoOp init", 0.0, 0.0)


@pytest.mark.parametrize("case_name", ["rand16", "csc_rand4"])
def test_coop_random_init_is_n0_002(backbone, case_name):
    """Random contexts: N(0, 0.02) as the authors draw them (values differ: another generator)."""
    case = golden("coop")["cases"][case_name]
    method = get_method("coop")
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(**COOP_CASES[case_name]))
    std = model.context.ctx.detach().std().item()
    assert math.isclose(std, 0.02, rel_tol=0.15) and math.isclose(case["init_std"], 0.02, rel_tol=0.15)


@pytest.mark.xfail(strict=True, reason="dipclip repeats one N(0, 0.02) context for every class; CoOp draws "
                   "torch.empty(n_cls, n_ctx, dim) with normal_(std=0.02): one per class (trainers/coop.py ~87-93)")
def test_coop_class_specific_random_init_draws_one_context_per_class(backbone):
    case = golden("coop")["cases"]["csc_rand4"]
    assert case["csc_rows_identical"] is False
    method = get_method("coop")
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(**COOP_CASES["csc_rand4"]))
    ctx = model.context.ctx.detach()
    assert not any(torch.equal(ctx[0], ctx[i]) for i in range(1, len(ctx)))
