"""The IDF codec: bit-exact round trips, a file format that refuses wrong models and damaged
files, determinism across thread counts and batch sizes, file size close to -log2 p, the CLI."""

import math

import constriction
import imagecodecs
import numpy as np
import pytest
import torch

from setflow.coding import (
    CodecError,
    CorruptFileError,
    FormatError,
    IDFCodec,
    ModelMismatchError,
    TableSpec,
)
from setflow.coding.format import unpack
from setflow.coding.tables import direct_rows, guard_bits, pop_guard, pop_level, push_guard, push_level
from setflow.models.idf import IDF

ARGS = dict(num_levels=2, num_flows=2, hidden_channels=8, depth=2, coupling="shallow", split_prior="shallow")


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(shape=(3, 8, 8), seed=1, scale=6.0) -> IDF:
    """A non-trivial model: random conditioners, priors with integer scales of a few units."""
    torch.manual_seed(0)
    m = IDF(shape, **ARGS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
        m.base.log_scales.add_(math.log(scale / 256))
        m.base.locs.uniform_(-0.05, 0.05, generator=g)  # within +-13 integers of the centre
        for layer in m.factor_outs():
            last = layer.density.net.net[-1]
            half = last.bias.shape[0] // 2
            last.bias[half:] += math.log(scale / 256)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def codec(model):
    return IDFCodec(model)


@pytest.fixture(scope="module")
def images(model):
    torch.manual_seed(3)
    return model.sample(6).to(torch.uint8).numpy()  # images the model fits: a realistic bit rate


def test_round_trip_single_batch_and_layouts(codec, images):
    for x in (images[0], images, np.moveaxis(images[1], 0, -1), images[:2].astype(np.int64)):
        data = codec.compress(x)
        y = codec.decompress(data)
        assert y.dtype == x.dtype and y.shape == x.shape and np.array_equal(x, y)
    y = codec.decompress(codec.compress(images[0]), as_tensor=True)
    assert torch.equal(y, torch.from_numpy(images[0]))
    h = codec.header(codec.compress(images))
    assert h.shape == images.shape and h.dtype == np.uint8 and h.fingerprint == codec.fingerprint


def test_random_noise_images_round_trip(codec):
    x = np.random.default_rng(0).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)  # far from the model
    assert np.array_equal(codec.decompress(codec.compress(x)), x)


def test_escape_path_round_trips(model, images):
    narrow = IDFCodec(model, spec=TableSpec(max_bins=3))  # almost every symbol escapes
    x = np.concatenate([images[:2], np.full((1, 3, 8, 8), 255, np.uint8), np.zeros((1, 3, 8, 8), np.uint8)])
    data = narrow.compress(x)
    assert np.array_equal(narrow.decompress(data), x)
    # in-distribution images cost more through the escape than through their window
    assert len(narrow.compress(images[:2])) > len(IDFCodec(model).compress(images[:2]))


def _round_trip_rows(z: np.ndarray, rows, spec: TableSpec) -> "constriction.stream.stack.AnsCoder":
    """Push ``z`` over a guard, pop it back (asserting equality) and return the decoder."""
    coder = constriction.stream.stack.AnsCoder()
    push_guard(coder)
    push_level([coder], z[None], rows, spec)
    dec = constriction.stream.stack.AnsCoder(coder.get_compressed())
    assert np.array_equal(pop_level([dec], rows, spec, guard_bits())[0], z)
    return dec


def test_tables_encode_extreme_values():
    spec = TableSpec(tail_mass=1e-4)
    locs = np.array([[0.0, 40.0]] * 5)
    rows = direct_rows(np.zeros((5, 2)), locs, np.zeros((5, 2)), spec)
    z = np.array([0, 40, -(2**30), 2**30, 12345], dtype=np.int64)
    dec = _round_trip_rows(z, rows, spec)
    pop_guard(dec)
    assert dec.is_empty()
    assert np.all(rows.width <= spec.max_bins) and np.all(rows.coarse_pool >= 0) and np.all(rows.pmf_pool >= 0)


def test_wrong_model_or_settings_is_refused(codec, images):
    data = codec.compress(images[0])
    with pytest.raises(ModelMismatchError, match="different model"):
        IDFCodec(_model(seed=2)).decompress(data)
    with pytest.raises(ModelMismatchError):
        IDFCodec(codec.net, spec=TableSpec(tail_mass=1e-5)).decompress(data)
    with pytest.raises(FormatError, match="magic"):
        codec.decompress(b"PNG" + data)


def test_fingerprint_ignores_the_model_dtype_but_not_its_weights(model, codec, images):
    data = codec.compress(images[0])
    twin = IDFCodec(_model().double())  # same weights in float64: same fingerprint, same stream
    assert twin.fingerprint == codec.fingerprint and twin.compress(images[0]) == data
    with torch.no_grad():
        other = _model()
        other.base.locs[0, 0, 0, 0] += 1e-6
    assert IDFCodec(other).fingerprint != codec.fingerprint


def test_truncated_or_extended_files_are_refused(codec, images):
    data = codec.compress(images[:2])
    for n in range(len(data)):
        with pytest.raises(CodecError):
            codec.decompress(data[:n])
    with pytest.raises(CorruptFileError):
        codec.decompress(data + b"\0")


def test_random_byte_flips_never_give_a_wrong_image(codec, images):
    data = codec.compress(images[0])
    for seed in range(300):
        rng = np.random.default_rng(seed)
        buf = bytearray(data)
        for pos in rng.choice(len(buf), size=int(rng.integers(1, 4)), replace=False):
            buf[pos] ^= int(rng.integers(1, 256))
        with pytest.raises(CodecError):
            codec.decompress(bytes(buf))


def test_bit_exact_across_threads_runs_and_batch_sizes(model, images):
    old = torch.get_num_threads()
    try:
        out = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            c = IDFCodec(model)
            out[threads] = (c.compress(images), c.compress(images[1]), c.bits(images))
            assert torch.get_num_threads() == threads  # the coder restores the caller's setting
        assert out[1][0] == out[2][0] and out[1][1] == out[2][1]
        assert np.array_equal(out[1][2], out[2][2])
        c = IDFCodec(model)
        assert c.compress(images[1]) == out[1][1]  # a second run
        singles = np.concatenate([c.bits(images[i]) for i in range(len(images))])
        assert np.array_equal(singles, out[1][2])  # per-image path: batch size does not matter
        torch.set_num_threads(2)
        assert np.array_equal(c.decompress(out[1][0]), images)
        torch.set_num_threads(1)
        assert np.array_equal(c.decompress(out[2][0]), images)
    finally:
        torch.set_num_threads(old)


def test_file_size_matches_the_analytic_bits(model, codec, images):
    data = codec.compress(images)
    header_bytes = len(data) - 4 * unpack(data)[1].size
    payload_bits = 8 * (len(data) - header_bytes)
    analytic = float(codec.bits(images).sum())
    assert analytic > 3000  # a non-trivial amount of information
    assert abs(payload_bits - analytic) <= 0.01 * analytic
    assert header_bytes <= 32
    with torch.no_grad():  # the float32 model's likelihood agrees with the coding path
        lp = model.log_prob(torch.from_numpy(images))
    assert abs(float(-lp.sum()) / math.log(2) - analytic) < 1e-3 * analytic


def test_rejects_non_images(codec):
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        codec.compress(np.full((3, 8, 8), 300, dtype=np.int64))
    with pytest.raises(ValueError, match="integer dtype"):
        codec.compress(np.zeros((3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="does not fit the model"):
        codec.compress(np.zeros((3, 4, 4), dtype=np.uint8))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model):
    from setflow.train.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "idf.pt"
    config = {"model": "idf", "model_args": dict(input_shape=[3, 8, 8], **ARGS), "train": {"dtype": "float32"}}
    save_checkpoint(path, {"config": config, "model": model.state_dict()})
    return str(path)


def test_cli_compress_decompress_png_npy_and_folders(ckpt, images, tmp_path):
    from setflow.cli import main

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(imagecodecs.png_encode(np.ascontiguousarray(np.moveaxis(images[0], 0, -1))))
    np.save(src / "b.npy", images[1:4])
    assert main(["compress", ckpt, str(src), "-o", str(tmp_path / "z") + "/"]) == 0
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == ["a.idf", "b.idf"]
    assert main(["decompress", ckpt, str(tmp_path / "z"), "-o", str(tmp_path / "out") + "/"]) == 0
    png = imagecodecs.png_decode((tmp_path / "out" / "a.png").read_bytes())
    assert np.array_equal(png, np.moveaxis(images[0], 0, -1))
    assert np.array_equal(np.load(tmp_path / "out" / "b.npy"), images[1:4])
    # a single file to a named output, and a forced format
    assert main(["compress", ckpt, str(src / "a.png"), "-o", str(tmp_path / "one.idf")]) == 0
    assert main(["decompress", ckpt, str(tmp_path / "one.idf"), "-o", str(tmp_path / "one.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "one.npy"), np.moveaxis(images[0], 0, -1))
    # the Python API on the same checkpoint reads the CLI's files
    codec = IDFCodec.from_checkpoint(ckpt)
    assert np.array_equal(codec.decompress((tmp_path / "z" / "b.idf").read_bytes()), images[1:4])


def test_cli_errors_are_reported(ckpt, images, tmp_path, capsys):
    from setflow.cli import main

    bad = tmp_path / "bad.idf"
    bad.write_bytes(b"\x89IDF" + bytes(40))
    assert main(["decompress", ckpt, str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "checksum" in capsys.readouterr().err
    np.save(tmp_path / "small.npy", np.zeros((4, 4), np.uint8))
    assert main(["compress", ckpt, str(tmp_path / "small.npy"), "-o", str(tmp_path / "s.idf")]) == 2


def test_progressive_decoding(model, images, ckpt, tmp_path):
    from setflow.cli import main
    from setflow.coding.progressive import progressive_decode

    x = torch.from_numpy(images[:3])
    rows = progressive_decode(model, x, (0.0, 0.3, 1.0), seed=0)
    assert rows.shape == (3, 3, 3, 8, 8) and rows.dtype == torch.uint8
    assert torch.equal(rows[-1], x)  # everything decoded: the image itself
    assert not torch.equal(rows[0], x)
    np.save(tmp_path / "imgs.npy", images[:4])
    out = tmp_path / "fig.png"
    assert main(["progressive", ckpt, str(tmp_path / "imgs.npy"), "-o", str(out)]) == 0
    assert out.stat().st_size > 1000 and imagecodecs.png_decode(out.read_bytes()).ndim == 3


def test_zero_valued_last_escape_bits_decode_and_the_stream_end_is_exact():
    """Zero-valued escape chunks (they cost no bits on an empty stack) sit on the guard and decode;
    after the guard the coder is exactly empty, and a phantom level from it runs dry."""
    spec = TableSpec()
    rows = direct_rows(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)), spec)
    z = np.array([rows.lo[0] + 2**20])  # zigzag 2^21: every chunk below the leading one is 0
    dec = _round_trip_rows(z, rows, spec)
    pop_guard(dec)
    assert dec.is_empty()
    with pytest.raises(CorruptFileError, match="ran out"):
        pop_level([dec], rows, spec, guard_bits())  # a second, phantom group from the empty stack


@pytest.fixture(scope="module")
def grey_ckpt(tmp_path_factory):
    from setflow.train.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("grey") / "idf.pt"
    config = {"model": "idf", "model_args": dict(input_shape=[1, 8, 8], **ARGS), "train": {"dtype": "float32"}}
    save_checkpoint(path, {"config": config, "model": _model((1, 8, 8)).state_dict()})
    return str(path)


def test_cli_grey_model_reads_equal_channel_rgb_and_grey_palette_pngs(grey_ckpt, tmp_path, capsys):
    import io

    from PIL import Image

    from setflow.cli import main

    grey = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    (tmp_path / "rgb.png").write_bytes(imagecodecs.png_encode(np.repeat(grey[..., None], 3, axis=-1)))
    buf = io.BytesIO()
    Image.fromarray(grey).convert("P").save(buf, "PNG")  # a palette PNG with a grey palette
    (tmp_path / "pal.png").write_bytes(buf.getvalue())
    for name in ("rgb", "pal"):
        assert main(["compress", grey_ckpt, str(tmp_path / f"{name}.png"), "-o", str(tmp_path / f"{name}.idf")]) == 0
        assert "read as greyscale" in capsys.readouterr().out
        assert main(["decompress", grey_ckpt, str(tmp_path / f"{name}.idf"), "-o", str(tmp_path / f"{name}_out.png")]) == 0
        assert np.array_equal(imagecodecs.png_decode((tmp_path / f"{name}_out.png").read_bytes()), grey)
    colour = np.repeat(grey[..., None], 3, axis=-1)
    colour[0, 0, 1] ^= 1
    (tmp_path / "colour.png").write_bytes(imagecodecs.png_encode(colour))
    assert main(["compress", grey_ckpt, str(tmp_path / "colour.png"), "-o", str(tmp_path / "c.idf")]) == 2
    assert "convert it to greyscale first" in capsys.readouterr().err and not (tmp_path / "c.idf").exists()


def test_cli_folder_with_a_bad_file_writes_nothing_unless_skip_errors(ckpt, images, tmp_path, capsys):
    from setflow.cli import main

    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "a.npy", images[0])
    np.save(src / "b.npy", np.zeros((4, 4), np.uint8))  # does not fit the model
    np.save(src / "c.npy", images[1])
    assert main(["compress", ckpt, str(src), "-o", str(tmp_path / "z") + "/"]) == 2
    assert "b.npy" in capsys.readouterr().err and not (tmp_path / "z").exists()
    assert main(["compress", ckpt, str(src), "-o", str(tmp_path / "z") + "/", "--skip-errors"]) == 0
    assert "skipped 1 of 3 inputs" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == ["a.idf", "c.idf"]
    (tmp_path / "z" / "c.idf").write_bytes(b"\x89IDF" + bytes(40))  # a damaged file among good ones
    assert main(["decompress", ckpt, str(tmp_path / "z"), "-o", str(tmp_path / "out") + "/"]) == 2
    assert not (tmp_path / "out").exists()
    assert main(["decompress", ckpt, str(tmp_path / "z"), "-o", str(tmp_path / "out") + "/", "--skip-errors"]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.npy"]
    assert np.array_equal(np.load(tmp_path / "out" / "a.npy"), images[0])


def test_cli_several_inputs_need_an_existing_or_explicit_folder(ckpt, images, tmp_path, capsys):
    from setflow.cli import main

    np.save(tmp_path / "a.npy", images[0])
    np.save(tmp_path / "b.npy", images[1])
    both = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    assert main(["compress", ckpt, *both, "-o", str(tmp_path / "both.idf")]) == 2
    assert "trailing '/'" in capsys.readouterr().err and not (tmp_path / "both.idf").exists()
    assert main(["compress", ckpt, *both, "-o", str(tmp_path / "new") + "/"]) == 0
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a.idf", "b.idf"]
    assert main(["compress", ckpt, *both, "-o", str(tmp_path / "new")]) == 0  # existing folder
    assert main(["compress", ckpt, both[0], "-o", str(tmp_path / "noext")]) == 2  # a file needs a suffix


def test_readme_codec_examples_use_the_tools_suffix():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith(("setflow compress", "setflow decompress"))]
    assert lines and not any(".sfz" in ln for ln in lines)
    assert any(".idf" in ln for ln in lines if ln.startswith("setflow decompress"))
    # several inputs always go to a folder written with a trailing '/'
    assert all(" -o " in ln and ln.split(" -o ")[1].split()[0].endswith("/") for ln in lines
               if ln.startswith("setflow compress") and len(ln.split(" -o ")[0].split()) > 4)


def test_values_outside_8_bits_are_a_format_error_naming_the_range(codec):
    with pytest.raises(FormatError, match=r"\[0, 255\] \(8-bit images\), got values 0\.\.300"):
        codec.compress(np.concatenate([np.zeros((3, 4, 8)), np.full((3, 4, 8), 300)], 1).astype(np.uint16))
    with pytest.raises(FormatError, match=r"got values -1\.\.0"):
        codec.check_image(-np.eye(8, dtype=np.int16)[None].repeat(3, 0))


def test_compress_decodes_what_it_wrote_before_keeping_it(ckpt, images, tmp_path, capsys, monkeypatch):
    from setflow.cli import main

    src = tmp_path / "a.npy"
    np.save(src, images[0])
    before = src.read_bytes()
    (tmp_path / "old.idf").write_bytes(b"an earlier output")
    decode = IDFCodec.decompress_many  # the CLI verifies a batch of files in one pass
    monkeypatch.setattr(IDFCodec, "decompress_many",
                        lambda self, files, as_tensor=False, errors="raise": [x ^ 1 for x in decode(self, files)])
    for out in ("a.idf", "old.idf"):
        assert main(["compress", ckpt, str(src), "-o", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "verification failed" in err and "input is untouched" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "old.idf"]  # no output, no temp file left
    assert src.read_bytes() == before and (tmp_path / "old.idf").read_bytes() == b"an earlier output"

    def undecodable(self, files, as_tensor=False, errors="raise"):
        assert errors == "return"  # one bad file must not hide the others' results
        return [CorruptFileError("checksum mismatch") for _ in files]

    monkeypatch.setattr(IDFCodec, "decompress_many", undecodable)
    assert main(["compress", ckpt, str(src), "-o", str(tmp_path / "a.idf")]) == 2
    assert "verification failed" in capsys.readouterr().err and not (tmp_path / "a.idf").exists()
    # --no-verify never decodes (and says so); the default path keeps a file that does decode
    assert main(["compress", ckpt, str(src), "-o", str(tmp_path / "a.idf"), "--no-verify"]) == 0
    assert "(not verified)" in capsys.readouterr().out
    monkeypatch.setattr(IDFCodec, "decompress_many", decode)
    assert main(["compress", ckpt, str(src), "-o", str(tmp_path / "b.idf")]) == 0
    assert np.array_equal(IDFCodec.from_checkpoint(ckpt).decompress((tmp_path / "b.idf").read_bytes()), images[0])


def test_compress_verify_flag_is_shared_with_the_set_codec():
    from setflow.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["compress", "c.pt", "x.npz", "-o", "y"]).verify is True
    assert parser.parse_args(["compress", "c.pt", "x.npz", "-o", "y", "--no-verify"]).verify is False


def test_cli_never_overwrites_an_input_and_progressive_checks_its_options(ckpt, images, tmp_path, capsys):
    from setflow.cli import main

    src = tmp_path / "a.npy"
    np.save(src, images[0])
    before = src.read_bytes()
    assert main(["compress", ckpt, str(src), "-o", str(src)]) == 2
    assert "is the input itself" in capsys.readouterr().err and src.read_bytes() == before
    np.save(tmp_path / "wide.npy", np.full((3, 8, 8), 300, np.uint16))
    for img, extra, part in ((src, ["--max-images", "0"], "--max-images must be >= 1"),
                             (src, ["--fractions", "0.5,x"], "--fractions must be comma-separated numbers"),
                             (tmp_path / "wide.npy", [], "wide.npy: image values must lie in [0, 255]")):
        argv = ["progressive", ckpt, str(img), "-o", str(tmp_path / "p.png"), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and part in err and "Traceback" not in err, err
    assert not (tmp_path / "p.png").exists()
