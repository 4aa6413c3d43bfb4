"""A run is identified by the bytes of the data it reads, never by file names (issue 18, class 1 and 2).

Each case changes data underneath a finished or interrupted run in a way names cannot see (an image rewritten
in place with its old size and modification time, a split file swapping two classes' folders, another
``--data`` root holding other images under the same names) and checks the run is refused or recomputed,
never reused. Repeated protocol values are refused rather than counted twice.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import write_image

from dipclip import api
from dipclip.cli import main
from dipclip.data import identity
from dipclip.errors import DipclipError
from dipclip.protocols import ProtocolConfig, ProtocolRunner

PETS = ("abyssinian", "american bulldog", "beagle", "bengal")


def runner(protocol, root, out, backbone, **kwargs):
    config = ProtocolConfig(protocol=protocol, data=str(root), out=out, epochs=1, progress=False,
                            train_options={"batch_size": 4}, **kwargs)
    return ProtocolRunner(config, backbone=backbone, log=lambda line: None)


def rewrite_in_place(path: Path, color) -> None:
    """New pixels under the same name, size and modification time (as an archive extraction leaves them)."""
    info = path.stat()
    before = path.read_bytes()
    write_image(path, color=color)
    assert path.read_bytes() != before
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_file_digests_follow_content_and_are_memoised_by_stat(tmp_path, monkeypatch):
    a, b = write_image(tmp_path / "a.png", (1, 2, 3)), write_image(tmp_path / "b.png", (9, 9, 9))
    monkeypatch.setattr(identity, "RACY_SECONDS", -1.0)  # files written just now may be memoised
    first = identity.file_digests([str(a), str(b)])
    import hashlib

    assert first[str(a)] == hashlib.sha256(a.read_bytes()).hexdigest()
    identity.forget_memory()  # a new process: served by the on-disk memo, same answer
    assert identity.file_digests([str(a), str(b)]) == first
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)  # swapped in place: the change time moves even where sizes and mtimes do not
    b.write_bytes(a_bytes)
    swapped = identity.file_digests([str(a), str(b)])
    assert swapped == {str(a): first[str(b)], str(b): first[str(a)]}
    assert (Path(os.environ["DIPCLIP_CACHE_DIR"]) / identity.MEMO_NAME).is_file()


def test_a_racy_file_is_hashed_again(tmp_path):
    """A file modified within RACY_SECONDS of being hashed is never memoised: a write in the same clock tick
    could keep its stat key."""
    a = write_image(tmp_path / "a.png", (1, 2, 3))
    identity.forget_memory()
    identity.file_digests([str(a)])
    assert not identity._MEMORY


def test_protocol_refuses_finished_runs_whose_data_changed(fx, tmp_path, tiny_backbone):
    split = fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    out = tmp_path / "runs"
    common = dict(datasets=["oxford_pets"], seeds=[1], shots=[2])
    runner("base2new", fx.root, out, tiny_backbone, methods=["zeroshot", "coop"], **common).run()
    runner("base2new", fx.root, out, tiny_backbone, methods=["zeroshot", "coop"], **common).run()  # same: skipped
    new_test = next(rel for rel, label, _ in split["test"] if label >= 2)  # a new-class test image
    rewrite_in_place(fx.root / "oxford_pets" / "images" / new_test, (7, 250, 7))
    for method in ("coop", "zeroshot"):
        with pytest.raises(DipclipError, match=rf"{method}/seed1 holds a finished run with other settings \(data "):
            runner("base2new", fx.root, out, tiny_backbone, methods=[method], **common).run()


def test_cross_dataset_target_is_refused_after_its_split_changed(fx, tmp_path, tiny_backbone, wnids):
    fx.imagenet(wnids, per_class=(3, 2))
    split = fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    out = tmp_path / "runs"
    common = dict(datasets=["oxford_pets"], methods=["coop"], seeds=[1], shots=[2])
    runner("xd", fx.root, out, tiny_backbone, **common).run()
    target = fx.root / "oxford_pets" / "images" / split["test"][0][0]
    rewrite_in_place(target, (3, 3, 250))
    with pytest.raises(DipclipError, match=r"oxford_pets/shots_2/coop/seed1 holds a finished run .*data"):
        runner("xd", fx.root, out, tiny_backbone, **common).run()


def test_resume_refuses_other_images_under_the_same_names(fx, tmp_path, tiny_config_path, kill_after_first_epoch):
    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    kwargs = dict(model=str(tiny_config_path), pretrained="none", dataset="oxford_pets", shots=2, epochs=2,
                  batch_size=4, progress=False)
    kill_after_first_epoch("coop", tmp_path / "killed", data=str(fx.root), **kwargs)

    copy = tmp_path / "copy"
    shutil.copytree(fx.root, copy)  # another root, the same bytes: the same data, so it resumes
    other = tmp_path / "other"
    shutil.copytree(fx.root, other)
    for i in range(3):  # whichever two shots were drawn
        rewrite_in_place(other / "oxford_pets" / "images" / "beagle" / f"train_{i}.jpg", (250, 250, 250 - i))
    with pytest.raises(DipclipError, match=r"checkpoint.pt belongs to a run with other settings \(data "):
        api.train("coop", out=tmp_path / "killed", resume=True, data=str(other), **kwargs)

    swapped = tmp_path / "swapped"  # two classes' folders swapped in the split file (same file names)
    shutil.copytree(fx.root, swapped)
    split_file = swapped / "oxford_pets" / "split_zhou_OxfordPets.json"
    text = split_file.read_text().replace("abyssinian/", "@@/").replace("beagle/", "abyssinian/")
    split_file.write_text(text.replace("@@/", "beagle/"))
    with pytest.raises(DipclipError, match=r"other settings \(data "):
        api.train("coop", out=tmp_path / "killed", resume=True, data=str(swapped), **kwargs)

    resumed = api.train("coop", out=tmp_path / "killed", resume=True, data=str(copy), **kwargs)
    straight = api.train("coop", out=tmp_path / "straight", data=str(fx.root), **kwargs)
    assert resumed["results"] == straight["results"] and resumed["data_identity"] == straight["data_identity"]


def test_zeroshot_and_evaluate_record_their_data_identity(fx, tmp_path, tiny_backbone):
    split = fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    before = api.zeroshot(data=str(fx.root), dataset="oxford_pets", backbone=tiny_backbone)["data_identity"]
    assert api.zeroshot(data=str(fx.root), dataset="oxford_pets", backbone=tiny_backbone)["data_identity"] == before
    rewrite_in_place(fx.root / "oxford_pets" / "images" / split["test"][-1][0], (1, 1, 1))
    assert api.zeroshot(data=str(fx.root), dataset="oxford_pets", backbone=tiny_backbone)["data_identity"] != before


@pytest.mark.parametrize(("flag", "values", "said"), [
    ("--seeds", ["1", "1", "2"], "--seeds lists 1 more than once"),
    ("--datasets", ["oxford_pets", "oxford_pets"], "--datasets lists oxford_pets more than once"),
    ("--methods", ["coop", "dip", "coop"], "--methods lists coop more than once"),
    ("--shots", ["1", "2"], "base2new trains at one shot count, got --shots 1 2"),
])
def test_repeated_or_ignored_protocol_values_are_refused(fx, tmp_path, tiny_config_path, capsys, flag, values,
                                                         said):
    fx.json_dataset(classes=PETS, sizes=(2, 1, 1))
    argv = {"--data": [str(fx.root)], "--datasets": ["oxford_pets"], "--methods": ["coop"], "--seeds": ["1"],
            "--shots": ["1"]} | {flag: values}
    flat = [part for key, parts in argv.items() for part in (key, *parts)]
    code = main(["base2new", *flat, "--model", str(tiny_config_path), "--pretrained", "none",
                 "--out", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("dipclip: error: ") and said in err[-1], err
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_fewshot_repeated_shots_refused_and_xd_takes_one_shot_count(fx, tmp_path):
    with pytest.raises(DipclipError, match="--shots lists 2 more than once"):
        ProtocolConfig(protocol="fewshot", data=str(fx.root), datasets=["dtd"], shots=[2, 2]).validate()
    with pytest.raises(DipclipError, match="xd trains at one shot count"):
        ProtocolConfig(protocol="xd", data=str(fx.root), datasets=["dtd"], shots=[4, 16]).validate()
    with pytest.raises(DipclipError, match="give --data ROOT.*dtd"):
        ProtocolConfig(protocol="fewshot", data=None, datasets=["dtd"]).validate()


def test_protocol_on_a_shipped_dataset_needs_no_data_root(tmp_path, capsys):
    command = ["base2new", "--datasets", "demo", "--methods", "zeroshot", "coop", "--seeds", "1", "--epochs", "1",
               "--pretrained", "dipclip-tiny", "--out", str(tmp_path / "runs")]
    code = main(command)
    out = capsys.readouterr().out
    assert code == 0 and "| zeroshot | demo | 16 |" in out
    assert main(command) == 0  # rerun: the same data identity as the runs recorded (the new half included)
    assert capsys.readouterr().err.count("done already (same settings), skipped") == 2
    metrics = json.loads((tmp_path / "runs/base2new/demo/shots_16/zeroshot/seed1/metrics.json").read_text())
    assert set(metrics["results"]) == {"base", "new"} and metrics["data_identity"]
