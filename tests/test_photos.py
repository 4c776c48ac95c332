"""Offline photo tiles (setflow/data/photos.py): exact area averaging, tiles that are what they claim,
split by photo, checksums, one-line errors; on small JPEG/PNG images made here (no network, no apt)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from setflow.data import debian
from setflow.data.cache import save_npz_cache
from setflow.data.common import DataError
from setflow.data.photos import (
    PACKAGES,
    PHOTO_SOURCES,
    PhotoSource,
    _cache_meta,
    box_downsample,
    build_tile_splits,
    locate_sources,
    photo_tiles,
    photo_tiles_path,
    prepare_photo_tiles,
    read_photo,
)

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------- helpers
def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour image with some noise (compresses like a photo, every pixel differs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / (7 + seed)), 128 + 100 * np.cos(y / 9.0), (x + y) % 256], -1)
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def _encode(img: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _crafted(folder: Path, specs) -> tuple[list[PhotoSource], dict[str, Path], dict[str, np.ndarray]]:
    """Write ``(name, split, h, w, fmt)`` images into ``folder``; return sources, files, decoded pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    sources, files, pixels = [], {}, {}
    for i, (name, split, h, w, fmt) in enumerate(specs):
        data = _encode(_photo(h, w, i), fmt)
        ext = ".jpg" if fmt == "JPEG" else ".png"
        src = PhotoSource(name, "setflow-test-photos", f"usr/share/setflow-test/{name}{ext}", _sha(data), split)
        (folder / src.filename).write_bytes(data)
        sources.append(src)
        files[name] = folder / src.filename
        pixels[name] = read_photo(files[name])
    return sources, files, pixels


SPECS = [("a", "train", 100, 140, "JPEG"), ("b", "train", 90, 70, "PNG"), ("c", "train", 64, 64, "JPEG"),
         ("d", "valid", 80, 96, "JPEG"), ("e", "test", 72, 100, "PNG"), ("f", "test", 40, 40, "PNG")]


def _slow_box(img: np.ndarray, f: int) -> np.ndarray:
    """Reference: every output pixel the float mean of its f x f block, rounded half up, by loops."""
    h, w, c = img.shape[0] // f, img.shape[1] // f, img.shape[2]
    out = np.zeros((h, w, c), np.uint8)
    for i in range(h):
        for j in range(w):
            for k in range(c):
                block = img[i * f:(i + 1) * f, j * f:(j + 1) * f, k].astype(np.float64)
                out[i, j, k] = int(np.floor(block.mean() + 0.5))
    return out


# --------------------------------------------------------------------------- pixels
@pytest.mark.parametrize("factor", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("shape", [(8, 12, 3), (13, 11, 3), (10, 10, 1)])
def test_box_downsample_is_the_exact_area_average(factor, shape):
    rng = np.random.default_rng(factor * 100 + shape[0])
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    got = box_downsample(img, factor)
    assert got.dtype == np.uint8 and got.shape == (shape[0] // factor, shape[1] // factor, shape[2])
    np.testing.assert_array_equal(got, _slow_box(img, factor))


def test_box_downsample_rounds_half_up_and_keeps_extremes():
    img = np.array([[[0], [1]], [[0], [1]]], np.uint8)  # mean 0.5 -> 1
    assert box_downsample(img, 2).item() == 1
    img = np.array([[[0], [0]], [[1], [0]]], np.uint8)  # mean 0.25 -> 0
    assert box_downsample(img, 2).item() == 0
    full = np.full((6, 6, 3), 255, np.uint8)
    assert (box_downsample(full, 3) == 255).all() and (box_downsample(full * 0, 3) == 0).all()
    with pytest.raises(ValueError, match="factor"):
        box_downsample(full, 0)
    with pytest.raises(ValueError, match="uint8"):
        box_downsample(full.astype(np.float32), 2)


@pytest.mark.parametrize("size,factor", [(4, 2), (8, 3), (5, 4)])
def test_tiles_are_non_overlapping_and_cover_what_they_claim(size, factor):
    img = _photo(101, 77, 3)
    tiles, origins = photo_tiles(img, size, factor)
    span = size * factor
    rows, cols = 101 // span, 77 // span
    assert tiles.shape == (rows * cols, size, size, 3) and tiles.dtype == np.uint8
    assert origins.shape == (rows * cols, 2)
    for t, (r, c) in zip(tiles, origins):  # each tile is the box average of the block it names
        assert 0 <= r and r + span <= 101 and 0 <= c and c + span <= 77
        np.testing.assert_array_equal(t, _slow_box(img[r:r + span, c:c + span], factor))
    cover = np.zeros(img.shape[:2], np.int64)  # no source pixel in two tiles; the grid is one solid block
    for r, c in origins:
        cover[r:r + span, c:c + span] += 1
    assert cover.max() == 1 and cover.sum() == rows * cols * span * span
    top, left = origins.min(0)
    assert (top, left) == ((101 - rows * span) // 2, (77 - cols * span) // 2)  # centred
    assert cover[top:top + rows * span, left:left + cols * span].all()


def test_an_image_smaller_than_one_tile_gives_no_tiles():
    tiles, origins = photo_tiles(_photo(20, 50, 0), 8, 4)
    assert tiles.shape == (0, 8, 8, 3) and origins.shape == (0, 2)


def test_read_photo_jpeg_png_and_greyscale(tmp_path):
    from PIL import Image

    img = _photo(30, 40, 1)
    (tmp_path / "x.png").write_bytes(_encode(img, "PNG"))
    np.testing.assert_array_equal(read_photo(tmp_path / "x.png"), img)  # PNG is lossless, rows x cols x RGB
    (tmp_path / "x.jpg").write_bytes(_encode(img, "JPEG"))
    jpg = read_photo(tmp_path / "x.jpg")
    assert jpg.shape == (30, 40, 3) and np.abs(jpg.astype(int) - img).mean() < 8
    Image.fromarray(img[..., 0]).save(tmp_path / "g.png")
    grey = read_photo(tmp_path / "g.png")
    assert grey.shape == (30, 40, 3) and (grey == img[..., :1]).all()


@pytest.mark.parametrize("kind", ["truncated_jpeg", "garbage", "empty", "sixteen_bit", "rgba"])
def test_a_corrupt_or_unusable_image_is_a_one_line_error_naming_the_file(tmp_path, kind):
    from PIL import Image

    img = _photo(64, 64, 2)
    path = tmp_path / f"bad_{kind}.png"
    if kind == "truncated_jpeg":
        path = tmp_path / "bad.jpg"
        path.write_bytes(_encode(img, "JPEG")[:600])
    elif kind == "garbage":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20 + b"not a png at all")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "sixteen_bit":
        Image.fromarray(img[..., 0].astype(np.uint16) * 257).save(path)
    else:
        Image.fromarray(np.concatenate([img, img[..., :1]], -1), mode="RGBA").save(path)
    with pytest.raises(DataError) as e:
        read_photo(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- splits and sources
def test_build_splits_by_photo(tmp_path):
    sources, files, pixels = _crafted(tmp_path, SPECS)
    arrays = build_tile_splits(files, sources, size=32, factor=2)
    seen = {}
    for split in SPLITS:
        names = set(arrays[f"{split}_photo"].tolist())
        want = {s.name for s in sources if s.split == split}
        assert names <= want, (split, names, want)
        for n in names:
            assert n not in seen, f"photo {n} in {seen.get(n)} and {split}"
            seen[n] = split
        assert arrays[split].dtype == np.uint8 and arrays[split].shape[1:] == (32, 32, 3)
        assert len(arrays[split]) == len(arrays[f"{split}_photo"]) == len(arrays[f"{split}_origin"])
        for t, n, (r, c) in zip(arrays[split], arrays[f"{split}_photo"], arrays[f"{split}_origin"]):
            np.testing.assert_array_equal(t, box_downsample(pixels[n][r:r + 64, c:c + 64], 2))
    counts = {s.name: (s.split, (pixels[s.name].shape[0] // 64) * (pixels[s.name].shape[1] // 64)) for s in sources}
    for split in SPLITS:
        assert len(arrays[split]) == sum(n for sp, n in counts.values() if sp == split)
    assert "f" not in seen  # 40 x 40 is below one 64-pixel block: no tiles
    again = build_tile_splits(files, sources, size=32, factor=2)  # fixed shuffle: same arrays every time
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)
    with pytest.raises(DataError, match="no 32x32 tiles in the valid split at factor 3"):
        build_tile_splits(files, sources, size=32, factor=3)
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        build_tile_splits(files, sources, size=32, factor=1)


def test_the_pinned_photo_list_splits_by_photo():
    names = [s.name for s in PHOTO_SOURCES]
    assert len(names) == len(set(names))
    by_split = {sp: {s.name for s in PHOTO_SOURCES if s.split == sp} for sp in SPLITS}
    assert all(by_split.values()) and sum(map(len, by_split.values())) == len(names)
    assert all(len(s.sha256) == 64 and int(s.sha256, 16) >= 0 for s in PHOTO_SOURCES)
    assert {s.package for s in PHOTO_SOURCES} == set(PACKAGES)
    # never-JPEG photos are test; some wallpapers of each package are held out too
    assert all(s.split == "test" for s in PHOTO_SOURCES if s.package == "libjxl-testdata")
    for pkg in ("plasma-workspace-wallpapers", "mate-backgrounds"):
        assert any(s.split == "test" for s in PHOTO_SOURCES if s.package == pkg)
    assert len({s.path for s in PHOTO_SOURCES}) == len(PHOTO_SOURCES)


def test_a_checksum_mismatch_is_a_one_line_error_naming_the_file(tmp_path):
    root = tmp_path / "root"
    sources, _, _ = _crafted(root / "photos" / "sources", SPECS)
    bad = root / "photos" / "sources" / sources[1].filename
    bad.write_bytes(bad.read_bytes() + b"\x00")  # the same picture with one byte more
    with pytest.raises(DataError) as e:
        prepare_photo_tiles(root, 32, 2, download=False, sources=sources)
    assert str(bad) in str(e.value) and "sha256" in str(e.value) and "\n" not in str(e.value)


def test_prepare_builds_then_reuses_a_verified_cache(tmp_path):
    root = tmp_path / "root"
    sources, _, _ = _crafted(root / "photos" / "sources", SPECS)
    arrays, line, info = prepare_photo_tiles(root, 32, 2, download=False, sources=sources)
    assert not info["reused"] and info["path"] == photo_tiles_path(root, 32, 2) and info["path"].is_file()
    assert line.startswith("offline photo tiles from Debian packages") and "CIFAR" in line and "cache built" in line
    arrays2, line2, info2 = prepare_photo_tiles(root, 32, 2, download=False, sources=sources)
    assert info2["reused"] and "cache reused" in line2
    assert all(np.array_equal(arrays[k], arrays2[k]) for k in arrays)
    with np.load(info["path"]) as z:
        assert sorted(z.files) == sorted(f"{s}{k}" for s in SPLITS for k in ("", "_photo", "_origin"))
        assert z["train"].shape[1:] == (32, 32, 3) and z["train"].dtype == np.uint8


def test_missing_sources_offline_is_a_one_line_error_and_never_calls_apt(tmp_path, monkeypatch):
    def no_apt(*a, **k):
        raise AssertionError("apt must not run offline")

    monkeypatch.setattr(debian, "unpacked_package", no_apt)
    with pytest.raises(DataError) as e:
        locate_sources(tmp_path, PHOTO_SOURCES, fetch=False, system_root=tmp_path / "nothing")
    assert "setflow data photos" in str(e.value) and "\n" not in str(e.value)


def test_missing_sources_are_fetched_from_the_package_and_cached(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    sources, files, _ = _crafted(tmp_path / "made", SPECS[:2])
    for s in sources:
        (tree / s.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files[s.name], tree / s.path)
    calls = []

    @contextmanager
    def fake_unpacked(package, workdir):
        calls.append(package)
        yield tree

    monkeypatch.setattr(debian, "unpacked_package", fake_unpacked)
    root = tmp_path / "root"
    found = locate_sources(root, sources, fetch=True, system_root=tmp_path / "nothing")
    assert calls == ["setflow-test-photos"]  # one download per package
    assert all(p.parent == root / "photos" / "sources" and p.read_bytes() == files[n].read_bytes()
               for n, p in found.items())
    assert locate_sources(root, sources, fetch=False, system_root=tmp_path / "nothing") == found  # cached now
    (tree / sources[0].path).write_bytes(b"another file")  # a package with other bytes: refused
    (root / "photos" / "sources" / sources[0].filename).unlink()
    with pytest.raises(DataError, match=r"sha256 .* does not match the pinned"):
        locate_sources(root, sources, fetch=True, system_root=tmp_path / "nothing")


def test_an_installed_package_is_used_only_when_its_checksum_matches(tmp_path, monkeypatch):
    sources, files, _ = _crafted(tmp_path / "made", SPECS[:2])
    system = tmp_path / "system"
    for s in sources:
        (system / s.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files[s.name], system / s.path)
    monkeypatch.setattr(debian, "unpacked_package", None)  # must not be reached
    found = locate_sources(tmp_path / "root", sources, fetch=False, system_root=system)
    assert found == {s.name: system / s.path for s in sources}
    (system / sources[0].path).write_bytes(b"other version")  # another version installed: not used
    with pytest.raises(DataError, match="1 source photos are missing"):
        locate_sources(tmp_path / "root", sources, fetch=False, system_root=system)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")
def test_unpacked_package_with_a_local_deb_and_a_stub_apt_get(tmp_path, monkeypatch):
    """The real download path end to end, with ``apt-get`` replaced by a script that copies a .deb
    built here (dpkg-deb --build), so nothing touches the network."""
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text("Package: setflow-test-photos\nVersion: 1.0\nArchitecture: all\n"
                                            "Maintainer: test <t@example.org>\nDescription: test\n")
    sources, files, _ = _crafted(tmp_path / "made", SPECS[:1])
    (pkg / sources[0].path).parent.mkdir(parents=True)
    shutil.copy(files["a"], pkg / sources[0].path)
    deb = tmp_path / "setflow-test-photos_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)], check=True, capture_output=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "apt-get"
    stub.write_text(f"#!/bin/sh\n[ \"$1\" = download ] && [ \"$2\" = setflow-test-photos ] && cp {deb} . && exit 0\n"
                    "echo 'E: Unable to locate package' \"$2\" >&2; exit 100\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "root"
    found = locate_sources(root, sources, fetch=True, system_root=tmp_path / "nothing")
    assert found["a"].read_bytes() == files["a"].read_bytes()
    assert [p.name for p in (root / "photos").iterdir()] == ["sources"]  # the .deb and its tree are gone
    with pytest.raises(DataError) as e:
        with debian.unpacked_package("no-such-package", tmp_path / "w"):
            pass
    assert "E: Unable to locate package no-such-package" in str(e.value) and "apt-get update" in str(e.value)
    assert "\n" not in str(e.value)


def test_no_apt_get_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError) as e:
        debian.apt_download("mate-backgrounds", tmp_path / "w")
    assert "apt-get` not found" in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- data sets, config, CLI
def _fake_photo_cache(root: Path, size: int, factor: int = 4) -> dict:
    """A cache for the pinned photo list filled with made-up tiles (what `setflow data photos` writes)."""
    rng = np.random.default_rng(size)
    arrays = {}
    for i, split in enumerate(SPLITS):
        n = (24, 8, 10)[i]
        arrays[split] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_photo"] = np.array([f"p{i}"] * n)
        arrays[f"{split}_origin"] = np.zeros((n, 2), np.int32)
    save_npz_cache(photo_tiles_path(root, size, factor), arrays, _cache_meta(size, factor, PHOTO_SOURCES))
    return arrays


@pytest.mark.parametrize("size", [32, 64])
def test_photos_image_datasets_load_nchw_like_imagenet(tmp_path, size, monkeypatch):
    from setflow.data import IMAGE_DATASETS, load_image_dataset
    from setflow.registry import DATASETS

    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    arrays = _fake_photo_cache(tmp_path, size)
    assert f"photos{size}" in IMAGE_DATASETS and f"photos{size}" in DATASETS
    d = load_image_dataset(f"photos{size}", tmp_path, verbose=False)
    assert d.train.shape == (24, 3, size, size) and d.train.dtype == torch.uint8 and d.labels is None
    np.testing.assert_array_equal(d.test.numpy(), arrays["test"].transpose(0, 3, 1, 2))
    assert d.source.startswith("offline photo tiles")
    e = DATASETS.get(f"photos{size}")(data_root=str(tmp_path), download=False, limit=5)
    assert e.train.shape == (5, 3, size, size) and e.unit == "bits_per_dim" and e.kind == "images"
    assert e.label == "offline photo tiles" and "CIFAR" in e.source
    with pytest.raises(DataError, match="setflow data photos"):  # another factor: not built, offline
        DATASETS.get(f"photos{size}")(data_root=str(tmp_path / "empty"), download=False, factor=2)


def test_cpu_config_builds_and_trains_two_steps(tmp_path, monkeypatch, one_thread):
    from setflow.train.config import load_config
    from setflow.train.trainer import train

    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    _fake_photo_cache(tmp_path, 32)
    cfg = load_config(REPO / "configs" / "images" / "idf_photos32_cpu.yaml",
                      ["train.max_steps=2", "train.batch_size=8", "eval.max_examples=8", "eval.batch_size=8"])
    assert cfg["data"] == "photos32" and cfg["model_args"]["input_shape"] == [3, 32, 32]
    summary = train(cfg, str(tmp_path / "run"), data_root=str(tmp_path), log=lambda *a, **k: None)
    assert summary["step"] == 2 and Path(summary["checkpoint"]).is_file()


def test_cli_data_photos(tmp_path, capsys, monkeypatch):
    from setflow.cli import main

    import setflow.data.photos as photos

    sources, _, _ = _crafted(tmp_path / "root" / "photos" / "sources", SPECS)
    monkeypatch.setattr(photos, "prepare_photo_tiles", lambda *a, **k: prepare_photo_tiles(*a, **k, sources=sources))
    png = tmp_path / "grid.png"
    argv = ["data", "photos", "--size", "32", "--factor", "2", "--data-root", str(tmp_path / "root"), "--offline"]
    assert main(argv + ["--preview", str(png)]) == 0
    out = capsys.readouterr().out
    assert "data: offline photo tiles from Debian packages" in out and "photos32 (factor 2): train" in out
    assert png.is_file() and png.stat().st_size > 0
    assert main(argv[:4] + ["--factor", "1"] + argv[6:]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("setflow data: error: --factor must be an integer >= 2") and "\n" not in err
    assert main(["data", "photos", "--data-root", str(tmp_path / "none"), "--offline"]) == 2
    err = capsys.readouterr().err.strip()
    assert "setflow data photos" in err and "\n" not in err


# --------------------------------------------------------------------------- SurVAE configs, codec table
@pytest.mark.parametrize("name,model", [("baseline_photos32_cpu", "baseline_image_flow"),
                                        ("maxpool_photos32_cpu", "maxpool_flow")])
def test_survae_photo_configs_train_two_steps_and_evaluate(tmp_path, monkeypatch, one_thread, name, model):
    from setflow.train.config import load_config
    from setflow.train.trainer import train

    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    _fake_photo_cache(tmp_path, 32)
    cfg = load_config(REPO / "configs" / "images" / f"{name}.yaml",
                      ["train.max_steps=2", "train.batch_size=4", "eval.max_examples=4", "eval.batch_size=4",
                       "eval.iwbo_k=2", "eval.iwbo_chunk=2"])
    assert cfg["model"] == model and cfg["data"] == "photos32" and cfg["model_args"]["data_shape"] == [3, 32, 32]
    base, maxpool = (load_config(REPO / "configs" / "images" / f"{m}_photos32_cpu.yaml") for m in ("baseline", "maxpool"))
    for key in ("model_args", "data", "data_args", "train", "eval"):  # the two differ in the downsampling only
        assert base[key] == maxpool[key], key
    summary = train(cfg, str(tmp_path / "run"), data_root=str(tmp_path), log=lambda *a, **k: None)
    assert summary["step"] == 2 and Path(summary["checkpoint"]).is_file()


def _two_source_cache(root: Path) -> dict:
    """A photos32 cache whose test split holds tiles of two photos, ``jxl-a`` (3 tiles) and ``kde-b`` (2)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:32, 0:32]
    smooth = np.stack([x * 4, y * 4, (x + y) * 2], -1)  # a gradient: every codec codes it well below 8 bits
    arrays = {}
    for split, names in (("train", ["kde-c"] * 4), ("valid", ["kde-d"] * 2), ("test", ["jxl-a", "kde-b"] * 2 + ["jxl-a"])):
        n = len(names)
        arrays[split] = np.clip(smooth[None] + rng.integers(-3, 4, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        arrays[f"{split}_photo"] = np.array(names)
        arrays[f"{split}_origin"] = np.zeros((n, 2), np.int32)
    save_npz_cache(photo_tiles_path(root, 32, 4), arrays, _cache_meta(32, 4, PHOTO_SOURCES))
    return arrays


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_codecs", REPO / "scripts" / "bench_codecs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_codec_table_on_a_few_photo_tiles_decodes_every_idf_row_bit_exact(tmp_path, monkeypatch, one_thread):
    from setflow.train.config import load_config
    from setflow.train.trainer import train

    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    arrays = _two_source_cache(tmp_path)
    cfg = load_config(REPO / "configs" / "images" / "idf_photos32_cpu.yaml",
                      ["train.max_steps=1", "train.batch_size=4", "eval.max_examples=2", "eval.batch_size=2",
                       "model_args.num_flows=1", "model_args.hidden_channels=8", "model_args.depth=1"])
    ckpt = train(cfg, str(tmp_path / "run"), data_root=str(tmp_path), log=lambda *a, **k: None)["checkpoint"]
    bench = _bench_module()

    x, source, names = bench.test_images(cfg, "test", None, str(tmp_path), photos=["jxl-"])
    np.testing.assert_array_equal(x, arrays["test"][arrays["test_photo"] == "jxl-a"].transpose(0, 3, 1, 2))
    assert x.shape == (3, 3, 32, 32) and source.endswith("only the tiles of jxl-a") and list(names) == ["jxl-a"] * 3
    groups = bench.parse_groups(["never-JPEG=jxl-", "wallpapers=kde-,mate-"])
    assert groups == {"never-JPEG": ["jxl-"], "wallpapers": ["kde-", "mate-"]}
    table = bench.bench(ckpt, None, runs=1, data_root=str(tmp_path), batch_size=2, groups=groups)
    main, by_group = table.split("Bits/dim by source")
    rows = [line.split(" | ") for line in main.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [r[0].lstrip("| ") for r in rows]
    assert names[:4] == ["IDF (analytic)", "IDF (file per image)", "IDF (file per image, batched)",
                         "IDF (one file, 5 images)"]
    assert [r[1] for r in rows if r[0] == "| JPEG XL"] == ["libjxl lossless, effort 7", "libjxl lossless, effort 9"]
    for r in rows[1:]:  # every file decoded back bit-exact, IDF's included
        assert r[-1].rstrip(" |") == "yes", r
        bpd, ratio = float(r[2]), float(r[3])
        assert 0 < bpd < 16 and ratio == pytest.approx(8 / bpd, abs=0.006)  # 2 and 3 decimals
    assert "Lossless compression of 5 test images" in table and "best classical codec: " in table
    # by source: the 5 tiles' bytes split into 3 + 2, weighted back they give the whole table's figure
    assert "never-JPEG (3 tiles: jxl-a) | wallpapers (2 tiles: kde-b)" in by_group
    whole = {r[0].lstrip("| ") + ("" if r[0] != "| JPEG XL" else ", " + r[1].split(", ")[-1]): float(r[2]) for r in rows}
    checked = 0
    for line in by_group.splitlines():
        cells = line.strip("| ").split(" | ")
        if cells[0] in whole:
            assert (3 * float(cells[1]) + 2 * float(cells[2])) / 5 == pytest.approx(whole[cells[0]], abs=2e-3), line
            checked += 1
    assert checked == 8  # IDF analytic and files, PNG, JPEG 2000, WebP, JPEG XL 7 and 9, JPEG-LS
    assert by_group.count("| IDF (one file per group) |") == 1
    with pytest.raises(ValueError, match="LABEL=PREFIX"):
        bench.parse_groups(["jxl-"])
    with pytest.raises(ValueError, match="no test tile comes from a photo named mate-"):
        bench.test_images(cfg, "test", None, str(tmp_path), photos=["mate-"])
    with pytest.raises(ValueError, match="--photos selects photo tiles"):
        bench.test_images(cfg, "test", None, str(tmp_path), data="mnist", photos=["jxl-"])
    with pytest.raises(SystemExit) as e:
        bench.main(["--ckpt", ckpt, "--data-root", str(tmp_path), "--photos", "nope-", "--runs", "1"])
    assert e.value.code == 2


@pytest.mark.slow
def test_image_study_on_photo_tiles_trains_both_at_equal_steps(tmp_path, monkeypatch, capsys, one_thread):
    import importlib.util

    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    monkeypatch.setenv("SETFLOW_DATA", str(tmp_path))
    _fake_photo_cache(tmp_path, 32)
    spec = importlib.util.spec_from_file_location("image_study", REPO / "scripts" / "image_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    runs = [str(tmp_path / "base"), str(tmp_path / "maxpool")]
    argv = ["--recipe", "photos32", "--equal-steps", "--runs", *runs, "--out", str(tmp_path / "out"),
            "--max-examples", "4", "--batch-size", "4", "--iwbo-k", "2", "--iwbo-chunk", "2",
            "train.max_steps=2", "train.batch_size=4", "eval.max_examples=4", "eval.batch_size=4",
            "eval.iwbo_k=2", "eval.iwbo_chunk=2"]
    assert study.main(argv) == 0
    out = capsys.readouterr().out
    assert "baseline: 2 steps" in out and "maxpool: 2 steps" in out
    table = (tmp_path / "out" / "image_study_photos32.md").read_text().splitlines()
    assert [r.split(" | ")[:3] for r in table[2:]] == [["| baseline_image_flow", "photos32", "2"],
                                                       ["| maxpool_flow", "photos32", "2"]]
    for r in table[2:]:
        elbo, iwbo = float(r.split(" | ")[3]), float(r.split(" | ")[4])
        assert 0 < iwbo <= elbo + 1e-3 < 20  # IWBO is the tighter bound
    assert all((tmp_path / "out" / f"image_study_{Path(r).name}.png").is_file() for r in runs)
    with pytest.raises(SystemExit, match="trains on photos32, not mnist"):
        study.main(["--recipe", "photos32", "--data", "mnist", "--skip-train"])
