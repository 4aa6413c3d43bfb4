"""Where a context goes: ``[SOS] ctx <class tokens> . [EOT]`` for every class, and the text pass over it.

The token layout is built once per class list: each class is tokenised as ``"X X X X <name>."`` (the ``X``
are placeholders for the context), the embeddings of everything but the placeholders are frozen buffers,
and a context matrix is spliced in with one gather. The class token may sit at the ``end`` (CoOp's
default), in the ``middle`` (context split in two halves around it) or at the ``front``.

``forward`` gives the same features as the straightforward full-length pass (:meth:`full_length_forward`)
with three exact shortcuts. Classes are sorted by their EOT position and cut into chunks, each truncated
after its own last EOT token (the tower is causal). The leading positions every class shares (SOS + the
context before the class name, when the context is shared) run once per call through a key/value prefix
cache. With gradients on and more than ``chunk_tokens`` positions in all, each chunk is checkpointed, so
memory stays that of one chunk (1,000 classes fit) at the price of a second forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..backbones.loading import Backbone
from ..backbones.text_towers import PrefixCache
from ..errors import DipclipError

CLASS_POSITIONS = ("end", "middle", "front")
CHUNK_TOKENS = 2048  # positions per chunk; with width 512 and 12 layers about 0.8 GB of saved activations
CHUNK_OVERHEAD_TOKENS = 32  # what one more chunk costs, in positions (per-layer call overhead)


def clean_classname(name: str) -> str:
    return name.replace("_", " ").strip()


def require_distinct_texts(backbone: Backbone, classnames: list[str], token_ids: torch.Tensor) -> None:
    """Two classes whose prompts tokenize alike would get the same text feature, a silent tie; the check runs
    on the model's own tokenizer (SigLIP's drops punctuation: ``t-shirt`` and ``tshirt`` are one text there)."""
    seen: dict[tuple[int, ...], str] = {}
    for name, row in zip(classnames, token_ids.tolist(), strict=True):
        other = seen.setdefault(tuple(row), name)
        if other != name:
            raise DipclipError(f"classes {other!r} and {name!r} are the same text to {backbone.name}'s tokenizer, so "
                               "they would get the same prediction score; rename one of them")


def context_positions(backbone: Backbone, token_ids: torch.Tensor, placeholder: str, classnames: list[str],
                      n_ctx: int) -> int:
    """Where the context goes: the first of ``n_ctx`` consecutive positions after the tokenizer's leading special
    tokens (SOS for CLIP, none for SigLIP, [CLS] for BERT), checked, not assumed: the placeholder words must
    take exactly those positions in every class's tokens, or the learned vectors would land elsewhere."""
    start = backbone.content_start
    if n_ctx == 0:
        return start
    xs = " ".join(["X"] * n_ctx)
    # the tokenizer itself, not backbone.tokenize: a probe text must not warn about words the model lacks
    other = backbone.tokenizer([" ".join(["Y"] * n_ctx) + placeholder[len(xs):] + f" {classnames[0]}."])
    other = other.to(token_ids.device)
    differ = (token_ids[:1] != other).nonzero()[:, 1].tolist()
    if differ != list(range(start, start + n_ctx)):
        raise DipclipError(
            f"{backbone.name}'s tokenizer does not give each of the {n_ctx} context placeholders one token of its "
            f"own (positions {differ}, expected {start}..{start + n_ctx - 1}); prompt tuning cannot place the context"
        )
    return start


class ClassPrompts(nn.Module):
    """Frozen token embeddings of the class prompts, and ``forward(ctx) -> text features [C, D]``."""

    def __init__(self, backbone: Backbone, classnames: list[str], n_ctx: int, position: str = "end",
                 chunk_tokens: int = CHUNK_TOKENS, fixed_words: str = ""):
        super().__init__()
        if position not in CLASS_POSITIONS:
            raise DipclipError(f"unknown class token position {position!r}; use one of {', '.join(CLASS_POSITIONS)}")
        if fixed_words and position != "end":
            raise DipclipError("fixed words after the context (MaPLe's init tail) need the class name at the end")
        if not classnames:
            raise DipclipError("the class list is empty; give at least one class name")
        self.text = backbone.text
        self.n_ctx = n_ctx
        self.position = position
        self.classnames = [clean_classname(c) for c in classnames]
        placeholder = " ".join(["X"] * n_ctx)
        if fixed_words:  # frozen words between the context and the class name ("X X of a <name>.")
            placeholder = f"{placeholder} {fixed_words}"
        self.fixed_words = fixed_words
        sentences = [f"{placeholder} {name}." for name in self.classnames]
        context_length = backbone.tokenizer.context_length
        for name, sentence in zip(self.classnames, sentences, strict=True):
            if not backbone.tokenizer.fits(sentence):
                raise DipclipError(
                    f"class name {name!r} does not fit the text context of {context_length} tokens with "
                    f"{n_ctx} context tokens; shorten it or use fewer context tokens"
                )
        token_ids = backbone.tokenize(sentences)
        require_distinct_texts(backbone, self.classnames, token_ids)
        self.ctx_start = context_positions(backbone, token_ids, placeholder, self.classnames, n_ctx)
        name_lengths = torch.tensor([len(backbone.tokenizer.encode(name)) for name in self.classnames])
        with torch.no_grad():
            embeddings = self.text.embed_tokens(token_ids)
        start = self.ctx_start
        self.register_buffer("token_ids", token_ids, persistent=False)
        # the pooled position of each class's sequence (its EOT token on CLIP towers)
        self.register_buffer("eot_index", self.text.pool_index(token_ids), persistent=False)
        self.register_buffer("prefix", embeddings[:, :start].clone(), persistent=False)
        self.register_buffer("suffix", embeddings[:, start + n_ctx:].clone(), persistent=False)
        self.register_buffer("gather_index", self._layout(name_lengths, token_ids.shape[1]), persistent=False)
        self.chunk_tokens = max(1, int(chunk_tokens))
        self._plans: dict[tuple, tuple[list[tuple[torch.Tensor, int]], torch.Tensor, int]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def _layout(self, name_lengths: torch.Tensor, length: int) -> torch.Tensor | None:
        """Index into ``cat(prefix, ctx, suffix)`` giving the final order of positions per class."""
        if self.position == "end":
            return None
        n, s = self.n_ctx, self.ctx_start
        rows = []
        for name_len in name_lengths.tolist():
            sos, ctx = list(range(s)), list(range(s, s + n))
            name = list(range(s + n, s + n + name_len))
            rest = list(range(s + n + name_len, length))
            if self.position == "front":
                order = sos + name + ctx + rest
            else:
                half = n // 2
                order = sos + ctx[:half] + name + ctx[half:] + rest
            rows.append(order)
        return torch.tensor(rows, dtype=torch.long, device=self.prefix.device if hasattr(self, "prefix") else None)

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [C, L, width] for a shared [n_ctx, width] or class-specific [C, n_ctx, width] ctx."""
        self._check(ctx)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.num_classes, -1, -1)
        full = torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)
        if self.gather_index is None:
            return full
        index = self.gather_index.unsqueeze(-1).expand(-1, -1, full.shape[-1])
        return full.gather(1, index)

    def full_length_forward(self, ctx: torch.Tensor) -> torch.Tensor:
        """The straightforward pass: every class at the full context length, all at once (the reference)."""
        return self.text(self.assemble(ctx), self.token_ids)

    def shared_length(self, ctx: torch.Tensor) -> int:
        """Leading positions that are the same for every class: SOS, plus the context before the class name
        when the context is shared (all of it at ``end``, the first half in the ``middle``, none at ``front``)."""
        if ctx.dim() == 3:
            return self.ctx_start
        return self.ctx_start + {"end": self.n_ctx, "middle": self.n_ctx // 2, "front": 0}[self.position]

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        """Text features [C, D], equal to :meth:`full_length_forward` up to float rounding."""
        self._check(ctx)
        start = self.shared_length(ctx)
        if start <= self.ctx_start or not self.text.supports_prefix_cache:
            start = 0  # SOS alone is not worth a cache; other towers and block types take the uncached path
        chunks, inverse, total = self._plan(start)
        cache = self.text.encode_prefix(self._rows(ctx, chunks[0][0][:1], start)[0]) if start else None
        recompute = torch.is_grad_enabled() and ctx.requires_grad and len(chunks) > 1 and total > self.chunk_tokens
        outputs = []
        for index, length in chunks:
            if recompute:
                outputs.append(checkpoint(self._encode_chunk, ctx, cache, index, length, use_reentrant=False))
            else:
                outputs.append(self._encode_chunk(ctx, cache, index, length))
        features = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        return features.index_select(0, inverse)

    def _check(self, ctx: torch.Tensor) -> None:
        if ctx.dim() == 3 and ctx.shape[0] != self.num_classes:
            raise DipclipError(
                f"class-specific context has {ctx.shape[0]} classes but the class list has {self.num_classes}; "
                "class-specific prompts only work on the classes they were trained on"
            )

    def _encode_chunk(self, ctx: torch.Tensor, cache: PrefixCache | None, index: torch.Tensor,
                      length: int) -> torch.Tensor:
        start = 0 if cache is None else cache.length
        return self.text(self._rows(ctx, index, length)[:, start:], self.token_ids[index, :length], prefix=cache)

    def _rows(self, ctx: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
        """The first ``length`` positions of the prompts of classes ``index`` [n, length, width]."""
        n = index.shape[0]
        rows = ctx.unsqueeze(0).expand(n, -1, -1) if ctx.dim() == 2 else ctx.index_select(0, index)
        rows = rows.to(self.prefix.dtype)
        if self.gather_index is None:
            tail = self.suffix[index, : max(0, length - self.ctx_start - self.n_ctx)]
            return torch.cat([self.prefix[index], rows, tail], dim=1)[:, :length]
        full = torch.cat([self.prefix[index], rows, self.suffix[index]], dim=1)
        order = self.gather_index[index, :length]
        return full.gather(1, order.unsqueeze(-1).expand(-1, -1, full.shape[-1]))

    def _plan(self, start: int) -> tuple[list[tuple[torch.Tensor, int]], torch.Tensor, int]:
        """Chunks ``(class indices, sequence length)`` and the permutation back to class order.

        Classes sorted by length are cut where the saved padding outweighs the cost of one more chunk
        (the cheapest cut, by dynamic programming over the distinct lengths), and no chunk holds more than
        ``chunk_tokens`` positions (unless a single class needs more).
        """
        device = self.eot_index.device
        key = (start, str(device))
        if key in self._plans:
            return self._plans[key]
        full = self.token_ids.shape[1]
        needed = (self.eot_index + 1).tolist() if self.text.causal else [full] * self.num_classes
        order = sorted(range(self.num_classes), key=lambda c: (needed[c], c))
        lengths = sorted(set(needed))
        count = {length: 0 for length in lengths}
        for c in order:
            count[needed[c]] += 1

        def pieces(n: int, length: int) -> int:
            return math.ceil(n * (length - start) / self.chunk_tokens)

        best, cut = [0.0] + [math.inf] * len(lengths), [0] * (len(lengths) + 1)
        for j in range(1, len(lengths) + 1):
            n = 0
            for i in range(j - 1, -1, -1):
                n += count[lengths[i]]
                cost = best[i] + n * (lengths[j - 1] - start) + CHUNK_OVERHEAD_TOKENS * pieces(n, lengths[j - 1])
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        spans, j = [], len(lengths)
        while j > 0:
            spans.append((cut[j], j))
            j = cut[j]
        chunks, position = [], 0
        for i, j in reversed(spans):
            n = sum(count[length] for length in lengths[i:j])
            length = lengths[j - 1]
            per_chunk = max(1, min(math.ceil(n / pieces(n, length)), self.chunk_tokens // (length - start)))
            members = order[position:position + n]
            position += n
            for k in range(0, n, per_chunk):
                index = torch.tensor(members[k:k + per_chunk], dtype=torch.long, device=device)
                chunks.append((index, length))
        inverse = torch.empty(self.num_classes, dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(self.num_classes)
        total = sum(len(index) * (length - start) for index, length in chunks)
        self._plans[key] = (chunks, inverse.to(device), total)
        return self._plans[key]
