"""SetBatch: the one value for a batch of sets, from the loaders to the flows, the metrics and the samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from setflow.evaluate import draw_samples, evaluate
from setflow.metrics import chamfer, emd, pairwise_chamfer, pairwise_emd, sample_metrics, voxel_jsd
from setflow.models.set_flows import build_set_flow
from setflow.sets import SetBatch, as_set_batch, pad_sets
from setflow.train.data import ExperimentData

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = (4, 1, 6)


def _has_pyg() -> bool:
    try:
        import torch_geometric  # noqa: F401
    except ImportError:
        return False
    return True


def ragged(seed: int = 0, value: float = 0.0) -> tuple[list[torch.Tensor], SetBatch]:
    g = torch.Generator().manual_seed(seed)
    sets = [torch.rand(n, 2, generator=g, dtype=torch.float64) * 28 for n in SIZES]
    return sets, SetBatch.from_list(sets, labels=torch.tensor([2, 0, 1]), value=value)


def flow(num_points=None, **kw):
    f = build_set_flow(num_points=num_points, max_points=8 if num_points is None else None, num_steps=2, d_model=8,
                       num_heads=2, num_layers=1, dim_feedforward=8, **kw).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # off the zero-initialised identity
        for p in f.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return f.eval()


def test_list_round_trip_sizes_and_indexing():
    sets, b = ragged()
    assert b.shape == (3, 6, 2) and len(b) == 3 and b.dim == 2 and b.num_points == 6
    assert b.sizes.tolist() == list(SIZES) and not b.is_fixed
    assert all(torch.equal(s, t) for s, t in zip(b.to_list(), sets))
    assert torch.equal(b[1], sets[1])  # an int: that set's real points
    sub = b[torch.tensor([2, 0])]
    assert isinstance(sub, SetBatch) and sub.sizes.tolist() == [6, 4] and sub.labels.tolist() == [1, 2]
    assert b[:1].sizes.tolist() == [4] and b[:1].labels.tolist() == [2]
    assert SetBatch(torch.zeros(2, 5, 3)).is_fixed and SetBatch(torch.zeros(2, 5, 3)).sizes.tolist() == [5, 5]
    assert repr(b) == "SetBatch(3 sets of 1..6 points in 2-D, padded to 6, labels)"


def test_to_moves_points_and_keeps_mask_and_labels():
    _, b = ragged()
    f = b.to(torch.float32)
    assert f.dtype == torch.float32 and torch.equal(f.mask, b.mask) and torch.equal(f.labels, b.labels)
    assert b.cpu().device.type == "cpu"
    nan = b.nan_padded()
    assert torch.isnan(nan[~b.mask]).all() and torch.equal(nan[b.mask], b.points[b.mask])


def test_cat_pads_to_the_widest_batch():
    sets, b = ragged()
    small = SetBatch.from_list(sets[:2], labels=torch.tensor([5, 6]))  # width 4
    both = SetBatch.cat([small, b])
    assert both.shape == (5, 6, 2) and both.sizes.tolist() == [4, 1, 4, 1, 6]
    assert both.labels.tolist() == [5, 6, 2, 0, 1]
    assert all(torch.equal(s, t) for s, t in zip(both.to_list(), sets[:2] + sets))
    assert SetBatch.cat([small, SetBatch(b.points, b.mask)]).labels is None  # labels only when every batch has them


def test_pyg_round_trip_keeps_sets_and_labels():
    pytest.importorskip("torch_geometric")
    sets, b = ragged()
    pyg = b.to_pyg()
    assert pyg.num_graphs == 3 and pyg.pos.shape == (sum(SIZES), 2) and torch.equal(pyg.y, b.labels)
    back = SetBatch.from_pyg(pyg)
    assert torch.equal(back.mask, b.mask) and torch.equal(back.labels, b.labels)
    assert all(torch.equal(s, t) for s, t in zip(back.to_list(), sets))
    assert [d.pos.shape[0] for d in pyg.to_data_list()] == list(SIZES)


def test_bad_input_is_refused_with_one_line():
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        SetBatch(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="dtype torch.bool"):
        SetBatch(torch.zeros(2, 3, 2), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"shape \(B, N\)"):
        SetBatch(torch.zeros(2, 3, 2), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels"):
        SetBatch(torch.zeros(2, 3, 2), labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="own mask"):
        as_set_batch(ragged()[1], mask=torch.ones(3, 6, dtype=torch.bool))


def test_flow_takes_the_batch_as_its_parts():
    f = flow()
    sets, b = ragged(value=float("nan"))  # padding never matters
    x, mask = pad_sets(sets)
    assert torch.equal(f.log_prob(b), f.log_prob(x, mask=mask))
    torch.manual_seed(1)
    a = f.iwbo(b, k=3)
    torch.manual_seed(1)
    assert torch.equal(a, f.iwbo(x, k=3, mask=mask))
    with pytest.raises(ValueError, match="own mask"):
        f.log_prob(b, mask=mask)
    fixed = flow(num_points=5)
    pts = torch.rand(4, 5, 2, dtype=torch.float64) * 28
    assert torch.equal(fixed.log_prob(SetBatch(pts)), fixed.log_prob(pts))  # a fixed batch is the tensor


def test_sample_returns_one_type_for_every_set_flow():
    torch.manual_seed(0)
    fixed, var = flow(num_points=5), flow()
    s = fixed.sample(3)
    assert isinstance(s, SetBatch) and s.shape == (3, 5, 2) and s.is_fixed and s.labels is None
    v = var.sample(7)
    assert isinstance(v, SetBatch) and len(v) == 7 and v.num_points == int(v.sizes.max())
    assert torch.isfinite(var.log_prob(v)).all() and torch.isfinite(fixed.log_prob(s)).all()
    cond = flow(num_points=5, conditional=True, num_classes=3, context_dim=4)
    labels = torch.tensor([0, 2, 2, 1])
    c = cond.sample(context=labels)
    assert torch.equal(c.labels, labels)
    assert torch.equal(cond.log_prob(c), cond.log_prob(c.points, labels))  # its labels are the context
    d = draw_samples(var, 9, batch_size=4)  # batches of different widths joined into one value
    assert isinstance(d, SetBatch) and len(d) == 9 and bool((d.points[~d.mask] == 0).all())


def test_evaluate_and_metrics_take_the_batch():
    f = flow()
    sets, b = ragged()
    res = evaluate(f, b, "nats_per_point", batch_size=2)
    ll = f.log_prob(b).detach()
    assert res["metric"] == pytest.approx(float(ll.sum()) / sum(SIZES), rel=1e-12)
    assert res["sizes"] == (1, 6) and res["count"] == 3
    if _has_pyg():  # a PyG Batch goes in as the same sets
        assert evaluate(f, b.to_pyg(), "nats_per_point", batch_size=2) == res
        assert torch.equal(pairwise_chamfer(b.to_pyg()), pairwise_chamfer(b))
    d = pairwise_chamfer(b)
    for i, s in enumerate(sets):  # each pair as the two sets alone
        for j, t in enumerate(sets):
            assert float(d[i, j]) == pytest.approx(float(pairwise_chamfer(s[None], t[None])[0, 0]), abs=1e-9)
    paired = chamfer(b, b[torch.tensor([1, 2, 0])])  # paired sets of different sizes, as each pair alone
    for k, (i, j) in enumerate(((0, 1), (1, 2), (2, 0))):
        assert float(paired[k]) == pytest.approx(float(chamfer(sets[i][None], sets[j][None])[0]), abs=1e-9)
    fixed = SetBatch(torch.rand(3, 5, 2, dtype=torch.float64))
    assert torch.equal(chamfer(fixed, fixed.points.flip(0)), chamfer(fixed.points, fixed.points.flip(0)))
    assert torch.equal(emd(fixed, fixed.points), emd(fixed.points, fixed.points))
    assert torch.equal(pairwise_emd(fixed, fixed), pairwise_emd(fixed.points, fixed.points))
    with pytest.raises(ValueError, match="equal set sizes"):
        emd(b, b)
    with pytest.raises(ValueError, match="equal set sizes"):
        pairwise_emd(b, b)
    m = sample_metrics(b, b, metrics=("cd",), jsd=True)
    assert m["cd"]["cov"] == 1.0 and m["jsd"] == pytest.approx(0.0, abs=1e-12)
    # JSD marks the cells of real points only: the padded batch against the same sets filled out to one
    # size by repeating each set's first point (the same cells per set) is 0
    full = torch.where(b.mask[..., None], b.points, b.points[:, :1])
    assert voxel_jsd(b, full) == pytest.approx(0.0, abs=1e-12)
    assert voxel_jsd(b.points, full) > 0.01  # the bare tensor counts the padding's cell


def test_plots_take_the_batch(tmp_path):
    from setflow.viz.pointclouds import plot_clouds_3d
    from setflow.viz.sets import _np, plot_sets_grid

    _, b = ragged()
    arr = _np(b)
    assert np.isnan(arr[~b.mask.numpy()]).all() and np.isfinite(arr[b.mask.numpy()]).all()  # padding is not drawn
    assert plot_sets_grid(b, b, tmp_path / "s.png").stat().st_size > 1000
    clouds = SetBatch.from_list([torch.rand(n, 3) for n in (5, 9)])
    assert plot_clouds_3d(clouds, clouds, tmp_path / "c.png").stat().st_size > 1000


def test_loaders_build_the_batch():
    x = torch.rand(6, 4, 2)
    mask = torch.arange(4) < torch.tensor([4, 2, 3, 4, 1, 4])[:, None]
    labels = torch.arange(6)
    data = ExperimentData(x, x, x, "s", "nats_per_point", "sets", labels={k: labels for k in ("train", "valid", "test")},
                          masks={k: mask for k in ("train", "valid", "test")})
    b = data.sets("valid")
    assert torch.equal(b.points, x) and torch.equal(b.mask, mask) and torch.equal(b.labels, labels)
    images = ExperimentData(x, x, x, "s", "bits_per_dim", "images")
    with pytest.raises(ValueError, match="no point sets"):
        images.sets("test")
