"""ISAB / PMA / chunked kNN / dense EdgeConv: equivariance, invariance, brute-force kNN, masks."""

import pytest
import torch

from setflow.nn.isab import ISAB, ISABNet, PMA
from setflow.nn.knn import KNNEdgeConvNet, knn_edge_index, knn_neighbors


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _perm_check(net, x, equivariant: bool, **kw):
    perm = torch.randperm(x.shape[1])
    y, yp = net(x, **kw), net(x[:, perm], **kw)
    torch.testing.assert_close(yp, y[:, perm] if equivariant else y, atol=1e-5, rtol=1e-5)


def test_isab_equivariant_pma_invariant():
    x = torch.randn(3, 40, 16)
    _perm_check(ISAB(16, num_inducing=5, num_heads=2).eval(), x, True)
    _perm_check(PMA(16, num_seeds=2, num_heads=2).eval(), x, False)
    net = ISABNet(3, 4, d_model=16, num_heads=2, num_inducing=6, zero_init=False).eval()
    _perm_check(net, torch.randn(2, 30, 3), True)


def test_isabnet_zero_init_and_context():
    net = ISABNet(3, 4, d_model=16, num_heads=2, num_inducing=4, context_features=5)
    x = torch.randn(2, 10, 3)
    assert torch.equal(net(x, torch.randn(2, 5)), torch.zeros(2, 10, 4))
    net = ISABNet(3, 4, d_model=16, num_heads=2, num_inducing=4, context_features=5, zero_init=False)
    assert not torch.allclose(net(x, torch.randn(2, 5)), net(x, torch.randn(2, 5)))


def test_isab_mask_ignores_padding():
    net = ISABNet(3, 4, d_model=16, num_heads=2, num_inducing=4, zero_init=False).eval()
    x = torch.randn(2, 12, 3)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, 9:] = False
    y = net(x, mask=mask)
    x2 = x.clone()
    x2[:, 9:] = 100.0  # changing padded points changes nothing at the real ones
    torch.testing.assert_close(net(x2, mask=mask)[:, :9], y[:, :9])
    torch.testing.assert_close(net(x[:, :9])[:, :9], y[:, :9], atol=1e-5, rtol=1e-5)


def test_isab_positional_breaks_symmetry_and_checks_length():
    net = ISABNet(3, 4, d_model=16, num_heads=2, num_inducing=4, positional=True, max_len=8, zero_init=False)
    x = torch.randn(1, 8, 3)
    perm = torch.arange(7, -1, -1)
    assert not torch.allclose(net(x[:, perm]), net(x)[:, perm], atol=1e-4)
    with pytest.raises(ValueError, match="max_len=8"):
        net(torch.randn(1, 9, 3))


@pytest.mark.parametrize("loop", [False, True])
def test_knn_matches_brute_force_sort(loop):
    x = torch.randn(3, 57, 3, dtype=torch.float64)
    got = knn_neighbors(x, 5, loop=loop, chunk=7)  # several chunks
    d = torch.cdist(x, x)
    if not loop:
        d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    ref = d.argsort(dim=-1)[..., :5]
    assert torch.equal(got, ref)


def test_knn_mask_excludes_padding_and_errors():
    x = torch.randn(2, 10, 2)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    nbr = knn_neighbors(x, 3, mask=mask)
    assert (nbr[1, :6] < 6).all()
    with pytest.raises(ValueError, match="k=10"):
        knn_neighbors(x, 10)
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        knn_neighbors(x[0], 2)


def test_knn_edge_index_pyg_style_equals_dense_and_pyg():
    x = torch.randn(2, 20, 3)
    dense = knn_edge_index(x, 4)
    flat = knn_edge_index(x.reshape(40, 3), 4, batch=torch.arange(2).repeat_interleave(20))
    assert torch.equal(dense, flat)
    # uneven graphs: neighbours stay inside their graph and are the true nearest
    pts = torch.randn(17, 3)
    batch = torch.tensor([0] * 5 + [1] * 12)
    ei = knn_edge_index(pts, 3, batch=batch)
    assert ei.shape == (2, 17 * 3)
    assert torch.equal(batch[ei[0]], batch[ei[1]])
    d = torch.cdist(pts, pts)
    d[batch[:, None] != batch[None, :]] = float("inf")
    d.fill_diagonal_(float("inf"))
    ref = d.argsort(dim=1)[:, :3].reshape(-1)
    assert torch.equal(ei[0], ref)
    with pytest.raises(ValueError, match="more than 3"):
        knn_edge_index(pts[:8], 3, batch=torch.tensor([0] * 3 + [1] * 5))


def test_knn_edgeconv_equivariant_and_gradients():
    net = KNNEdgeConvNet(3, 6, hidden=16, k=4, zero_init=False).double()
    x = torch.randn(2, 30, 3, dtype=torch.float64, requires_grad=True)
    _perm_check(net, x, True)
    net(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.equal(KNNEdgeConvNet(3, 6, hidden=8, k=4).double()(x), torch.zeros(2, 30, 6, dtype=torch.float64))


def test_knn_edgeconv_matches_loop_reference():
    net = KNNEdgeConvNet(2, 3, hidden=8, k=3, num_layers=1, zero_init=False).double()
    x = torch.randn(1, 9, 2, dtype=torch.float64)
    conv = net.convs[0]
    h = net.embed(x)[0]
    nbr = knn_neighbors(x, 3)[0]
    W = torch.cat([conv.lin_centre.weight, conv.lin_nbr.weight], 1)  # acts on [h_i, h_j - h_i]
    ref = []
    for i in range(9):
        msgs = [conv.lin2(conv.act(torch.cat([h[i], h[j] - h[i]]) @ W.T + conv.lin_centre.bias)) for j in nbr[i]]
        ref.append(torch.stack(msgs).amax(0))
    h_ref = h + net.act(torch.stack(ref))
    torch.testing.assert_close(net(x)[0], net.out(h_ref))


@pytest.mark.parametrize("coord,point", [("isab", "isab"), ("knn", "knn"), ("transformer", "isab")])
def test_set_flow_point_conditioner_round_trip(coord, point):
    from setflow.models.set_flows import build_set_flow

    flow = build_set_flow(num_points=24, dim=3, num_steps=1, point_conditioner=point,
                          conditioner={"name": coord, "d_model": 8, "num_heads": 2, "num_inducing": 3, "k": 3},
                          input_scale=1.0, input_shift=0.0, sort_consistent=False).double()
    for p in flow.parameters():  # leave the zero init so the couplings do something
        torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    x = torch.rand(2, 24, 3, dtype=torch.float64)
    x = x[:, x[0, :, 0].argsort()]
    z = x
    for t in flow.transforms[1:]:  # after the sort: a bijection
        z, _ = t(z)
    back = z
    for t in reversed(flow.transforms[1:]):
        back = t.inverse(back)
    torch.testing.assert_close(back, x)
    positional = [m for m in flow.modules() if isinstance(m, (ISABNet, KNNEdgeConvNet)) and m.positional]
    assert len(positional) == (1 if point in ("isab", "knn") else 0)  # the point-wise coupling's net
    with pytest.raises(ValueError, match="point_conditioner: unknown set conditioner .pointnet."):
        build_set_flow(num_points=8, dim=3, point_conditioner="pointnet")
