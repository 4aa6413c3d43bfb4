"""Tiny Hugging Face tokenizers written to a folder (offline), for text towers that do not use CLIP's BPE."""

from __future__ import annotations

from pathlib import Path

WORDS = ("a photo of the x y red apple green leaf blue sky cat dog golden retriever bird itap small big "
         "good bad one two three four").split()


def word_level_tokenizer(folder: Path, bos: str | None = None, eos: str = "</s>", pad: str = "<pad>") -> Path:
    """A word-level tokenizer like SigLIP's in layout: no BOS (unless ``bos``), ``eos`` after the text, ``pad``
    up to the context length. Saved with ``save_pretrained``, so ``AutoTokenizer`` reads it from ``folder``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [pad, eos, "<unk>"] + ([bos] if bos else [])
    vocab = {token: i for i, token in enumerate(specials + list(WORDS))}
    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    inner.normalizer = normalizers.Lowercase()  # an uncased vocabulary, as BERT-base-uncased's
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    single = (f"{bos} " if bos else "") + f"$A {eos}"
    inner.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(t, vocab[t]) for t in ([bos] if bos else []) + [eos]])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=inner, pad_token=pad, eos_token=eos, unk_token="<unk>",
                                      **({"bos_token": bos} if bos else {}))
    folder.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(folder)
    return folder
