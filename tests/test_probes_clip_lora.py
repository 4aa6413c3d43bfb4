"""CLIP-LoRA against the authors' own run_lora (golden from tools/parity/probes_clip_lora.py on the tiny
OpenAI-format CLIP of tools/parity/tiny_clip.py, the same dropout masks on both sides) and against
straightforward computations: an untrained adapter is the frozen model, a trained one equals the model with
``W + scaling * B @ A`` merged into its weights, and the shared backbone is never changed."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from dipclip.backbones.loading import load_backbone
from dipclip.engine.trainer import make_optimizer
from dipclip.probes.clip_lora import CLIPLoRA, lora_learning_rate, steps_per_epoch, training_epochs
from dipclip.probes.lora import layer_indices

GOLDEN = Path(__file__).parent / "golden" / "probes"
TOOLS = Path(__file__).parents[1] / "tools" / "parity"
ATOL = 1e-5


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"parity_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny = _load("tiny_clip")
tool = _load("probes_clip_lora")


def close_logits(got: torch.Tensor, record: dict) -> None:
    """test_parity's rule: 1e-5 absolute plus 1e-5 of the largest magnitude (logits are 100 * cosines)."""
    want = t(record)
    torch.testing.assert_close(got, want, atol=ATOL + ATOL * float(want.abs().max()), rtol=0)


def t(record: dict) -> torch.Tensor:
    return torch.tensor(record["values"], dtype=torch.float32).reshape(record["shape"])


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((GOLDEN / "clip_lora.json").read_text())


@pytest.fixture(scope="module")
def parity_backbone(tmp_path_factory, golden):
    state = tiny.openai_state_dict()
    assert tiny.state_digest(state) == golden["checkpoint_digest"]
    path = tmp_path_factory.mktemp("clip-lora") / "tiny-openai-clip.pt"
    torch.save(state, path)
    return load_backbone(None, str(path), device="cpu")


def official_head(backbone, golden):
    method = CLIPLoRA()
    cfg = golden["config"]
    settings = method.settings(templates=[cfg["template"]], rank=cfg["r"], alpha=float(cfg["alpha"]),
                               dropout=cfg["dropout_rate"], params=cfg["params"], encoder=cfg["encoder"],
                               position=cfg["position"], logit_scale=float(cfg["logit_scale"]))
    head = method.build(backbone, list(tiny.CLASSNAMES), settings)
    head.load_learnable_state({f"lora.{k}": t(v) if k.endswith(".A") else torch.zeros(t(v).shape)
                               for k, v in golden["init"].items()})
    for key, delta in head.lora.items():  # the masks the golden run's dropouts used
        delta.dropout = tool.ReplayDropout(key, tiny.CONTEXT if key.startswith("text") else None, True)
    return method, head


def test_training_matches_the_authors(parity_backbone, golden, one_thread):
    """Logits and loss at every one of the 4 steps, the LoRA tensors after step 1 and at the end, the lr of
    every step, and the final test cosines (their eval merges W + s*BA) from their run_lora."""
    method, head = official_head(parity_backbone, golden)
    assert set(golden["init"]) == {k.removeprefix("lora.") for k, _ in head.learnable_named_parameters()}
    assert all(not t(v).any() for k, v in golden["init"].items() if k.endswith(".B"))  # B starts at zero
    images, labels = tiny.inputs()
    optimizer = make_optimizer(head.param_groups(), method.optim_defaults)
    total = golden["config"]["shots"] * golden["config"]["n_iters"]
    head.train()
    for step, (batch, target) in enumerate(tiny.batches()):
        lr = lora_learning_rate(method.optim_defaults.lr, step, total)
        assert lr == pytest.approx(golden["lrs"][step], rel=1e-12)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, logits = method.training_step(head, batch, target, optimizer)
        close_logits(logits, golden["train_logits"][step])
        assert float(loss) == pytest.approx(golden["losses"][step], abs=ATOL)
        if step == 0:
            for k, v in golden["after_step_1"].items():
                torch.testing.assert_close(head.lora.get_submodule(k.split(".")[0]).get_parameter(k.split(".")[1]),
                                           t(v), atol=1e-7, rtol=1e-5)
    for k, v in golden["final"].items():
        torch.testing.assert_close(dict(head.learnable_named_parameters())[f"lora.{k}"], t(v), atol=1e-7, rtol=1e-5)
    head.eval()
    with torch.no_grad():
        cosine = head.image_features(images) @ head.text_features().t()
    torch.testing.assert_close(cosine, t(golden["final_test_cosine"]), atol=1e-6, rtol=0)


def test_untrained_adapter_is_zero_shot_clip(parity_backbone, golden, one_thread):
    """B = 0: their zero-shot test logits (100 * features @ clip_classifier weights)."""
    _, head = official_head(parity_backbone, golden)
    head.eval()
    images, _ = tiny.inputs()
    with torch.no_grad():
        close_logits(head.logits(images), golden["zero_shot_test_logits"])


def test_b_zero_equals_the_frozen_towers(tiny_backbone, one_thread):
    method = CLIPLoRA()
    head = method.build(tiny_backbone, ["red apple", "green_leaf", "blue sky"], method.settings())
    head.eval()
    images = torch.randn(3, 3, tiny_backbone.image_size, tiny_backbone.image_size,
                         generator=torch.Generator().manual_seed(0))
    ids = tiny_backbone.tokenize([f"a photo of a {n}." for n in ("red apple", "green leaf", "blue sky")])
    with torch.no_grad():
        frozen_image = torch.nn.functional.normalize(tiny_backbone.model.encode_image(images).float(), dim=-1)
        frozen_text = torch.nn.functional.normalize(tiny_backbone.model.encode_text(ids).float(), dim=-1)
        torch.testing.assert_close(head.image_features(images), frozen_image, atol=1e-6, rtol=0)
        torch.testing.assert_close(head.text_features(), frozen_text, atol=1e-6, rtol=0)


def merged_model(head, backbone):
    """A copy of the backbone's model with ``scaling * B @ A`` added to the adapted weights (their eval)."""
    model = copy.deepcopy(backbone.model)
    towers = {"text": model.transformer.resblocks, "vision": model.visual.transformer.resblocks}
    with torch.no_grad():
        for key, delta in head.lora.items():
            tower, index, name = key.split("_")
            attn = towers[tower][int(index)].attn
            width = attn.embed_dim
            if name == "o":
                attn.out_proj.weight += delta.merged_delta()
            else:
                row = "qkv".index(name) * width
                attn.in_proj_weight[row:row + width] += delta.merged_delta()
    return model


def test_trained_adapter_equals_merged_weights_and_leaves_the_backbone(tiny_backbone, one_thread):
    """Random A and B on q, k, v and o of every layer: the head's towers equal open_clip's own encode_image/
    encode_text of a model with the deltas merged; a training step leaves the shared backbone unchanged."""
    method = CLIPLoRA()
    names = ["red apple", "green leaf", "blue sky"]
    head = method.build(tiny_backbone, names, method.settings(params=["q", "k", "v", "o"], rank=3, alpha=2.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for delta in head.lora.values():
            delta.B.copy_(torch.randn(delta.B.shape, generator=generator) * 0.1)
            assert delta.scaling == 2.0 / math.sqrt(3)
    before = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    images = torch.randn(4, 3, tiny_backbone.image_size, tiny_backbone.image_size, generator=generator)
    head.eval()
    model = merged_model(head, tiny_backbone)
    ids = tiny_backbone.tokenize([f"a photo of a {n}." for n in names])
    with torch.no_grad():
        want_image = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
        want_text = torch.nn.functional.normalize(model.encode_text(ids).float(), dim=-1)
        torch.testing.assert_close(head.image_features(images), want_image, atol=1e-5, rtol=0)
        torch.testing.assert_close(head.text_features(), want_text, atol=1e-5, rtol=0)
    head.train()
    optimizer = make_optimizer(head.param_groups(), method.optim_defaults)
    method.training_step(head, images, torch.tensor([0, 1, 2, 0]), optimizer)
    for k, v in tiny_backbone.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in tiny_backbone.model.parameters())
    assert all(delta.A.grad is not None for delta in head.lora.values())


def test_new_classes_and_settings(tiny_backbone):
    method = CLIPLoRA()
    head = method.build(tiny_backbone, ["red apple", "green leaf"], method.settings(encoder="vision"))
    assert all(k.startswith("vision_") for k in head.lora)
    assert head.image_prompted and head.scores_new_classes
    head.set_classnames(["blue sky", "red apple", "dark night"])
    with torch.no_grad():
        assert head.text_features().shape == (3, tiny_backbone.text.output_dim)
    text_only = method.build(tiny_backbone, ["red apple"], method.settings(encoder="text", position=[0]))
    assert sorted(text_only.lora) == ["text_0_k", "text_0_q", "text_0_v"]
    assert text_only.stored_state() == {}  # the adapter keeps only the LoRA tensors (the prompts are rebuilt)


def test_positions_are_theirs():
    """loralib/utils.py INDEX_POSITIONS_TEXT / INDEX_POSITIONS_VISION['ViT-B/16'] and ['ViT-L/14']."""
    assert layer_indices("all", 12) == list(range(12))
    assert layer_indices("bottom", 12) == [0, 1, 2, 3]
    assert layer_indices("mid", 12) == [4, 5, 6, 7]
    assert layer_indices("up", 12) == [8, 9, 10, 11]
    assert layer_indices("half-up", 12) == [6, 7, 8, 9, 10, 11]
    assert layer_indices("half-bottom", 12) == [0, 1, 2, 3, 4, 5]
    assert layer_indices("top3", 12) == [9, 10, 11]
    assert layer_indices("half-up", 24) == list(range(12, 24))
    assert layer_indices("half-bottom", 24) == list(range(12))


def test_iterations_to_epochs():
    """n_iters * shots iterations as epochs of the one trainer (full batches of 32)."""
    assert steps_per_epoch(16 * 37, 32) == 18
    assert training_epochs(16, 16 * 37, 32) == math.ceil(8000 / 18)
    assert training_epochs(1, 10, 32) == 500  # fewer images than a batch: one step per epoch
    assert lora_learning_rate(2e-4, 0, 10) == pytest.approx(2e-4)
    assert lora_learning_rate(2e-4, 10, 10) == pytest.approx(1e-6)


def test_recipe_loads_and_names_known_settings():
    from dipclip.recipes.probes import load_probe_recipe_file

    raw = load_probe_recipe_file("clip-lora")
    method = CLIPLoRA()
    method.settings(**raw["defaults"]["head"])
    assert method.optim_config(**raw["defaults"]["optim"]) == method.optim_defaults
    assert set(raw["protocols"]) == set(method.protocols)
