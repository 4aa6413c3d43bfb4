"""What a prompt method is: a context parameterisation spliced into class prompts, plus an optional loss.

The trainer knows only :class:`PromptMethod`; a method file declares its defaults and, if it has one, its
extra loss. Nothing here copies the training loop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..density import information_density
from ..errors import DipclipError
from ..prompts import CLASS_POSITIONS, DIP_INITS, ClassPrompts, FullRankContext, LowRankContext

PARAMETERIZATIONS = ("full", "dip")


@dataclass(frozen=True)
class PromptConfig:
    """How the learned context is shaped. Every field is recorded in adapters and ``metrics.json``."""

    n_ctx: int = 4
    init_text: str | None = "a photo of a"  # None: random N(0, 0.02) context, as CoOp's generic init
    class_position: str = "end"
    class_specific: bool = False
    parameterization: str = "full"  # "full" (CoOp) or "dip" (P0 + Dropout(A @ B))
    rank: int = 1
    dip_init: str = "residual-svd"
    dip_dropout: float = 0.0
    init_seed: int = 0  # for random contexts and DIP's random factor: part of the adapter, so P0 is rebuilt exactly
    lambda_do: float = 0.0  # Direct Optimisation: loss -= lambda_do * ID_k(P)
    lambda_pp: float = 0.0  # Positional Penalty: loss += lambda_pp * sum_i w_i s_i / sum_i s_i, w_i = (i-1)/(m-1)
    id_k: int = 1  # the k of both ID levers
    vision_dip: bool = False  # with parameterization "dip": also the independent vision prompts (PromptSRC)
    prompt_depth: int = 1  # deep prompts (MaPLe, PromptSRC): layers 0..depth-1 get learned tokens; 1 = input only

    def validate(self) -> PromptConfig:
        if self.n_ctx < 1:
            raise DipclipError(f"n_ctx must be >= 1, got {self.n_ctx}")
        if self.class_position not in CLASS_POSITIONS:
            raise DipclipError(f"unknown class position {self.class_position!r}; use {', '.join(CLASS_POSITIONS)}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise DipclipError(f"unknown prompt parameterisation {self.parameterization!r}; use full or dip")
        if self.dip_init not in DIP_INITS:
            raise DipclipError(f"unknown DIP init {self.dip_init!r}; use {' or '.join(DIP_INITS)}")
        if not 0.0 <= self.dip_dropout < 1.0:
            raise DipclipError(f"DIP dropout must be in [0, 1), got {self.dip_dropout}")
        if self.rank < 1 or self.rank > self.n_ctx:
            raise DipclipError(f"DIP rank must be between 1 and n_ctx ({self.n_ctx}), got {self.rank}")
        if self.lambda_do < 0 or self.lambda_pp < 0:
            raise DipclipError("--lambda-do and --lambda-pp must be >= 0")
        if self.prompt_depth < 1:
            raise DipclipError(f"prompt depth must be >= 1, got {self.prompt_depth}")
        if not 1 <= self.id_k <= self.n_ctx:
            raise DipclipError(f"--id-k must be between 1 and n_ctx ({self.n_ctx}), got {self.id_k}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def init_tail(backbone: Backbone, cfg: PromptConfig) -> str:
    """The words of the init text after its first n_ctx tokens ("of a" for MaPLe's 2 tokens of "a photo of
    a"): kept as fixed words before the class name by methods that allow a longer init text."""
    if not cfg.init_text:
        return ""
    tokens = backbone.tokenizer.encode(cfg.init_text)
    if len(tokens) <= cfg.n_ctx:
        return ""
    return backbone.tokenizer.decode(tokens[cfg.n_ctx:]).strip()


def context_init(backbone: Backbone, cfg: PromptConfig, n_classes: int, keep_tail: bool = False) -> torch.Tensor:
    """The starting context: the init text's word embeddings (n_ctx = its token count), or N(0, 0.02).

    With ``keep_tail`` the init text may be longer than n_ctx: its first n_ctx tokens initialise the context
    and the rest stays as fixed words (:func:`init_tail`), MaPLe's convention; CoOp asks for an exact match.
    """
    width = backbone.text.width
    if cfg.init_text:
        ids = backbone.tokenize([cfg.init_text])
        n_tokens = len(backbone.tokenizer.encode(cfg.init_text))
        if n_tokens != cfg.n_ctx and not (keep_tail and n_tokens > cfg.n_ctx):
            raise DipclipError(
                f"init text {cfg.init_text!r} has {n_tokens} tokens but n_ctx is {cfg.n_ctx}; "
                f"pass --n-ctx {n_tokens} or another init text"
            )
        with torch.no_grad():
            init = backbone.text.embed_tokens(ids)[0, 1 : 1 + cfg.n_ctx].clone()
    else:
        generator = torch.Generator().manual_seed(cfg.init_seed)
        init = torch.randn(cfg.n_ctx, width, generator=generator) * 0.02
        init = init.to(backbone.device)
    if cfg.class_specific:
        init = init.unsqueeze(0).repeat(n_classes, 1, 1)
    return init


def parameterize(init: torch.Tensor, cfg: PromptConfig, device: torch.device, seed_offset: int = 0) -> nn.Module:
    """A prompt matrix starting at ``init``: learned directly (full) or as DIP's ``P0 + Dropout(A @ B)``.

    The DIP factor is drawn from ``init_seed + seed_offset``, so each matrix of a deep method is rebuilt
    exactly from the adapter's config.
    """
    if cfg.parameterization == "full":
        return FullRankContext(init).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed + seed_offset)
        context = LowRankContext(init.cpu(), rank=min(cfg.rank, *init.shape[-2:]), init_mode=cfg.dip_init,
                                 dropout=cfg.dip_dropout)
    return context.to(device)


def build_context(backbone: Backbone, cfg: PromptConfig, n_classes: int, keep_tail: bool = False) -> nn.Module:
    return parameterize(context_init(backbone, cfg, n_classes, keep_tail), cfg, backbone.device)


class PromptCLIP(nn.Module):
    """CLIP whose class text features come from a learned context (CoOp's CustomCLIP)."""

    def __init__(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig):
        super().__init__()
        self.prompt_cfg = prompt_cfg.validate()
        self.backbone = backbone
        self.context = build_context(backbone, prompt_cfg, len(classnames), self.keeps_init_tail)
        self.fixed_words = init_tail(backbone, prompt_cfg) if self.keeps_init_tail else ""
        self.class_prompts = self._class_prompts(classnames)
        self.train_classnames = list(self.class_prompts.classnames)

    has_class_head = False  # True when learned tensors are tied to the training classes (DePT's linear head)

    def _class_prompts(self, classnames: list[str]) -> ClassPrompts:
        cfg = self.prompt_cfg
        return ClassPrompts(self.backbone, classnames, cfg.n_ctx, cfg.class_position, fixed_words=self.fixed_words)

    @property
    def classnames(self) -> list[str]:
        return self.class_prompts.classnames

    def set_classnames(self, classnames: list[str]) -> None:
        """Point the learned context at another class list (e.g. the new classes of base-to-new)."""
        if self.prompt_cfg.class_specific and len(classnames) != self.class_prompts.num_classes:
            raise DipclipError(
                "a class-specific context cannot be applied to a different class list; "
                "use a shared context (no --class-specific) to evaluate on new classes"
            )
        self.class_prompts = self._class_prompts(classnames)

    image_conditioned = False  # True when class text features depend on the image (CoCoOp)
    image_prompted = False  # True when image features depend on learned prompts: logits() takes raw images (MaPLe)
    keeps_init_tail = False  # True: an init text longer than n_ctx keeps its tail as fixed words (MaPLe)

    def train(self, mode: bool = True) -> PromptCLIP:
        """Train mode for the learned parts only: the frozen backbone stays in eval mode (BatchNorm, dropout)."""
        super().train(mode)
        self.backbone.model.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.learnable_named_parameters()]

    def param_groups(self) -> list[dict]:
        """Optimizer groups; ``lr_scale`` multiplies the scheduled learning rate of a group."""
        return [{"params": self.trainable_parameters(), "lr_scale": 1.0}]

    def learnable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Everything the method learns (the frozen backbone is excluded by requires_grad)."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def learnable_state(self) -> dict[str, torch.Tensor]:
        """The tensors an adapter or checkpoint stores: learned parameters only, never frozen buffers."""
        return {name: p.detach() for name, p in self.learnable_named_parameters()}

    def load_learnable_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = dict(self.learnable_named_parameters())
        if set(state) != set(expected):
            raise DipclipError(
                f"learned tensors {sorted(state)} do not match this prompt's {sorted(expected)}; "
                "the adapter was made for another method or configuration"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                if expected[name].shape != tensor.shape:
                    raise DipclipError(f"learned tensor {name} has shape {tuple(tensor.shape)}, expected "
                                       f"{tuple(expected[name].shape)}")
                expected[name].copy_(tensor.to(expected[name].device, expected[name].dtype))

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def text_features(self, merged: bool = False) -> torch.Tensor:
        """Normalised class text features [C, D]; ``merged`` uses the inference prompt (no dropout)."""
        ctx = self.context.merged() if merged else self.context()
        return nn.functional.normalize(self.class_prompts(ctx).float(), dim=-1)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is None:
            text_features = self.text_features()
            self.last_text_features = text_features  # the step's features, for losses that need them again
        return self.backbone.logit_scale * image_features @ text_features.t()


@dataclass(frozen=True)
class OptimConfig:
    """The peers' recipe by default: SGD, 1 warm-up epoch at a constant 1e-5, then cosine."""

    optimizer: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5


class PromptMethod:
    """Base of every learned-prompt method. Subclasses set ``name``, defaults and optionally ``extra_loss``."""

    name: str = ""
    summary: str = ""
    prompt_defaults: PromptConfig = PromptConfig()
    optim_defaults: OptimConfig = OptimConfig()
    option_names: tuple[str, ...] = ()  # the method's own numbers (loss weights, GPA), set from its recipe

    def configure(self, options: dict) -> None:
        """Set the method's own options (its recipe's ``method`` section, then the caller's overrides)."""
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            known = ", ".join(self.option_names) or "none"
            raise DipclipError(f"{self.name} has no option(s) {', '.join(unknown)}; its options: {known}")
        for key, value in options.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise DipclipError(f"{self.name} option {key} must be a finite number >= 0, got {value!r}")
            setattr(self, key, float(value))

    def options(self) -> dict[str, float]:
        """The option values in force (recorded in ``metrics.json`` and adapters)."""
        return {key: getattr(self, key) for key in self.option_names}

    def prompt_config(self, **overrides) -> PromptConfig:
        """Defaults with the given overrides; ``None`` keeps a default, ``init_text=""`` asks for a random init."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        cfg = replace(self.prompt_defaults, **clean)
        if cfg.init_text == "":
            cfg = replace(cfg, init_text=None)
        return cfg.validate()

    def optim_config(self, **overrides) -> OptimConfig:
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(self.optim_defaults, **clean)

    def build(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig) -> PromptCLIP:
        return PromptCLIP(backbone, classnames, prompt_cfg)

    def extra_loss(self, model: PromptCLIP, image_features: torch.Tensor, logits: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor | None:
        """Terms added to the cross-entropy: the ID levers (off by default); methods add their own on top."""
        return density_levers(model)

    def loss(self, model: PromptCLIP, image_features: torch.Tensor, labels: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy + extra loss, logits) of one batch."""
        logits = model.logits(image_features)
        loss = nn.functional.cross_entropy(logits, labels)
        extra = self.extra_loss(model, image_features, logits, labels)
        return (loss if extra is None else loss + extra), logits

    def end_epoch(self, model: PromptCLIP, epoch: int, epochs: int) -> None:
        """Called after each epoch's last step (0-based ``epoch``); PromptSRC aggregates its prompts here."""

    def end_training(self, model: PromptCLIP, epochs: int) -> None:
        """Called once after the last epoch, before the adapter is saved (PromptSRC loads its aggregate)."""

    def training_state(self) -> dict[str, torch.Tensor]:
        """Tensors the method keeps across epochs; stored in the checkpoint so ``--resume`` stays exact."""
        return {}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`training_state` (an empty dict: a fresh run)."""

    def training_step(self, model: PromptCLIP, image_features: torch.Tensor, labels: torch.Tensor,
                      optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; a method that shapes gradients (ProGrad) overrides this, not the trainer."""
        loss, logits = self.loss(model, image_features, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), logits.detach()


def density_levers(model: PromptCLIP) -> torch.Tensor | None:
    """Direct Optimisation and Positional Penalty on the prompt matrix (without dropout), for any method."""
    cfg = model.prompt_cfg
    if cfg.lambda_do == 0 and cfg.lambda_pp == 0:
        return None
    matrix = model.context.matrix()
    matrix = matrix.reshape(-1, matrix.shape[-1])
    loss = matrix.new_zeros(())
    if cfg.lambda_do:
        loss = loss - cfg.lambda_do * information_density(matrix, cfg.id_k)
    if cfg.lambda_pp:
        values = torch.linalg.svdvals(matrix.float())
        m = values.numel()
        weights = torch.arange(m, dtype=values.dtype, device=values.device) / max(m - 1, 1)
        loss = loss + cfg.lambda_pp * (weights * values).sum() / values.sum().clamp_min(1e-12)
    return loss
