"""Golden numbers for LP++ from FereshteShakeri/FewShot-CLIP-Strong-Baseline ``methods/linear_probe_p2.py``.

    python tools/parity/probes_lpp.py --official /tmp/official/FewShot-CLIP-Strong-Baseline

Their ``LinearProbe_P2.forward`` runs unchanged on CPU in fp32 with run-time shims: ``.cuda()`` is the identity;
the model is a stand-in whose ``encode_image`` returns the (synthetic) features it is given and whose dtype is
fp32; ``methods.utils.get_one_hot`` builds its one-hot in fp32 (theirs is fp16, which on GPU matched their fp16
features; on CPU an fp16 x fp32 ``bmm`` is refused); ``methods/__init__`` (which imports CoOp/CLIP) is skipped.
Their classifier is observed through an ``nn.Linear`` subclass that snapshots (weight, bias, alpha) when it scores
the test features, i.e. at each new best validation accuracy, exactly the state their returned accuracy uses.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

SEED, CLASSES, DIM, SHOTS, VAL_SHOTS, EPOCHS, INIT_SEED = 0, 4, 8, 4, 4, 30, 1


def inputs() -> dict:
    g = torch.Generator().manual_seed(SEED)
    text = nn.functional.normalize(torch.randn(CLASSES, DIM, generator=g), dim=-1)

    def split(k):
        labels = torch.arange(CLASSES).repeat_interleave(k)
        x = nn.functional.normalize(text[labels] + 0.8 * torch.randn(len(labels), DIM, generator=g), dim=-1)
        return x, labels

    return {"text": text, "train": split(SHOTS), "val": split(VAL_SHOTS), "test": split(5)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official", required=True)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests/golden/probes/lpp.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    package = types.ModuleType("methods")
    package.__path__ = [str(Path(args.official) / "methods")]
    sys.modules["methods"] = package
    utils = importlib.import_module("methods.utils")

    def get_one_hot(y_s, num_classes):
        return torch.zeros(list(y_s.size()) + [num_classes]).scatter_(-1, y_s.unsqueeze(-1), 1)

    utils.get_one_hot = get_one_hot
    lp2 = importlib.import_module("methods.linear_probe_p2")
    data = inputs()
    record = {}

    class Recorder(nn.Linear):
        def forward(self, x):
            if x is data["test"][0]:
                record.update(weight=self.weight.detach().clone().tolist(),
                              bias=self.bias.detach().clone().tolist(), alpha=record["alpha_vec"].detach()[0].tolist())
            return super().forward(x)

    def variable(tensor, requires_grad=False):
        record["alpha_vec"] = tensor.requires_grad_(requires_grad)
        record["alpha_init"] = tensor[0, 0].item()
        return record["alpha_vec"]

    lp2.nn = types.SimpleNamespace(Linear=Recorder)
    lp2.Variable = variable
    model = types.SimpleNamespace(encode_image=lambda images: images.clone(), dtype=torch.float32)
    method = lp2.LinearProbe_P2({"train_epoch": EPOCHS, "shots": SHOTS, "dataset": "synth", "output_dir": "/tmp"})
    torch.manual_seed(INIT_SEED)
    loss, acc = method.forward(train_loader=[data["train"]], val_loader=[data["val"]], test_features=data["test"][0],
                               test_labels=data["test"][1], text_weights=data["text"].t(), model=model,
                               classnames=[str(i) for i in range(CLASSES)])
    golden = {"source": "FereshteShakeri/FewShot-CLIP-Strong-Baseline methods/linear_probe_p2.py", "seed": SEED,
              "classes": CLASSES, "dim": DIM, "shots": SHOTS, "val_shots": VAL_SHOTS, "epochs": EPOCHS,
              "init_seed": INIT_SEED, "lr_alpha": float(method.lr_alpha), "alpha_init": record["alpha_init"],
              "final_loss": loss, "test_acc": acc,
              "best": {k: record[k] for k in ("weight", "bias", "alpha")}}
    Path(args.out).write_text(json.dumps(golden, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
