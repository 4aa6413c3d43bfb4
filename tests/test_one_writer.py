"""One writer per output folder: a second process into a folder in use is refused in one line (issue 11, item 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dipclip.engine.locking import LOCK_NAME, output_lock
from dipclip.errors import DipclipError

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOLD = (
    "import sys, time\n"
    "from dipclip.engine.locking import output_lock\n"
    "with output_lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


def _env() -> dict:
    return os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def holder():
    """Start another process that holds a folder; yields a function (folder -> the process)."""
    started: list[subprocess.Popen] = []

    def hold(folder: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                                   env=_env())
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield hold
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_train_into_a_folder_another_process_writes_is_refused(holder, tmp_path, tiny_config_path, image_tree):
    from dipclip import api

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"results": "the other run"}')
    process = holder(out)
    with pytest.raises(DipclipError, match=rf"--out {out} is in use by another dipclip run \(pid {process.pid} on "):
        api.train("coop", model=str(tiny_config_path), data=str(image_tree), dataset="imagefolder", shots=2,
                  epochs=1, out=out, progress=False)
    assert (out / "metrics.json").read_text() == '{"results": "the other run"}'  # nothing of the other run lost
    for call in (lambda: api.evaluate(tmp_path / "nope", out=out), lambda: api.zeroshot(out=out)):
        with pytest.raises(DipclipError, match="is in use by another dipclip run"):
            call()


def test_cli_train_twice_into_one_folder_is_one_line_exit_2(holder, tmp_path, tiny_config_path, image_tree):
    out = tmp_path / "run"
    holder(out)
    done = subprocess.run([sys.executable, "-m", "dipclip", "train", "--method", "coop", "--model",
                           str(tiny_config_path), "--data", str(image_tree), "--dataset", "imagefolder", "--shots",
                           "1", "--epochs", "1", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dipclip: error: --out {out} is in use by another dipclip run")
    assert "Traceback" not in done.stderr


def test_a_killed_holder_releases_the_folder(holder, tmp_path):
    out = tmp_path / "run"
    process = holder(out)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / LOCK_NAME).exists()  # a crash leaves the file, but not the lock
    with output_lock(out):
        assert (out / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    assert not (out / LOCK_NAME).exists()


def test_the_same_folder_twice_in_one_process_is_refused_too(tmp_path):
    with output_lock(tmp_path / "run"):
        with pytest.raises(DipclipError, match="in use"):
            with output_lock(tmp_path / "run"):
                pass


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(DipclipError, match=f"--out {target} is a file, not a folder"):
        with output_lock(target):
            pass


def test_a_refused_run_leaves_no_empty_folder_and_a_finished_one_no_lock_file(tmp_path, tiny_config_path, image_tree):
    from dipclip import api

    with pytest.raises(DipclipError):
        api.train("coop", model=str(tiny_config_path), data=str(tmp_path / "missing"), dataset="imagefolder",
                  out=tmp_path / "never" / "deeper", progress=False)
    assert not (tmp_path / "never").exists()
    out = tmp_path / "run"
    api.train("coop", model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder",
              shots=1, epochs=1, batch_size=2, out=out, progress=False)
    assert (out / "metrics.json").is_file() and not (out / LOCK_NAME).exists()


def test_temporaries_of_killed_writes_in_the_folder_are_removed(tmp_path):
    out = tmp_path / "run"
    (out / "adapter").mkdir(parents=True)
    stale = [_temporary(out, "metrics.json"), _temporary(out / "adapter", "adapter_model.safetensors")]
    keep = [out / "notes.tmp", _temporary(out, "notes.txt")]  # not temporaries of a run's files
    keep[0].write_text("mine")
    with output_lock(out):
        assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in keep)


def _temporary(folder: Path, name: str) -> Path:
    """A temporary as an atomic write of ``name`` leaves it when killed."""
    import tempfile

    fd, path = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.write(fd, b"half a file")
    os.close(fd)
    return Path(path)

