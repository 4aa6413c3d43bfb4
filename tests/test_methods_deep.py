"""Deep multimodal prompt methods (MaPLe, PromptSRC): towers with deep prompts, counts, training, DIP switch,
resume, PromptSRC's loss and prompt aggregation."""

import json

import pytest
import torch

from dipclip import api
from dipclip.backbones.vision_tower import VisionTower
from dipclip.errors import DipclipError
from dipclip.methods import get_method

NAMES = ["cat", "dog", "bird"]
LAYERS = 3  # both towers: depth 9 is clipped to 3, so deep prompts reach layers 1 and 2


@pytest.fixture(scope="module")
def deep_config_path(tmp_path_factory, tiny_variant):
    return tiny_variant(tmp_path_factory.mktemp("deep"), "tiny-deep", {"layers": LAYERS}, {"layers": LAYERS})


@pytest.fixture(scope="module")
def deep_backbone(deep_config_path):
    from dipclip.backbones.loading import load_backbone

    return load_backbone(str(deep_config_path), "none", device="cpu")


def _layer_output(module: torch.nn.Module, run) -> torch.Tensor:
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return captured[0]


def test_text_tower_deep_prompts_replace_the_context_positions(deep_backbone):
    maple = get_method("maple")
    model = maple.build(deep_backbone, NAMES, maple.prompt_config())
    text, prompts = deep_backbone.text, model.class_prompts
    embeddings = prompts.assemble(model.context().detach())
    with torch.no_grad():
        reference = text(embeddings, prompts.token_ids)
        assert torch.allclose(text.forward_deep(embeddings, prompts.token_ids, []), reference, atol=1e-6)
        # zero-effect deep prompts: the hidden states the context positions had anyway (shared by all classes)
        block0, block1 = text.transformer.resblocks[0], text.transformer.resblocks[1]
        h1 = _layer_output(block0, lambda: text(embeddings, prompts.token_ids))[0, 1:3]
        h2 = _layer_output(block1, lambda: text(embeddings, prompts.token_ids))[0, 1:3]
        same = text.forward_deep(embeddings, prompts.token_ids, [h1, h2])
        assert torch.allclose(same, reference, atol=1e-5)
        # real deep prompts change the features; truncation after the last EOT is exact
        deep = [torch.randn(2, text.width) * 0.5 for _ in range(2)]
        changed = text.forward_deep(embeddings, prompts.token_ids, deep)
        assert (changed - reference).abs().max() > 1e-3
        cut = int(prompts.eot_index.max()) + 1
        assert torch.allclose(text.forward_deep(embeddings[:, :cut], prompts.token_ids[:, :cut], deep), changed, atol=1e-5)
        with pytest.raises(DipclipError, match="deep prompts"):
            text.forward_deep(embeddings, prompts.token_ids, deep * 2)


def test_vision_tower_deep_prompts_replace_the_appended_tokens(deep_backbone):
    tower = VisionTower(deep_backbone.model)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = torch.nn.functional.normalize(tower(images), dim=-1)
        assert torch.allclose(plain, deep_backbone.encode_images(images), atol=1e-5)
        prompts = torch.randn(2, tower.width)
        reference = tower(images, prompts)
        # zero-effect deep prompts: the states the appended tokens had anyway (per image, so one image)
        single, blocks = images[:1], deep_backbone.model.visual.transformer.resblocks
        h1 = _layer_output(blocks[0], lambda: tower(single, prompts))[0, -2:]
        h2 = _layer_output(blocks[1], lambda: tower(single, prompts))[0, -2:]
        assert torch.allclose(tower(single, prompts, [h1, h2]), tower(single, prompts), atol=1e-5)
        assert torch.allclose(tower(single, prompts), reference[:1], atol=1e-5)
        changed = tower(images, prompts, [torch.randn(2, tower.width), torch.randn(2, tower.width)])
        assert (changed - reference).abs().max() > 1e-3
        deep = [torch.randn(2, tower.width), torch.randn(2, tower.width)]
        shortcut = tower(images, prompts, deep)
        tower.class_token_shortcut = False  # the last block for every token, as open_clip runs it
        try:
            assert (tower(images, prompts, deep) - shortcut).abs().max() <= 1e-5
        finally:
            tower.class_token_shortcut = True


def promptsrc_count(n: int, text_width: int, n_vision: int, vision_width: int, depth: int) -> int:
    return depth * n * text_width + depth * n_vision * vision_width


def maple_count(n: int, text_width: int, vision_width: int, depth: int) -> int:
    return n * text_width + (depth - 1) * n * text_width + depth * (text_width * vision_width + vision_width)


def test_maple_parameter_counts(deep_backbone, tmp_path):
    from dipclip.backbones.loading import load_backbone

    maple, low = get_method("maple"), get_method("maple+dip")
    model = maple.build(deep_backbone, NAMES, maple.prompt_config())
    assert model.depth == LAYERS and model.fixed_words == "of a"
    assert model.num_trainable() == maple_count(2, 64, 64, LAYERS) == 12_864
    # DIP rank 1 on the text context and each deep text prompt: (2 + 64) per matrix; the Linear maps stay
    assert low.build(deep_backbone, NAMES, low.prompt_config()).num_trainable() == LAYERS * (2 + 64) + LAYERS * (64 * 64 + 64)
    assert maple.build(deep_backbone, NAMES, maple.prompt_config(prompt_depth=1)).num_trainable() == 2 * 64 + 64 * 64 + 64
    # ViT-B/16 widths with 9 layers on both sides (narrow MLPs keep the random model small)
    config = {"embed_dim": 512,
              "vision_cfg": {"image_size": 32, "layers": 9, "width": 768, "patch_size": 16, "head_width": 64,
                             "mlp_ratio": 1},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 9,
                           "mlp_ratio": 1}}
    path = tmp_path / "b16-widths.json"
    path.write_text(json.dumps(config))
    b16 = load_backbone(str(path), "none")
    assert maple.build(b16, ["cat"], maple.prompt_config()).num_trainable() == maple_count(2, 512, 768, 9) == 3_555_072
    src = get_method("promptsrc")
    assert src.build(b16, ["cat"], src.prompt_config()).num_trainable() == promptsrc_count(4, 512, 4, 768, 9) == 46_080
    for name, count in {"maple+dip": 9 * (2 + 512) + 9 * (512 * 768 + 768), "promptsrc+dip": 9 * (4 + 512) + 9 * 4 * 768}.items():
        method = get_method(name)
        assert method.build(b16, ["cat"], method.prompt_config()).num_trainable() == count, name
    model = src.build(deep_backbone, NAMES, src.prompt_config())
    assert model.num_trainable() == promptsrc_count(4, 64, 4, 64, LAYERS) == 1_536
    low = get_method("promptsrc+dip")  # text matrices become rank 1; the vision prompts stay full
    assert low.build(deep_backbone, NAMES, low.prompt_config()).num_trainable() == LAYERS * (4 + 64) + LAYERS * 4 * 64


def test_maple_init_keeps_the_tail_as_fixed_words(deep_backbone):
    maple = get_method("maple")
    model = maple.build(deep_backbone, NAMES, maple.prompt_config())
    ids = deep_backbone.tokenize([f"a photo of a {name}." for name in NAMES])
    with torch.no_grad():
        expected = deep_backbone.text.embed_tokens(ids)
        assert torch.equal(model.class_prompts.assemble(model.context()), expected)
    coop = get_method("coop")
    with pytest.raises(DipclipError, match="has 4 tokens but n_ctx is 2"):
        coop.build(deep_backbone, NAMES, coop.prompt_config(n_ctx=2))


@pytest.mark.parametrize("name", ["maple", "promptsrc"])
def test_dip_switch_starts_from_the_methods_initial_model(deep_backbone, name):
    images = torch.randn(4, 3, 32, 32)
    full, low = get_method(name), get_method(f"{name}+dip")
    a = full.build(deep_backbone, NAMES, full.prompt_config()).eval()
    for init in ("zero-delta", "residual-svd"):
        b = low.build(deep_backbone, NAMES, low.prompt_config(dip_init=init, dip_dropout=0.1)).eval()
        assert all(d.kind == "dip" for d in [b.context, *b.deep_text])
        with torch.no_grad():
            assert (a.logits(images) - b.logits(images)).abs().max() <= 1e-5, (name, init)


def test_promptsrc_loss_terms(deep_backbone):
    from dipclip.methods.promptsrc import PROMPTSRC_TEMPLATES, gpa_weights

    src = get_method("promptsrc")
    model = src.build(deep_backbone, NAMES, src.prompt_config()).train()
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    loss, logits = src.loss(model, images, labels)
    with torch.no_grad():
        ids = [deep_backbone.tokenize([t.format(n) for n in NAMES]) for t in PROMPTSRC_TEMPLATES]
        text = torch.nn.functional.normalize(
            torch.stack([deep_backbone.text.encode_token_ids(i) for i in ids]).mean(0), dim=-1)
        frozen = deep_backbone.encode_images(images)
        zs = (deep_backbone.logit_scale * frozen @ text.t()).softmax(-1)
        p = logits.softmax(-1)
        kl = (zs * (zs.log() - p.log())).sum() / p.numel()
        expected = (torch.nn.functional.cross_entropy(logits, labels)
                    + 25 * (model.last_text_features - text).abs().mean()
                    + 10 * (model.last_image_features - frozen).abs().mean() + kl)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)
    weights = gpa_weights(20)
    assert sum(weights) == pytest.approx(1.0) and max(range(20), key=weights.__getitem__) == 14  # epoch 15


def test_maple_trains_evaluates_round_trips_and_resumes(tmp_path, deep_config_path, deep_backbone, image_tree,
                                                        kill_after_first_epoch):
    common = dict(model=str(deep_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder", shots=2, epochs=2,
                  batch_size=3, progress=False, subsample="base")
    for method in ("maple", "maple+dip"):
        out = tmp_path / method
        metrics = api.train(method, out=out, **common)
        assert metrics["method"] == method and set(metrics["results"]) == {"base", "new"}
        assert metrics["results"]["base"]["n"] == 8 and metrics["results"]["new"]["n"] == 4
        assert metrics["config"]["optim"]["lr"] == 0.0035 and metrics["config"]["prompt"]["prompt_depth"] == 9
        again = api.evaluate(out / "adapter", data=str(image_tree), dataset="imagefolder", subsample="base",
                             backbone=deep_backbone)
        assert again["results"]["base"] == metrics["results"]["base"], method
    uninterrupted = json.loads((tmp_path / "maple" / "metrics.json").read_text())
    assert uninterrupted["trainable_params"] == 12_864

    kill_after_first_epoch("maple", tmp_path / "killed", **common)
    resumed = api.train("maple", out=tmp_path / "killed", resume=True, **common)
    assert resumed["history"] == uninterrupted["history"]
    assert resumed["results"] == uninterrupted["results"]


def test_promptsrc_trains_aggregates_and_resumes(tmp_path, deep_config_path, deep_backbone, image_tree,
                                                 kill_after_first_epoch):
    from safetensors.torch import load_file

    common = dict(model=str(deep_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder",
                  shots=2, epochs=2, batch_size=3, progress=False, subsample="base",
                  gpa_mean=1.5, gpa_std=1.0)  # equal weights on the 2 epochs (the recipe: 15 and 1 for 20 epochs)
    for method in ("promptsrc", "promptsrc+dip"):
        metrics = api.train(method, out=tmp_path / method, **common)
        assert set(metrics["results"]) == {"base", "new"} and metrics["config"]["optim"]["lr"] == 0.0025
        again = api.evaluate(tmp_path / method / "adapter", data=str(image_tree), dataset="imagefolder",
                             subsample="base", backbone=deep_backbone)
        assert again["results"]["base"] == metrics["results"]["base"], method
    full = json.loads((tmp_path / "promptsrc" / "metrics.json").read_text())
    kill_after_first_epoch("promptsrc", tmp_path / "killed", **common)
    epoch1 = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["learned"]
    epoch2 = torch.load(tmp_path / "promptsrc" / "checkpoint.pt", weights_only=True)["learned"]
    adapter = load_file(str(tmp_path / "promptsrc" / "adapter" / "adapter_model.safetensors"))
    for name, tensor in adapter.items():  # 2 epochs: Gaussian weights 1/2, 1/2
        assert torch.allclose(tensor, (epoch1[name].double() * 0.5 + epoch2[name].double() * 0.5).float()), name
    resumed = api.train("promptsrc", out=tmp_path / "killed", resume=True, **common)
    assert resumed["history"] == full["history"] and resumed["results"] == full["results"]


def test_cli_prompt_depth_predict_and_export(tmp_path, deep_config_path, image_tree, capsys):
    from dipclip.cli import main

    out = tmp_path / "run"
    code = main(["train", "--method", "maple", "--model", str(deep_config_path), "--pretrained", "none", "--device", "cpu",
                 "--data", str(image_tree), "--dataset", "imagefolder", "--shots", "1", "--epochs", "1",
                 "--batch-size", "3", "--prompt-depth", "2", "--quiet", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 0 and metrics["config"]["prompt"]["prompt_depth"] == 2
    assert metrics["trainable_params"] == maple_count(2, 64, 64, 2)
    image = next((image_tree / "test").rglob("*.png"))
    predicted = api.predict([str(image)], classnames=["red apple", "green leaf", "blue sky"], adapter=out / "adapter")
    assert predicted["method"] == "maple" and len(predicted["predictions"][0]["top"]) == 3
    with pytest.raises(DipclipError, match="prompts the image tower"):
        api.export(out / "adapter", classnames=["a", "b"], out=tmp_path / "export")


def test_promptsrc_vision_prompts_as_dip_option(deep_backbone):
    images = torch.randn(3, 3, 32, 32)
    full, low = get_method("promptsrc"), get_method("promptsrc+dip")
    a = full.build(deep_backbone, NAMES, full.prompt_config()).eval()
    b = low.build(deep_backbone, NAMES, low.prompt_config(vision_dip=True)).eval()
    assert all(m.kind == "dip" for m in b.vision_ctx)
    plain_dip = low.build(deep_backbone, NAMES, low.prompt_config())
    vision_width, n_vision = deep_backbone.model.visual.class_embedding.shape[-1], 4
    saved = len(b.vision_ctx) * (n_vision * vision_width - (n_vision + vision_width))  # rank 1 per layer
    assert plain_dip.num_trainable() - b.num_trainable() == saved
    with torch.no_grad():
        assert (a.logits(images) - b.logits(images)).abs().max() <= 1e-5


def test_maple_deep_projections_start_identical_and_the_first_is_its_own(deep_backbone):
    """MaPLe's code: ``proj`` (layer 0) is its own Linear; the deep projections are deep copies of one Linear."""
    maple = get_method("maple")
    model = maple.build(deep_backbone, NAMES, maple.prompt_config())
    first, *deep = model.projections
    assert len(deep) == LAYERS - 1
    for layer in deep[1:]:
        assert torch.equal(layer.weight, deep[0].weight) and torch.equal(layer.bias, deep[0].bias)
        assert layer.weight.data_ptr() != deep[0].weight.data_ptr()  # copies, trained apart
    assert not torch.equal(first.weight, deep[0].weight)
    with torch.random.fork_rng(devices=[]):  # the two draws, made directly
        torch.manual_seed(0)
        a = torch.nn.Linear(deep_backbone.text.width, VisionTower(deep_backbone.model).width)
        b = torch.nn.Linear(deep_backbone.text.width, VisionTower(deep_backbone.model).width)
    assert torch.equal(first.weight, a.weight) and torch.equal(deep[0].weight, b.weight)


def test_promptsrc_gpa_weights_come_from_the_config():
    from dipclip.methods.promptsrc import gpa_weights

    raw = [torch.exp(torch.tensor(-0.5 * ((e - 2.0) / 0.5) ** 2)).item() for e in (1, 2, 3)]
    assert gpa_weights(3, 2.0, 0.5) == pytest.approx([w / sum(raw) for w in raw])
    assert gpa_weights(20) == pytest.approx(gpa_weights(20, 15.0, 1.0))  # default mean 0.75 * epochs
    with pytest.raises(DipclipError, match="weight 0"):
        gpa_weights(3, 1e6, 0.1)


def test_promptsrc_dip_gpa_averages_merged_prompts(tmp_path, deep_backbone):
    """GPA with DIP: the aggregated model's prompts are sum_e w_e (P0 + A_e @ B_e), not P0 + mean(A) @ mean(B),
    and the adapter round-trips that model."""
    from dipclip.adapters import load_adapter, model_from_adapter, save_adapter
    from dipclip.methods.promptsrc import gpa_weights

    src = get_method("promptsrc+dip")
    cfg = src.prompt_config(gpa_mean=2.0, gpa_std=0.7, vision_dip=True)
    model = src.build(deep_backbone, NAMES, cfg)
    trained = model.num_trainable()
    modules = {"context": model.context, **{f"deep_text.{i}": m for i, m in enumerate(model.deep_text)},
               **{f"vision_ctx.{i}": m for i, m in enumerate(model.vision_ctx)}}
    weights = gpa_weights(3, 2.0, 0.7)
    generator = torch.Generator().manual_seed(0)
    expected = {name: torch.zeros_like(m.base, dtype=torch.float64) for name, m in modules.items()}
    naive_a = {name: torch.zeros_like(m.A, dtype=torch.float64) for name, m in modules.items()}
    naive_b = {name: torch.zeros_like(m.B, dtype=torch.float64) for name, m in modules.items()}
    for epoch in range(3):
        with torch.no_grad():
            for name, m in modules.items():  # stand-ins for each epoch's trained factors
                m.A.copy_(torch.randn(m.A.shape, generator=generator))
                m.B.copy_(torch.randn(m.B.shape, generator=generator) * 0.1)
                expected[name] += weights[epoch] * (m.base + m.A @ m.B).double()
                naive_a[name] += weights[epoch] * m.A.double()
                naive_b[name] += weights[epoch] * m.B.double()
        src.end_epoch(model, epoch, 3)
    src.end_training(model, 3)
    folded = {"context": model.context, **{f"deep_text.{i}": m for i, m in enumerate(model.deep_text)},
              **{f"vision_ctx.{i}": m for i, m in enumerate(model.vision_ctx)}}
    for name, m in folded.items():
        assert m.kind == "dip-gpa"
        assert torch.allclose(m.merged().double(), expected[name], atol=1e-6), name
        naive = modules[name].base.double() + naive_a[name] @ naive_b[name]
        assert (naive - expected[name]).abs().max() > 1e-3  # averaging A and B apart is another model
    assert model.num_trainable() == trained
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model.eval().logits(images)
    save_adapter(tmp_path / "adapter", "promptsrc+dip", model)
    loaded = load_adapter(tmp_path / "adapter")
    assert loaded.config["trainable_params"] == trained
    again = model_from_adapter(loaded, deep_backbone, NAMES)
    with torch.no_grad():
        assert torch.allclose(again.logits(images), logits, atol=1e-5)
    assert torch.allclose(again.context.merged().double(), expected["context"], atol=1e-6)
