"""Weights in the forms users keep on disk: transformers CLIP / SigLIP folders (converted exactly to open_clip)
and open_clip's ``hf-hub:ORG/NAME`` repos in the Hugging Face cache, read offline; and their refusals."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from dipclip import api
from dipclip.adapters import CONFIG_NAME
from dipclip.backbones.loading import load_backbone
from dipclip.errors import DipclipError

transformers = pytest.importorskip("transformers")

TOL = dict(atol=1e-5, rtol=1e-5)
TEXTS = ["a photo of a red apple", "green leaf", "the blue sky"]
WORDS = ["<pad>", "</s>", "<unk>", "a", "photo", "of", "red", "apple", "green", "leaf", "blue", "sky", "the", "x", "y"]
TOWER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)


def _features(output) -> torch.Tensor:
    """transformers 5 may return a model output object from ``get_*_features`` rather than a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise AssertionError(f"no features in {type(output).__name__}")


def _randomize_scalars(model, bias: bool) -> None:
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        if bias:
            model.logit_bias.fill_(-7.25)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(TOWER, max_position_embeddings=77, vocab_size=49408),
                        vision_config=dict(TOWER, image_size=32, patch_size=8), projection_dim=16)
    model = CLIPModel(config).eval()
    _randomize_scalars(model, bias=False)
    folder = tmp_path_factory.mktemp("hf") / "tiny-clip"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.3]}))
    return folder, model


def _save_tiny_tokenizer(folder) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    inner.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(1)
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1)
    config = SiglipConfig(text_config=dict(TOWER, max_position_embeddings=16, vocab_size=100, **ids),
                          vision_config=dict(TOWER, image_size=32, patch_size=16))
    model = SiglipModel(config).eval()
    _randomize_scalars(model, bias=True)
    folder = tmp_path_factory.mktemp("hf") / "tiny-siglip"
    model.save_pretrained(folder)
    _save_tiny_tokenizer(folder)
    return folder, model


def _assert_same_model(backbone, reference, image_size: int = 32) -> None:
    torch.manual_seed(2)
    images = torch.randn(3, 3, image_size, image_size)
    ids = backbone.tokenize(TEXTS)
    with torch.no_grad():
        ours_image = backbone.model.encode_image(images)
        torch.testing.assert_close(ours_image, _features(reference.get_image_features(pixel_values=images)), **TOL)
        torch.testing.assert_close(backbone.encode_images(images, normalize=False), ours_image, **TOL)
        theirs_text = _features(reference.get_text_features(input_ids=ids))
        torch.testing.assert_close(backbone.model.encode_text(ids), theirs_text, **TOL)
        torch.testing.assert_close(backbone.text.encode_token_ids(ids), theirs_text, **TOL)  # prompt methods' path
    torch.testing.assert_close(backbone.model.logit_scale.detach().reshape(()),
                               reference.logit_scale.detach().reshape(()), **TOL)


def test_transformers_clip_folder_gives_transformers_features(clip_folder):
    folder, reference = clip_folder
    backbone = load_backbone(pretrained=str(folder), device="cpu", announce=False)
    _assert_same_model(backbone, reference)
    assert backbone.model.logit_bias is None
    assert backbone.tokenizer.context_length == 77
    assert backbone.mean == (0.4, 0.5, 0.6) and backbone.std == (0.2, 0.25, 0.3)  # preprocessor_config.json
    assert backbone.image_size == 32
    assert backbone.weights_file == str(folder / "model.safetensors")
    assert backbone.model_arg is None


def test_transformers_siglip_folder_gives_transformers_features(siglip_folder):
    folder, reference = siglip_folder
    backbone = load_backbone(model=str(folder), pretrained=str(folder), device="cpu", announce=False)
    _assert_same_model(backbone, reference)
    torch.testing.assert_close(backbone.model.logit_bias.detach().reshape(()),
                               reference.logit_bias.detach().reshape(()), **TOL)
    assert float(backbone.model.logit_bias) == -7.25
    ids = backbone.tokenize(["a photo of a Red apple."])[0].tolist()
    assert ids[:7] == [3, 4, 5, 3, 6, 7, 1] and set(ids[7:]) == {0} and len(ids) == 16  # canonicalized, padded
    assert backbone.mean == (0.5, 0.5, 0.5) and backbone.std == (0.5, 0.5, 0.5)  # SigLIP's defaults


def test_identity_is_by_content_and_the_weights_file_reloads_it(clip_folder, tmp_path):
    folder, _ = clip_folder
    first = load_backbone(pretrained=str(folder), device="cpu", announce=False)
    again = load_backbone(pretrained=str(folder / "model.safetensors"), device="cpu", announce=False)
    assert first.identity == again.identity and first.identity.startswith("sha256:")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        (copy / name).write_bytes((folder / name).read_bytes())
    (copy / "preprocessor_config.json").write_bytes((folder / "preprocessor_config.json").read_bytes())
    assert load_backbone(pretrained=str(copy), device="cpu", announce=False).identity == first.identity
    from safetensors.torch import load_file, save_file

    state = load_file(str(copy / "model.safetensors"))
    state["logit_scale"] = state["logit_scale"] + 1
    save_file(state, str(copy / "model.safetensors"))
    assert load_backbone(pretrained=str(copy), device="cpu", announce=False).identity != first.identity


def test_pytorch_model_bin_and_a_cache_snapshot_load_the_same_model(clip_folder, tmp_path):
    from safetensors.torch import load_file

    folder, reference = clip_folder
    snapshot = _fake_hub_repo(tmp_path / "cache", "tiny-org/hf-clip", {
        "config.json": (folder / "config.json").read_bytes(),
        "preprocessor_config.json": (folder / "preprocessor_config.json").read_bytes()})
    torch.save(load_file(str(folder / "model.safetensors")), snapshot / "pytorch_model.bin")
    from_folder = load_backbone(pretrained=str(snapshot), device="cpu", announce=False)
    assert from_folder.name == "tiny-org/hf-clip" and from_folder.weights_file == str(snapshot / "pytorch_model.bin")
    _assert_same_model(from_folder, reference)
    from_hub = load_backbone(pretrained="hf-hub:tiny-org/hf-clip", cache_dir=str(tmp_path / "cache"), device="cpu",
                             announce=False)  # a transformers repo in the cache: converted too
    assert from_hub.identity == from_folder.identity
    _assert_same_model(from_hub, reference)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_train_then_evaluate_rebuilds_the_converted_backbone(kind, request, image_tree, tmp_path):
    folder, _ = request.getfixturevalue(f"{kind}_folder")
    out = tmp_path / "run"
    metrics = api.train("dip", pretrained=str(folder), data=str(image_tree), dataset="imagefolder", shots=2,
                        epochs=1, batch_size=4, progress=False, out=out, device="cpu")
    recorded = json.loads((out / "adapter" / CONFIG_NAME).read_text())["backbone"]
    assert recorded["weights_file"] == str(folder / "model.safetensors")
    again = api.evaluate(out / "adapter", data=str(image_tree), dataset="imagefolder", device="cpu")
    assert again["backbone"]["identity"] == metrics["backbone"]["identity"]
    assert again["results"]["test"] == metrics["results"]["test"]


# ---------------------------------------------------------------------------------------------- hf-hub:


HUB_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_repo(cache, repo: str, files: dict[str, bytes]):
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REVISION)
    for name, content in files.items():
        (snapshot / name).write_bytes(content)
    return snapshot


@pytest.fixture
def hub_repo(tmp_path):
    from safetensors.torch import save as save_bytes

    from dipclip.backbones.build import build_from_config

    source = build_from_config(HUB_CONFIG).eval().requires_grad_(False)  # frozen as the backbone: same kernels
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))  # not the seeded init a fresh build would draw
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    config = {"model_cfg": HUB_CONFIG, "preprocess_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.3, 0.3]}}
    cache = tmp_path / "hub-cache"
    _fake_hub_repo(cache, "tiny-org/tiny-clip", {"open_clip_config.json": json.dumps(config).encode(),
                                                 "open_clip_model.safetensors": save_bytes(state)})
    return cache, source


def test_hf_hub_repo_loads_offline_from_the_cache(hub_repo, monkeypatch):
    cache, source = hub_repo
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    backbone = load_backbone(pretrained="hf-hub:tiny-org/tiny-clip", device="cpu", announce=False)
    images = torch.randn(2, 3, 32, 32)
    ids = backbone.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(backbone.model.encode_image(images), source.encode_image(images), rtol=0, atol=0)
        torch.testing.assert_close(backbone.model.encode_text(ids), source.encode_text(ids), rtol=0, atol=0)
    assert backbone.mean == (0.1, 0.2, 0.3) and backbone.std == (0.3, 0.3, 0.3)
    assert backbone.name == "hf-hub:tiny-org/tiny-clip" and backbone.identity.startswith("sha256:")
    monkeypatch.delenv("HF_HUB_CACHE")
    same = load_backbone(model="hf-hub:tiny-org/tiny-clip", pretrained="hf-hub:tiny-org/tiny-clip",
                         cache_dir=str(cache), device="cpu", announce=False)
    assert same.identity == backbone.identity


def _one_line_error(**kwargs) -> str:
    with pytest.raises(DipclipError) as info:
        load_backbone(device="cpu", announce=False, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_hf_hub_refusals_name_the_repo_the_files_and_the_fix(hub_repo, tmp_path):
    cache, _ = hub_repo
    message = _one_line_error(pretrained="hf-hub:tiny-org/absent", cache_dir=str(cache))
    assert "tiny-org/absent" in message and "open_clip_config.json" in message and str(cache) in message
    assert "huggingface-cli download tiny-org/absent" in message
    _fake_hub_repo(cache, "tiny-org/no-weights", {"open_clip_config.json": json.dumps(HUB_CONFIG).encode()})
    message = _one_line_error(pretrained="hf-hub:tiny-org/no-weights", cache_dir=str(cache))
    assert "open_clip_model.safetensors or open_clip_pytorch_model.bin" in message
    assert "open_clip_config.json and" not in message and "download" in message
    message = _one_line_error(model="ViT-B-16", pretrained="hf-hub:tiny-org/tiny-clip", cache_dir=str(cache))
    assert "drop --model ViT-B-16" in message


def test_transformers_folder_refusals(clip_folder, tmp_path):
    folder, _ = clip_folder
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (other / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    message = _one_line_error(pretrained=str(other))
    assert "model_type 'bert'" in message and "clip or siglip" in message
    (other / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    assert "SigLIP2" in _one_line_error(pretrained=str(other))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_bytes((folder / "config.json").read_bytes())
    message = _one_line_error(pretrained=str(empty))
    assert "holds no weights" in message and "model.safetensors or pytorch_model.bin" in message
    assert "drop --model ViT-B-16" in _one_line_error(model="ViT-B-16", pretrained=str(folder))


def test_a_leftover_or_missing_tensor_is_refused_by_name(clip_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = clip_folder
    state = load_file(str(folder / "model.safetensors"))
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "config.json").write_bytes((folder / "config.json").read_bytes())
    save_file({**state, "text_model.extra.weight": torch.zeros(2)}, str(extra / "model.safetensors"))
    assert "text_model.extra.weight" in _one_line_error(pretrained=str(extra))
    del state["vision_model.post_layernorm.bias"]
    save_file(state, str(extra / "model.safetensors"))
    assert "vision_model.post_layernorm.bias" in _one_line_error(pretrained=str(extra))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_like_weights_is_refused_not_opened(clip_folder, tmp_path):
    folder, _ = clip_folder
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "config.json").write_bytes((folder / "config.json").read_bytes())
    os.mkfifo(trap / "model.safetensors")

    def hung(*_):
        raise AssertionError("the FIFO was opened")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        for given in (trap, trap / "model.safetensors"):
            assert "not a regular file" in _one_line_error(pretrained=str(given))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_command_line_runs_zeroshot_train_predict_and_export_on_a_siglip_folder(siglip_folder, image_tree,
                                                                                     tmp_path, capsys):
    """What a user does with a transformers SigLIP folder, end to end through the CLI."""
    from cli_run import run
    from safetensors.torch import load_file

    folder, _ = siglip_folder
    common = ["--pretrained", folder, "--device", "cpu"]
    data = ["--data", image_tree, "--dataset", "imagefolder"]
    code, out, err = run(["zeroshot", *common, *data, "--out", tmp_path / "zs"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "zs" / "metrics.json").read_text())["results"]["test"]["n"] == 12
    code, out, err = run(["train", "--method", "dip", *common, *data, "--shots", "2", "--epochs", "1",
                          "--out", tmp_path / "run", "--quiet"], capsys)
    assert code == 0, err
    image = next((image_tree / "test").rglob("*.png"))
    code, out, err = run(["predict", image, "--adapter", tmp_path / "run" / "adapter", "--device", "cpu",
                          "--top-k", "2", "--out", tmp_path / "pred"], capsys)
    assert code == 0, err
    assert image.name in out
    code, out, err = run(["export", tmp_path / "run" / "adapter", "--device", "cpu", "--out", tmp_path / "x"],
                         capsys)
    assert code == 0, err
    exported = load_file(tmp_path / "x" / "classifier.safetensors")
    assert float(exported["logit_bias"]) == pytest.approx(-7.25)  # the folder's bias, exported beside the scale
