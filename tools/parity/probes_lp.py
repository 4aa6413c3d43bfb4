"""Golden numbers for the linear probe from CoOp's own ``lpclip/linear_probe.py``, run as they run it.

    python tools/parity/probes_lp.py --official /tmp/official/CoOp

Their script reads ``<feature_dir>/<dataset>/{train,val,test}.npz``, samples the shots with ``np.random.seed(seed)``
and searches C with scikit-learn, writing every step's C to ``report/``. We write seeded synthetic features there,
run the script unchanged (``runpy``, one run, 8 steps), and keep: the shots it drew (replayed with the same numpy
calls), the C it chose at each step and the test accuracy; plus scikit-learn fits (the call on their line 57) at a
fixed grid with a tight tolerance, whose probabilities the torch solver must reproduce.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

SEED, CLASSES, DIM, TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 0, 5, 16, 16, 4, 20
SHOTS = (1, 2, 4, 8, 16)
GRID = (1e4, 1e2, 1.0, 1e-2)


def synthetic() -> dict:
    rng = np.random.default_rng(SEED)
    centers = rng.standard_normal((CLASSES, DIM))

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(CLASSES), per_class)
        x = centers[labels] + 1.5 * rng.standard_normal((len(labels), DIM))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels

    return {"train": split(TRAIN_PER_CLASS), "val": split(VAL_PER_CLASS), "test": split(TEST_PER_CLASS)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official", required=True, help="a work tree of KaiyangZhou/CoOp")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests/golden/probes/lp.json"))
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression

    data = synthetic()
    work = Path(tempfile.mkdtemp())
    (work / "feat" / "Synth").mkdir(parents=True)
    for name, (x, y) in data.items():
        np.savez(work / "feat" / "Synth" / name, feature_list=x, label_list=y)
    cwd, argv = os.getcwd(), sys.argv
    os.chdir(work)
    sys.argv = ["linear_probe.py", "--dataset", "Synth", "--feature_dir", "feat", "--num_step", "8", "--num_run", "1"]
    warnings.filterwarnings("ignore")
    try:
        runpy.run_path(str(Path(args.official) / "lpclip" / "linear_probe.py"), run_name="__main__")
    finally:
        os.chdir(cwd)
        sys.argv = argv
    lines = (work / "report" / "feat_s8r1_details.txt").read_text().splitlines()
    steps = [(float(line.split("weight ")[1].split(",")[0]), float(line.split("test_acc ")[1])) for line in lines]

    val_shots = {1: 1, 2: 2, 4: 4, 8: 4, 16: 4}
    runs = []
    train_y, val_y = data["train"][1], data["val"][1]
    for i, shots in enumerate(SHOTS):
        np.random.seed(1)  # their seed 1, the same draws in the same order
        train_idx = [int(j) for c in np.unique(train_y)
                     for j in np.random.choice(np.where(train_y == c)[0], size=shots, replace=False)]
        val_idx = [int(j) for c in np.unique(train_y)
                   for j in np.random.choice(np.where(val_y == c)[0], size=val_shots[shots], replace=False)]
        block = steps[8 * i: 8 * (i + 1)]
        runs.append({"shots": shots, "train_idx": train_idx, "val_idx": val_idx,
                     "step_C": [c for c, _ in block], "step_test_acc": [a for _, a in block]})

    x, y = data["train"]
    fits = []
    for c in GRID:
        clf = LogisticRegression(solver="lbfgs", max_iter=100000, penalty="l2", C=c, tol=1e-12).fit(
            x.astype(np.float64), y)
        published = LogisticRegression(solver="lbfgs", max_iter=1000, penalty="l2", C=c).fit(x, y)
        fits.append({"C": c, "proba_test": clf.predict_proba(data["test"][0].astype(np.float64)).tolist(),
                     "published_pred_test": published.predict(data["test"][0]).tolist(),
                     "published_n_iter": int(published.n_iter_[0])})
    Path(args.out).write_text(json.dumps({
        "source": "KaiyangZhou/CoOp lpclip/linear_probe.py", "seed": SEED, "classes": CLASSES, "dim": DIM,
        "per_class": {"train": TRAIN_PER_CLASS, "val": VAL_PER_CLASS, "test": TEST_PER_CLASS},
        "runs": runs, "fits": fits}, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
