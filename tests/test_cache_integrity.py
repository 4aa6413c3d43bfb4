"""The feature store verifies what it returns (issue 11, item 3): a damaged, zeroed or foreign entry is
recomputed with a one-line warning and never used; temporaries of killed writes are removed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dipclip import api
from dipclip.engine.features import FORMAT_VERSION, FeatureStore


@pytest.fixture(scope="module")
def test_items(image_tree):
    return api.load_data(str(image_tree), "imagefolder").test


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()  # noqa: SIM118


def _rewrite(path: Path, tensors: dict, metadata: dict) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def _with_checksum(tensors: dict, metadata: dict) -> dict:
    """Metadata whose checksum matches ``tensors``: a well-formed entry of something else."""
    from dipclip.engine.features import STORED_TENSORS, _checksum

    return metadata | {"sha256": _checksum(*(tensors[name] for name in STORED_TENSORS))}


def _payload_edit(change):
    def edit(tensors, metadata):
        payload = json.loads(metadata["dipclip_features"])
        change(payload)
        return tensors, _with_checksum(tensors, metadata | {"dipclip_features": json.dumps(payload)})
    return edit


def _zero(name):
    def edit(tensors, metadata):
        return tensors | {name: torch.zeros_like(tensors[name])}, metadata
    return edit


def _set(name, value, keep_checksum=False):
    def edit(tensors, metadata):
        tensors = tensors | {name: value(tensors[name])}
        return tensors, (metadata if keep_checksum else _with_checksum(tensors, metadata))
    return edit


DAMAGE = {
    "zeroed features": (_zero("features"), "fails its checksum"),
    "zeroed unnormalised features": (_zero("raw"), "fails its checksum"),
    "zeroed valid flags (every image 'skipped')": (_zero("valid"), "fails its checksum"),
    "one flipped feature": (_set("features", lambda t: t.index_put((torch.tensor([0]),), -t[0]), True),
                            "fails its checksum"),
    "no checksum": (lambda t, m: (t, {k: v for k, v in m.items() if k != "sha256"}), "fails its checksum"),
    "no metadata": (lambda t, m: (t, {}), "has no dipclip metadata"),
    "metadata not JSON": (lambda t, m: (t, m | {"dipclip_features": "{not json"}), "has no dipclip metadata"),
    "another backbone's entry": (_payload_edit(lambda p: p["backbone"].update(identity="other")),
                                 "made for another backbone"),
    "an older format's entry": (_payload_edit(lambda p: p.update(format=FORMAT_VERSION - 1)),
                                "made for another format"),
    "another transform's entry": (_payload_edit(lambda p: p.update(transform="Compose(other)")),
                                  "made for another transform"),
    "other items' entry": (_payload_edit(lambda p: p.update(items="0" * 64)), "made for another items"),
    "other labels, valid checksum": (_set("labels", lambda t: t.flip(0)), "does not match the images"),
    "float64 features": (_set("features", lambda t: t.double()), "does not match the images"),
    "a missing row": (_set("features", lambda t: t[1:]), "does not match the images"),
    "a missing unnormalised row": (_set("raw", lambda t: t[1:]), "does not match the images"),
    "skipped images in a run that skips none": (_set("valid", lambda t: t * 0), "marks images as skipped"),
    "a missing tensor": (lambda t, m: ({k: v for k, v in t.items() if k != "valid"}, m), "holds tensors"),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_bad_entry_is_recomputed_with_one_warning_and_never_used(damage, tmp_path, tiny_backbone, test_items,
                                                                  capsys):
    edit, reason = DAMAGE[damage]
    store = FeatureStore(tmp_path / "features")
    fresh = store.test_features(tiny_backbone, test_items, progress=False)
    (entry,) = (tmp_path / "features").glob("test-*.safetensors")
    tensors, metadata = _read(entry)
    _rewrite(entry, *edit(tensors, metadata))
    capsys.readouterr()

    again = FeatureStore(tmp_path / "features")
    served = again.test_features(tiny_backbone, test_items, progress=False)
    assert (again.hits, again.misses, again.rejected) == (0, 1, 2)  # checked before and after the lock
    assert torch.equal(served.features, fresh.features) and bool(served.valid.all())
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"dipclip: warning: feature cache entry {entry} {lines[0].split(str(entry) + ' ')[1]}"]
    assert reason in lines[0] and lines[0].endswith("recomputing it (it is never used)")
    third = FeatureStore(tmp_path / "features")  # the entry was rewritten and now passes
    assert torch.equal(third.test_features(tiny_backbone, test_items, progress=False).features, fresh.features)
    assert (third.hits, third.misses) == (1, 0)


@pytest.mark.parametrize("content", [b"", b"\x00" * 4096, b"garbage", "truncated"], ids=["empty", "zero bytes",
                                                                                        "garbage", "truncated"])
def test_an_unreadable_entry_is_recomputed(content, tmp_path, tiny_backbone, test_items, capsys):
    store = FeatureStore(tmp_path / "features")
    fresh = store.test_features(tiny_backbone, test_items, progress=False)
    (entry,) = (tmp_path / "features").glob("test-*.safetensors")
    entry.write_bytes(entry.read_bytes()[:200] if content == "truncated" else content)
    capsys.readouterr()
    served = FeatureStore(tmp_path / "features").test_features(tiny_backbone, test_items, progress=False)
    assert torch.equal(served.features, fresh.features)
    assert "cannot be read" in capsys.readouterr().err


def test_another_views_entry_copied_over_is_refused(tmp_path, tiny_backbone, test_items, capsys):
    store = FeatureStore(tmp_path / "features")
    view0 = store.view_features(tiny_backbone, test_items, seed=1, view=0, progress=False)
    store.view_features(tiny_backbone, test_items, seed=1, view=1, progress=False)
    paths = {json.loads(_read(p)[1]["dipclip_features"])["view"]["view"]: p
             for p in (tmp_path / "features").glob("view-*.safetensors")}
    paths[0].write_bytes(paths[1].read_bytes())
    capsys.readouterr()
    again = FeatureStore(tmp_path / "features")
    assert torch.equal(again.view_features(tiny_backbone, test_items, seed=1, view=0, progress=False).features,
                       view0.features)
    assert "was made for another view; recomputing it" in capsys.readouterr().err


def test_a_zeroed_entry_gives_the_true_accuracy_not_zero_images(tmp_path, tiny_config_path, image_tree, capsys):
    options = dict(model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder")
    first = api.zeroshot(**options)
    cache = Path(os.environ["DIPCLIP_CACHE_DIR"]) / "features"
    (entry,) = cache.glob("test-*.safetensors")
    tensors, metadata = _read(entry)
    _rewrite(entry, {k: torch.zeros_like(v) for k, v in tensors.items()}, metadata)
    capsys.readouterr()
    second = api.zeroshot(**options)
    assert second["results"] == first["results"] and second["results"]["test"]["n"] == 12
    err = capsys.readouterr().err
    assert f"dipclip: warning: feature cache entry {entry} " in err and "recomputing it" in err


def test_temporaries_of_killed_writes_are_removed_once_stale(tmp_path, tiny_backbone, test_items):
    root = tmp_path / "features"
    root.mkdir()
    old, recent = root / ".test-abc.safetensors.x1y2z3w4.tmp", root / ".test-def.safetensors.a_b2c3d4.tmp"
    for path in (old, recent):
        path.write_bytes(b"half")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    FeatureStore(root).test_features(tiny_backbone, test_items, progress=False)
    assert not old.exists() and recent.exists()  # a recent one may belong to a write under way
