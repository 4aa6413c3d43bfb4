"""One tokenizer surface for every text tower: CLIP's BPE, or a Hugging Face tokenizer (SigLIP's and SigLIP2's
SentencePiece vocabularies, XLM-R, mT5, BERT-style biomedical ones) named by the model config.

Everything in dipclip tokenizes through :class:`Tokenizer`: ``tokenizer(texts)`` gives the ids the text tower
reads (padded to the model's own context length, 77, 64 or 32), ``encode(text)`` the tokens of a text without
the special ones (for counting and layout), ``decode`` the way back. Hugging Face tokenizers load offline only
(local folder or the Hugging Face cache); a missing one is refused in one line naming what was looked for.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import DipclipError

DEFAULT_CONTEXT_LENGTH = 77
# the files a Hugging Face tokenizer folder may hold; their bytes are part of a backbone's identity
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json")


def folder_files_sha256(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of each tokenizer file in a local folder; a file that is not a regular file is refused unopened
    (a FIFO would block the tokenizer's reader forever)."""
    import hashlib
    from pathlib import Path

    from ..files import check_regular_file

    digests = {}
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if os.path.lexists(path):
            check_regular_file(path, "tokenizer file", "replace it with the tokenizer's real file")
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


class Tokenizer:
    """A model's tokenizer with the small surface dipclip uses (wraps open_clip's own tokenizer objects)."""

    def __init__(self, inner: Any, kind: str, source: str = "clip-bpe"):
        self.inner = inner
        self.kind = kind  # "clip-bpe" or "hf"
        self.source = source  # what it was loaded from (a name, a folder): shown in messages
        self.context_length = int(inner.context_length)
        # a local tokenizer folder's file digests (None: CLIP's BPE or a named hub tokenizer): its bytes decide the
        # ids, so they belong to the backbone's identity
        self.files_sha256: dict[str, str] | None = None

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        return self.inner(texts)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens, cleaned as ``__call__`` cleans it."""
        if self.kind == "clip-bpe":
            return self.inner.encode(text)
        return list(self.inner.tokenizer(self.inner.clean_fn(text), add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        if self.kind == "clip-bpe":
            return self.inner.decode(ids)
        return self.inner.tokenizer.decode(ids)

    @property
    def pad_id(self) -> int:
        if self.kind == "clip-bpe":
            return 0
        pad = self.inner.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    @property
    def special_count(self) -> int:
        """How many special tokens a text gets (SOS + EOT for CLIP, EOS for SigLIP, CLS + SEP for BERT)."""
        ids = self(["x"])[0]
        return int((ids != self.pad_id).sum()) - len(self.encode("x"))

    def fits(self, text: str) -> bool:
        """True when ``text`` and its special tokens fit the context length (nothing truncated)."""
        return len(self.encode(text)) + self.special_count <= self.context_length


def clip_bpe(context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
    import open_clip

    return Tokenizer(open_clip.tokenizer.SimpleTokenizer(context_length=context_length), "clip-bpe")


def hugging_face(name_or_path: str, context_length: int, cache_dir: str | None = None, **kwargs: Any) -> Tokenizer:
    """A Hugging Face tokenizer through open_clip's ``HFTokenizer`` (its cleaning and options), offline only."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise DipclipError(f"this model's tokenizer ({name_or_path}) is a Hugging Face tokenizer, which needs the "
                           "transformers package; pip install 'dipclip[hf]'") from None
    from open_clip.tokenizer import HFTokenizer

    source = os.path.expanduser(str(name_or_path))
    files = folder_files_sha256(source) if os.path.isdir(source) else None  # checked before anything reads them
    try:
        inner = HFTokenizer(source, context_length=context_length, cache_dir=cache_dir, local_files_only=True,
                            **kwargs)
    except (OSError, ValueError) as exc:
        where = source if os.path.isdir(source) else f"the Hugging Face cache ({_hf_cache(cache_dir)})"
        raise DipclipError(
            f"tokenizer {name_or_path} is not available offline (looked in {where}: {str(exc).splitlines()[0][:120]}); "
            "download it on a connected machine (huggingface-cli download NAME) or give a folder holding its files"
        ) from None
    tokenizer = Tokenizer(inner, "hf", source)
    tokenizer.files_sha256 = files
    return tokenizer


def identity_part(tokenizer: Tokenizer) -> str:
    """``/tokenizer-sha256:...`` for a tokenizer read from a local folder (its files' bytes), else ``""``."""
    if not tokenizer.files_sha256:
        return ""
    import hashlib
    import json

    canonical = json.dumps(tokenizer.files_sha256, sort_keys=True).encode()
    return f"/tokenizer-sha256:{hashlib.sha256(canonical).hexdigest()[:16]}"


def _hf_cache(cache_dir: str | None) -> str:
    from huggingface_hub import constants

    return cache_dir or constants.HF_HUB_CACHE


def for_config(model_cfg: dict, cache_dir: str | None = None, folder: str | None = None) -> Tokenizer:
    """The tokenizer a model config names: ``text_cfg.hf_tokenizer_name`` (a Hugging Face tokenizer, with the
    config's ``tokenizer_kwargs``) or CLIP's BPE, at the config's context length. ``folder``: a local folder
    holding the tokenizer files (a ``local-dir:``/``hf-hub:`` model), used instead of the name."""
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH))
    name = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
    if name:
        kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
        mode = text_cfg.get("tokenizer_mode")
        if mode:
            kwargs["tokenizer_mode"] = mode
        return hugging_face(folder or name, context_length, cache_dir, **kwargs)
    return clip_bpe(context_length)
