"""``--launcher slurm`` on a real SLURM (issue 19): a base2new sweep submitted as a job array gives the numbers of
a sequential run, bit for bit.

The cluster is this machine (``.ci/slurm-up.sh`` starts a one-node SLURM; CI runs it before the tests), so the
array tasks see the test's folders and run the venv's Python (submitit uses ``sys.executable``). Skipped only
where SLURM is absent and ``CI`` is not set; in CI it must run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dipclip.cli.launch import add_launcher_args, launch
from dipclip.protocols import ProtocolConfig, ProtocolRunner, expand
from dipclip.protocols.launchers import slurm

PETS = ("abyssinian", "american bulldog", "beagle", "bengal")
IN_CI = bool(os.environ.get("CI"))
HAVE_SLURM = shutil.which("sinfo") is not None
DEADLINE_S = 240  # a wait that passes this is a stuck cluster, not a slow test

pytestmark = pytest.mark.skipif(
    not HAVE_SLURM and not IN_CI,
    reason="no SLURM here (sinfo is not on PATH): `sudo bash .ci/slurm-up.sh` starts a one-node cluster on this "
           "machine; CI runs this test")


def write_pets(root: Path, sizes=(3, 2, 2)) -> None:
    """oxford_pets in CoOp's layout: split_zhou_OxfordPets.json and 8x8 JPEGs, ``sizes`` (train, val, test)."""
    from PIL import Image

    base = root / "oxford_pets"
    split = {}
    for split_name, n in zip(("train", "val", "test"), sizes, strict=True):
        rows = []
        for i in range(n):
            for label, name in enumerate(PETS):
                rel = f"{name.replace(' ', '_')}/{split_name}_{i}.jpg"
                rows.append([rel, label, name])
                path = base / "images" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (label * 40 % 256, i * 30 % 256, 100)).save(path, "JPEG")
        split[split_name] = rows
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(split))


def results_of(root: Path) -> dict:
    """Per run folder: what its metrics.json says it measured (everything but wall-clock timing)."""
    return {str(p.parent.relative_to(root)): {k: json.loads(p.read_text())[k] for k in ("results", "history")}
            for p in sorted(root.rglob("metrics.json"))}


def launch_with_deadline(args, config, root: Path) -> int:
    """``launch`` with --wait, cancelling the array (and failing) if it has not ended by the deadline."""
    outcome: dict = {}

    def body():
        try:
            outcome["code"] = launch(args, config)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        jobs = [p.name for p in (root / ".slurm").glob("*") if p.name.isdigit()]
        subprocess.run(["scancel", *jobs], check=False)
        state = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
        pytest.fail(f"the SLURM array did not end within {DEADLINE_S} s (squeue: {state.strip() or 'empty'})")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["code"]


def test_slurm_array_gives_the_sequential_numbers(tmp_path, tiny_config_path, tiny_backbone, one_thread,
                                                  monkeypatch, capsys):
    if not HAVE_SLURM:
        pytest.fail("CI is set but sinfo is not on PATH: .ci/run must run `bash .ci/slurm-up.sh` before pytest")
    if not IN_CI:
        pytest.importorskip("submitit", reason="submitit is missing: pip install -e '.[dev]' installs it")
    nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if not re.search(r"^(idle|mixed|allocated)", nodes.stdout, re.M):
        pytest.fail(f"SLURM is installed but no node is up (sinfo: {(nodes.stdout + nodes.stderr).strip()!r}); "
                    "run `bash .ci/slurm-up.sh` as root")
    write_pets(tmp_path / "data")
    common = dict(protocol="base2new", data=str(tmp_path / "data"), datasets=["oxford_pets"], methods=["coop", "dip"],
                  seeds=[1, 2], shots=[2], model=str(tiny_config_path), pretrained="none", device="cpu", epochs=1,
                  train_options={"batch_size": 4}, progress=False)
    parser = argparse.ArgumentParser()
    add_launcher_args(parser)
    args = parser.parse_args(["--launcher", "slurm", "--wait", "--slurm-cpus-per-task", "1", "--slurm-time", "5",
                              "--slurm-option", "mem=1G"])

    slurm_cache = tmp_path / "slurm-cache"
    monkeypatch.setenv("DIPCLIP_CACHE_DIR", str(slurm_cache))
    config = ProtocolConfig(out=str(tmp_path / "slurm"), **common)
    root = tmp_path / "slurm" / "base2new"

    # an array cancelled before its tasks end: --wait names each task in one line and returns (no sacct here:
    # submitit alone would wait forever for results that never come)
    monkeypatch.setattr(slurm, "RESULT_GRACE_S", 1.0)
    lines: list[str] = []
    follower = threading.Thread(target=slurm.submit, daemon=True,
                                args=(config, expand(config), slurm.SlurmOptions(cpus_per_task=1, time=5), True,
                                      lines.append))
    follower.start()
    for _ in range(300):
        if lines or not follower.is_alive():
            break
        time.sleep(0.1)
    cancelled = re.search(r"as job (\d+)", lines[0]).group(1)
    subprocess.run(["scancel", cancelled], check=True)
    follower.join(60)
    assert not follower.is_alive(), "--wait did not notice that the cancelled tasks left the queue"
    assert sum("ended without a result" in line for line in lines) == 2, lines
    assert "0 of 2 task(s) ended normally" in lines[-1] and "submits the unfinished runs again" in lines[-1]

    # the same command again: the array of the unfinished runs, one task per (dataset, seed), each task's feature
    # store the one this test names
    assert launch_with_deadline(args, config, root) == 0
    out, err = capsys.readouterr()
    job = re.search(r"^SLURM job (\d+)$", out, re.M).group(1)
    assert "2 array task(s), one per dataset and seed" in err and "2 of 2 task(s) ended normally" in err
    assert "| dip | oxford_pets | 2 |" in out and "did not finish" not in err
    submission = next((root / ".slurm" / job).glob("*_submission.sh")).read_text()
    assert f"export DIPCLIP_CACHE_DIR={slurm_cache}" in submission and "#SBATCH --mem=1G" in submission
    assert any((slurm_cache / "features").rglob("*")), "the array tasks did not use the test's DIPCLIP_CACHE_DIR"
    assert (root / "plan.jsonl").is_file() and not list(root.rglob("failed.json"))

    # the same sweep in this process, on its own cache: the same numbers, bit for bit
    monkeypatch.setenv("DIPCLIP_CACHE_DIR", str(tmp_path / "sequential-cache"))
    sequential = ProtocolRunner(ProtocolConfig(out=str(tmp_path / "sequential"), **common), backbone=tiny_backbone,
                                log=lambda line: None).run()
    on_slurm, here = results_of(root), results_of(tmp_path / "sequential" / "base2new")
    assert len(here) == 4 and on_slurm == here
    summary = json.loads((root / "summary.json").read_text())
    assert summary["rows"] == sequential["rows"] and not summary.get("incomplete")

    # the same command again: nothing left to submit, the table printed from the folders
    monkeypatch.setenv("DIPCLIP_CACHE_DIR", str(slurm_cache))
    assert launch(args, config) == 0
    out, err = capsys.readouterr()
    assert "nothing to submit" in err and "SLURM job" not in out and "| coop | oxford_pets | 2 |" in out
