"""Every kind of text tower open_clip builds, through dipclip's prompt path (tiny random configs, one per family).

For each family: the hard prompt "a photo of a <class>." entered as a context matrix equals open_clip's own
``encode_text`` of that text (1e-5), with the class name at the end, in the middle and at the front; the
shortcut choices (truncation after the pooled token, the shared-prefix cache) are the ones that are exact for the
family; zero-shot text features equal open_clip's zero-shot classifier; CoOp and DIP train one epoch, DIP with
n_ctx + width parameters; a model's logit bias enters its logits. Hugging Face text encoders have their own
tests (test_hf_text_tower.py); here one takes the same user-level path as the others.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_tokenizers import word_level_tokenizer

from dipclip import api
from dipclip.backbones.loading import load_backbone
from dipclip.methods.zeroshot import zeroshot_text_features
from dipclip.prompts.class_prompts import ClassPrompts

VISION = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}
TEXT = {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}

# family: (config, truncated after the pooled token, prefix cache)
FAMILIES = {
    "clip-causal-eot": ({"embed_dim": 16, "vision_cfg": VISION, "text_cfg": TEXT}, True, True),
    "siglip-style": ({"embed_dim": 16, "custom_text": True, "init_logit_bias": -10, "vision_cfg": VISION,
                      "text_cfg": {**TEXT, "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                                   "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}}},
                     False, False),
    "mobileclip-style": ({"embed_dim": 16, "custom_text": True, "vision_cfg": VISION,
                          "text_cfg": {**TEXT, "no_causal_mask": True}}, False, False),
    "causal-first": ({"embed_dim": 16, "custom_text": True, "vision_cfg": VISION,
                      "text_cfg": {**TEXT, "pool_type": "first"}}, True, False),
    "causal-eos": ({"embed_dim": 16, "custom_text": True, "vision_cfg": VISION,
                    "text_cfg": {**TEXT, "pool_type": "eos", "eos_id": 49407}}, True, True),
    "coca": ({"embed_dim": 16, "custom_text": True,
              "vision_cfg": {**VISION, "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
              "text_cfg": {**TEXT, "embed_cls": True, "output_tokens": True},
              "multimodal_cfg": {**TEXT, "attn_pooler_heads": 2}}, False, False),
    "siglip-hf-tokenizer": (None, False, False),  # written with a tokenizer folder below
    "bert-hf-tower": (None, False, False),  # a Hugging Face text encoder, written below
}
CLASSES = ["cat", "golden retriever", "red apple"]


@pytest.fixture(scope="module")
def family_configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    tokenizer = word_level_tokenizer(folder / "tokenizer")
    paths = {}
    for name, (config, _, _) in FAMILIES.items():
        if name == "siglip-hf-tokenizer":  # SigLIP's layout: no BOS, EOS then padding, canonicalised text, 16 positions
            config = {"embed_dim": 16, "custom_text": True, "init_logit_bias": -10, "vision_cfg": VISION,
                      "text_cfg": {"context_length": 16, "vocab_size": 40, "width": 32, "heads": 2, "layers": 2,
                                   "hf_tokenizer_name": str(tokenizer), "tokenizer_kwargs": {"clean": "canonicalize"},
                                   "no_causal_mask": True, "proj_bias": True, "pool_type": "last"}}
        if name == "bert-hf-tower":  # [CLS] text [SEP] [PAD]..., read by a tiny random BERT, CLS-pooled
            from transformers import BertConfig

            bert = word_level_tokenizer(folder / "bert", bos="[CLS]", eos="[SEP]", pad="[PAD]")
            BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=32, pad_token_id=0).save_pretrained(bert)
            config = {"embed_dim": 16, "vision_cfg": VISION,
                      "text_cfg": {"context_length": 16, "hf_model_name": str(bert), "hf_tokenizer_name": str(bert),
                                   "hf_pooler_type": "cls_last_hidden_state_pooler", "hf_proj_type": "linear"}}
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(config))
    return paths


def _backbone(family_configs, family):
    return load_backbone(str(family_configs[family]), "none", announce=False)


def _reference(backbone, texts):
    features = backbone.model.encode_text(backbone.tokenize(texts), normalize=False)
    return features[0] if isinstance(features, tuple) else features


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hard_prompt_through_the_prompt_path_equals_encode_text(family_configs, family):
    backbone = _backbone(family_configs, family)
    _, truncated, cached = FAMILIES[family]
    assert backbone.text.causal is truncated and backbone.text.supports_prefix_cache is cached
    start = backbone.content_start
    words = ["a", "photo", "of", "the"]
    ctx = backbone.text.embed_tokens(backbone.tokenize([" ".join(words)]))[0, start:start + 4]
    with torch.no_grad():
        for position, sentence in (("end", "a photo of the {}."), ("middle", "a photo {} of the."),
                                   ("front", "{} a photo of the.")):
            prompts = ClassPrompts(backbone, CLASSES, 4, position=position)
            expected = _reference(backbone, [sentence.format(name) for name in CLASSES])
            torch.testing.assert_close(prompts(ctx), expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(prompts.full_length_forward(ctx), expected, atol=1e-5, rtol=1e-5)
        ids = backbone.tokenize([f"a photo of the {name}." for name in CLASSES])
        torch.testing.assert_close(backbone.text.encode_token_ids(ids), _reference(backbone, [
            f"a photo of the {name}." for name in CLASSES]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_zero_shot_features_equal_open_clips_zero_shot_classifier(family_configs, family):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    backbone = _backbone(family_configs, family)
    templates = ["a photo of a {}.", "a good photo of the {}."]
    ours = zeroshot_text_features(backbone, CLASSES, templates)
    with torch.no_grad():
        theirs = build_zero_shot_classifier(backbone.model, backbone.tokenizer, CLASSES,
                                            [lambda c, t=t: t.format(c) for t in templates], use_tqdm=False)
    torch.testing.assert_close(ours, theirs.t(), atol=1e-5, rtol=1e-5)
    images = torch.randn(2, 3, 32, 32)
    assert (backbone.logit_bias is not None) == ("siglip" in family)
    if hasattr(backbone.model, "get_logits"):  # open_clip's own logits, with the bias where the model has one
        ids = backbone.tokenize([f"a photo of a {name}." for name in CLASSES])
        with torch.no_grad():
            text = torch.nn.functional.normalize(backbone.text.encode_token_ids(ids), dim=-1)
            theirs, _ = backbone.model.get_logits(images, ids)
        torch.testing.assert_close(backbone.logits(backbone.encode_images(images), text), theirs,
                                   atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_coop_and_dip_train_one_epoch(family_configs, family, image_tree, tmp_path):
    common = dict(model=str(family_configs[family]), pretrained="none", data=str(image_tree),
                  dataset="imagefolder", shots=2, epochs=1, batch_size=4, progress=False, device="cpu")
    dip = api.train("dip", out=tmp_path / "dip", **common)
    assert dip["trainable_params"] == 4 + 32 and len(dip["history"]) == 1
    coop = api.train("coop", out=tmp_path / "coop", **common)
    assert coop["trainable_params"] == 4 * 32
    evaluated = api.evaluate(tmp_path / "dip" / "adapter", data=str(image_tree), dataset="imagefolder",
                             out=tmp_path / "eval", device="cpu")
    assert evaluated["results"]["test"]["accuracy"] == dip["results"]["test"]["accuracy"]


def test_classes_that_are_one_text_to_the_models_tokenizer_are_refused(family_configs):
    """SigLIP's tokenizer drops punctuation: ``t-shirt`` and ``tshirt`` would be one text and one score."""
    from dipclip.errors import DipclipError

    backbone = _backbone(family_configs, "siglip-hf-tokenizer")
    for build in (lambda names: ClassPrompts(backbone, names, 4),
                  lambda names: zeroshot_text_features(backbone, names, ["a photo of a {}."])):
        with pytest.raises(DipclipError, match="'red-apple' and 'redapple' are the same text to siglip-hf-tokenizer"):
            build(["cat", "red-apple", "redapple"])


def test_deep_text_prompts_on_a_hugging_face_tower_are_refused_before_any_data(family_configs):
    from dipclip.errors import DipclipError
    from dipclip.methods import get_method

    backbone = _backbone(family_configs, "bert-hf-tower")
    for name in ("maple", "promptsrc"):
        method = get_method(name)
        with pytest.raises(DipclipError, match="deep text prompts .* need an open_clip text transformer; this "
                                               "model's text tower is a Hugging Face text encoder"):
            method.build(backbone, CLASSES, method.prompt_config())


@pytest.mark.parametrize("family", ["siglip-style", "coca", "causal-first"])
def test_deep_prompts_on_other_open_clip_towers(family_configs, family, image_tree, tmp_path):
    """MaPLe's deep text prompts on the general path: no deep prompts is the plain forward; a deep prompt equal
    to what layer 1 already sees changes nothing; MaPLe trains an epoch."""
    backbone = _backbone(family_configs, family)
    text, start = backbone.text, backbone.content_start
    ids = backbone.tokenize([f"a photo of the {name}." for name in CLASSES])
    embeddings = text.embed_tokens(ids)
    with torch.no_grad():
        plain = text(embeddings, ids)
        torch.testing.assert_close(text.forward_deep(embeddings, ids, [], start=start), plain)
        seen = {}
        hook = text.transformer.resblocks[1].register_forward_pre_hook(
            lambda module, args: seen.setdefault("x", args[0].clone()))
        text(embeddings, ids)
        hook.remove()
        layer_one = seen["x"][0, start:start + 2]  # what layer 1 sees at two context positions of class 0
        same = text.forward_deep(embeddings[:1], ids[:1], [layer_one], start=start)
        torch.testing.assert_close(same, plain[:1], atol=1e-5, rtol=1e-5)
    metrics = api.train("maple", model=str(family_configs[family]), pretrained="none", data=str(image_tree),
                        dataset="imagefolder", shots=2, epochs=1, batch_size=4, progress=False, device="cpu",
                        out=tmp_path / "maple", prompt_depth=2, n_ctx=2)
    assert len(metrics["history"]) == 1 and metrics["results"]["test"]["n"] == 12


def test_the_backbone_identity_holds_the_tokenizer_files_and_the_config(family_configs, tmp_path):
    """A local tokenizer folder's bytes decide the ids, and a config's every field the model: both are part of
    the identity adapters and the feature store check, so an edited vocabulary or pooling is never reused."""
    import shutil

    from dipclip.backbones.tokenizers import TOKENIZER_FILES

    config = json.loads(family_configs["siglip-hf-tokenizer"].read_text())
    folder = tmp_path / "tok"
    shutil.copytree(config["text_cfg"]["hf_tokenizer_name"], folder)
    config["text_cfg"]["hf_tokenizer_name"] = str(folder)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(config))
    before = load_backbone(str(path), "none", announce=False).identity
    assert "/tokenizer-sha256:" in before and before == load_backbone(str(path), "none", announce=False).identity
    edited = next(folder / name for name in TOKENIZER_FILES if (folder / name).is_file())
    edited.write_text(edited.read_text().replace('"x"', '"xx"'))
    assert load_backbone(str(path), "none", announce=False).identity != before
    weights = tmp_path / "weights.pt"
    torch.save(load_backbone(str(family_configs["siglip-style"]), "none", announce=False).model.state_dict(), weights)
    pooled = json.loads(family_configs["siglip-style"].read_text())
    first = load_backbone(str(family_configs["siglip-style"]), str(weights), announce=False).identity
    pooled["text_cfg"]["pool_type"] = "first"  # same tensors, another model
    (tmp_path / "first.json").write_text(json.dumps(pooled))
    assert load_backbone(str(tmp_path / "first.json"), str(weights), announce=False).identity != first
