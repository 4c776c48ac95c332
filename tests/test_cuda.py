"""CUDA checks: set flows, training, hash dropout and the compiled blocks on a GPU (skipped without one).

Run on a GPU machine with ``pytest -m cuda`` (``scripts/cuda_check.sh`` does that and the benchmark).
"""

from __future__ import annotations

import pytest
import torch

from setflow.models import build_model
from setflow.nn import SetTransformerBlock
from setflow.nn.fast import block_core, compiled_block_core, hash_keep_mask
from setflow.train.config import validate_config
from setflow.train.data import ExperimentData
from setflow.train.trainer import Trainer

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def _small_sortflow(dropout: float = 0.0):
    return build_model("sortflow", num_points=20, dim=2, num_steps=3, d_model=16, num_heads=2, num_layers=1,
                       dim_feedforward=32, dropout=dropout)


def test_sortflow_on_cuda_matches_cpu_and_is_permutation_invariant() -> None:
    model = _small_sortflow().double().eval()
    x = torch.rand(6, 20, 2, dtype=torch.float64) * 28
    with torch.no_grad():
        model.log_prob(x)  # ActNorm's data-dependent init, on the CPU
        lp_cpu = model.log_prob(x)
        model.to(CUDA)
        xc = x.to(CUDA)
        lp_gpu = model.log_prob(xc)
        perm = torch.randperm(20, device=CUDA)
        lp_perm = model.log_prob(xc[:, perm])
        samples = model.sample(5)
    assert lp_gpu.device.type == "cuda"
    assert torch.allclose(lp_gpu.cpu(), lp_cpu, rtol=1e-10, atol=1e-8)
    assert torch.allclose(lp_perm, lp_gpu, rtol=1e-12, atol=1e-10)
    assert samples.shape == (5, 20, 2) and samples.device.type == "cuda" and torch.isfinite(samples.points).all()
    assert samples.mask.device.type == "cuda" and samples.is_fixed


def test_hash_masks_on_cuda_equal_the_cpu_masks() -> None:
    seed = torch.tensor([12345, -7], dtype=torch.int32)
    shape = (16, 8, 50, 50)
    ref = hash_keep_mask(shape, 0.8, seed)
    assert torch.equal(hash_keep_mask(shape, 0.8, seed.to(CUDA)).cpu(), ref)
    compiled = torch.compile(lambda s: hash_keep_mask(shape, 0.8, s), dynamic=False)
    assert torch.equal(compiled(seed.to(CUDA)).cpu(), ref)  # Triton's integer maths, bit for bit


def test_compiled_block_on_cuda_matches_eager_with_the_same_masks() -> None:
    torch.manual_seed(0)
    blk = SetTransformerBlock(64, 8, 256, dropout=0.2).to(CUDA)
    seed = torch.randint(-2**31, 2**31 - 1, (4, 2), dtype=torch.int32, device=CUDA)
    x = torch.randn(16, 50, 64, device=CUDA)
    g = torch.randn(16, 50, 64, device=CUDA)

    def grads(fn):
        xr = x.clone().requires_grad_()
        for p in blk.parameters():
            p.grad = None
        y = fn(xr, blk.weights(), 8, 0.2, 1e-5, seed)
        (y * g).sum().backward()
        return [y.detach(), xr.grad] + [p.grad for p in blk.parameters()]

    eager, compiled = grads(block_core), grads(compiled_block_core())
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_training_runs_on_cuda(tmp_path) -> None:
    cfg = validate_config({
        "model": "sortflow",
        "model_args": dict(num_points=8, dim=2, num_steps=2, d_model=16, num_heads=2, num_layers=1,
                           dim_feedforward=32, dropout=0.1),
        "data": "spatial_mnist",
        "train": dict(batch_size=8, epochs=2, lr=1e-3, warmup_steps=1, eval_every=10_000, ckpt_every=2,
                      progress=False, device="cuda", fused=True),
        "eval": {"batch_size": 16},
    })
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 8, 2, generator=g) * 28
    data = ExperimentData(x, x[:8], x[8:16], "data: synthetic test sets", "nats_per_point", "sets")
    t = Trainer(cfg, str(tmp_path), data=data, log=lambda *_: None)
    t.fit()
    assert t.step == 2 * (32 // 8)
    params = list(t.model.parameters())
    assert all(p.device.type == "cuda" and torch.isfinite(p).all() for p in params)
    resumed = Trainer(cfg, str(tmp_path), resume=True, data=data, log=lambda *_: None)
    assert resumed.step == t.step
