"""Numerical parity with the authors' code: dipclip against golden numbers written by the official repositories.

``tools/parity/make_golden.py`` ran each method's own model and training code (CoOp, Dassl, KgCoOp,
ProGrad, MaPLe, PromptSRC, DePT at the commits in tests/golden/README.md) in fp32 on CPU on a tiny random
OpenAI-format CLIP and fixed inputs; this file runs dipclip on the same checkpoint (rebuilt here, its digest
checked) and inputs. dipclip is configured explicitly with the official settings (n_ctx, init, templates),
and starts from the official initial learned tensors where those are random, so each comparison is about
the model, loss, gradient and update math. Tolerances: 1e-5 on logits and losses (absolute, plus 1e-5 of
the largest magnitude), 1e-4 relative to the largest magnitude on gradients and updates.

Where dipclip differed from the authors (the audit's findings), a test here pins the authors' behaviour:
each passed only once the fix landed (written first as a strict xfail naming the official file and line).
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dipclip.backbones.loading import load_backbone
from dipclip.engine.trainer import group_learning_rate, learning_rate, make_optimizer
from dipclip.methods import OptimConfig, PromptConfig, get_method
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


def model_inputs(model, images: torch.Tensor) -> torch.Tensor:
    """What the model's logits take: the images themselves when its image features depend on what it learns
    (``image_prompted``), else the frozen tower's normalised features."""
    return images if model.image_prompted else image_features(model.backbone, images)


@dataclass
class Run:
    losses: list[float]
    grads: list[dict[str, torch.Tensor]]
    start: dict[str, torch.Tensor]  # the learned tensors before the first step


def run_steps(method, model, batches, case: dict, named: dict[str, torch.nn.Parameter], end_epoch=None):
    """dipclip's own training_step on the official batches, at the official per-step lrs; returns the
    losses and the gradients read just before every optimiser step (as the golden files record them).
    ``end_epoch(epoch)`` runs after each epoch's last step (where dipclip's trainer calls the method's)."""
    optimizer = make_optimizer(model.param_groups(), OptimConfig(lr=case["lr"]))
    by_id = {id(p): name for name, p in named.items()}
    grads: list[dict[str, torch.Tensor]] = []

    def hook(opt, args, kwargs):
        grads.append({by_id[id(p)]: p.grad.detach().clone() for g in opt.param_groups for p in g["params"]
                      if p.grad is not None and id(p) in by_id})

    optimizer.register_step_pre_hook(hook)
    losses = []
    start = {name: p.detach().clone() for name, p in named.items()}
    model.train()
    for (images, labels), step in zip(batches, case["steps"], strict=True):  # noqa: B007 (step: its lrs)
        lrs = step["lr"][0]
        for group, lr in zip(optimizer.param_groups, lrs if len(lrs) == len(optimizer.param_groups)
                             else lrs * len(optimizer.param_groups), strict=True):
            group["lr"] = lr
        inputs = model_inputs(model, images)
        loss, _ = method.training_step(model, inputs, labels, optimizer)
        losses.append(float(loss))
        if end_epoch is not None and len(losses) % tiny.STEPS_PER_EPOCH == 0:
            model.eval()
            end_epoch(len(losses) // tiny.STEPS_PER_EPOCH - 1)
            model.train()
    model.eval()
    return Run(losses, grads, start)


def check_training(case: dict, run: Run, named: dict, loss_key: str = "loss",
                   names: dict[str, str] | None = None) -> None:
    """Loss at every step, the full gradient at step 0, gradient summaries after, the update and the final
    tensors (dipclip started from the official initial tensors, so final - start is dipclip's update)."""
    names = names or {n: n for n in named}
    for index, (loss, step) in enumerate(zip(run.losses, case["steps"], strict=True)):
        official = step["summary"][loss_key]
        assert abs(loss - official) <= LOGIT_TOL * max(1.0, abs(official)), \
            f"loss at step {index}: dipclip {loss:.7g}, official {official:.7g}"
    for index, (ours, step) in enumerate(zip(run.grads, case["steps"], strict=True)):
        for ours_name, official_name in names.items():
            assert_close(ours[ours_name], step["grads"][official_name], f"grad of {official_name} at step {index}",
                         GRAD_RTOL)
    for ours_name, official_name in names.items():
        rec = case["learned"][official_name]
        final = named[ours_name].detach().double()
        delta = final - run.start[ours_name].double()
        if "values" in rec["init"] and "values" in rec["final"]:
            official_delta = {"shape": rec["final"]["shape"],
                              "values": (expected(rec["final"]) - expected(rec["init"])).flatten().tolist()}
            assert_close(delta, official_delta, f"update of {official_name}", GRAD_RTOL)
        else:
            assert_close(delta, rec["delta"], f"update of {official_name}", GRAD_RTOL)
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
    """The lr dipclip's trainer gives each param group (``lr_scale`` s) at every epoch."""
    return [[group_learning_rate(optim, e, epochs, s) for s in scales] for e in range(epochs)]


def _assert_schedule(ours: list[list[float]], official: list[list[float]], what: str) -> None:
    assert len(ours) == len(official)
    for epoch, (a, b) in enumerate(zip(ours, official, strict=True)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"{what}: epoch {epoch} lr {a}, Dassl {b}"


def test_lr_schedule_is_dassls():
    case = golden("coop")["cases"]["ctxv1"]
    optim = OptimConfig(lr=case["lr"])
    for epochs, table in case["lr_by_epoch"].items():
        _assert_schedule(_dipclip_lrs(optim, int(epochs), [1.0]), table, f"E={epochs}")


# every lr table the golden files hold: (method, path to the record holding "lr_by_epoch" and the config's lr)
LR_TABLES = [("coop", ("cases", "ctxv1")), ("cocoop", ("cases", "c4_ctxv1")),
             ("kgcoop", ("cases", "OxfordPets")), ("kgcoop", ("cases", "DescribableTextures")),
             ("prograd", ("cases", "OxfordPets")), ("prograd", ("cases", "DescribableTextures")),
             ("maple", ("cases", "cross_datasets")), ("maple", ("cases", "base_to_new")),
             ("promptsrc", ("configs", "vit_b16_c2_ep20_batch4_4+4ctx")),
             ("promptsrc", ("configs", "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets")),
             ("promptsrc", ("configs", "vit_b16_c2_ep50_batch4_4+4ctx_few_shot"))]


@pytest.mark.parametrize(("method", "where"), LR_TABLES, ids=[f"{m}-{w[1]}" for m, w in LR_TABLES])
def test_lr_schedule_of_each_method_is_the_one_its_dassl_built(method, where):
    """The lr of every epoch, at E = 10 and at the config's own E, as each repository's Dassl (the ProGrad
    fork for KgCoOp and ProGrad) built it from the config: dipclip's schedule at the config's lr."""
    section, key = where
    record = golden(method)[section][key]
    lr = record["optim"]["lr"]
    assert set(record["lr_by_epoch"]) == {"10", str(record["optim"]["max_epoch"])}
    for epochs, table in record["lr_by_epoch"].items():
        assert table[0] == [record["optim"]["warmup_cons_lr"]] and max(row[0] for row in table) == lr
        _assert_schedule(_dipclip_lrs(OptimConfig(lr=lr), int(epochs), [1.0]), table, f"{method} {key} E={epochs}")


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
    run = run_steps(method, model, batches, case, named)
    check_training(case, run, named)


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


def test_coop_class_specific_random_init_draws_one_context_per_class(backbone):
    case = golden("coop")["cases"]["csc_rand4"]
    assert case["csc_rows_identical"] is False
    method = get_method("coop")
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(**COOP_CASES["csc_rand4"]))
    ctx = model.context.ctx.detach()
    assert not any(torch.equal(ctx[0], ctx[i]) for i in range(1, len(ctx)))


# ------------------------------------------------------------------------------------------- CoCoOp


def test_cocoop_logits_loss_gradients_and_updates(backbone, data):
    case = golden("cocoop")["cases"]["c4_ctxv1"]
    images, _, batches = data
    method = get_method("cocoop")
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(n_ctx=4, init_text="a photo of a"))
    names = {"context.ctx": "prompt_learner.ctx",
             "meta_net.0.weight": "prompt_learner.meta_net.linear1.weight",
             "meta_net.0.bias": "prompt_learner.meta_net.linear1.bias",
             "meta_net.2.weight": "prompt_learner.meta_net.linear2.weight",
             "meta_net.2.bias": "prompt_learner.meta_net.linear2.bias"}
    named = dict(model.named_parameters())
    assert_close(named["context.ctx"], case["learned"]["prompt_learner.ctx"]["init"], "CoCoOp init", 0.0, 0.0)
    for ours, official in names.items():  # the meta-net's random init: start from the official one
        load_official_init(named[ours], case["learned"][official]["init"], {}, official)
    with torch.no_grad():
        logits = model.logits(image_features(backbone, images[: tiny.BATCH]))
    assert_close(logits, case["logits_step0"], "logits at step 0", LOGIT_TOL, LOGIT_TOL)
    named = {ours: named[ours] for ours in names}
    run = run_steps(method, model, batches, case, named)
    check_training(case, run, named, names=names)


# ------------------------------------------------------------------------------------------- KgCoOp / ProGrad

DATASET_KEYS = {"OxfordPets": "oxford_pets", "DescribableTextures": "dtd"}


@pytest.mark.parametrize("dataset", ["OxfordPets", "DescribableTextures"])
def test_kgcoop_logits_loss_gradients_and_updates(backbone, data, dataset):
    case = golden("kgcoop")["cases"][dataset]
    images, _, batches = data
    method = get_method("kgcoop")
    assert PromptConfig().kg_weight == case["w"]  # the default is the published W = 8
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(
        template=case["template"], n_ctx=4, init_text="a photo of a", kg_weight=case["w"]))
    assert_close(model.context.ctx, case["learned"]["prompt_learner.ctx"]["init"], "KgCoOp init", 0.0, 0.0)
    assert_close(method.anchor_features(model), case["anchor_features"], "KgCoOp anchors", LOGIT_TOL, LOGIT_TOL)
    with torch.no_grad():
        logits = model.logits(image_features(backbone, images[: tiny.BATCH]))
    assert_close(logits, case["logits_step0"], "logits at step 0", LOGIT_TOL, LOGIT_TOL)
    named = {"context.ctx": model.context.ctx}
    run = run_steps(method, model, batches, case, named)
    check_training(case, run, named, names={"context.ctx": "prompt_learner.ctx"})


@pytest.mark.parametrize("dataset", ["OxfordPets", "DescribableTextures"])
def test_kgcoop_default_anchors_are_the_official_ones(backbone, dataset):
    case = golden("kgcoop")["cases"][dataset]
    method = get_method("kgcoop")
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(dataset=DATASET_KEYS[dataset]))
    assert_close(method.anchor_features(model), case["anchor_features"], "KgCoOp anchors", LOGIT_TOL, LOGIT_TOL)


def _assert_same_tokens_outside_context(ids: torch.Tensor, official: list[list[int]], n_ctx: int) -> None:
    """Same SOS, same words after the context, same EOT (the context positions' ids are placeholders)."""
    width = len(official[0])
    ours = ids[:, :width].tolist()
    assert [row[:1] + row[1 + n_ctx:] for row in ours] == [row[:1] + row[1 + n_ctx:] for row in official]


def _prograd_model(backbone, case: dict, **extra):
    """ProGrad as its code lays the prompt out: 16 learned tokens, the template's prefix words counted as
    words (so a comma costs the last word, which stays fixed before the class name), started from the
    official context (zeros followed by the prefix embeddings)."""
    from dipclip.prompts import ClassPrompts

    method = get_method("prograd")
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(template=case["template"], n_ctx=16,
                                                                  init_text="", **extra))
    prefix = case["template"].replace(" {}.", "")
    words, tokens = prefix.split(" "), backbone.tokenizer.encode(prefix)
    fixed = backbone.tokenizer.decode(tokens[len(words):]).strip()
    model.fixed_words = fixed
    model.class_prompts = ClassPrompts(backbone, tiny.CLASSNAMES, 16, "end", fixed_words=fixed)
    _assert_same_tokens_outside_context(model.class_prompts.token_ids, case["prompt_token_ids"], 16)
    load_official_init(model.context.ctx, case["learned"]["prompt_learner.ctx"]["init"], {}, "ctx")
    return method, model


@pytest.mark.parametrize("case_name", ["OxfordPets", "DescribableTextures"])
def test_prograd_logits_teacher_loss_projected_gradients_and_updates(backbone, data, case_name):
    """OxfordPets: the gradients conflict at step 0 (the projection acts); DTD: they never do."""
    case = golden("prograd")["cases"][case_name]
    assert case["lambda"] == 1.0
    assert (case["conflict_cosine"][0][0] < 0) == (case_name == "OxfordPets")
    images, _, batches = data
    method, model = _prograd_model(backbone, case)
    feats = image_features(backbone, images[: tiny.BATCH])
    with torch.no_grad():
        logits = model.logits(feats)
        teacher = method.zero_shot_logits(model, feats)
    assert_close(logits, case["logits_step0"], "logits at step 0", LOGIT_TOL, LOGIT_TOL)
    assert_close(teacher, case["zs_logits_step0"], "zero-shot teacher logits", LOGIT_TOL, LOGIT_TOL)
    named = {"context.ctx": model.context.ctx}
    run = run_steps(method, model, batches, case, named)
    check_training(case, run, named, loss_key="xe_loss", names={"context.ctx": "prompt_learner.ctx"})


def test_prograd_lambda_scales_the_projection(backbone, data):
    case = golden("prograd")["cases"]["OxfordPets_l0.8"]
    assert case["lambda"] == 0.8 and case["conflict_cosine"][0][0] < 0  # the projection acts at step 0
    _, _, batches = data
    method, model = _prograd_model(backbone, case, prograd_lambda=0.8)
    named = {"context.ctx": model.context.ctx}
    run = run_steps(method, model, batches, case, named)
    check_training(case, run, named, loss_key="xe_loss", names={"context.ctx": "prompt_learner.ctx"})


def test_prograd_default_context_and_teacher_are_the_official_ones(backbone, data):
    case = golden("prograd")["cases"]["OxfordPets"]
    images, _, _ = data
    method = get_method("prograd")
    # n_ctx 16 is the published N_CTX (a recipe setting); the layout and the teacher come from the dataset
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(dataset="oxford_pets", n_ctx=16))
    _assert_same_tokens_outside_context(model.class_prompts.token_ids, case["prompt_token_ids"], 16)
    assert_close(model.context.ctx, case["learned"]["prompt_learner.ctx"]["init"], "ProGrad init", 0.0, 0.0)
    feats = image_features(backbone, images[: tiny.BATCH])
    with torch.no_grad():
        assert_close(method.zero_shot_logits(model, feats), case["zs_logits_step0"], "teacher", LOGIT_TOL, LOGIT_TOL)


# ------------------------------------------------------------------------------------------- MaPLe


@pytest.fixture(scope="module")
def wide_backbone(tmp_path_factory, one_thread):
    """MaPLe's trainer hard-codes ViT-B/16's widths (512 text, 768 vision): the wide variant of the testbed."""
    path = tmp_path_factory.mktemp("parity-wide") / "tiny-openai-clip-wide.pt"
    state = tiny.openai_state_dict(**tiny.WIDE)
    assert tiny.state_digest(state) == golden("maple")["meta"]["checkpoint_digest"]
    torch.save(state, path)
    del state
    return load_backbone(None, str(path), device="cpu")


@pytest.mark.parametrize("case_name", ["cross_datasets", "cross_datasets_depth2"])
def test_maple_logits_loss_gradients_and_updates(wide_backbone, data, case_name):
    """Cross-dataset recipe (depth 3, every layer of the testbed) and the same at depth 2 (the last layer
    keeps the tokens it is given): dipclip's MaPLe from the same fixed projections and deep prompts."""
    case = golden("maple")["cases"][case_name]
    assert case["depth"] == (3 if case_name == "cross_datasets" else 2)
    images, _, batches = data
    method = get_method("maple")
    model = method.build(wide_backbone, tiny.CLASSNAMES, method.prompt_config(n_ctx=2, init_text="a photo of a",
                                                                              prompt_depth=case["depth"]))
    prefix = "MultiModalPromptLearner.prompt_learner."
    names = {"context.ctx": "ctx", "projections.0.weight": "proj.weight", "projections.0.bias": "proj.bias"}
    for i in range(case["depth"] - 1):
        names[f"deep_text.{i}.ctx"] = f"compound_prompts_text.{i}"
        names[f"projections.{i + 1}.weight"] = f"compound_prompt_projections.{i}.weight"
        names[f"projections.{i + 1}.bias"] = f"compound_prompt_projections.{i}.bias"
    names = {ours: prefix + theirs for ours, theirs in names.items()}
    named = dict(model.named_parameters())
    assert set(names) == {n for n, p in named.items() if p.requires_grad}
    overrides = case["init_overrides"]
    with torch.no_grad():
        for ours, theirs in names.items():
            key = theirs.removeprefix(prefix)
            if key in overrides:  # the fixed draws the golden run started from
                named[ours].copy_(tiny.init_draw(overrides[key], tuple(named[ours].shape)))
    assert_close(named["context.ctx"], case["learned"][prefix + "ctx"]["init"], "MaPLe text init", 1e-7)
    with torch.no_grad():
        logits = model.logits(images[: tiny.BATCH])
    assert_close(logits, case["logits_step0"], "logits at step 0", LOGIT_TOL, LOGIT_TOL)
    named = {ours: named[ours] for ours in names}
    run = run_steps(method, model, batches, case, named)
    check_training(case, run, named, names=names)


def test_maple_official_init_structure_and_recipes():
    """What the golden run saw before the fixed draws: the deep maps are copies of one Linear, the layer-0
    map its own; the published recipes."""
    maple = golden("maple")["cases"]
    structure = maple["cross_datasets"]["official_init"]
    assert structure["deep_projections_identical"] and structure["first_projection_differs"]
    assert math.isclose(structure["compound_prompts_std"], 0.02, rel_tol=0.1)
    cross, b2n = maple["cross_datasets"], maple["base_to_new"]
    assert (cross["lr"], cross["max_epoch"], cross["depth"], cross["batch_size"]) == (0.0026, 2, 3, 4)
    assert (b2n["lr"], b2n["max_epoch"], b2n["depth"], b2n["batch_size"], b2n["n_ctx"]) == (0.0035, 5, 9, 4, 2)
    method = get_method("maple")
    assert method.optim_defaults.lr == b2n["lr"] and method.prompt_defaults.prompt_depth == b2n["depth"]
    assert method.prompt_defaults.n_ctx == b2n["n_ctx"]


# ------------------------------------------------------------------------------------------- PromptSRC

PROMPTSRC_PREFIX = "VLPromptLearner."


def _promptsrc_names(depth: int) -> dict[str, str]:
    names = {"context.ctx": "prompt_learner.ctx", "vision_ctx.0": "image_encoder.VPT"}
    for i in range(1, depth):
        names[f"deep_text.{i - 1}.ctx"] = f"text_encoder.transformer.resblocks.{i}.VPT_shallow"
        names[f"vision_ctx.{i}"] = f"image_encoder.transformer.resblocks.{i}.VPT_shallow"
    return {ours: PROMPTSRC_PREFIX + theirs for ours, theirs in names.items()}


@pytest.mark.parametrize(("case_name", "depth"), [("cross_datasets_e2", 3), ("cross_datasets_e2_depth2", 2)])
def test_promptsrc_frozen_features_logits_loss_gradients_updates_and_gpa(backbone, data, case_name, depth):
    """Cross-dataset recipe (depth 3+3, losses 25/10), 2 epochs with the GPA model loaded at the end; dipclip
    aggregates with GPA_MEAN 6, GPA_STD 10 over E = 2, as the official run. Also at depth 2+2, below the
    testbed's 3 layers (the last layer of each tower keeps the tokens it is given)."""
    from dipclip.methods import promptsrc as promptsrc_module

    case = golden("promptsrc")["cases"][case_name]
    assert case.get("depth_text", 3) == case.get("depth_vision", 3) == depth
    assert case["gpa_loaded"]
    images, _, batches = data
    assert list(promptsrc_module.PROMPTSRC_TEMPLATES) == case["templates"]
    method = get_method("promptsrc")
    assert (method.text_weight, method.image_weight) == (case["text_loss_weight"], case["image_loss_weight"])
    gpa = golden("promptsrc")["configs"]["vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets"]
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(
        n_ctx=4, init_text="a photo of a", prompt_depth=depth, gpa_mean=gpa["gpa_mean"], gpa_std=gpa["gpa_std"]))
    assert_close(method.frozen_text(model), case["frozen_text_features"], "frozen text features", LOGIT_TOL, LOGIT_TOL)
    names = _promptsrc_names(depth)
    named = dict(model.named_parameters())
    assert set(names) == {n for n, p in named.items() if p.requires_grad}
    assert_close(named["context.ctx"], case["learned"][names["context.ctx"]]["init"], "PromptSRC text init", 0.0)
    for ours, theirs in names.items():
        load_official_init(named[ours], case["learned"][theirs]["init"], {}, theirs)
    with torch.no_grad():
        logits = model.logits(images[: tiny.BATCH])
    assert_close(logits, case["logits_step0"], "logits at step 0", LOGIT_TOL, LOGIT_TOL)
    named = {ours: named[ours] for ours in names}
    assert promptsrc_module.gpa_weights(tiny.TRAIN_EPOCHS, gpa["gpa_mean"], gpa["gpa_std"]) == \
        pytest.approx(case["gpa_weights_train"], rel=1e-12)
    epochs = tiny.TRAIN_EPOCHS
    method.load_training_state({})
    run = run_steps(method, model, batches, case, named,
                    end_epoch=lambda epoch: method.end_epoch(model, epoch, epochs))
    method.end_training(model, epochs)  # loads the aggregate, as the official run did
    check_training(case, run, named, names=names)


@pytest.mark.parametrize("config", ["vit_b16_c2_ep20_batch4_4+4ctx", "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets",
                                    "vit_b16_c2_ep50_batch4_4+4ctx_few_shot"])
def test_promptsrc_gpa_weights_are_the_official_ones(config):
    from dipclip.methods.promptsrc import gpa_weights

    official = golden("promptsrc")["configs"][config]
    ours = gpa_weights(official["max_epoch"], official["gpa_mean"], official["gpa_std"])
    assert ours == pytest.approx(official["gpa_weights"], rel=1e-9, abs=1e-300)


# ------------------------------------------------------------------------------------------- DePT

DEPT_PREFIX = "PromptLearner."
DEPT_NAMES = {"context.ctx": "prompt_learner.ctx", "text_transform.scale": "film_lp_text.scale",
              "text_transform.shift": "film_lp_text.bias", "image_transform.scale": "film_lp_img.scale",
              "image_transform.shift": "film_lp_img.bias", "head.weight": "linear_probe_proj.weight",
              "head.bias": "linear_probe_proj.bias"}


def _dept_model(backbone, case: dict):
    method = get_method("dept")
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(n_ctx=case["n_ctx"], init_text=""))
    named = dict(model.named_parameters())
    names = {ours: DEPT_PREFIX + theirs for ours, theirs in DEPT_NAMES.items()}
    assert set(names) == {n for n, p in named.items() if p.requires_grad}
    for ours, theirs in names.items():
        load_official_init(named[ours], case["learned"][theirs]["init"], {}, theirs)
    return method, model, {ours: named[ours] for ours in names}, names


def test_dept_recipe_and_param_groups():
    """What already agrees: CoOp's 16 random tokens by default, lr 0.0035, the head and cwT layers at 6.5x,
    the 0.7 head weight."""
    from dipclip.methods.dept import HEAD_LR_SCALE, HEAD_WEIGHT

    case = golden("dept")["cases"]["base"]
    assert (case["n_ctx"], case["ctx_init"], case["lr"], case["lr_exp"]) == (16, "", 0.0035, 6.5)
    assert (HEAD_WEIGHT, HEAD_LR_SCALE) == (case["head_weight"], case["lr_exp"])
    assert get_method("dept").optim_defaults.lr == case["lr"]
    assert case["steps"][-1]["lr"][0] == [case["lr"], case["lr"] * case["lr_exp"]]


def test_dept_logits_loss_gradients_and_updates(backbone, data):
    case = golden("dept")["cases"]["base"]
    images, _, batches = data
    method, model, named, names = _dept_model(backbone, case)
    with torch.no_grad():
        logits = model.logits(model_inputs(model, images[: tiny.BATCH]))
    assert_close(logits, case["logits_step0"], "fused logits at step 0", LOGIT_TOL, LOGIT_TOL)
    run = run_steps(method, model, batches, case, named)
    check_training(case, run, named, names=names)


def test_dept_lr_schedule_of_both_groups():
    """Dassl's constant warm-up sets every group, DePT's 6.5x head too, to WARMUP_CONS_LR; then each cosine
    starts from its group's own base lr."""
    case = golden("dept")["cases"]["base"]
    optim = OptimConfig(lr=case["lr"])
    for epochs, table in case["lr_by_epoch"].items():
        _assert_schedule(_dipclip_lrs(optim, int(epochs), [1.0, case["lr_exp"]]), table, f"E={epochs}")


def _dept_from_official_init(backbone, train_names: list[str], learned_init: dict):
    """dipclip's DePT over ``train_names``, started from the official tensors ``learned_init`` recorded."""
    method = get_method("dept")
    model = method.build(backbone, list(train_names), method.prompt_config(n_ctx=16, init_text=""))
    named = dict(model.named_parameters())
    for ours, theirs in DEPT_NAMES.items():
        load_official_init(named[ours], learned_init[DEPT_PREFIX + theirs], {}, theirs)
    return model.eval()


def test_dept_keeps_its_head_on_imagenet_with_all_classes(backbone, data):
    """DePT's code keeps the linear head for a dataset named ImageNet* with SUBSAMPLE_CLASSES all (the
    cross-dataset source): one row per training class, and the fused logits; dipclip, from the same tensors
    on the same classes, keeps its head on and gives the same logits."""
    case = golden("dept")["cases"]["imagenet_all"]
    assert case["subsample"] == "all" and case["head_shape"] == [len(tiny.CLASSNAMES), tiny.EMBED_DIM]
    images, _, _ = data
    model = _dept_from_official_init(backbone, tiny.CLASSNAMES, case["learned_init"])
    model.set_classnames(list(tiny.CLASSNAMES))  # evaluation on the source's own classes
    assert model.head_active and model.head.weight.shape == (len(tiny.CLASSNAMES), tiny.EMBED_DIM)
    with torch.no_grad():
        logits = model.logits(model_inputs(model, images[: tiny.BATCH]))
    assert_close(logits, case["logits_step0"], "fused logits on ImageNet (all classes)", LOGIT_TOL, LOGIT_TOL)


@pytest.mark.parametrize("case_name", ["imagenet_r_clipped", "imagenet_r_repeated_name"])
def test_dept_clips_its_head_to_imagenet_r_as_the_authors_load_model_does(backbone, data, case_name):
    """The authors' load_model keeps the head rows of the wnid folders an ImageNet-R folder holds (run by
    their code on a small layout); dipclip, from the same tensors, matches the target's class names to its
    training classes and keeps the same rows and the same fused logits, also when two training classes share
    a name (as CLIP's ImageNet names "missile" and "sunglasses" do) and the folder decides which is meant."""
    from dipclip.methods.dept import head_rows

    case = golden("dept")["cases"][case_name]
    images, _, _ = data
    assert head_rows(case["train_classnames"], case["target_classnames"]).tolist() == case["rows"]
    model = _dept_from_official_init(backbone, case["train_classnames"], case["learned_init"])
    model.set_classnames(case["target_classnames"])
    assert model.head_active and model.rows.tolist() == case["rows"]
    with torch.no_grad():
        logits = model.logits(model_inputs(model, images[: tiny.BATCH]))
    assert_close(logits, case["logits"], f"fused logits on {case_name}", LOGIT_TOL, LOGIT_TOL)


def _folder_rows(wnids: list[str], present: set[str]) -> list[int]:
    """The authors' rule (DePT ``elp_coop.py`` load_model): a mask over the source's classnames.txt order,
    true for the wnids present as folders in the target; the kept rows in that order."""
    return [i for i, wnid in enumerate(wnids) if wnid in present]


# CLIP's ImageNet names (CoOp's classnames.txt) repeat "missile" and "sunglasses"; wnid order, as the file
IMAGENET_EXCERPT = {"n03770679": "minivan", "n03773504": "missile", "n03775071": "mitten", "n03983396": "pop bottle",
                    "n04008634": "missile", "n04033901": "quill", "n04355933": "sunglasses",
                    "n04356056": "sunglasses", "n04357314": "sunscreen"}


def _imagenet_layout(root: Path, present: set[str]) -> None:
    """dipclip's ImageNet layout (classnames.txt + wnid folders) for the excerpt, and ImageNet-A and -R
    folders holding the ``present`` wnids (and the README.txt both ship)."""
    from PIL import Image

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (90, 20, 20)).save(path)

    lines = "".join(f"{w} {n}\n" for w, n in IMAGENET_EXCERPT.items())
    (root / "imagenet").mkdir(parents=True)
    (root / "imagenet" / "classnames.txt").write_text(lines)
    for split in ("train", "val"):
        for wnid in IMAGENET_EXCERPT:
            image(root / "imagenet" / "images" / split / wnid / f"{wnid}.JPEG")
    for folder, image_dir in (("imagenet-adversarial", "imagenet-a"), ("imagenet-rendition", "imagenet-r")):
        (root / folder / image_dir).mkdir(parents=True)
        (root / folder / "classnames.txt").write_text(lines)
        (root / folder / image_dir / "README.txt").write_text("not a class\n")
        for wnid in present:
            image(root / folder / image_dir / wnid / "0.jpg")


@pytest.mark.parametrize("present", [(0, 1, 2, 5, 8), (3, 4, 5), (0, 1, 2, 3, 4, 5, 6, 7, 8), (2, 5)])
def test_dept_head_rows_by_name_are_the_authors_rows_by_folder(tmp_path, present):
    """On the ImageNet layouts dipclip reads, with CLIP's repeated names, the head rows matched by name are
    the rows the authors keep by folder, for ImageNet-A and -R: a repeated name is settled by the class
    order around it (ImageNet-R holds the first "missile", n03773504, between "mailbox" and "mitten")."""
    from dipclip.data.datasets import load_dataset
    from dipclip.methods.dept import head_rows

    wnids = list(IMAGENET_EXCERPT)
    chosen = {wnids[i] for i in present}
    _imagenet_layout(tmp_path, chosen)
    source = load_dataset(tmp_path, "imagenet")
    assert source.classnames == list(IMAGENET_EXCERPT.values())
    for key in ("imagenet_a", "imagenet_r"):
        target = load_dataset(tmp_path, key)
        assert head_rows(source.classnames, target.classnames).tolist() == _folder_rows(wnids, chosen), key


def test_dept_head_rows_refuse_a_repeated_name_the_order_cannot_settle(tmp_path):
    """One "sunglasses" between "quill" and "sunscreen" could be either wnid: the folder knows, the names do
    not, so dipclip refuses rather than guess (no ImageNet-A/R class is such a case)."""
    from dipclip.data.datasets import load_dataset
    from dipclip.errors import DipclipError
    from dipclip.methods.dept import head_rows

    _imagenet_layout(tmp_path, {"n04033901", "n04356056", "n04357314"})
    source, target = load_dataset(tmp_path, "imagenet"), load_dataset(tmp_path, "imagenet_r")
    with pytest.raises(DipclipError, match="'sunglasses' occurs more than once"):
        head_rows(source.classnames, target.classnames)


def test_maple_deep_projections_start_as_copies_of_one_linear(wide_backbone):
    method = get_method("maple")
    model = method.build(wide_backbone, tiny.CLASSNAMES, method.prompt_config(prompt_depth=3))
    first, *deep = model.projections
    assert all(torch.equal(deep[0].weight, p.weight) and torch.equal(deep[0].bias, p.bias) for p in deep)
    assert not torch.equal(first.weight, deep[0].weight)


# ------------------------------------------------------------------------------------------- optimiser settings

# method -> (golden file, where its published base-to-new optimiser settings are recorded)
RECIPE_SOURCES = {
    "coop": ("coop", ("cases", "ctxv1")), "cocoop": ("cocoop", ("cases", "c4_ctxv1")),
    "kgcoop": ("kgcoop", ("cases", "OxfordPets")), "prograd": ("prograd", ("cases", "OxfordPets")),
    "maple": ("maple", ("cases", "base_to_new")),
    "promptsrc": ("promptsrc", ("configs", "vit_b16_c2_ep20_batch4_4+4ctx")), "dept": ("dept", ("cases", "base")),
}


@pytest.mark.parametrize("method_name", list(RECIPE_SOURCES))
def test_optimiser_settings_are_the_official_ones(method_name):
    """What four small steps cannot show (weight decay moves an update by ~2e-5 of itself here): SGD, lr,
    momentum, weight decay, no dampening or Nesterov, one constant warm-up epoch at 1e-5 then cosine."""
    file, (section, key) = RECIPE_SOURCES[method_name]
    official = golden(file)[section][key]["optim"]
    ours = get_method(method_name).optim_defaults
    assert (official["name"], official["scheduler"], official["warmup_type"]) == ("sgd", "cosine", "constant")
    assert (official["dampening"], official["nesterov"], official["warmup_recount"]) == (0, False, True)
    assert (ours.optimizer, ours.lr, ours.momentum, ours.weight_decay) == \
        (official["name"], official["lr"], official["momentum"], official["weight_decay"])
    assert (ours.warmup_epochs, ours.warmup_lr) == (official["warmup_epoch"], official["warmup_cons_lr"])


# ------------------------------------------------------------------------------------------- recipes


def _common(optim: dict) -> dict:
    return {"train.epochs": optim["max_epoch"], "train.batch_size": optim["batch_size"], "optim.lr": optim["lr"],
            "optim.momentum": optim["momentum"], "optim.weight_decay": optim["weight_decay"],
            "optim.warmup_epochs": optim["warmup_epoch"], "optim.warmup_lr": optim["warmup_cons_lr"]}


def _coop_style(config: dict) -> dict:
    """A CoOp-style config as its trainer reads it: with an init text, n_ctx is its word count (coop.py);
    without one, N_CTX tokens drawn at random."""
    init = config["ctx_init"] or None
    n_ctx = len(init.split(" ")) if isinstance(init, str) else config["n_ctx"]
    return _common(config["optim"]) | {"prompt.n_ctx": n_ctx, "prompt.class_position": config["class_token_position"],
                                       "prompt.class_specific": config["csc"]}


def _script(method: str, path: str) -> dict:
    return golden(method)["scripts"][path]


# Which config (and shots) the authors' own commands use for a protocol, dataset and shot count:
# CoOp: COOP.md (few-shot: ep50 at 1 shot, ep100 at 2-4, the 200-epoch config at 8-16, *_ep50 on ImageNet
# "for all settings") and scripts/cocoop/{base2new,xd}_train.sh's CoOp lines (ctxv1; ep50_ctxv1 on ImageNet);
# ProGrad: its README's commands (the same per-shot configs; rn50_ep50 on ImageNet) and scripts/eval.sh;
# KgCoOp: scripts/xd_train.sh, its one all-class script; DePT: configs.py's runner settings.
def _coop_config(protocol: str, dataset: str, shots: int) -> str:
    if protocol == "fewshot":
        return "vit_b16_ep50" if dataset == "imagenet" or shots == 1 else "vit_b16_ep100" if shots in (2, 4) \
            else "vit_b16"
    return "vit_b16_ep50_ctxv1" if protocol == "xd" or dataset == "imagenet" else "vit_b16_ctxv1"


def _prograd_config(protocol: str, dataset: str, shots: int) -> str:
    if protocol == "base2new":
        return "rn50_ep50" if dataset == "imagenet" else "rn50_ep100"
    if protocol == "xd" or dataset == "imagenet":
        return "rn50_ep50"
    return "rn50_ep50" if shots == 1 else "rn50_ep100" if shots in (2, 4) else "rn50"


def _official_recipe(method: str, protocol: str, dataset: str, shots: int) -> dict:
    """The values the authors' config files and scripts gave, as their own yacs/Dassl read them (recorded in
    golden), and ``shots``: the shot count their script trains the cross-dataset source on."""
    if method == "coop":
        values = _coop_style(golden("coop")["configs"][_coop_config(protocol, dataset, shots)])
        values["prompt.init_text"] = golden("coop")["configs"][_coop_config(protocol, dataset, shots)]["ctx_init"] or None
        if protocol == "xd":
            values["shots"] = int(_script("coop", "scripts/cocoop/xd_train.sh")["SHOTS"])
        return values
    if method == "prograd":
        config = golden("prograd")["configs"][_prograd_config(protocol, dataset, shots)]
        values = _common(config["optim"]) | {"prompt.n_ctx": config["n_ctx"], "method.prograd_lambda": config["lambda"],
                                             "prompt.class_position": config["class_token_position"],
                                             "prompt.class_specific": config["csc"]}
        if protocol == "xd" or (protocol == "fewshot" and dataset == "imagenet"):
            # the source eval.sh loads: --load-epoch must be the model's last epoch (Dassl saves no other)
            assert int(_script("prograd", "scripts/eval.sh")["--load-epoch"]) == config["optim"]["max_epoch"]
        if protocol == "xd":
            values["shots"] = int(_script("prograd", "scripts/eval.sh")["SHOTS"])
        return values
    if method == "kgcoop" and protocol != "base2new":
        config = golden("kgcoop")["configs"]["vit_b16_ep100_ctxv1/xd_train"]
        script = _script("kgcoop", "scripts/xd_train.sh")
        assert (script["CFG"], int(script["NCTX"]), float(script["WEIGHT"])) == \
            ("vit_b16_ep100_ctxv1", config["n_ctx"], config["w"])
        values = _common(config["optim"]) | {"prompt.n_ctx": config["n_ctx"], "method.kg_weight": config["w"],
                                             "prompt.class_position": config["class_token_position"],
                                             "prompt.class_specific": config["csc"]}
        if protocol == "xd":
            values["shots"] = int(script["SHOTS"])
        return values
    if method in ("cocoop", "kgcoop", "dept"):
        file, case = {"cocoop": ("cocoop", "c4_ctxv1"), "kgcoop": ("kgcoop", "OxfordPets"), "dept": ("dept", "base")}[method]
        entry = golden(file)["cases"][case]
        ctx = next(v for k, v in entry["learned"].items() if k.endswith("prompt_learner.ctx"))
        values = _common(entry["optim"]) | {"prompt.n_ctx": ctx["init"]["shape"][-2]}
        if method == "kgcoop":
            values["method.kg_weight"] = entry["w"]
        if method == "cocoop" and protocol == "xd":
            values["shots"] = int(_script("coop", "scripts/cocoop/xd_train.sh")["SHOTS"])
        if method == "dept" and protocol == "xd":
            values["shots"] = golden("dept")["runner"]["coop_dept"]["shots"]
        return values
    if method == "maple":
        entry = golden("maple")["cases"]["base_to_new" if protocol == "base2new" else "cross_datasets"]
        n_ctx = entry.get("n_ctx") or entry["learned"]["MultiModalPromptLearner.prompt_learner.ctx"]["init"]["shape"][0]
        values = _common(entry["optim"]) | {"prompt.prompt_depth": entry["depth"], "prompt.n_ctx": n_ctx}
        if protocol == "xd":
            values["shots"] = int(_script("maple", "scripts/maple/xd_train_maple.sh")["SHOTS"])
        return values
    name = {"base2new": "vit_b16_c2_ep20_batch4_4+4ctx", "xd": "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets",
            "fewshot": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot"}[protocol]
    entry = golden("promptsrc")["configs"][name]
    assert entry["depth_text"] == entry["depth_vision"] and entry["n_ctx_vision"] == 4
    values = _common(entry["optim"]) | {"prompt.prompt_depth": entry["depth_text"], "prompt.n_ctx": entry["n_ctx_text"],
                                        "method.gpa_mean": entry["gpa_mean"], "method.gpa_std": entry["gpa_std"]}
    if protocol == "xd":
        values["shots"] = int(_script("promptsrc", "scripts/promptsrc/xd_train.sh")["SHOTS"])
    return values


RECIPE_CASES = [
    ("coop", "base2new", "dtd", 16), ("coop", "base2new", "imagenet", 16),
    *[("coop", "fewshot", "dtd", k) for k in (1, 2, 4, 8, 16)], ("coop", "fewshot", "imagenet", 4),
    ("coop", "xd", "imagenet", 16),
    ("cocoop", "base2new", "dtd", 16), ("cocoop", "xd", "imagenet", 16),
    ("kgcoop", "base2new", "dtd", 16), ("kgcoop", "fewshot", "dtd", 4), ("kgcoop", "xd", "imagenet", 4),
    ("prograd", "base2new", "dtd", 16), ("prograd", "base2new", "imagenet", 16),
    *[("prograd", "fewshot", "dtd", k) for k in (1, 2, 4)], ("prograd", "fewshot", "caltech101", 16),
    ("prograd", "fewshot", "imagenet", 4), ("prograd", "fewshot", "imagenet", 16), ("prograd", "xd", "imagenet", 4),
    ("maple", "base2new", "dtd", 16), ("maple", "xd", "imagenet", 16),
    ("promptsrc", "base2new", "dtd", 16), ("promptsrc", "xd", "imagenet", 16), ("promptsrc", "fewshot", "oxford_pets", 16),
    ("dept", "base2new", "dtd", 16), ("dept", "xd", "imagenet", 16),
]


@pytest.mark.parametrize(("method", "protocol", "dataset", "shots"), RECIPE_CASES)
def test_recipe_is_the_authors_config(method, protocol, dataset, shots):
    """dipclip's shipped recipe has every number the authors' config file and script set for that protocol,
    dataset and shot count (the few-shot PromptSRC yaml's GPA 30/30 is the one its docs give Pets, among
    others), and, for the cross-dataset source, the shots their script trains it on."""
    from dipclip.recipes import recipe_shots, resolve_recipe

    recipe = resolve_recipe(method, protocol, dataset, shots)
    official = _official_recipe(method, protocol, dataset, shots)
    ours = {key: (recipe.shots if key == "shots" else recipe.get(key)) for key in official}
    assert ours == official
    if protocol == "xd":
        assert recipe_shots(method, "xd") == recipe_shots(method, "dg") == official["shots"]
