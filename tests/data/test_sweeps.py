"""A protocol is a plan of independent runs that any number of workers execute into one results tree (issue 19).

Each run folder is claimed on its own: a run claimed by a live worker is left to it, a dead worker's run is
taken over and resumed, a failed run is recorded and the others go on, ``--jobs 2`` gives the same numbers as
one worker, and ``dipclip status`` says where the sweep stands at each of these moments.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dipclip.cli import main
from dipclip.protocols import ProtocolConfig, ProtocolRunner
from dipclip.protocols.status import sweep_status

PETS = ("abyssinian", "american bulldog", "beagle", "bengal")
SRC = str(Path(__file__).resolve().parents[2] / "src")
CLAIM = (
    "import sys, time\n"
    "from dipclip.engine.locking import claim\n"
    "with claim(sys.argv[1]) as mine:\n"
    "    print('held' if mine else 'refused', flush=True)\n"
    "    time.sleep(120)\n"
)


def _env() -> dict:
    return os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def argv(fx, tiny_config_path, out, *extra) -> list[str]:
    return ["base2new", "--data", str(fx.root), "--datasets", "oxford_pets", "--methods", "coop", "dip",
            "--seeds", "1", "2", "--shots", "2", "--epochs", "2", "--batch-size", "4", "--model",
            str(tiny_config_path), "--pretrained", "none", "--device", "cpu", "--out", str(out), "--quiet", *extra]


def results_of(root: Path) -> dict:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text())["results"]
            for p in sorted(root.glob("*/shots_*/*/seed*/metrics.json"))}


def test_plan_prints_every_run_with_its_settings_and_runs_nothing(fx, tmp_path, tiny_config_path, capsys):
    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    assert main(argv(fx, tiny_config_path, tmp_path / "runs", "--plan")) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["method"], r["seed"], r["folder"]) for r in lines] == [
        ("coop", 1, "oxford_pets/shots_2/coop/seed1"), ("coop", 2, "oxford_pets/shots_2/coop/seed2"),
        ("dip", 1, "oxford_pets/shots_2/dip/seed1"), ("dip", 2, "oxford_pets/shots_2/dip/seed2")]
    assert lines[0]["settings"]["train.epochs"] == 2 and lines[0]["settings"]["optim.lr"] == 0.002
    assert not (tmp_path / "runs").exists()


def test_two_workers_give_the_numbers_of_one(fx, tmp_path, tiny_config_path, capsys):
    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    assert main(argv(fx, tiny_config_path, tmp_path / "one")) == 0
    assert main(argv(fx, tiny_config_path, tmp_path / "two", "--jobs", "2")) == 0
    one, two = results_of(tmp_path / "one" / "base2new"), results_of(tmp_path / "two" / "base2new")
    assert len(one) == 4 and one == two
    rows = lambda root: json.loads((root / "base2new" / "summary.json").read_text())["rows"]  # noqa: E731
    assert rows(tmp_path / "one") == rows(tmp_path / "two")
    status = sweep_status(tmp_path / "two" / "base2new")
    assert status["counts"]["done"] == 4 and status["counts"]["pending"] == 0


def test_a_claimed_run_is_left_to_its_worker_and_a_dead_workers_run_taken_over(fx, tmp_path, tiny_backbone):
    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    config = ProtocolConfig(protocol="base2new", data=str(fx.root), out=tmp_path / "runs", epochs=1, progress=False,
                            datasets=["oxford_pets"], methods=["coop"], seeds=[1, 2], shots=[2],
                            train_options={"batch_size": 4})
    busy = tmp_path / "runs" / "base2new" / "oxford_pets" / "shots_2" / "coop" / "seed2"
    holder = subprocess.Popen([sys.executable, "-c", CLAIM, str(busy)], stdout=subprocess.PIPE, text=True,
                              env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        lines: list[str] = []
        summary = ProtocolRunner(config, backbone=tiny_backbone, log=lines.append).run()
        assert summary["incomplete"] == {"running": ["oxford_pets/shots_2/coop/seed2"]}
        assert any("seed 2: running in another worker, left to it" in line for line in lines)
        coop = next(r for r in summary["rows"] if r["method"] == "coop" and r["dataset"] == "oxford_pets")
        assert coop["seeds"] == [1] and coop["base"]["n"] == 1  # no row pretends to have seed 2
        markdown = (tmp_path / "runs" / "base2new" / "summary.md").read_text()
        assert "(1/2 seeds)" in markdown and "running (1): oxford_pets/shots_2/coop/seed2" in markdown
        running = {r["folder"]: r for r in sweep_status(tmp_path / "runs" / "base2new")["runs"]}
        assert running["oxford_pets/shots_2/coop/seed2"]["state"] == "running"
        assert running["oxford_pets/shots_2/coop/seed2"]["pid"] == str(holder.pid)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    stale = {r["folder"]: r["state"] for r in sweep_status(tmp_path / "runs" / "base2new")["runs"]}
    assert stale["oxford_pets/shots_2/coop/seed2"] == "stale"
    summary = ProtocolRunner(config, backbone=tiny_backbone, log=lambda line: None).run()
    assert "incomplete" not in summary or not summary["incomplete"]
    assert sweep_status(tmp_path / "runs" / "base2new")["counts"]["done"] == 2


def test_a_failed_run_is_recorded_the_others_go_on_and_a_rerun_retries_it(fx, tmp_path, tiny_config_path,
                                                                          capsys):
    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    out = tmp_path / "runs"
    bad = out / "base2new" / "oxford_pets" / "shots_2" / "dip" / "seed1"
    bad.mkdir(parents=True)
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")  # this run cannot resume: it fails
    code = main(argv(fx, tiny_config_path, out))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("dipclip: error: 1 run(s) failed"), err
    failure = json.loads((bad / "failed.json").read_text())
    assert "checkpoint" in failure["error"] and failure["pid"] == os.getpid()
    assert len(results_of(out / "base2new")) == 3  # the other three finished
    assert main(["status", str(out / "base2new")]) == 0
    shown = capsys.readouterr().out
    assert "3 done, 0 running, 0 stale, 1 failed, 0 pending of 4" in shown and "failed   oxford_pets" in shown
    (bad / "checkpoint.pt").unlink()
    assert main(argv(fx, tiny_config_path, out)) == 0  # retried, now finished
    assert not (bad / "failed.json").exists() and len(results_of(out / "base2new")) == 4


def test_a_killed_worker_leaves_a_run_the_next_worker_resumes(fx, tmp_path, tiny_config_path):
    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    out = tmp_path / "runs"
    command = argv(fx, tiny_config_path, out)
    command[command.index("--epochs") + 1] = "40"  # long enough to be killed mid-run
    command[command.index("--seeds") + 1: command.index("--seeds") + 3] = ["1"]
    command[command.index("--methods") + 1: command.index("--methods") + 3] = ["coop"]
    folder = out / "base2new" / "oxford_pets" / "shots_2" / "coop" / "seed1"
    env = _env() | {"DIPCLIP_CACHE_DIR": os.environ["DIPCLIP_CACHE_DIR"]}
    worker = subprocess.Popen([sys.executable, "-m", "dipclip", *command], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (folder / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.02)
        assert (folder / "checkpoint.pt").exists()
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert {r["state"] for r in sweep_status(out / "base2new")["runs"]} == {"stale"}
    assert main(command) == 0
    resumed = json.loads((folder / "metrics.json").read_text())
    straight = tmp_path / "straight"
    assert main(argv(fx, tiny_config_path, straight)[:0] + [c if c != str(out) else str(straight)
                                                             for c in command]) == 0
    again = json.loads((straight / "base2new" / "oxford_pets/shots_2/coop/seed1/metrics.json").read_text())
    assert resumed["results"] == again["results"] and resumed["history"] == again["history"]


def test_status_of_a_folder_without_a_plan_is_refused_in_one_line(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dipclip: error: ") and "holds no plan.jsonl" in err[-1]


@pytest.mark.parametrize("devices", ["0,,1", ","])
def test_bad_devices_are_refused(devices, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["base2new", "--datasets", "demo", "--devices", devices])
    assert exit_info.value.code == 2
    assert "--devices takes a comma-separated list" in capsys.readouterr().err


def test_two_processes_started_by_hand_share_one_out(fx, tmp_path, tiny_config_path, capsys):
    """Two independent commands on the same --out: every run executed once, by one of them; the numbers are
    those of one sequential command."""
    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    env = _env() | {"DIPCLIP_CACHE_DIR": os.environ["DIPCLIP_CACHE_DIR"], "OMP_NUM_THREADS": "1"}
    # not --quiet: the per-run lines (off a terminal) say which command ran which run
    command = [sys.executable, "-m", "dipclip", *[a for a in argv(fx, tiny_config_path, tmp_path / "shared")
                                                  if a != "--quiet"]]
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    logs = [worker.communicate(timeout=300)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], logs
    executed = [line.split(": running")[0] for log in logs for line in log.splitlines() if ": running" in line
                and "another worker" not in line]
    assert len(executed) == 4 and len(set(executed)) == 4, logs
    assert main(argv(fx, tiny_config_path, tmp_path / "alone")) == 0
    assert results_of(tmp_path / "shared" / "base2new") == results_of(tmp_path / "alone" / "base2new")
    assert main(argv(fx, tiny_config_path, tmp_path / "shared")) == 0  # the summary, now complete
    shared = json.loads((tmp_path / "shared" / "base2new" / "summary.json").read_text())
    alone = json.loads((tmp_path / "alone" / "base2new" / "summary.json").read_text())
    assert shared["rows"] == alone["rows"] and not shared.get("incomplete")


def test_a_summary_never_aggregates_another_commands_runs(fx, tmp_path, tiny_backbone):
    """The table alone (as `--launcher slurm --wait` builds it when every run was already finished) checks each
    finished run's settings like a worker does: runs made with other settings are refused, not averaged."""
    from dipclip.errors import DipclipError

    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    common = dict(protocol="base2new", data=str(fx.root), out=tmp_path / "runs", progress=False,
                  datasets=["oxford_pets"], methods=["coop"], seeds=[1], shots=[2], train_options={"batch_size": 4})
    ProtocolRunner(ProtocolConfig(epochs=1, **common), backbone=tiny_backbone, log=lambda line: None).run()
    other = ProtocolRunner(ProtocolConfig(epochs=2, **common), backbone=tiny_backbone, log=lambda line: None)
    with pytest.raises(DipclipError, match="train.epochs 1 -> 2"):
        other.summarise()
