from __future__ import annotations

import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dipclip.data import images
from dipclip.data.images import BadImage, Batch, ImageDataset, collate_skipping_bad, load_rgb, to_rgb
from dipclip.data.types import Datum
from dipclip.errors import DipclipError


def pixels(img: Image.Image) -> list[tuple[int, int, int]]:
    assert img.mode == "RGB"
    return [tuple(int(v) for v in p) for p in np.asarray(img).reshape(-1, 3)]


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (255, 0, 0, 255))
    img.putpixel((1, 0), (0, 0, 255, 0))
    img.save(tmp_path / "a.png")
    assert pixels(load_rgb(str(tmp_path / "a.png"))) == [(255, 0, 0), (255, 255, 255)]


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 128, 0, 10, 20, 30] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 1
    img.save(tmp_path / "p.png", transparency=1)
    assert pixels(load_rgb(str(tmp_path / "p.png"))) == [(0, 128, 0), (255, 255, 255)]


def test_greyscale_modes(tmp_path):
    Image.new("L", (1, 1), 77).save(tmp_path / "l.png")
    assert pixels(load_rgb(str(tmp_path / "l.png"))) == [(77, 77, 77)]
    Image.new("LA", (1, 1), (50, 0)).save(tmp_path / "la.png")
    assert pixels(load_rgb(str(tmp_path / "la.png"))) == [(255, 255, 255)]
    wide = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))  # 16-bit greyscale
    assert pixels(to_rgb(wide)) == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    Image.new("CMYK", (1, 1), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    r, g, b = pixels(load_rgb(str(tmp_path / "c.jpg")))[0]
    assert min(r, g, b) > 240


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    missing = str(tmp_path / "gone.jpg")
    with pytest.raises(DipclipError, match=f"image not found: {missing}"):
        load_rgb(missing)
    (tmp_path / "bad.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(DipclipError, match=r"cannot decode image .*bad\.jpg.*--skip-bad-images"):
        load_rgb(str(tmp_path / "bad.jpg"))
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DipclipError, match=r"cut\.jpg"):
        load_rgb(str(tmp_path / "cut.jpg"))


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize(("size", "match"), [(12_000, "safety limit"), (40_000, "decompression bomb")])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, size, match):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(size, size))
    with pytest.raises(DipclipError, match=match):
        load_rgb(str(path))


def test_pixel_limit_is_ours(tmp_path, monkeypatch):
    Image.new("RGB", (8, 8)).save(tmp_path / "s.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 32)
    with pytest.raises(DipclipError, match=r"8x8 .*safety limit"):
        load_rgb(str(tmp_path / "s.png"))


def to_tensor(img):
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def test_skip_bad_images_drops_and_counts(tmp_path):
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"xx")
    items = [Datum(str(tmp_path / "ok.png"), 3, "x"), Datum(str(tmp_path / "bad.png"), 1, "y"),
             Datum(str(tmp_path / "missing.png"), 2, "z")]
    strict = ImageDataset(items, to_tensor)
    with pytest.raises(DipclipError, match="bad.png"):
        strict[1]
    ds = ImageDataset(items, to_tensor, skip_bad_images=True)
    assert isinstance(ds[1], BadImage) and not ds[1]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_skipping_bad)
    (batch,) = list(loader)
    imgs, labels, indices = batch
    assert imgs.shape == (1, 3, 4, 4) and labels.tolist() == [3] and indices.tolist() == [0]
    assert batch.skipped == (str(tmp_path / "bad.png"), str(tmp_path / "missing.png"))
    assert str(tmp_path / "missing.png") in ds.bad_paths
    again = pickle.loads(pickle.dumps(batch))
    assert isinstance(again, Batch) and again.skipped == batch.skipped and torch.equal(again[0], imgs)
    assert batch.to("cpu").skipped == batch.skipped
    assert collate_skipping_bad([ds[1], ds[2]]) is None
