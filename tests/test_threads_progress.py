"""--threads / DIPCLIP_THREADS (torch CPU threads during the work) and what a sweep prints (issue 22, item 6)."""

from __future__ import annotations

import pytest
import torch
from cli_run import assert_refused, run

from dipclip.cli import COMPUTING, _pretrain_argv, build_parser
from dipclip.engine.trainer import Trainer
from dipclip.protocols.workers import SweepProgress


@pytest.fixture
def threads_during_training(monkeypatch):
    """torch.get_num_threads() at each epoch's end of the trainings that follow; torch's count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that 1 inside is the command's doing
    seen: list[int] = []
    original = Trainer._format

    def record(record, epochs, seconds):
        seen.append(torch.get_num_threads())
        return original(record, epochs, seconds)

    monkeypatch.setattr(Trainer, "_format", staticmethod(record))
    monkeypatch.delenv("DIPCLIP_THREADS", raising=False)
    yield seen
    torch.set_num_threads(before)


def train_argv(tiny_config_path, image_tree, out) -> list:
    return ["train", "--method", "coop", "--model", tiny_config_path, "--pretrained", "none", "--data", image_tree,
            "--dataset", "imagefolder", "--epochs", "2", "--batch-size", "4", "--shots", "2", "--quiet", "--out", out]


def test_threads_flag_is_the_thread_count_during_training(threads_during_training, tiny_config_path, image_tree,
                                                          tmp_path, capsys):
    code, _, err = run([*train_argv(tiny_config_path, image_tree, tmp_path / "r"), "--threads", "1"], capsys)
    assert code == 0, err
    assert threads_during_training == [1, 1]


def test_dipclip_threads_is_honoured_and_the_flag_wins(threads_during_training, tiny_config_path, image_tree,
                                                       tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIPCLIP_THREADS", "1")
    assert run(train_argv(tiny_config_path, image_tree, tmp_path / "env"), capsys)[0] == 0
    assert threads_during_training == [1, 1]
    threads_during_training.clear()
    assert run([*train_argv(tiny_config_path, image_tree, tmp_path / "flag"), "--threads", "2"], capsys)[0] == 0
    assert threads_during_training == [2, 2]


def test_without_either_torch_keeps_its_count(threads_during_training, tiny_config_path, image_tree, tmp_path,
                                              capsys):
    assert run(train_argv(tiny_config_path, image_tree, tmp_path / "r"), capsys)[0] == 0
    assert threads_during_training == [2, 2]


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5"])
def test_bad_thread_counts_are_refused_in_one_line(value, tiny_config_path, image_tree, tmp_path, capsys,
                                                   monkeypatch):
    monkeypatch.delenv("DIPCLIP_THREADS", raising=False)
    argv = train_argv(tiny_config_path, image_tree, tmp_path / "r")
    code, _, err = run([*argv, "--threads", value], capsys)
    assert_refused(code, err, "--threads")
    monkeypatch.setenv("DIPCLIP_THREADS", value)
    code, _, err = run(argv, capsys)
    assert_refused(code, err, f"DIPCLIP_THREADS={value!r}", "unset it")
    assert not (tmp_path / "r").exists()


def test_every_computing_command_takes_threads_and_pretrain_gets_the_variable(monkeypatch):
    parser = build_parser()
    from dipclip.cli import add_threads_flags

    add_threads_flags(parser)
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in COMPUTING:
        assert "--threads" in commands[name].format_help(), name
    assert "--threads" not in commands["status"].format_help()
    monkeypatch.setenv("DIPCLIP_THREADS", "3")
    assert _pretrain_argv(["--out", "x"]) == ["--threads", "3", "--out", "x"]
    assert _pretrain_argv(["--threads", "1"]) == ["--threads", "1"]


def sweep(tiny_config_path, image_tree, out, *flags) -> list:
    return ["base2new", "--model", tiny_config_path, "--pretrained", "none", "--data", image_tree, "--datasets",
            "imagefolder", "--methods", "coop", "--seeds", "1", "--epochs", "2", "--shots", "2", "--batch-size", "4",
            "--threads", "1", "--out", out, *flags]


def test_a_sweep_off_a_terminal_prints_run_lines_epochs_only_verbose_and_nothing_quiet(
        tiny_config_path, image_tree, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        code, out, err = run(sweep(tiny_config_path, image_tree, tmp_path / "a"), capsys)
        assert code == 0, err
        assert "[1/1] base2new imagefolder 2-shot coop seed 1: running" in err
        assert "epoch 1/2" not in err and "trainable parameters" not in err, err
        assert "| coop | imagefolder |" in out  # the table

        code, out, err = run(sweep(tiny_config_path, image_tree, tmp_path / "v", "--verbose"), capsys)
        assert code == 0 and "epoch 1/2" in err and "epoch 2/2" in err and ": running" in err, err

        code, out, err = run(sweep(tiny_config_path, image_tree, tmp_path / "q", "--quiet"), capsys)
        assert code == 0 and "| coop | imagefolder |" in out  # --quiet keeps the result
        others = [line for line in err.splitlines() if not line.startswith("dipclip: warning:")]
        assert others == [], err

        code, _, err = run(sweep(tiny_config_path, image_tree, tmp_path / "x", "--quiet", "--verbose"), capsys)
        assert_refused(code, err, "--verbose", "--quiet")
    finally:
        torch.set_num_threads(before)


def test_the_terminal_line_counts_runs_once_and_estimates_from_finished_ones(capsys):
    lines: list[str] = []
    progress = SweepProgress(4, "normal", lines.append, workers=2, terminal=True)
    progress("skip", "a", "[1/4] a")
    progress("start", "b", "[2/4] b")
    progress("done", "b", "[2/4] b", 10.0)
    progress("skip", "b", "[2/4] b")  # another worker's look at a run this sweep finished
    progress("start", "c", "[3/4] c")
    assert progress.bar.n == 2
    assert progress.eta() == pytest.approx(10.0 * 2 / 2)
    assert "[3/4] c" in str(progress.bar) and "ETA 10 s" in str(progress.bar)
    progress("failed", "c", "[3/4] c", "boom")
    progress.close()
    assert lines == []  # on a terminal: the bar, and failures written above it
    assert "[3/4] c: FAILED: boom" in capsys.readouterr().err

    plain: list[str] = []
    progress = SweepProgress(2, "quiet", plain.append, terminal=False)
    progress("start", "a", "a")
    progress("done", "a", "a", 1.0)
    progress("failed", "b", "b", "boom")
    assert plain == ["b: FAILED: boom"]
