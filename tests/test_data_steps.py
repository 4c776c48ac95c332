"""The set pre-processing steps of setflow.data.steps, one at a time and composed."""

import pytest
import torch

from setflow.data.steps import (Compose, FirstPoints, Limit, PoolRedraw, RandomSizes, SetSplits, point_range,
                                variable_size_masks)


def _splits(m=(6, 3, 4), n=10, d=2):
    g = torch.Generator().manual_seed(0)
    pts = {k: torch.rand(c, n, d, generator=g) + 1 for k, c in zip(("train", "valid", "test"), m)}
    labels = {k: torch.arange(c) for k, c in zip(("train", "valid", "test"), m)}
    return SetSplits(pts, labels=labels)


def test_first_points_keeps_the_leading_points_and_refuses_too_few():
    s = _splits()
    want = s.points["valid"][:, :4].clone()
    out = FirstPoints(4)(s)
    assert torch.equal(out.points["valid"], want) and out.masks is None
    with pytest.raises(ValueError, match="hold only 4 points"):
        FirstPoints(5)(out)


def test_random_sizes_masks_and_zeroes_the_padding_reproducibly():
    a, b = RandomSizes(3, 10, seed=1, what="cloud")(_splits()), RandomSizes(3, 10, seed=1)(_splits())
    for k in ("train", "valid", "test"):
        m = a.masks[k]
        sizes = m.sum(1)
        assert m.shape == a.points[k].shape[:2] and bool((sizes >= 3).all() and (sizes <= 10).all())
        assert torch.equal(m, b.masks[k]) and torch.equal(a.points[k], b.points[k])
        assert bool((a.points[k][~m] == 0).all()) and bool((a.points[k][m] >= 1).all())  # real points untouched
        assert torch.equal(m, torch.arange(10) < sizes[:, None])  # a set keeps its first N points
    assert a.notes == ["3..10 points per cloud"]
    assert torch.equal(a.masks["train"], variable_size_masks([6, 3, 4], 3, 10, 1)["train"])
    same = _splits()
    assert RandomSizes(10, 10)(same).masks is None and not same.notes
    with pytest.raises(ValueError, match="needs sets of 8 points"):
        RandomSizes(2, 8)(_splits())


def test_limit_cuts_points_labels_and_masks_together():
    s = Compose([RandomSizes(2, 10), Limit(2)])(_splits())
    assert {k: v.shape[0] for k, v in s.points.items()} == {"train": 2, "valid": 2, "test": 2}
    assert all(v.shape[0] == 2 for v in s.labels.values()) and all(v.shape[0] == 2 for v in s.masks.values())
    assert Limit(None)(_splits()).points["train"].shape[0] == 6


def test_pool_redraw_draws_fresh_subsets_of_the_pool_with_the_sets_sizes():
    s = _splits()
    pool = s.points["train"]
    s = Compose([FirstPoints(6), RandomSizes(2, 6, seed=3), PoolRedraw(pool, 6, seed=3)])(s)
    e1, e1b, e2 = s.train_epoch(1), s.train_epoch(1), s.train_epoch(2)
    assert e1.shape == (6, 6, 2) and torch.equal(e1, e1b) and not torch.equal(e1, e2)
    m = s.masks["train"]
    assert bool((e1[~m] == 0).all())
    for i in range(6):  # every redrawn point is one of that set's pooled points
        real = e1[i][m[i]]
        assert bool((real[:, None, :] == pool[i][None]).all(-1).any(-1).all())
    assert "fresh subset of their 10 points" in s.notes[-1]
    assert PoolRedraw(pool[:, :6], 6)(_splits()).train_epoch is None


def test_point_range_reads_data_args_num_points():
    assert point_range(None, 50) == (50, 50) and point_range(7, 50) == (7, 7) and point_range([2, 9], 50) == (2, 9)
    for bad in ([3], [9, 2], True, "10"):
        with pytest.raises(ValueError, match="data_args.num_points"):
            point_range(bad, 50)


def test_compose_runs_in_order_and_has_a_repr():
    c = Compose([FirstPoints(4), Limit(1)])
    assert repr(c) == "Compose([FirstPoints(4), Limit(1)])"
    assert c(_splits()).points["test"].shape == (1, 4, 2)
    with pytest.raises(ValueError, match="needs the splits"):
        SetSplits({"train": torch.zeros(1, 1, 1)})
