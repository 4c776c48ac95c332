"""Sets of different sizes end to end: SpatialMNIST point counts, the trainer and evaluation with masks,
Chamfer sample metrics between padded sets."""

from __future__ import annotations

import math

import pytest
import torch

from setflow.data.spatial_mnist import variable_size_masks
from setflow.evaluate import draw_samples, evaluate, sample_quality, split_sets
from setflow.metrics import sample_metrics
from setflow.metrics.distances import pairwise_chamfer
from setflow.sets import SetBatch, lengths_to_mask, pad_sets
from setflow.train.config import validate_config
from setflow.train.data import ExperimentData, _point_range
from setflow.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

MAXN = 10


def ragged_config(**train) -> dict:
    cfg = {
        "model": "sortflow",
        "model_args": dict(num_points=None, max_points=MAXN, min_points=2, dim=2, num_steps=2, d_model=8,
                           num_heads=2, num_layers=1, dim_feedforward=16),
        "data": "spatial_mnist",
        "train": dict(batch_size=8, epochs=2, lr=1e-2, warmup_steps=2, eval_every=10_000, ckpt_every=100,
                      progress=False, dtype="float64", **train),
        "eval": {"batch_size": 16},
    }
    return validate_config(cfg)


def ragged_data(n: int = 40) -> ExperimentData:
    g = torch.Generator().manual_seed(1)
    sizes = torch.randint(4, MAXN + 1, (n,), generator=g)
    mask = lengths_to_mask(sizes, MAXN)
    x = torch.where(mask[..., None], torch.rand(n, MAXN, 2, generator=g, dtype=torch.float64) * 28, 0.0)
    masks = {"train": mask, "valid": mask[:16], "test": mask[16:32]}
    return ExperimentData(x, x[:16], x[16:32], "data: synthetic ragged sets", "nats_per_point", "sets", masks=masks)


def test_point_counts_are_seeded_uniform_in_range():
    a = variable_size_masks([300, 50, 50], 30, 70, seed=0)
    b = variable_size_masks([300, 50, 50], 30, 70, seed=0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sizes = torch.cat([a[k].sum(1) for k in ("train", "valid", "test")])
    assert int(sizes.min()) >= 30 and int(sizes.max()) <= 70 and len(sizes.unique()) > 30
    assert bool((a["train"][:, :-1] >= a["train"][:, 1:]).all())  # real points first
    assert not torch.equal(variable_size_masks([300, 50, 50], 30, 70, seed=1)["train"], a["train"])
    assert _point_range([30, 70], 50) == (30, 70) and _point_range(None, 50) == (50, 50)
    with pytest.raises(ValueError, match=r"int or \[min, max\]"):
        _point_range([30, 70, 80], 50)
    with pytest.raises(ValueError, match="min <= max"):
        _point_range([70, 30], 50)


def test_trainer_fits_the_size_density_and_trains_on_masked_batches(tmp_path):
    data = ragged_data()
    t = Trainer(ragged_config(), str(tmp_path), data=data, log=lambda *_: None)
    sd = t.model.size_dist
    counts = torch.bincount(data.masks["train"].sum(1) - 2, minlength=MAXN - 1).double() + 1.0
    assert torch.allclose(sd.probs().double(), counts / counts.sum(), atol=1e-6)
    before = t.validate()["metric"]
    out = t.fit()
    assert out["step"] == 10 and math.isfinite(before)
    after = t.validate()
    assert after["metric"] > before  # the masked loss trains the model
    assert after["sizes"] == (int(data.masks["valid"].sum(1).min()), int(data.masks["valid"].sum(1).max()))


def test_evaluate_with_masks_is_total_nats_over_real_points(tmp_path):
    data = ragged_data()
    t = Trainer(ragged_config(), str(tmp_path), data=data, log=lambda *_: None)
    model = t.model.eval()
    x, m = data.valid, data.masks["valid"]
    res = evaluate(model, data.sets("valid"), "nats_per_point", batch_size=5)
    ll = model.log_prob(x, mask=m).detach()
    sizes = m.sum(1).double()
    assert res["metric"] == pytest.approx(float(ll.sum() / sizes.sum()), rel=1e-12)
    assert res["set_metric"] == pytest.approx(float((ll + torch.lgamma(sizes + 1)).sum() / sizes.sum()), rel=1e-12)
    assert res["size_ll"] == pytest.approx(float(model.size_dist.log_prob(m.sum(1)).double().mean()), rel=1e-9)
    with pytest.raises(ValueError, match="pass mask"):
        evaluate(model, x, "nats_per_point")  # a bare tensor cannot tell padding from points
    # sets of one size under a variable-size model: scored per real point, with log p(N)
    fixed = ExperimentData(x, x, x, "s", "nats_per_point", "sets")
    sets = split_sets(fixed, "test")
    assert isinstance(sets, SetBatch) and sets.is_fixed
    res = evaluate(model, sets, "nats_per_point", batch_size=7)
    ll = model.log_prob(x, mask=torch.ones(x.shape[:2], dtype=torch.bool)).detach()
    assert res["metric"] == pytest.approx(float(ll.sum()) / x.shape[0] / x.shape[1], rel=1e-12)
    assert res["sizes"] == (MAXN, MAXN) and "size_ll" in res


def test_masked_chamfer_matches_the_dense_one_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 6, 2, generator=g), torch.rand(3, 6, 2, generator=g)
    # an all-True mask is the tensor itself, bit for bit
    assert torch.equal(pairwise_chamfer(SetBatch(a), SetBatch(b)), pairwise_chamfer(a, b))
    sets = [torch.rand(n, 2, generator=g) for n in (3, 6, 4)]
    x, m = pad_sets(sets, value=1e3)
    d = pairwise_chamfer(SetBatch(x, m))
    other = pairwise_chamfer(SetBatch(x, m), SetBatch.from_list(sets[:2]))  # two batches padded differently
    for i, s in enumerate(sets):
        for j, t in enumerate(sets):
            assert d[i, j] == pytest.approx(float(pairwise_chamfer(s[None], t[None])[0, 0]), abs=1e-5)
            if j < 2:
                assert other[i, j] == pytest.approx(float(d[i, j]), abs=1e-5)
    res = sample_metrics(SetBatch(x, m), SetBatch(x, m), metrics=("cd",))
    assert res["cd"]["mmd"] == pytest.approx(0.0, abs=1e-6) and res["cd"]["cov"] == 1.0
    assert res["sizes_gen"] == pytest.approx(13 / 3)
    with pytest.raises(ValueError, match="equal set sizes"):  # EMD is for sets of one size
        sample_metrics(SetBatch(x, m), SetBatch(x, m))
    with pytest.raises(ValueError, match="lower bound"):
        pairwise_chamfer(SetBatch(x, m), lower_bound=True)


def test_sample_quality_of_a_variable_size_model(tmp_path):
    data = ragged_data()
    t = Trainer(ragged_config(), str(tmp_path), data=data, log=lambda *_: None)
    s = draw_samples(t.model, 12, batch_size=5)  # three draws of different widths, joined
    assert isinstance(s, SetBatch) and len(s) == 12 and int(s.sizes.min()) >= 2
    assert s.num_points == int(s.sizes.max()) and bool((s.points[~s.mask] == 0).all())
    q = sample_quality(t.model, data.sets("test"), data.sets("train"), 10)
    assert q["num"] == 10 and "emd" not in q["model"] and 0.0 <= q["model"]["cd"]["1nna"] <= 1.0
