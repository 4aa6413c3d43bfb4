"""What every API command shares: the data it reads (and its content identity), the ``metrics.json`` it
writes, and the refusal to write over another command's results (:func:`keep_other_results`, :func:`_one_writer`)."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

from ..data.types import DatasetSplits
from ..engine.distributed import is_main_process
from ..engine.locking import output_lock
from ..engine.reproducibility import atomic_write_json
from ..errors import DipclipError, warn
from ..paths import cache_root

METRICS_NAME = "metrics.json"


def load_data(data: str | None, dataset: str | None, shots: int | None = None, seed: int = 1,
              subsample: str = "all") -> DatasetSplits:
    """A dataset as a run sees it: few-shot train/val (when ``shots`` is given) and the base/new half."""
    from ..data.datasets import load_dataset
    from ..data.sampling import few_shot_splits, subsample_classes

    data = resolve_data_root(data, dataset)
    if data is None or dataset is None:
        raise DipclipError("give the data as --data ROOT --dataset KEY (see `dipclip data --help`)")
    splits = load_dataset(data, dataset)
    if shots is None:
        return subsample_classes(splits, subsample)
    return few_shot_splits(splits, data, dataset, shots, seed, subsample=subsample,
                           cache_dir=cache_root() / "fewshot")


def training_splits(data: str | None, dataset: str | None, shots: int | None, seed: int,
                    subsample: str) -> tuple[DatasetSplits, DatasetSplits | None]:
    """What :func:`train` reads: the (few-shot, subsampled) splits, and with ``subsample="base"`` the new
    half it is also evaluated on."""
    data = resolve_data_root(data, dataset)
    splits = load_data(data, dataset, shots, seed, subsample)
    new_splits = None
    if subsample == "base" and data is not None and dataset is not None:
        new_splits = load_data(data, dataset, None, seed, "new")
    return splits, new_splits


def training_identity(splits: DatasetSplits, new_splits: DatasetSplits | None, subsample: str) -> str:
    """The content identity (:mod:`dipclip.data.identity`) of a training run's data: its training images, the
    test images it is evaluated on (and the new half's), with labels and class lists."""
    from ..data.identity import data_identity

    name = "base" if subsample == "base" else ("new" if subsample == "new" else "test")
    parts = [("train", splits, "train"), (name, splits, "test")]
    if new_splits is not None:
        parts.append(("new", new_splits, "test"))
    return data_identity(parts, progress=is_main_process())


def evaluation_identity(splits: DatasetSplits, split: str, name: str) -> str:
    """The content identity of an evaluation's data (the ``split`` evaluated as ``name``)."""
    from ..data.identity import data_identity

    return data_identity([(name, splits, split)], progress=is_main_process())


def embedded_data_root() -> Path:
    """The folder holding dipclip's shipped datasets (``--dataset demo`` needs no ``--data``)."""
    from ..backbones.embedded import assets_dir

    return assets_dir()


def resolve_data_root(data: str | None, dataset: str | None) -> str | None:
    """``--data`` as given, or the package's own folder for a shipped dataset."""
    from ..data.registry import EMBEDDED_DATASETS

    if data is None and dataset in EMBEDDED_DATASETS:
        return str(embedded_data_root())
    return data


def _report(data_warnings: list[str]) -> list[str]:
    """Print each data warning (one line each) and return them for ``metrics.json``."""
    if is_main_process():
        for line in data_warnings:
            warn(line)
    return data_warnings


def _write_metrics(out: str | Path | None, metrics: dict) -> None:
    if out is not None and is_main_process():
        atomic_write_json(Path(out) / METRICS_NAME, metrics)


# What each command writes into its --out folder; another command's (or another run's) results there are never
# written over. Rewriting a command's own output with the same question (a rerun of the same evaluation, the
# same images, the same adapter) is allowed: the answer replaces its own earlier copy.
OWN_FILES = {"predict": ("predictions.json",), "density": ("density.json",),
             "export": ("classifier.json", "classifier.safetensors")}
TRAINING_MARKS = ("checkpoint.pt", "adapter")  # what makes a folder a training run's, finished or not


def _read_json(path: Path) -> object:
    """``path``'s JSON, or ``None`` when it cannot be read as JSON."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def metrics_writer(metrics: object) -> str | None:
    """Which command wrote a ``metrics.json``: ``train``, ``zeroshot`` or ``eval``; ``None`` when dipclip did not
    (or it cannot be told)."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("results"), dict):
        return None
    config = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    if "history" in metrics or "recipe" in config:
        return "train"
    if metrics.get("method") == "zeroshot":
        return "zeroshot"
    return "eval" if "adapter" in config else None


def _same(recorded: object, asked: dict) -> bool:
    import json

    return isinstance(recorded, dict) and recorded == json.loads(json.dumps(asked, default=str))


def _describe(metrics: dict) -> str:
    config = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    shown = ", ".join(f"{key} {config[key]}" for key in ("adapter", "dataset", "split", "subsample")
                      if config.get(key) not in (None, "all"))
    return f" ({shown})" if shown else ""


def keep_other_results(out: str | Path | None, command: str, asked: dict | None = None,
                       resume: bool = False) -> None:
    """Refuse, in one line and before anything is loaded, to write into ``out`` over results that ``command``
    with the question ``asked`` did not produce.

    ``train`` writes ``metrics.json``, ``adapter/`` and ``checkpoint.pt``: into a folder holding a
    ``metrics.json`` or a checkpoint only with ``resume`` and that checkpoint (the trainer then checks it is the
    same run); an ``adapter/`` alone is a run whose metrics were lost, which a protocol redoes. ``eval`` and
    ``zeroshot`` never write into a training run's folder, and replace a ``metrics.json`` only when it is the
    same command's with the same ``config`` (``asked``). ``predict``, ``density`` and ``export`` replace their
    own files only when those record the same images (``predict``) or adapter (``density``, ``export``)."""
    if out is None:
        return
    folder = Path(out)
    fix = "give another --out, or delete {} to replace it"
    metrics_path = folder / METRICS_NAME
    if command == "train":
        checkpoint = folder / TRAINING_MARKS[0]
        if checkpoint.exists() and resume:
            return
        if checkpoint.exists():
            raise DipclipError(f"{folder} already holds a run ({checkpoint.name}); pass --resume to continue it or "
                               "choose another --out")
        if metrics_path.exists():
            writer = metrics_writer(_read_json(metrics_path))
            what = f"the results of `dipclip {writer}`" if writer else "a metrics.json dipclip cannot read"
            raise DipclipError(f"{metrics_path} holds {what}, which `dipclip train` would write over; "
                               + fix.format(metrics_path))
        return
    if command in ("eval", "zeroshot"):
        marks = [folder / name for name in TRAINING_MARKS if (folder / name).exists()]
        if marks:
            raise DipclipError(f"{folder} is a training run's folder ({marks[0].name}), whose metrics.json "
                               f"`dipclip {command}` would write over; give another --out")
        if not metrics_path.exists():
            return
        metrics = _read_json(metrics_path)
        writer = metrics_writer(metrics)
        if writer == command and _same(metrics.get("config"), asked or {}):
            return
        what = ("a metrics.json dipclip cannot read" if writer is None else
                f"the results of another `dipclip {writer}`{_describe(metrics)}")
        raise DipclipError(f"{metrics_path} holds {what}; `dipclip {command}` would write over them: "
                           + fix.format(metrics_path))
    key, value = next(iter((asked or {}).items()))
    for name in OWN_FILES[command]:
        path = folder / name
        if not path.exists():
            continue
        record = _read_json(folder / OWN_FILES[command][0])
        if command == "predict":
            held = ([row.get("image") if isinstance(row, dict) else None for row in record.get("predictions", [])]
                    if isinstance(record, dict) and isinstance(record.get("predictions"), list) else None)
        else:
            held = record.get("adapter") if isinstance(record, dict) else None
        if held != value:
            what = (f"`dipclip {command}`'s output for other {key}" if held is not None else
                    "a file dipclip did not write or cannot read")
            raise DipclipError(f"{path} holds {what}; `dipclip {command}` would write over it: " + fix.format(path))


def _one_writer(function):
    """Run ``function`` holding its ``out`` folder (see :mod:`dipclip.engine.locking`): a second process
    writing into the same folder is refused. Under ``torchrun`` only rank 0 writes, so only it holds it."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def locked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out = bound.arguments.get("out")
        if out is None or not is_main_process():
            return function(*args, **kwargs)
        with output_lock(out):
            return function(*args, **kwargs)

    return locked


def training_metrics(*, method: str, trainable_params: int, results: dict, history: list, splits: DatasetSplits,
                     data_warnings: list[str], identity: str, backbone, config: dict, trainer, began: float,
                     eval_began: float, **specific) -> dict:
    """The ``metrics.json`` of a training run (prompt or feature method): the shared record, with ``specific``
    (``density`` for prompts; ``chosen`` and ``search_split`` for feature methods) after ``history``."""
    import time

    from .. import __version__

    return {
        "dipclip_version": __version__,
        "method": method,
        "trainable_params": trainable_params,
        "results": results,
        "history": history,
        **specific,
        "num_classes": len(splits.classnames),
        "num_train_images": len(splits.train),
        "data_warnings": data_warnings,
        "data_identity": identity,
        "backbone": backbone.describe(),
        "config": config,
        "timing": {
            "train_epoch_seconds": trainer.epoch_seconds,
            "eval_seconds": round(time.perf_counter() - eval_began, 3),
            "total_seconds": round(time.perf_counter() - began, 3),
        },
    }


def evaluation_metrics(*, method: str, trainable_params: int, name: str, result: dict, splits: DatasetSplits,
                       data_warnings: list[str], identity: str, backbone, config: dict) -> dict:
    """The ``metrics.json`` of an evaluation (``zeroshot``, ``eval``)."""
    from .. import __version__

    return {
        "dipclip_version": __version__,
        "method": method,
        "trainable_params": trainable_params,
        "results": {name: result},
        "num_classes": len(splits.classnames),
        "data_warnings": data_warnings,
        "data_identity": identity,
        "backbone": backbone.describe(),
        "config": config,
    }
