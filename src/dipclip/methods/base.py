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
from ..prompts.class_prompts import clean_classname
from ..tensor_checks import tensor_digest
from .templates import template_for

PARAMETERIZATIONS = ("full", "dip")
# the numbers of a method's own loss (a recipe's ``method`` section, ``--method-option KEY=VALUE``)
METHOD_SETTINGS = ("kg_weight", "prograd_lambda", "gpa_mean", "gpa_std")
FLOAT32_MAX = 3.4028234663852886e38


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
    # Method settings, here so that adapters, metrics and the resume fingerprint record them like the rest:
    template: str | None = None  # hand-crafted template of KgCoOp's anchor / ProGrad's teacher (None: not used)
    kg_weight: float = 8.0  # KgCoOp: W of the pull towards the hand-crafted text features (TRAINER.COOP.W)
    prograd_lambda: float = 1.0  # ProGrad: how much of the conflicting component is removed (LOSS.LAMBDA)
    gpa_mean: float | None = None  # PromptSRC GPA: Gaussian mean over epochs 1..E (None: 0.75 * E)
    gpa_std: float = 1.0  # PromptSRC GPA: Gaussian std (epochs)

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
        if self.template is not None and "{}" not in self.template:
            raise DipclipError(f"template {self.template!r} must contain '{{}}' where the class name goes")
        for name in METHOD_SETTINGS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value)):
                raise DipclipError(f"{name} must be a finite number, got {value!r}")
        if self.kg_weight < 0:
            raise DipclipError(f"the KgCoOp weight must be >= 0, got {self.kg_weight}")
        if self.prograd_lambda < 0:
            raise DipclipError(f"--prograd-lambda must be >= 0, got {self.prograd_lambda}")
        if not self.gpa_std > 0:
            raise DipclipError(f"the GPA std must be > 0, got {self.gpa_std}")
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
    """The starting context: the init text's word embeddings (n_ctx = its token count), or N(0, 0.02)
    (drawn independently for every class when the context is class-specific).

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
            start = backbone.content_start
            init = backbone.text.embed_tokens(ids)[0, start : start + cfg.n_ctx].clone()
        if cfg.class_specific:  # every class starts from the init text (CoOp's own code ignores CSC here)
            init = init.unsqueeze(0).repeat(n_classes, 1, 1)
    else:
        # class-specific: an independent N(0, 0.02) draw per class, as CoOp's CSC random init
        shape = (n_classes, cfg.n_ctx, width) if cfg.class_specific else (cfg.n_ctx, width)
        generator = torch.Generator().manual_seed(cfg.init_seed)
        init = (torch.randn(*shape, generator=generator) * 0.02).to(backbone.device)
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


def rows_by_name(known: list[str], asked: list[str], what: str) -> torch.Tensor | None:
    """Rows of ``known`` (training classes) for the ``asked`` class names, compared as the prompts spell them,
    or None when some asked class is not among them. Names repeated among ``known`` cannot be matched."""
    index: dict[str, int] = {}
    repeated: set[str] = set()
    for i, name in enumerate(known):
        name = clean_classname(name)
        if name in index:
            repeated.add(name)
        index[name] = i
    cleaned = [clean_classname(name) for name in asked]
    if any(name not in index for name in cleaned):
        return None
    ambiguous = sorted(repeated.intersection(cleaned))
    if ambiguous:
        raise DipclipError(f"class names {ambiguous} occur more than once among the training classes, so {what} "
                           "cannot be matched to them; make the class names unique")
    return torch.tensor([index[name] for name in cleaned], dtype=torch.long)


class PromptCLIP(nn.Module):
    """CLIP whose class text features come from a learned context (CoOp's CustomCLIP)."""

    origin = "the prompt"  # what refusals name: model_from_adapter sets "adapter <folder>"
    # a class-specific context's rows for the current classes, matched by name (None: all rows, in order)
    class_rows: torch.Tensor | None = None

    def __init__(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig):
        super().__init__()
        self.prompt_cfg = prompt_cfg.validate()
        self.backbone = backbone
        init, self.fixed_words = self.initial_context(backbone, prompt_cfg, len(classnames))
        self.context = parameterize(init, prompt_cfg, backbone.device)
        self.class_prompts = self._class_prompts(classnames)
        self.train_classnames = list(self.class_prompts.classnames)

    has_class_head = False  # True when learned tensors are tied to the training classes (DePT's linear head)

    def initial_context(self, backbone: Backbone, cfg: PromptConfig, n_classes: int) -> tuple[torch.Tensor, str]:
        """(the starting context, the fixed words between it and the class name); ProGrad lays it out its way."""
        init = context_init(backbone, cfg, n_classes, self.keeps_init_tail)
        return init, (init_tail(backbone, cfg) if self.keeps_init_tail else "")

    def _class_prompts(self, classnames: list[str]) -> ClassPrompts:
        cfg = self.prompt_cfg
        return ClassPrompts(self.backbone, classnames, cfg.n_ctx, cfg.class_position, fixed_words=self.fixed_words)

    @property
    def classnames(self) -> list[str]:
        return self.class_prompts.classnames

    def set_classnames(self, classnames: list[str]) -> None:
        """Point the learned context at another class list (e.g. the new classes of base-to-new).

        A class-specific context's rows are matched by class NAME, so the same classes in another order (or
        a subset of them) give the same per-class prompts; a class it was not trained on is refused."""
        if self.prompt_cfg.class_specific and [clean_classname(n) for n in classnames] == self.train_classnames:
            self.class_rows = None  # the training classes themselves (repeated names too, e.g. ImageNet's)
        elif self.prompt_cfg.class_specific:
            rows = rows_by_name(self.train_classnames, classnames, "the class-specific context's rows")
            if rows is None:
                known = set(self.train_classnames)
                unknown = [name for name in classnames if clean_classname(name) not in known]
                raise DipclipError(
                    f"the class-specific context has no prompt for the class(es) {', '.join(map(repr, unknown[:5]))}"
                    f"{' ...' if len(unknown) > 5 else ''} (it knows only the {len(known)} classes it was trained "
                    "on); ask for those classes, or train a shared context (no --class-specific) for new classes"
                )
            same = torch.equal(rows, torch.arange(len(self.train_classnames)))
            self.class_rows = None if same else rows.to(self.context.initial.device)
        self.class_prompts = self._class_prompts(classnames)

    def context_matrix(self, merged: bool = False) -> torch.Tensor:
        """The context for the current classes (a class-specific one's rows picked by name);
        ``merged``: the inference prompt (no dropout)."""
        ctx = self.context.merged() if merged else self.context()
        return ctx if self.class_rows is None else ctx.index_select(0, self.class_rows)

    def frozen_digests(self) -> dict[str, str]:
        """Digests of the frozen tensors rebuilt from the adapter config + backbone that the learned ones build
        on; an adapter records them so that an edited config cannot silently give another classifier.

        Per prompt matrix (``context``, deep and vision prompts): its initial prompt (the init text's token
        embeddings or the seeded random draw: exact on every device) and, for DIP, how P0 derives from it
        (``dip_init``, rank). P0 itself is not hashed: its SVD and matmul round differently on other CPUs and
        BLAS builds, which must not refuse a good adapter. Plus the fixed words between the context and the
        class name (MaPLe's and ProGrad's init tail) and the class position (the token layout). Not here:
        class-token embeddings (the asked classes' own, from the backbone), and the frozen text features of KgCoOp, ProGrad and PromptSRC (training-only
        teachers, from the backbone): the backbone identity check covers what the backbone gives.
        """
        digests = {}
        for name, module in self.named_modules():
            if isinstance(module, LowRankContext):
                derivation = torch.tensor(list(f"dip/{module.init_mode}/{module.rank}".encode()), dtype=torch.uint8)
                digests[name] = tensor_digest(module.initial, derivation)
            elif isinstance(module, FullRankContext):
                digests[name] = tensor_digest(module.initial)
        words = self.backbone.tokenizer.encode(self.fixed_words) if self.fixed_words else []
        digests["fixed_words"] = tensor_digest(torch.tensor(words, dtype=torch.long))
        # where the class name sits decides which positions the learned context occupies
        digests["layout"] = tensor_digest(torch.tensor(list(self.prompt_cfg.class_position.encode()),
                                                       dtype=torch.uint8))
        return digests

    image_conditioned = False  # True when class text features depend on the image (CoCoOp)
    # True when logits() takes raw images: image features depend on learned prompts (MaPLe, PromptSRC), or the
    # model needs them unnormalised (DePT's head)
    image_prompted = False
    # True when logits() and the loss also take stored unnormalised features [B, D] (DePT: its tower is frozen),
    # which training reads from the feature store instead of running the image tower
    takes_raw_features = False
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
        return nn.functional.normalize(self.class_prompts(self.context_matrix(merged)).float(), dim=-1)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is None:
            text_features = self.text_features()
            self.last_text_features = text_features  # the step's features, for losses that need them again
        return self.backbone.logits(image_features, text_features)


@dataclass(frozen=True)
class OptimConfig:
    """The peers' recipe by default: SGD, 1 warm-up epoch at a constant 1e-5, then cosine."""

    optimizer: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5

    def __post_init__(self) -> None:
        """Refuse what can only give non-finite or meaningless training (``--lr inf``, ``--lr -1``, ...)."""
        def positive(value: object, what: str) -> None:
            # above float32's largest number the optimizer's update itself overflows
            if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                    or not 0 < value < FLOAT32_MAX):
                raise DipclipError(f"{what} must be a finite number > 0, got {value!r}; e.g. --lr 0.002")

        def non_negative(value: object, what: str) -> None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise DipclipError(f"{what} must be a finite number >= 0, got {value!r}")

        positive(self.lr, "--lr")
        non_negative(self.weight_decay, "the weight decay")
        non_negative(self.momentum, "the momentum")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise DipclipError(f"the warm-up epochs must be a whole number >= 0, got {self.warmup_epochs!r}")
        if self.warmup_epochs:
            positive(self.warmup_lr, "the warm-up lr")


class PromptMethod:
    """Base of every learned-prompt method. Subclasses set ``name``, defaults and optionally ``extra_loss``."""

    name: str = ""
    summary: str = ""
    prompt_defaults: PromptConfig = PromptConfig()
    optim_defaults: OptimConfig = OptimConfig()
    # per-dataset hand-crafted templates (dataset key -> template) of a method that uses one (KgCoOp, ProGrad)
    dataset_templates: dict[str, str] | None = None

    def prompt_config(self, dataset: str | None = None, **overrides) -> PromptConfig:
        """Defaults with the given overrides; ``None`` keeps a default, ``init_text=""`` asks for a random init.

        ``dataset`` (a dataset key) picks the method's own template from :attr:`dataset_templates` unless a
        ``template`` is given; the resolved template is part of the config, so the adapter records it.
        """
        clean = {k: v for k, v in overrides.items() if v is not None}
        cfg = replace(self.prompt_defaults, **clean)
        if cfg.init_text == "":
            cfg = replace(cfg, init_text=None)
        if self.dataset_templates is not None and cfg.template is None:
            cfg = replace(cfg, template=template_for(self.dataset_templates, dataset))
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
