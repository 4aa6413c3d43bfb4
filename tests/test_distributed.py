"""Data-parallel training for image-in-the-loop methods: 2 CPU processes (gloo) equal one process."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

COMMON = dict(dataset="imagefolder", shots=4, epochs=2, batch_size=4, progress=False, subsample="base",
              device="cpu", lr=0.01)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config: str, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from dipclip import api
    from dipclip.engine.distributed import init_from_environment

    init_from_environment()
    try:
        api.train("maple", model=config, pretrained="none", data=data, out=out, **COMMON)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_train_like_one(tmp_path, tiny_config_path, image_tree):
    from dipclip import api

    torch.set_num_threads(1)
    single = api.train("maple", model=str(tiny_config_path), pretrained="none", data=str(image_tree), out=tmp_path / "one", **COMMON)
    mp.spawn(_worker, args=(2, _free_port(), str(tiny_config_path), str(image_tree), str(tmp_path / "two")),
             nprocs=2, join=True)
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for a, b in zip(single["history"], double["history"], strict=True):
        assert a["images"] == b["images"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    one = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    assert set(one) == set(two)
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-6), name
    # the final evaluation is sharded over the ranks (every world-th batch each) and its counts summed
    assert double["results"]["base"]["n"] == single["results"]["base"]["n"] > 0
    assert double["results"]["base"]["correct"] == single["results"]["base"]["correct"]


def test_several_processes_are_refused_for_feature_methods(monkeypatch, tiny_backbone):
    from dipclip.engine import trainer as trainer_module
    from dipclip.engine.trainer import TrainConfig, Trainer
    from dipclip.errors import DipclipError
    from dipclip.methods import get_method

    monkeypatch.setattr(trainer_module, "rank_and_world", lambda: (0, 2))
    coop = get_method("coop")
    model = coop.build(tiny_backbone, ["a", "b"], coop.prompt_config())
    with pytest.raises(DipclipError, match="several processes only pay for methods that run the image tower"):
        Trainer(coop, model, coop.optim_config(), TrainConfig(), "unused", progress=False)


def test_prompted_evaluation_shards_batches_over_ranks(monkeypatch, tiny_backbone, image_tree):
    """Each rank evaluates every world-th batch; the ranks' counts add up to the one-process result."""
    from dipclip.data.types import Datum
    from dipclip.engine import distributed, evaluate
    from dipclip.methods import get_method

    names = sorted(p.name for p in (image_tree / "test").iterdir())
    items = [Datum(str(path), label, name) for label, name in enumerate(names)
             for path in sorted((image_tree / "test" / name).glob("*.png"))]
    maple = get_method("maple")
    model = maple.build(tiny_backbone, names, maple.prompt_config())
    single = evaluate.evaluate_model(model, items, batch_size=5)
    assert single["n"] == len(items) == 12
    parts = []
    monkeypatch.setattr(distributed, "sum_over_ranks", lambda counts, device: counts)  # each rank's own share
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank_and_world", lambda rank=rank: (rank, 2))
        parts.append(evaluate.evaluate_model(model, items, batch_size=5))
    assert [part["n"] for part in parts] == [5 + 2, 5]  # batches 0 and 2 on rank 0, batch 1 on rank 1
    assert sum(part["correct"] for part in parts) == single["correct"]
