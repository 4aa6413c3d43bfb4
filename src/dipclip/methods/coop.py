"""CoOp (Zhou et al., IJCV 2022): a full-rank learned context shared by all classes."""

from .base import OptimConfig, PromptConfig, PromptMethod


class CoOp(PromptMethod):
    name = "coop"
    summary = "CoOp: full-rank learned context (n_ctx x width numbers)"
    prompt_defaults = PromptConfig(parameterization="full")
    optim_defaults = OptimConfig(lr=0.002)
