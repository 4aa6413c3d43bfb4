"""Where a context goes: ``[SOS] ctx <class tokens> . [EOT]`` for every class, and the text pass over it.

The token layout is built once per class list: each class is tokenised as ``"X X X X <name>."`` (the ``X``
are placeholders for the context), the embeddings of everything but the placeholders are frozen buffers,
and a context matrix is spliced in with one gather. The class token may sit at the ``end`` (CoOp's
default), in the ``middle`` (context split in two halves around it) or at the ``front``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..errors import DipclipError

CLASS_POSITIONS = ("end", "middle", "front")


def clean_classname(name: str) -> str:
    return name.replace("_", " ").strip()


class ClassPrompts(nn.Module):
    """Frozen token embeddings of the class prompts, and ``forward(ctx) -> text features [C, D]``."""

    def __init__(self, backbone: Backbone, classnames: list[str], n_ctx: int, position: str = "end"):
        super().__init__()
        if position not in CLASS_POSITIONS:
            raise DipclipError(f"unknown class token position {position!r}; use one of {', '.join(CLASS_POSITIONS)}")
        if not classnames:
            raise DipclipError("the class list is empty; give at least one class name")
        self.text = backbone.text
        self.n_ctx = n_ctx
        self.position = position
        self.classnames = [clean_classname(c) for c in classnames]
        placeholder = " ".join(["X"] * n_ctx)
        sentences = [f"{placeholder} {name}." for name in self.classnames]
        context_length = backbone.text.context_length
        for name, sentence in zip(self.classnames, sentences, strict=True):
            if len(backbone.tokenizer.encode(sentence)) + 2 > context_length:
                raise DipclipError(
                    f"class name {name!r} does not fit the text context of {context_length} tokens with "
                    f"{n_ctx} context tokens; shorten it or use fewer context tokens"
                )
        token_ids = backbone.tokenize(sentences)
        eot_index = token_ids.argmax(dim=-1)
        name_lengths = torch.tensor([len(backbone.tokenizer.encode(name)) for name in self.classnames])
        with torch.no_grad():
            embeddings = self.text.embed_tokens(token_ids)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("eot_index", eot_index, persistent=False)
        self.register_buffer("prefix", embeddings[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embeddings[:, 1 + n_ctx:].clone(), persistent=False)
        self.register_buffer("gather_index", self._layout(name_lengths, token_ids.shape[1]), persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def _layout(self, name_lengths: torch.Tensor, length: int) -> torch.Tensor | None:
        """Index into ``cat(prefix, ctx, suffix)`` giving the final order of positions per class."""
        if self.position == "end":
            return None
        n = self.n_ctx
        rows = []
        for name_len in name_lengths.tolist():
            sos, ctx = [0], list(range(1, 1 + n))
            name = list(range(1 + n, 1 + n + name_len))
            rest = list(range(1 + n + name_len, length))
            if self.position == "front":
                order = sos + name + ctx + rest
            else:
                half = n // 2
                order = sos + ctx[:half] + name + ctx[half:] + rest
            rows.append(order)
        return torch.tensor(rows, dtype=torch.long, device=self.prefix.device if hasattr(self, "prefix") else None)

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [C, L, width] for a shared [n_ctx, width] or class-specific [C, n_ctx, width] ctx."""
        n_cls = self.num_classes
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        elif ctx.shape[0] != n_cls:
            raise DipclipError(
                f"class-specific context has {ctx.shape[0]} classes but the class list has {n_cls}; "
                "class-specific prompts only work on the classes they were trained on"
            )
        full = torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)
        if self.gather_index is None:
            return full
        index = self.gather_index.unsqueeze(-1).expand(-1, -1, full.shape[-1])
        return full.gather(1, index)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.text(self.assemble(ctx), self.eot_index)
