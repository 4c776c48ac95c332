"""AC3D reader (object tree, loc / rot, fans, lines, errors), the airplane selection rule and pose,
Debian member extraction, and the ``airplanes`` source end to end on a crafted ``.deb`` (the real
287 MB package is never needed here)."""

import hashlib
import io
import tarfile

import numpy as np
import pytest

from setflow.data import airplanes
from setflow.data.ac3d import parse_ac3d, read_ac3d
from setflow.data.common import DataError, DataWarning
from setflow.data.debian import extract_members
from setflow.data.pointclouds import load_pointclouds, sample_surface

# world -> group (loc, rot 90 deg about z, a data block) -> quad (loc, rot 90 deg about x, a line
# surface); world -> triangle; world -> light (skipped with its child)
NESTED = """AC3Db
MATERIAL "grey" rgb 0.5 0.5 0.5  amb 0.2 0.2 0.2  emis 0 0 0  spec 0 0 0  shi 10  trans 0
OBJECT world
name "root"
kids 3
OBJECT group
name "g"
data 11
hello
world
loc 10 0 0
rot 0 -1 0  1 0 0  0 0 1
kids 1
OBJECT poly
name "quad"
texture "skin.png"
texrep 1 1
crease 30.0
loc 0 0 1
rot 1 0 0  0 0 -1  0 1 0
numvert 5
0 0 0
1 0 0
1 1 0
0 1 0
5 5 5
numsurf 2
SURF 0x10
mat 0
refs 4
0 0 0
1 1 0
2 1 1
3 0 1
SURF 0x02
mat 0
refs 2
3 0 0
4 0 0
kids 0
OBJECT poly
name "tri"
numvert 3
0 0 0
2 0 0
0 0 3
numsurf 1
SURF 0x30
mat 0
refs 3
0 0 0
1 1 0
2 0 1
kids 0
OBJECT light
name "lamp"
kids 1
OBJECT poly
name "bulb"
numvert 3
0 0 0
1 0 0
0 1 0
numsurf 1
SURF 0
mat 0
refs 3
0 0 0
1 0 0
2 0 0
kids 0
"""

# by hand: quad vertex v -> R_g (R_q v + t_q) + t_g, R_q: (x, y, z) -> (x, -z, y), t_q = (0, 0, 1),
# R_g: (x, y, z) -> (-y, x, z), t_g = (10, 0, 0); fan (v0 v1 v2), (v0 v2 v3)
QUAD_TRIANGLES = [[[10, 0, 1], [10, 1, 1], [10, 1, 2]],
                  [[10, 0, 1], [10, 1, 2], [10, 0, 2]]]
TRIANGLE = [[0, 0, 0], [2, 0, 0], [0, 0, 3]]


def _triangles(mesh):
    return mesh.vertices[mesh.faces]


def test_nested_transforms_fans_and_skipped_lines(tmp_path):
    path = tmp_path / "nested.ac"
    path.write_text(NESTED)
    m = read_ac3d(path)
    np.testing.assert_allclose(_triangles(m), QUAD_TRIANGLES + [TRIANGLE], atol=1e-12)
    assert m.lines == 1 and m.missing_kids == 0 and m.faces.dtype == np.int64
    assert [(p, a, b) for p, a, b in m.parts] == [("root/g/quad", 0, 2), ("root/tri", 2, 3)]  # no light
    # the same file with CRLF line ends, blank lines inside blocks and a trailing blank line
    crlf = NESTED.replace("2 1 1\n", "\n2 1 1\n").replace("\n", "\r\n") + "\r\n"
    np.testing.assert_allclose(_triangles(parse_ac3d(crlf, "crlf.ac")), QUAD_TRIANGLES + [TRIANGLE], atol=1e-12)


def test_polygons_of_many_sides_and_strips():
    text = ("AC3Db\nOBJECT world\nkids 1\nOBJECT poly\nnumvert 5\n0 0 0\n1 0 0\n2 1 0\n1 2 0\n0 1 0\n"
            "numsurf 2\nSURF 0x0\nrefs 5\n0 0 0\n1 0 0\n2 0 0\n3 0 0\n4 0 0\n"
            "SURF 0x4\nrefs 4\n0 0 0\n1 0 0\n4 0 0\n2 0 0\nkids 0\n")
    m = parse_ac3d(text)
    assert m.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 3, 4],  # pentagon fan
                                [0, 1, 4], [4, 1, 2]]  # strip, every other triangle flipped


def test_area_weighted_samples_land_on_the_surface(tmp_path):
    path = tmp_path / "nested.ac"
    path.write_text(NESTED)
    m = read_ac3d(path)
    pts = sample_surface(m.vertices, m.faces, 20000, rng=0).astype(np.float64)
    on_quad = np.isclose(pts[:, 0], 10, atol=1e-5) & (pts[:, 1] > -1e-5) & (pts[:, 1] < 1 + 1e-5) \
        & (pts[:, 2] > 1 - 1e-5) & (pts[:, 2] < 2 + 1e-5)
    on_tri = np.isclose(pts[:, 1], 0, atol=1e-5) & (pts[:, 0] > -1e-5) & (pts[:, 2] > -1e-5) \
        & (pts[:, 0] / 2 + pts[:, 2] / 3 < 1 + 1e-5)
    assert (on_quad | on_tri).all()
    assert abs(on_quad.mean() - 0.25) < 0.015  # areas 1 and 3


def _line_of(message):
    return int(message.split(":")[1])


@pytest.mark.parametrize("edit, line, expected", [
    (lambda t: t.replace("AC3Db", "AC3X", 1), 1, "expected the header"),
    (lambda t: t.replace("1 1 0\n0 1 0\n5 5 5", "1 1 0\n0 one 0\n5 5 5"), 25, "expected a vertex 'x y z'"),
    (lambda t: t.replace("2 1 1\n3 0 1", "2 1 1\n9 0 1"), 34, "expected a vertex index in 0..4"),
    (lambda t: t.replace("2 1 1\n3 0 1", "2 1 1\n3 0"), 34, "expected '<vertex index> <u> <v>'"),
    (lambda t: t.replace("OBJECT group", "OBJECT blob"), 6, "expected 'OBJECT <type>'"),
    (lambda t: t.replace("SURF 0x02", "SURF 0x03"), 35, "surface type 0 (polygon)"),
    (lambda t: t.replace("SURF 0x02", "SRUF 0x02"), 35, "expected 'SURF <flags>'"),
    (lambda t: t.replace("rot 0 -1 0  1 0 0  0 0 1", "rot 0 -1 0  1 0 0"), 12, "9 numbers"),
    (lambda t: t.replace("loc 10 0 0", "loc 10 nan 0"), 11, "expected 'loc x y z'"),
    (lambda t: t.replace("numvert 5", "numvert -5"), 21, "numvert <n>' with n >= 0"),
    (lambda t: t.split("1 1 0\n0 1 0")[0], 24, "5 vertex lines 'x y z' after line 21"),
    (lambda t: t.split("OBJECT light")[0], 55, "expected 'OBJECT <type>'"),  # strict: a missing kid
    (lambda t: t + "OBJECT poly\nkids 0\n", 72, "expected the end of the file"),
])
def test_corrupt_files_give_one_line_errors(tmp_path, edit, line, expected):
    path = tmp_path / "broken.ac"
    path.write_text(edit(NESTED))
    with pytest.raises(DataError) as e:
        read_ac3d(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}:") and expected in msg, msg
    assert _line_of(msg) == line, msg


def test_missing_trailing_kids_are_tolerated_when_not_strict(tmp_path):
    path = tmp_path / "short.ac"
    path.write_text(NESTED.split("OBJECT light")[0])  # the world announced 3 kids, 2 follow
    m = read_ac3d(path, strict=False)
    assert m.missing_kids == 1 and len(m.faces) == 3
    with pytest.raises(DataError, match="no polygon surfaces"):
        parse_ac3d("AC3Db\nOBJECT world\nkids 0\n", "empty.ac")
    (tmp_path / "bin.ac").write_bytes(b"AC3Db\n\x00\x01\x02")
    with pytest.raises(DataError, match=r"bin.ac:1: expected an AC3D text file"):
        read_ac3d(tmp_path / "bin.ac")
    with pytest.raises(DataError, match="cannot read"):
        read_ac3d(tmp_path / "absent.ac")


def test_pose_is_a_proper_rotation_to_shapenet():
    r = airplanes.AC3D_TO_SHAPENET
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(r), 1.0)
    nose, up, left = airplanes.to_shapenet_pose(np.array([[-1.0, 0, 0], [0, 1, 0], [0, 0, 1]]))
    assert nose.tolist() == [0, 0, -1] and up.tolist() == [0, 1, 0] and left.tolist() == [-1, 0, 0]


# --------------------------------------------------------------------------- crafted aircraft
def _box(lo, hi, k=3):
    """A closed box mesh with every face split into k x k quads: (vertices, quads)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    verts, quads = [], []
    for axis in range(3):
        u, w = [a for a in range(3) if a != axis]
        for side in (lo[axis], hi[axis]):
            base = len(verts)
            for i in range(k + 1):
                for j in range(k + 1):
                    p = np.empty(3)
                    p[axis], p[u], p[w] = side, lo[u] + (hi[u] - lo[u]) * i / k, lo[w] + (hi[w] - lo[w]) * j / k
                    verts.append(p)
            quads += [(base + i * (k + 1) + j, base + (i + 1) * (k + 1) + j, base + (i + 1) * (k + 1) + j + 1,
                       base + i * (k + 1) + j + 1) for i in range(k) for j in range(k)]
    return np.array(verts), quads


def _ac_of_boxes(boxes, k=3, names=None):
    out = ["AC3Db", 'MATERIAL "m" rgb 1 1 1  amb 1 1 1  emis 0 0 0  spec 0 0 0  shi 0  trans 0', "OBJECT world",
           f"kids {len(boxes)}"]
    for n, (lo, hi) in enumerate(boxes):
        v, q = _box(lo, hi, k)
        out += ["OBJECT poly", f'name "{(names or {}).get(n, f"part{n}")}"', f"numvert {len(v)}"]
        out += [" ".join(f"{c:g}" for c in p) for p in v]
        out.append(f"numsurf {len(q)}")
        for quad in q:
            out += ["SURF 0x10", "mat 0", "refs 4"] + [f"{i} 0 0" for i in quad]
        out.append("kids 0")
    return "\n".join(out) + "\n"


def _plane(length=20.0, span=18.0, k=3, extra=()):
    """Fuselage along x (nose at -x), wing along z, fin up (+y) at the tail: an AC3D airplane."""
    h = length / 2
    return _ac_of_boxes([((-h, -1, -1), (h, 1, 1)), ((-2, -0.2, -span / 2), (2, 0.2, span / 2)),
                         ((h - 3, 1, -0.1), (h, 4, 0.1)), *extra], k)


def test_selection_rule_on_crafted_models():
    meshes = {
        "jet/Models/jet.ac": parse_ac3d(_plane(k=4)),
        "jet/Models/jet-low.ac": parse_ac3d(_plane(k=3)),  # same airframe, fewer triangles
        "jet/Models/jet-long.ac": parse_ac3d(_plane(length=26)),  # a stretched variant: kept
        "jet/Models/lights/flash.ac": parse_ac3d(_ac_of_boxes([((0, 0, 0), (1, 1, 1))])),
        "balloon/Models/b.ac": parse_ac3d(_ac_of_boxes([((-5, 0, -5), (5, 12, 5))], k=5)),
        "pod/Models/tank.ac": parse_ac3d(_ac_of_boxes([((-3, -0.4, -0.4), (3, 0.4, 0.4))], k=5)),
        "tiny/Models/bulb.ac": parse_ac3d(_ac_of_boxes([((0, 0, 0), (0.2, 0.1, 0.2))], k=5)),
        "bluebird/Models/bluebird-ai.ac": parse_ac3d(_plane()),
    }
    kept, dropped = airplanes.select_models(meshes)
    assert kept == ["jet/Models/jet-long.ac", "jet/Models/jet.ac"]
    assert "same airframe as jet/Models/jet.ac" in dropped["jet/Models/jet-low.ac"]
    assert "sub-folder" in dropped["jet/Models/lights/flash.ac"]
    assert "height" in dropped["balloon/Models/b.ac"] and "span / length" in dropped["pod/Models/tank.ac"]
    assert dropped["tiny/Models/bulb.ac"].startswith("a part")
    assert "hover-craft" in dropped["bluebird/Models/bluebird-ai.ac"]
    # a deployed brake chute far behind the tail is removed before measuring and sampling
    chute = parse_ac3d(_ac_of_boxes([((-10, -1, -1), (10, 1, 1)), ((-2, -0.2, -9), (2, 0.2, 9)),
                                     ((12, -2, -2), (30, 2, 2))], names={2: "Chute"}))
    v, f = airplanes.model_mesh(chute)
    assert v[np.unique(f)][:, 0].max() == 10


# --------------------------------------------------------------------------- Debian extraction
def _ar_member(name, data):
    head = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return head + data + (b"\n" if len(data) % 2 else b"")


def _tar_xz(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _deb(path, files):
    control = _tar_xz({"./control": b"Package: fake\nVersion: 1\nArchitecture: all\n"})
    path.write_bytes(b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n") + _ar_member("control.tar.xz", control)
                     + _ar_member("data.tar.xz", _tar_xz(files)))
    return path


@pytest.mark.parametrize("use_dpkg", [True, False])
def test_extract_only_matching_members(tmp_path, monkeypatch, use_dpkg):
    import shutil

    import setflow.data.debian as debian

    if use_dpkg and shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed")
    if not use_dpkg:
        monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    deb = _deb(tmp_path / "fake_1_all.deb", {"./usr/share/a/Models/x.ac": b"x", "./usr/share/a/Models/l/y.ac": b"y",
                                             "./usr/share/a/Models/x.xml": b"no", "../evil.ac": b"no"})
    got = extract_members(deb, ["*/Models/*.ac"], tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in got) == ["usr/share/a/Models/l/y.ac",
                                                                              "usr/share/a/Models/x.ac"]
    assert not (tmp_path / "evil.ac").exists() and (tmp_path / "out/usr/share/a/Models/x.ac").read_bytes() == b"x"
    (tmp_path / "bad.deb").write_bytes(b"not a deb")
    with pytest.raises(DataError):
        extract_members(tmp_path / "bad.deb", ["*"], tmp_path / "out2")


# --------------------------------------------------------------------------- the source, end to end
CRAFTED = {"jet/Models/jet.ac": _plane(k=4), "jet/Models/jet-low.ac": _plane(k=3),
           "prop/Models/prop.ac": _plane(length=10, span=12),
           "prop/Models/lights/flash.ac": _ac_of_boxes([((0, 0, 0), (1, 1, 1))]),
           "glider/Models/g.ac": _plane(length=8, span=17),
           "balloon/Models/b.ac": _ac_of_boxes([((-5, 0, -5), (5, 12, 5))], k=5)}


def _sha256(splits):
    return {k: hashlib.sha256(CRAFTED[k].encode()).hexdigest() for keys in splits.values() for k in keys}


@pytest.fixture
def crafted_deb(tmp_path, monkeypatch):
    files = {f"./{airplanes.AIRCRAFT_DIR}/{k}": v.encode() for k, v in CRAFTED.items()}
    deb = _deb(tmp_path / "flightgear-data-ai_1_all.deb", files)
    splits = {"train": ("jet/Models/jet.ac",), "valid": ("glider/Models/g.ac",), "test": ("prop/Models/prop.ac",)}
    monkeypatch.setattr(airplanes, "SPLITS", splits)
    monkeypatch.setattr(airplanes, "SOURCE_SHA256", _sha256(splits))
    monkeypatch.setenv("SETFLOW_FLIGHTGEAR_DEB", str(deb))
    return deb


def test_airplanes_offline_without_the_package_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SETFLOW_FLIGHTGEAR_DEB", raising=False)
    with pytest.raises(DataError) as e:
        load_pointclouds("airplanes", data_root=tmp_path, num_points=16, download=False, verbose=False)
    assert "downloads are off" in str(e.value) and "287 MB" in str(e.value) and "\n" not in str(e.value)


def test_airplanes_source_from_a_crafted_package(tmp_path, crafted_deb, monkeypatch, capsys):
    monkeypatch.setattr(airplanes, "REFERENCE_CLOUDS_SHA256", {(300, 0): {"train": "0" * 64}})
    with pytest.warns(DataWarning, match="train clouds differ from the reference build"):
        d = load_pointclouds("airplanes", data_root=tmp_path, num_points=300, normalize="none", verbose=False)
    assert [len(x) for x in (d.train, d.valid, d.test)] == [1, 1, 1] and d.train.shape == (1, 300, 3)
    assert d.names == {"train": ["jet/Models/jet.ac"], "valid": ["glider/Models/g.ac"], "test": ["prop/Models/prop.ac"]}
    assert d.classes == ["airplane"] and "3 airplane models" in d.source and "built in" in d.source
    assert "extracted 6 .ac files" in capsys.readouterr().err
    # model units: bbox centred, unit diagonal; ShapeNet pose: span along x, fin up (+y), nose toward -z
    jet = d.train[0].astype(np.float64)
    lo, hi = jet.min(0), jet.max(0)
    np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-6)
    assert np.isclose(np.linalg.norm(hi - lo), 1.0, atol=1e-6)
    np.testing.assert_allclose(hi - lo, np.array([18, 5, 20]) / np.sqrt(18 ** 2 + 5 ** 2 + 20 ** 2), atol=3e-3)
    assert jet[jet[:, 1] > 0.04][:, 2].min() > 0.25  # only the fin is that high, and it is at the tail (+z)
    metres, _ = airplanes.load_airplanes(tmp_path, num_points=300)  # the cache keeps metres
    assert np.isclose(metres["train"][0][0][:, 2].min(), -10, atol=1e-3)
    again = load_pointclouds("airplanes", data_root=tmp_path, num_points=300, normalize="none", verbose=False)
    assert "cache reused" in again.source and np.array_equal(again.train, d.train)
    # bbox: [-1, 1] per shape; pointflow: one train mean and std for every split
    b = load_pointclouds("airplanes", data_root=tmp_path, num_points=300, normalize="bbox", verbose=False)
    assert np.isclose(np.abs(b.test).max(), 1.0, atol=1e-5)
    p = load_pointclouds("airplanes", data_root=tmp_path, num_points=300, normalize="pointflow", verbose=False)
    mean, std = d.train.reshape(-1, 3).astype(np.float64).mean(0), d.train.astype(np.float64).std()
    np.testing.assert_allclose(p.test, (d.test - mean) / std, rtol=1e-5, atol=1e-5)
    assert "PointFlow" in p.source


def test_airplanes_checks_sources_and_rule(tmp_path, crafted_deb, monkeypatch):
    monkeypatch.setattr(airplanes, "SOURCE_SHA256", dict(airplanes.SOURCE_SHA256, **{"jet/Models/jet.ac": "0" * 64}))
    with pytest.raises(DataError, match="missing or differ"):
        airplanes.load_airplanes(tmp_path / "a", num_points=8)
    short = {"train": ("jet/Models/jet.ac",), "valid": (), "test": ("prop/Models/prop.ac",)}
    monkeypatch.setattr(airplanes, "SPLITS", short)
    monkeypatch.setattr(airplanes, "SOURCE_SHA256", _sha256(short))
    with pytest.raises(DataError, match="selection rule keeps 3 models, the fixed splits hold 2"):
        airplanes.load_airplanes(tmp_path / "b", num_points=8)


def test_cli_data_airplanes(tmp_path, crafted_deb, capsys):
    from setflow.cli import main

    out = tmp_path / "air.npz"
    assert main(["data", "airplanes", "--num-points", "64", "--data-root", str(tmp_path), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("data: FlightGear AI aircraft") and "sha256" in text
    with np.load(out) as f:
        assert f["train"].shape == (1, 64, 3) and f["test_names"].tolist() == ["prop/Models/prop.ac"]
