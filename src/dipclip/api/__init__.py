"""The Python API; the CLI is a thin layer over these functions.

Every function writes its outputs into ``out`` (when given) and returns the same dictionary it writes as
``metrics.json`` / ``predictions.json`` / ``density.json``.

``metrics.json`` (stable; scripts may rely on these keys):
- ``method``: ``zeroshot``, ``coop``, ``dip``, ...; ``trainable_params``: learned numbers;
- ``results``: evaluation name (``test``, ``base``, ``new``, ...) -> ``{"accuracy": percent, "n": images}``;
- ``history``: per epoch ``epoch``, ``loss``, ``train_accuracy``, ``id_prompt``, ``id_update``, ``lr``, ``images``;
- ``density``: ID of the final prompt and of its update; ``config``: the full resolved configuration;
- ``data_warnings``: what the data check found worth knowing (fewer images than ``--shots``, skipped images);
- ``backbone``: model, pretrained, identity, text width; ``timing``: wall-clock seconds (the only
  non-reproducible part); ``dipclip_version``.
"""

from __future__ import annotations

# Submodules by concern, each importing only those below it: common (data, metrics.json, the output-folder
# rules) <- feature_methods <- training; common <- evaluation, deployment.
from ..backbones.loading import load_backbone
from .common import (
    METRICS_NAME,
    OWN_FILES,
    TRAINING_MARKS,
    embedded_data_root,
    evaluation_identity,
    keep_other_results,
    load_data,
    metrics_writer,
    resolve_data_root,
    training_identity,
    training_splits,
)
from .deployment import density, export, predict
from .evaluation import evaluate, zeroshot
from .feature_methods import _feature_plan, get_feature_method_epochs, train_feature_method
from .training import (
    PROMPT_ARGUMENTS,
    TRAIN_ARGUMENTS,
    TrainingPlan,
    clip_token_count,
    plan_training,
    train,
    train_config,
)

__all__ = [
    "METRICS_NAME", "OWN_FILES", "PROMPT_ARGUMENTS", "TRAINING_MARKS", "TRAIN_ARGUMENTS", "TrainingPlan",
    "_feature_plan", "clip_token_count", "density", "embedded_data_root", "evaluate", "evaluation_identity",
    "export", "get_feature_method_epochs", "keep_other_results", "load_backbone", "load_data", "metrics_writer",
    "plan_training", "predict", "resolve_data_root", "train", "train_config", "train_feature_method",
    "training_identity", "training_splits", "zeroshot",
]
