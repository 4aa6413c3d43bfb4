"""DIP (Hao et al., arXiv 2312.10813): CoOp's prompt with the low-rank DIP parameterisation.

Same trainer, same loss as CoOp; only the context changes to ``P0 + Dropout(A @ B)`` (rank 1 by default:
n_ctx + width numbers, 516 at ViT-B/16).
"""

from .base import OptimConfig, PromptConfig, PromptMethod


class DIP(PromptMethod):
    name = "dip"
    summary = "DIP: CoOp prompt as P0 + Dropout(A @ B), rank 1 (n_ctx + width numbers)"
    # Measured on the demo (docs/dip-tuning.md): residual-svd without dropout had the best base/new HM of the
    # settings tried; zero-delta with dropout 0.1 (the paper's regulariser) stays one switch away.
    prompt_defaults = PromptConfig(parameterization="dip", rank=1, dip_init="residual-svd", dip_dropout=0.0)
    optim_defaults = OptimConfig(lr=0.002)
