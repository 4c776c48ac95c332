"""3-D data: surface sampling (uniform by area), procedural shapes, mesh folders, normalisation,
the pointclouds data kind, PLY / 3-D plots, and the CLI."""

import numpy as np
import pytest
import torch

from setflow.data.common import DataError
from setflow.data.pointclouds import (SHAPE_CLASSES, find_cgal_archive, load_pointclouds, normalize_clouds,
                                      procedural_shapes, read_mesh, sample_surface)

# two triangles of a 3 x 1 rectangle split unevenly: areas 3 * 1 / 2 each, but make one 3x larger
V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [4, 0, 0], [4, 1, 0], [1, 1, 0]], dtype=float)


def test_sample_surface_is_area_weighted_and_on_the_faces():
    # face 0: (0,0)-(1,0)-(0,1), area 0.5; face 1: (1,0)-(4,0)-(4,1), area 1.5
    f = np.array([[0, 1, 2], [1, 3, 4]])
    pts = sample_surface(V, f, 40000, rng=0)
    in_f1 = pts[:, 0] > 1
    assert abs(in_f1.mean() - 0.75) < 0.01
    a = pts[~in_f1]
    assert (a[:, 0] + a[:, 1] <= 1 + 1e-6).all() and (a >= -1e-6).all() and np.allclose(pts[:, 2], 0)
    # uniform inside a triangle: mean is the centroid
    np.testing.assert_allclose(a[:, :2].mean(0), [1 / 3, 1 / 3], atol=0.01)
    assert np.array_equal(sample_surface(V, f, 10, rng=3), sample_surface(V, f, 10, rng=3))
    assert sample_surface(V, f, 7, rng=0, num_clouds=5).shape == (5, 7, 3)


def test_sample_surface_bad_input():
    with pytest.raises(DataError, match="faces must index"):
        sample_surface(V, np.array([[0, 1, 9]]), 5)
    with pytest.raises(DataError, match="zero surface area"):
        sample_surface(V, np.array([[0, 0, 0]]), 5)
    with pytest.raises(DataError, match=r"\(V, 3\)"):
        sample_surface(V[:, :2], np.array([[0, 1, 2]]), 5)


def test_procedural_shapes_geometry():
    clouds, labels = procedural_shapes(2, 300, seed=1)
    assert clouds.shape == (2 * len(SHAPE_CLASSES), 300, 3) and clouds.dtype == np.float32
    assert np.array_equal(np.bincount(labels), [2] * len(SHAPE_CLASSES))
    sphere = clouds[SHAPE_CLASSES.index("sphere") * 2]
    np.testing.assert_allclose(np.linalg.norm(sphere, axis=1), 1.0, atol=0.01)  # on the unit sphere
    again, _ = procedural_shapes(2, 300, seed=1)
    assert np.array_equal(clouds, again)
    assert not np.array_equal(clouds, procedural_shapes(2, 300, seed=2)[0])


def test_normalisations():
    x = np.random.default_rng(0).normal(size=(4, 50, 3)) * 7 + 3
    s, _ = normalize_clouds(x, "shape")
    np.testing.assert_allclose((s.max(1) - s.min(1)).max(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose((s.max(1) + s.min(1)) / 2, 0.0, atol=1e-5)
    g, scale = normalize_clouds(x, "global")
    np.testing.assert_allclose(g.mean(1), 0.0, atol=1e-5)
    assert abs(g.std() - 1) < 1e-5 and scale > 1
    g2, _ = normalize_clouds(x, "global", scale=2 * scale)
    np.testing.assert_allclose(g2, g / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="normalize must be"):
        normalize_clouds(x, "unit")


def test_dpm_bbox_and_pointflow_normalisations():
    rng = np.random.default_rng(1)
    tr, te = rng.normal(size=(5, 40, 3)) * [4, 1, 2] + 3, rng.normal(size=(2, 40, 3)) + 1
    b, _ = normalize_clouds(te, "bbox")  # DPM shape_bbox: centre 0, longest side 2
    np.testing.assert_allclose((b.max(1) - b.min(1)).max(1), 2.0, rtol=1e-5)
    np.testing.assert_allclose(b, 2 * normalize_clouds(te, "shape")[0], rtol=1e-5, atol=1e-6)
    p, (mean, std) = normalize_clouds(tr, "pointflow")  # PointFlow: one mean vector, one std, from train
    np.testing.assert_allclose(mean, tr.reshape(-1, 3).mean(0))
    np.testing.assert_allclose(std, tr.std())  # as PointFlow: the std of all coordinates, about their one mean
    np.testing.assert_allclose(p.reshape(-1, 3).mean(0), 0, atol=1e-5)
    pt, _ = normalize_clouds(te, "pointflow", (mean, std))
    np.testing.assert_allclose(pt, (te - mean) / std, rtol=1e-5, atol=1e-6)
    assert not np.allclose(pt.mean(1), 0, atol=0.1)  # unlike "global", a cloud keeps its offset from the train mean


def _write_off(path, v, f):
    path.write_text("OFF\n%d %d 0\n" % (len(v), len(f)) + "".join("%g %g %g\n" % tuple(p) for p in v)
                    + "".join("3 %d %d %d\n" % tuple(t) for t in f))


TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def test_mesh_folder_classes_and_reader(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            _write_off(tmp_path / cls / f"m{i}.off", TETRA_V * (1 + i), TETRA_F)
    v, f = read_mesh(tmp_path / "a" / "m0.off")
    assert v.shape == (4, 3) and f.shape == (4, 3)
    d = load_pointclouds("meshes", path=str(tmp_path), num_points=64, per_class=4, verbose=False)
    assert d.classes == ["a", "b"] and d.train.shape[1:] == (64, 3)
    assert len(d.train) + len(d.valid) + len(d.test) == 2 * 3 * 4
    assert "meshes in" in d.source and "per-shape unit box" in d.source
    with pytest.raises(DataError, match="expected a folder"):
        load_pointclouds("meshes", path=str(tmp_path / "missing"), num_points=8, verbose=False)


def test_mesh_folder_empty_and_bad_file(tmp_path):
    with pytest.raises(DataError, match="no OFF/PLY/OBJ/STL"):
        load_pointclouds("meshes", path=str(tmp_path), verbose=False)
    with pytest.raises(DataError, match="expected a mesh file"):
        read_mesh(tmp_path / "x.txt")


def test_offline_pyg_sources_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    with pytest.raises(DataError, match="downloads are off"):
        load_pointclouds("modelnet10", data_root=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="unknown point-cloud source"):
        load_pointclouds("bunnies", verbose=False)


@pytest.mark.skipif(find_cgal_archive() is None, reason="libcgal-demo not unpacked (scripts/install_system_deps.sh)")
def test_cgal_meshes(tmp_path):
    from setflow.data.pointclouds import load_cgal_meshes

    (name, v, f), = load_cgal_meshes(tmp_path, names=("pig",))
    assert name == "pig" and len(v) > 100 and (tmp_path / "cgal_meshes" / "pig.off").is_file()


def test_pointclouds_data_kind_and_sortflow_step():
    from setflow.models.set_flows import build_set_flow
    from setflow.data.experiments import load_data

    d = load_data({"data": "pointclouds", "data_args": {"num_points": 64, "per_class": 4}})
    assert d.kind == "pointclouds" and d.train.shape == (4 * len(SHAPE_CLASSES), 64, 3)
    assert d.labels["train"].shape == (len(d.train),) and d.source.startswith("data: procedural shapes")
    flow = build_set_flow(num_points=64, dim=3, num_steps=2, input_scale=1.0, input_shift=0.0, point_conditioner="knn",
                          conditioner={"name": "isab", "d_model": 16, "num_heads": 2, "num_inducing": 4, "k": 4})
    loss = -flow.log_prob(d.train[:8]).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in flow.parameters() if p.requires_grad)


def test_plots_and_ply(tmp_path):
    import open3d as o3d

    from setflow.viz.pointclouds import cloud_frame, plot_clouds_3d, save_clouds_ply

    clouds, _ = procedural_shapes(1, 200, seed=0)
    out = plot_clouds_3d(clouds[:2] * 100, clouds[2:4], tmp_path / "p.png")
    assert out.stat().st_size > 5000
    centre, half = cloud_frame(clouds[:1] * 100 + 50)
    assert np.allclose(centre, 50, atol=60) and half > 90  # framed from the data, not a fixed box
    paths = save_clouds_ply(clouds[:2], tmp_path / "ply")
    back = np.asarray(o3d.io.read_point_cloud(str(paths[1])).points)
    np.testing.assert_allclose(back, clouds[1], rtol=1e-6, atol=1e-6)


def test_cli_data_shapes(tmp_path):
    from setflow.cli import main

    assert main(["data", "shapes", "--num-points", "32", "--per-class", "2", "-o", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["train"].shape == (2 * len(SHAPE_CLASSES), 32, 3)
    assert main(["data", "meshes"]) == 2  # needs a folder: one-line error
    assert main(["data", "shapes", "--num-points", "32", "--per-class", "1", "--rotate", "none",
                 "-o", str(tmp_path / "c.npz")]) == 0
    with np.load(tmp_path / "c.npz") as f:
        assert "canonical pose" in str(f["source"])


def test_procedural_shapes_poses():
    n = len(SHAPE_CLASSES)
    cyl, tor = SHAPE_CLASSES.index("cylinder"), SHAPE_CLASSES.index("torus")
    for rotate in ("none", "z"):
        clouds, _ = procedural_shapes(3, 400, seed=4, rotate=rotate)
        for c in clouds.reshape(n, 3, 400, 3)[cyl]:  # upright: the axis stays z, radius 1, base at z = 0
            assert c[:, 2].min() > -1e-6 and c[:, 2].max() <= 2.0 + 1e-6
            assert np.linalg.norm(c[:, :2], axis=1).max() <= 1.0 + 1e-4
        for c in clouds.reshape(n, 3, 400, 3)[tor]:  # flat: tube radius <= 0.5 around the z = 0 plane
            assert np.abs(c[:, 2]).max() <= 0.5 + 1e-6
    boxes = procedural_shapes(3, 400, seed=4, rotate="none")[0].reshape(n, 3, 400, 3)[SHAPE_CLASSES.index("box")]
    for c in boxes:  # axis-aligned: every point lies on a face, one coordinate at +-its half-extent
        rel = np.abs(c) / np.abs(c).max(axis=0)
        np.testing.assert_allclose(rel.max(axis=1), 1.0, atol=1e-5)
    tilted, _ = procedural_shapes(3, 400, seed=4, rotate="so3")
    assert min(c[:, 2].min() for c in tilted.reshape(n, 3, 400, 3)[cyl]) < -0.05
    assert np.array_equal(procedural_shapes(1, 50, seed=2, rotate=True)[0], procedural_shapes(1, 50, seed=2)[0])
    with pytest.raises(ValueError, match="rotate must be one of"):
        procedural_shapes(1, 10, rotate="x")
    with pytest.raises(ValueError, match="procedural shapes"):
        load_pointclouds("cgal", rotate="z", verbose=False)


def test_pointcloud_pool_redraw_and_sizes():
    from setflow.models.set_flows import build_set_flow
    from setflow.data.experiments import load_data

    args = {"num_points": 32, "per_class": 2, "pool_points": 128, "rotate": "z"}
    d = load_data({"data": "pointclouds", "data_args": args})
    assert d.train.shape == (2 * len(SHAPE_CLASSES), 32, 3) and "fresh subset of their 128" in d.source
    a, b = d.train_epoch(0), d.train_epoch(1)
    assert a.shape == d.train.shape and torch.equal(a, d.train_epoch(0)) and not torch.equal(a, b)
    pool = d.train_epoch.pool
    for drawn in (a, b):  # each drawn point is one of its own cloud's pooled points, none twice
        dist = torch.cdist(drawn.double(), pool.double())
        assert torch.all(dist.min(dim=2).values == 0)
        assert torch.all(dist.argmin(dim=2).sort(dim=1).values.diff(dim=1) > 0)
    assert torch.equal(d.train, pool[:, :32])
    with pytest.raises(ValueError, match="pool_points"):
        load_data({"data": "pointclouds", "data_args": dict(args, pool_points=16)})

    v = load_data({"data": "pointclouds", "data_args": dict(args, num_points=[20, 32])})
    sizes = v.masks["train"].sum(1)
    assert v.masks["test"].shape == v.test.shape[:2] and sizes.min() >= 20 and sizes.max() <= 32
    assert len(set(sizes.tolist())) > 1 and "20..32 points per cloud" in v.source
    for x, m in ((v.train, v.masks["train"]), (v.train_epoch(3), v.masks["train"]), (v.test, v.masks["test"])):
        assert torch.all(x[~m] == 0) and torch.all(x[m].abs().sum(-1) > 0)
    flow = build_set_flow(num_points=None, max_points=32, dim=3, num_steps=1, point_conditioner="isab",
                          conditioner={"name": "isab", "d_model": 16, "num_heads": 2, "num_inducing": 4},
                          input_scale=1.0, input_shift=0.0)
    lp = flow.log_prob(v.train_epoch(3)[:6], mask=v.masks["train"][:6])
    assert lp.shape == (6,) and torch.isfinite(lp).all()


def test_ply_of_padded_clouds_keeps_the_real_points(tmp_path):
    import open3d as o3d

    from setflow.viz.pointclouds import save_clouds_ply

    x = np.random.default_rng(0).standard_normal((3, 10, 3)).astype(np.float32)
    mask = np.arange(10)[None] < np.array([[4], [10], [7]])
    paths = save_clouds_ply(x, tmp_path, mask=mask)
    for p, c, m in zip(paths, x, mask):
        np.testing.assert_allclose(np.asarray(o3d.io.read_point_cloud(str(p)).points), c[m], rtol=1e-6)
    with pytest.raises(ValueError, match="mask of shape"):
        save_clouds_ply(x, tmp_path, mask=mask[:2])


def test_mesh_folders_that_give_empty_splits_or_hold_junk_are_named(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(3):
        _write_off(tmp_path / "a" / f"m{i}.off", TETRA_V * (1 + i), TETRA_F)
    with pytest.raises(DataError, match=r"2 clouds per mesh would leave the valid and test splits empty; use 3 or more"):
        load_pointclouds("meshes", path=str(tmp_path), num_points=8, per_class=2, verbose=False)
    with pytest.raises(DataError, match=r"no class has the 8 meshes.*use --per-class 3 or more"):
        load_pointclouds("meshes", path=str(tmp_path), num_points=8, per_class=1, verbose=False)
    d = load_pointclouds("meshes", path=str(tmp_path), num_points=8, per_class=3, verbose=False)
    assert len(d.train) == len(d.valid) == len(d.test) == 3  # the minimum: one cloud of each mesh per split
    junk = tmp_path / "a" / "junk.off"
    junk.write_bytes(np.random.default_rng(0).bytes(2000))  # binary junk: open3d's warning was a UnicodeDecodeError
    with pytest.raises(DataError, match=rf"{junk}: open3d read no triangles; expected a triangle mesh in OFF format"):
        load_pointclouds("meshes", path=str(tmp_path), num_points=8, per_class=3, verbose=False)
    junk.unlink()
    (tmp_path / "a" / "points.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n"
                                                "property float y\nproperty float z\nend_header\n0 0 0\n")
    with pytest.raises(DataError, match=r"points.ply: open3d read no triangles; expected a triangle mesh in PLY format"):
        load_pointclouds("meshes", path=str(tmp_path), num_points=8, per_class=3, verbose=False)
