"""Hugging Face text towers (open_clip's ``HFTextEncoder``) behind the text tower surface.

Tiny random BERT, RoBERTa, XLM-R and mT5 models with tiny tokenizers are written into temporary folders (no
network) and built through open_clip configs naming those folders. For every model and pooler the tower must
give open_clip's own ``encode_text`` from ids, run from embeddings with some rows replaced by learned vectors
(the same as the Hugging Face model from ``inputs_embeds``), pass gradients to those vectors, and refuse deep
prompts.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from dipclip.backbones import tokenizers as dip_tokenizers  # noqa: E402
from dipclip.backbones.build import build_from_config  # noqa: E402
from dipclip.backbones.text_towers import TextTowerBase, text_tower_for  # noqa: E402
from dipclip.errors import DipclipError  # noqa: E402

CONTEXT = 16
WIDTH = 32
EMBED_DIM = 16
WORDS = "a photo of the cat dog bird car plane ship small big red blue green on x".split()
LETTERS = list("abcdefghijklmnopqrstuvwxyz.,")
SENTENCES = ["a photo of a cat.", "a big red ship", "x x x", "the small blue bird on a plane, a photo"]
POOLERS = ["mean_pooler", "cls_pooler", "cls_last_hidden_state_pooler"]
FAMILIES = ["bert", "roberta", "xlm-roberta", "mt5"]
TOLERANCE = 1e-5


# ---- tiny Hugging Face models on disk ------------------------------------------------------------------------

def _write_bert(folder: Path) -> None:
    from transformers import BertConfig, BertTokenizerFast

    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS,
                                *(f"##{c}" for c in LETTERS[:26]), *WORDS]))
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    # transformers 5 takes the vocabulary as ``vocab`` (a path or a dict), 4.x as ``vocab_file``
    key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    BertTokenizerFast(**{key: str(vocab_file)}).save_pretrained(folder)
    BertConfig(vocab_size=len(vocab), hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=32).save_pretrained(folder)


def _word_level_tokenizer(folder: Path, specials: list[str], template: str, **special_tokens: str) -> int:
    """A lowercasing word-level tokenizer (``tokenizers`` library) saved as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(dict.fromkeys([*specials, *WORDS, *LETTERS]))}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.normalizer = normalizers.Lowercase()
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template])
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", **special_tokens
                            ).save_pretrained(folder)
    return len(vocab)


def _write_roberta(folder: Path, xlm: bool) -> None:
    from transformers import RobertaConfig, XLMRobertaConfig

    size = _word_level_tokenizer(folder, ["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>",
                                 bos_token="<s>", eos_token="</s>")  # <pad> = 1 = RoBERTa's padding_idx
    config = XLMRobertaConfig if xlm else RobertaConfig
    config(vocab_size=size, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
           max_position_embeddings=40, pad_token_id=1).save_pretrained(folder)


def _write_mt5(folder: Path) -> None:
    from transformers import MT5Config

    size = _word_level_tokenizer(folder, ["<pad>", "</s>", "<unk>"], "$A </s>", eos_token="</s>")
    MT5Config(vocab_size=size, d_model=WIDTH, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4,
              pad_token_id=0, eos_token_id=1, decoder_start_token_id=0).save_pretrained(folder)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-models")
    folders = {family: root / family for family in FAMILIES}
    for folder in folders.values():
        folder.mkdir()
    _write_bert(folders["bert"])
    _write_roberta(folders["roberta"], xlm=False)
    _write_roberta(folders["xlm-roberta"], xlm=True)
    _write_mt5(folders["mt5"])
    return folders


def hf_config(folder: Path, pooler: str, proj: str) -> dict:
    return {
        "embed_dim": EMBED_DIM,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_pooler_type": pooler,
                     "hf_proj_type": proj, "context_length": CONTEXT},
    }


CASES = [(family, pooler, "linear" if i % 2 == 0 else "mlp")
         for family in FAMILIES for i, pooler in enumerate(POOLERS)]


@pytest.fixture(scope="module", params=CASES, ids=["-".join(case) for case in CASES])
def case(request, hf_folders):
    family, pooler, proj = request.param
    cfg = hf_config(hf_folders[family], pooler, proj)
    model = build_from_config(cfg).eval()
    tokenizer = dip_tokenizers.for_config(cfg)
    tower = text_tower_for(model)
    ids = tokenizer(SENTENCES)
    return family, pooler, model, tower, tokenizer, ids


# ---- a reference written out from the Hugging Face model -----------------------------------------------------

def reference_from_embeddings(model, embeddings: torch.Tensor, ids: torch.Tensor, pooler: str) -> torch.Tensor:
    """The HF model from ``inputs_embeds`` with the padding mask (positions as HF numbers them for embeddings),
    pooled and projected by hand."""
    encoder = model.text
    mask = (ids != encoder.config.pad_token_id).long()
    out = encoder.transformer(inputs_embeds=embeddings, attention_mask=mask)
    hidden = out.last_hidden_state
    if pooler == "mean_pooler":
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    elif pooler == "cls_pooler" and getattr(out, "pooler_output", None) is not None:
        pooled = out.pooler_output
    else:
        pooled = hidden[:, 0]
    return encoder.proj(pooled)


def replace_rows(embeddings: torch.Tensor, vectors: torch.Tensor, start: int = 1) -> torch.Tensor:
    """Positions ``start : start + n`` of every sequence replaced by ``vectors [n, width]`` (CoOp-style)."""
    batch, n = embeddings.shape[0], vectors.shape[0]
    middle = vectors.unsqueeze(0).expand(batch, -1, -1)
    return torch.cat([embeddings[:, :start], middle, embeddings[:, start + n:]], dim=1)


# ---- tests ---------------------------------------------------------------------------------------------------

def test_tokenizers_are_real(case):
    family, _, model, tower, tokenizer, ids = case
    assert ids.shape == (len(SENTENCES), CONTEXT)
    pad = model.text.config.pad_token_id
    assert tokenizer.pad_id == pad
    unknown = tokenizer.inner.tokenizer.unk_token_id
    lengths = (ids != pad).sum(1)
    assert (lengths >= 4).all() and (lengths < CONTEXT).all()  # every sentence has padding after it
    assert (ids[0] != unknown).all(), f"{family}: the tiny vocabulary should cover the first sentence"


def test_surface(case):
    family, pooler, model, tower, _, ids = case
    assert isinstance(tower, TextTowerBase)
    assert tower.kind == f"Hugging Face text encoder ({family})"
    assert tower.causal is False
    assert tower.supports_prefix_cache is False and tower.supports_deep_prompts is False
    assert tower.width == WIDTH and tower.output_dim == EMBED_DIM and tower.layers == 2
    assert tower.embed_tokens(ids).shape == (len(SENTENCES), CONTEXT, WIDTH)
    assert torch.equal(tower.embed_tokens(ids), model.text.transformer.get_input_embeddings()(ids))
    # a view: the very same parameters, frozen
    assert {id(p) for p in tower.parameters()} == {id(p) for p in model.text.parameters()}
    assert not any(p.requires_grad for p in tower.parameters())
    if pooler == "mean_pooler":
        with pytest.raises(DipclipError, match="pools with MeanPooler"):
            tower.pool_index(ids)
    else:
        assert torch.equal(tower.pool_index(ids), torch.zeros(len(SENTENCES), dtype=torch.long))
    with pytest.raises(RuntimeError, match="prefix caching"):
        tower(tower.embed_tokens(ids), ids, prefix=object())


def test_encode_token_ids_is_encode_text(case):
    family, pooler, model, tower, _, ids = case
    with torch.no_grad():
        ours = tower.encode_token_ids(ids)
        theirs = model.encode_text(ids)
    assert ours.shape == (len(SENTENCES), EMBED_DIM) and ours.dtype == torch.float32
    difference = (ours - theirs).abs().max().item()
    assert difference <= TOLERANCE, f"{family}/{pooler}: {difference}"


def test_embedding_path_replaced_rows(case):
    """Learned vectors in place of token embeddings: the HF model from inputs_embeds, and different features."""
    family, pooler, model, tower, _, ids = case
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(2, WIDTH, generator=generator)
    with torch.no_grad():
        embeddings = replace_rows(tower.embed_tokens(ids), vectors)
        ours = tower(embeddings, ids)
        reference = reference_from_embeddings(model, embeddings, ids, pooler)
        plain = tower.encode_token_ids(ids)
    difference = (ours - reference).abs().max().item()
    assert difference <= TOLERANCE, f"{family}/{pooler}: {difference}"
    assert ((ours - plain).abs().amax(dim=1) > 1e-4).all(), "replacing embeddings must change every feature"


def test_embedding_path_equals_id_path(case):
    """Rows replaced by the embeddings of other real tokens give exactly those tokens' ``encode_text``."""
    family, pooler, model, tower, _, ids = case
    other = ids.clone()
    other[:, 1:3] = ids[0, 3:5]  # non-special tokens of the first sentence
    assert not torch.equal(other, ids)
    with torch.no_grad():
        vectors = tower.embed_tokens(ids[0, 3:5])
        ours = tower(replace_rows(tower.embed_tokens(ids), vectors), ids)  # ids: still the originals
        theirs = model.encode_text(other)
    difference = (ours - theirs).abs().max().item()
    assert difference <= TOLERANCE, f"{family}/{pooler}: {difference}"


def test_gradients_reach_the_replaced_rows(case):
    family, pooler, model, tower, _, ids = case
    vectors = torch.nn.Parameter(torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        embeddings = tower.embed_tokens(ids)
    features = tower(replace_rows(embeddings, vectors), ids)
    (features * torch.randn(features.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    assert vectors.grad is not None
    assert (vectors.grad.abs().amax(dim=1) > 0).all(), f"{family}/{pooler}: a learned row got no gradient"
    assert torch.isfinite(vectors.grad).all()
    assert all(p.grad is None for p in model.text.parameters())  # the backbone stays frozen


def test_deep_prompts_refused_in_one_line(case):
    family, _, _, tower, _, ids = case
    with pytest.raises(DipclipError) as caught:
        tower.forward_deep(tower.embed_tokens(ids), ids, [torch.zeros(2, WIDTH)])
    message = str(caught.value)
    assert "\n" not in message
    assert "deep text prompts" in message and f"Hugging Face text encoder ({family})" in message


def test_roberta_position_ids_follow_the_ids(hf_folders):
    """RoBERTa numbers positions from the ids' padding; from embeddings it numbers them sequentially. The tower
    passes the ids' numbering, so padding positions get the same hidden states as on open_clip's id path."""
    cfg = hf_config(hf_folders["roberta"], "mean_pooler", "linear")
    model = build_from_config(cfg).eval()
    tower = text_tower_for(model)
    ids = dip_tokenizers.for_config(cfg)(SENTENCES)
    embeddings_module = model.text.transformer.embeddings
    expected = embeddings_module.create_position_ids_from_input_ids(ids, embeddings_module.padding_idx)
    assert torch.equal(tower._position_ids(ids), expected)
    pad = model.text.config.pad_token_id
    assert (expected[ids == pad] == pad).all()  # padding positions differ from a sequential numbering...
    mask = (ids != pad).long()
    with torch.no_grad():
        by_ids = model.text.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        by_tower = model.text.transformer(inputs_embeds=tower.embed_tokens(ids), attention_mask=mask,
                                          position_ids=tower._position_ids(ids)).last_hidden_state
    assert torch.equal(by_ids, by_tower)  # ...and with them every position, padding included, is the same


def test_context_length(hf_folders):
    cfg = hf_config(hf_folders["roberta"], "mean_pooler", "linear")
    model = build_from_config(cfg)
    tower = text_tower_for(model)
    assert tower.context_length == 40 - 2  # RoBERTa's position table starts after padding_idx (1)
    tower.context_length = CONTEXT
    assert tower.context_length == CONTEXT
    from dipclip.backbones.text_towers.hf import HFTextTower

    assert HFTextTower(model.text, context_length=CONTEXT).context_length == CONTEXT


def test_load_backbone_from_config_file(hf_folders, tmp_path):
    from dipclip.backbones.loading import load_backbone
    from dipclip.backbones.text_towers.hf import HFTextTower

    path = tmp_path / "tiny-bert-clip.json"
    path.write_text(json.dumps(hf_config(hf_folders["bert"], "cls_pooler", "mlp")))
    backbone = load_backbone(model=str(path), pretrained="none", announce=False)
    assert isinstance(backbone.text, HFTextTower)
    ids = backbone.tokenize(SENTENCES)
    with torch.no_grad():
        difference = (backbone.text.encode_token_ids(ids) - backbone.model.encode_text(ids)).abs().max().item()
    assert difference <= TOLERANCE
    assert backbone.text.context_length == backbone.tokenizer.context_length == CONTEXT, (
        "the tower's context length must be the tokenizer's (text_cfg.context_length): pass it to HFTextTower")
