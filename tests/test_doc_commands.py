"""Every ``dipclip`` command in README.md and docs/*.md runs here, so the docs cannot rot.

Commands come from the fenced ``bash`` blocks (each ``&&``-joined part that starts with ``dipclip``) and from
inline code spans that start with ``dipclip `` (or run a ``dipclip`` module). They run in-process through
``dipclip.cli.main``, in document order, in one folder with ``HOME`` pointing at a generated home: ``~/data``
is a CoOp-format tree, ``~/my_images`` a class-folder tree, ``my_cat.jpg`` an image. What the docs ask for
that is not here (OpenAI weights, eleven datasets, hours) is replaced by the tables below, and only by them:

- :data:`SUBSTITUTIONS`: documented text -> what runs instead, with the reason; each must still be used.
- :data:`SHORTER`: flags appended per command to keep it to seconds (``--epochs 1``, ``--quick``).
- :data:`FRAGMENTS`: synopses with placeholders (``METHOD``, ``a|b``, ``[...]``, ``...``) -> runnable instances.
- :data:`SKIPPED`: what cannot run here at all (several processes), with the reason and the check that still
  parses it.
- A bare reference to a command (``dipclip export``) runs as ``--help``.

A command in the docs that none of these covers fails the first test; an entry no doc uses any more too.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dipclip.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

TINY = "--model {tiny} --pretrained none"
# (documented text, what runs instead, why): applied in this order to every command before it runs.
SUBSTITUTIONS = [
    ("--model ViT-B-16 --pretrained openai", TINY, "no OpenAI weights offline: the tests' tiny random CLIP"),
    ("--datasets all", "--datasets dtd", "one of the eleven published datasets"),
    ("--datasets dtd eurosat --shots 1 2 4 8 16", "--datasets dtd eurosat --shots 1 2", "two of the five shot counts"),
]
# Flags appended to commands that start with these words: the same command, seconds instead of hours.
SHORTER = {
    "dipclip train": "--epochs 1",
    "dipclip base2new": "--seeds 1 --epochs 1",
    "dipclip fewshot": "--seeds 1 --epochs 1",
    "dipclip xd": "--datasets dtd --seeds 1 --epochs 1",  # one target of the ten
    "dipclip dg": "--datasets imagenetv2 --seeds 1 --epochs 1",  # one variant of the four
    "dipclip demo": "--quick",  # the demo's own smoke test: one seed, 2 epochs, 4 shots
}
# Synopses with placeholders -> the commands that stand for them (in the docs' vocabulary: substituted too).
RECIPE_SHOW = [f"dipclip recipes show {method} --protocol {protocol} --dataset {dataset} --shots 4"
               for method, protocol, dataset in (("coop", "base2new", "imagenet"), ("promptsrc", "fewshot", "dtd"),
                                                 ("maple", "xd", "eurosat"))]
DRY_RUN = "dipclip train --method dip --pretrained dipclip-tiny --dataset demo --dry-run"
FRAGMENTS = {
    "dipclip recipes show METHOD --protocol P [--dataset K --shots N]": RECIPE_SHOW,
    "dipclip recipes show METHOD --protocol base2new|fewshot|xd [--dataset K --shots N]": RECIPE_SHOW,
    "dipclip train --recipe base2new|fewshot|xd": [f"{DRY_RUN} --recipe {p}" for p in ("base2new", "fewshot", "xd")],
    "dipclip train --recipe P": [f"{DRY_RUN} --recipe xd"],
    "dipclip train ... --dry-run": [DRY_RUN],
    "dipclip train --dry-run": [DRY_RUN],
    "dipclip train --method coop ... --subsample base --eval-every 5 --out runs/pets-coop": [
        "dipclip train --method coop --model ViT-B-16 --pretrained openai --data ~/data --dataset oxford_pets "
        "--subsample base --eval-every 5 --out runs/pets-coop"],
    "dipclip train --subsample base --shots 16 --epochs 20 --eval-every 2 --views 4": [
        "dipclip train --method dip --pretrained dipclip-tiny --dataset demo --subsample base --shots 16 "
        "--epochs 20 --eval-every 2 --views 4 --dry-run"],
}
PRETRAIN = ("nice -n 19 python -m dipclip.pretrain --out src/dipclip/assets --fetch-emoji --minutes 70 "
            "--image-size 40 --batch-size 64 --evals 7 --threads 1 --fashion-per-class 10")
# What cannot run here -> (why, the commands that still check it parses).
SLURM = ("dipclip base2new --model ViT-B-16 --pretrained openai --data ~/data --datasets all --out runs --launcher slurm "
         "--slurm-partition gpu --slurm-gpus-per-task 1 --slurm-cpus-per-task 8 --slurm-time 240 "
         "--slurm-array-parallelism 16 --slurm-option mem=32G")
SKIPPED = {
    "torchrun --nproc_per_node N -m dipclip.cli.encode ...": (
        "several processes sharding a large split", ["python -m dipclip.cli.encode --help"]),
    "torchrun --nproc_per_node N -m dipclip train --method maple ...": (
        "data-parallel training over several processes",
        ["dipclip train --method maple --pretrained dipclip-tiny --dataset demo --dry-run"]),
    SLURM: ("a SLURM cluster (tests/test_slurm.py submits to a real one)", [SLURM + " --plan"]),
    PRETRAIN: ("70 minutes of pretraining on packages this machine lacks (openclipart-png, npm)",
               [PRETRAIN.removeprefix("nice -n 19 ")]),  # parsed by the recipe's parser, not run
}
# Commands whose documented outcome here is not exit 0: first words -> (exit, the only problems it may report,
# why). The generated tree is far smaller than the published splits, and `doctor` exits 1 on any problem.
EXPECTED = {
    "dipclip doctor": (1, ("classes, but", "split sizes", "classnames.txt has"),
                       "the generated tree is not the published splits: doctor says so, and nothing else"),
}
PLACEHOLDER = re.compile(r"\.\.\.|\||\[|\b[A-Z]{1,6}\b")
SHELL_BLOCKS = ("bash", "sh", "shell", "console")


def _fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def fenced_commands(text: str) -> list[str]:
    """The ``dipclip`` commands of the shell blocks: continuations joined, comments dropped, ``&&`` split."""
    commands = []
    for language, body in _fenced(text):
        if language not in SHELL_BLOCKS:
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            for part in re.split(r"&&|;", line.split(" #")[0]):
                if part.strip().startswith("dipclip "):
                    commands.append(" ".join(part.split()))
    return commands


def inline_commands(text: str) -> list[str]:
    """Inline code spans outside fenced blocks that start with ``dipclip `` or run a dipclip module."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = (" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose))
    return [span for span in spans if span.startswith("dipclip ") or " -m dipclip" in span]


def synopsis_names(text: str) -> list[str]:
    """The commands of the README's command-line synopsis (an untagged block of ``dipclip NAME  what``)."""
    return [name for language, body in _fenced(text) if not language
            for name in re.findall(r"^dipclip (\w+) {2,}\S", body, flags=re.M)]


def doc_commands(path: Path) -> list[tuple[str, bool]]:
    """(command, whether it is inline) in the order of the document: blocks first, then the prose."""
    text = path.read_text(encoding="utf-8")
    return [(c, False) for c in fenced_commands(text)] + [(c, True) for c in inline_commands(text)]


def is_bare(command: str) -> bool:
    """``dipclip export``, ``dipclip data make-split``: in prose, a mention of the command, not a call."""
    return all(re.fullmatch(r"[a-z][a-z0-9-]*", word) for word in command.split()[1:])


def runnable(command: str, inline: bool) -> list[str]:
    """What runs for one documented command (before the placeholders of :func:`prepared` are filled)."""
    if command in SKIPPED:
        return SKIPPED[command][1]
    if command in FRAGMENTS:
        return FRAGMENTS[command]
    if inline and is_bare(command):
        return [f"{command} --help"]
    return [command]


def prepared(command: str, tiny: Path) -> list[str]:
    """``command`` with the substitutions and the shortening flags applied, as an argv for ``dipclip``."""
    for documented, instead, _ in SUBSTITUTIONS:
        command = command.replace(documented, instead)
    for start, flags in SHORTER.items():
        if f"{command} ".startswith(start + " ") and "--help" not in command:
            command = f"{command} {flags}"
    return shlex.split(command.format(tiny=tiny))


def test_every_documented_command_is_accounted_for():
    """A new command in the docs runs as written, or has its entry; an entry no doc uses is removed."""
    found = [entry for path in DOCS for entry in doc_commands(path)]
    commands = [command for command, _ in found]
    assert len(commands) > 30, commands  # the extraction still finds the docs' commands
    for command in commands:
        if command in SKIPPED or command in FRAGMENTS:
            continue
        assert command.startswith("dipclip "), f"{command!r}: add it to SKIPPED with the reason"
        assert not PLACEHOLDER.search(command.replace("ViT-B-16", "")), f"{command!r}: add it to FRAGMENTS"
    assert set(FRAGMENTS) | set(SKIPPED) <= set(commands), "entries no doc uses any more"
    for documented, _, why in SUBSTITUTIONS:
        assert any(documented in c for c in commands), f"substitution {documented!r} ({why}) is unused"
    for run in (r for command, inline in found for r in runnable(command, inline)):
        assert "{tiny}" not in run and not PLACEHOLDER.search(run.replace("ViT-B-16", "")), run


def test_the_synopsis_names_every_command(capsys):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    names = synopsis_names(text)
    from dipclip.cli import build_parser

    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    block = next(body for language, body in _fenced(text) if not language and "dipclip train " in body)
    assert set(names) <= set(choices) and all(re.search(rf"\b{name}\b", block) for name in choices), names
    for name in names:
        assert _run(["pretrain" if name == "pretrain" else name, "--help"], capsys)[0] == 0, name


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """``dipclip ...`` and ``python -m dipclip.cli.encode ...`` run; ``python -m dipclip.pretrain ...`` is
    only parsed (see :data:`SKIPPED`)."""
    if argv[:3] == ["python", "-m", "dipclip.pretrain"]:
        from dipclip.pretrain.recipe import build_parser

        try:
            build_parser().parse_args(argv[3:])
        except SystemExit as stop:
            return int(stop.code or 0), capsys.readouterr().err
        return 0, ""
    if argv[:3] == ["python", "-m", "dipclip.cli.encode"]:
        from dipclip.cli.encode import main as encode

        run_main, argv = encode, argv[3:]
    else:
        run_main, argv = main, argv[1:] if argv[:1] == ["dipclip"] else argv
    try:
        code = run_main(argv)
    except SystemExit as stop:  # --help
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ---- a home with data, and the runs ---------------------------------------------------------------------

def _image(path: Path, color: tuple[int, int, int], rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.array(color) + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype("uint8")
    Image.fromarray(pixels).save(path, "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")


def _json_dataset(root: Path, folder: str, image_dir: str, split_file: str, classes: list[str], rng) -> None:
    import json

    split = {}
    for name, count in (("train", 4), ("val", 1), ("test", 2)):
        rows = []
        for label, classname in enumerate(classes):
            for i in range(count):
                rel = f"{classname.replace(' ', '_')}/{name}_{i}.jpg"
                _image(root / folder / image_dir / rel, (60 * label % 256, 200 - 40 * label, 90), rng)
                rows.append([rel, label, classname])
        split[name] = rows
    (root / folder / split_file).write_text(json.dumps(split))


WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark", "n01491361": "tiger shark"}


def make_home(home: Path) -> None:
    """``~/data`` (CoOp layout: oxford_pets, dtd, eurosat, imagenet, imagenetv2) and ``~/my_images``."""
    rng = np.random.default_rng(0)
    data = home / "data"
    _json_dataset(data, "oxford_pets", "images", "split_zhou_OxfordPets.json",
                  ["abyssinian", "beagle", "pug", "sphynx"], rng)
    _json_dataset(data, "dtd", "images", "split_zhou_DescribableTextures.json",
                  ["banded", "dotted", "striped", "zigzagged"], rng)
    _json_dataset(data, "eurosat", "2750", "split_zhou_EuroSAT.json",
                  ["Forest", "River", "Highway", "Pasture"], rng)
    for folder in ("imagenet", "imagenetv2"):
        (data / folder).mkdir(parents=True)
        (data / folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in WNIDS.items()))
    for label, wnid in enumerate(WNIDS):
        color = (50 * label, 100, 200 - 50 * label)
        for split, count in (("train", 3), ("val", 2)):
            for i in range(count):
                _image(data / "imagenet" / "images" / split / wnid / f"{wnid}_{i}.JPEG", color, rng)
        for i in range(2):
            _image(data / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(label) / f"{i}.jpeg",
                   color, rng)
    for label, name in enumerate(["cat", "dog", "bird"]):
        for i in range(10):
            _image(home / "my_images" / name / f"{i}.png", (80 * label, 120, 80), rng)


@pytest.fixture
def home(tmp_path, tmp_path_factory, monkeypatch, tiny_config_path):
    """A generated home and an empty working folder; one feature cache for all documents."""
    make_home(tmp_path / "home")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DIPCLIP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "doc-commands-cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    _image(tmp_path / "cwd" / "my_cat.jpg", (200, 120, 60), np.random.default_rng(1))
    return tiny_config_path


@pytest.mark.parametrize("doc", [path.name for path in DOCS])
def test_documented_commands_run(doc, home, capsys):
    """Each document's commands, in order, in one folder (later ones read what earlier ones wrote)."""
    failed, done = [], set()
    for command, inline in doc_commands(next(p for p in DOCS if p.name == doc)):
        for run in runnable(command, inline):
            argv = prepared(run, home)
            if tuple(argv) in done:  # the same command twice in one document runs once
                continue
            done.add(tuple(argv))
            code, output = _run(argv, capsys)
            exit_code, allowed, _ = next((v for k, v in EXPECTED.items() if f"{run} ".startswith(k + " ")),
                                         (0, None, ""))
            problems = [line for line in output.splitlines() if allowed is not None
                        and line.startswith("[") and not any(text in line for text in allowed)]
            if code != exit_code or problems:
                failed.append(f"{command!r} ran as {shlex.join(argv)!r}: exit {code}\n{output[-1500:]}")
    assert not failed, "\n\n".join(failed)
