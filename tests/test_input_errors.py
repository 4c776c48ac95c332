"""Named errors at the layer level: coupling widths against the conditioner, dtype/device of the data;
and the data layer: default root, remembered download failures."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import torch
from torch import nn

from setflow.data.common import DataError, default_data_root
from setflow.data.download import RemoteFile, failure_marker, fetch
from setflow.distributions import StandardNormal
from setflow.flows import Flow
from setflow.transforms.coupling import AdditiveCoupling, AffineCoupling


def test_affine_coupling_refuses_a_conditioner_of_the_wrong_width():
    layer = AffineCoupling(nn.Linear(2, 4), split_dim=-1, split_sizes=(2, 1))  # needs 2 outputs, gives 4
    x = torch.randn(3, 5, 3)
    with pytest.raises(ValueError, match=r"returned shape \(3, 5, 4\).*need shape \(3, 5, 2\)"):
        layer(x)
    with pytest.raises(ValueError, match="conditioner Linear returned shape"):
        layer.inverse(x)
    good = AffineCoupling(nn.Linear(2, 2), split_dim=-1, split_sizes=(2, 1))
    z, _ = good(x)
    assert z.shape == x.shape  # D stays 3


def test_additive_coupling_refuses_a_conditioner_of_the_wrong_width():
    layer = AdditiveCoupling(nn.Linear(2, 2), split_dim=-1, split_sizes=(2, 1))
    with pytest.raises(ValueError, match=r"shifts for x_b of shape \(4, 1\) need shape \(4, 1\)"):
        layer(torch.randn(4, 3))


def test_flow_names_a_dtype_mismatch():
    flow = Flow(StandardNormal((3,)), [AffineCoupling(nn.Linear(2, 2), split_dim=-1, split_sizes=(2, 1))])
    with pytest.raises(ValueError, match=r"x has dtype torch.float64 but the model's parameters are torch.float32"):
        flow.log_prob(torch.randn(2, 3, dtype=torch.float64))
    assert flow.log_prob(torch.randn(2, 3)).shape == (2,)


def test_default_data_root_is_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("SETFLOW_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_data_root() == tmp_path / "datasets"  # never the package's clone
    monkeypatch.setenv("SETFLOW_DATA", str(tmp_path / "elsewhere"))
    assert default_data_root() == tmp_path / "elsewhere"


def test_failed_download_is_remembered_and_then_one_short_line(tmp_path, monkeypatch):
    calls = []

    def unreachable(request, timeout=None):
        calls.append(request.full_url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    remote = RemoteFile("f.bin", ("https://a.invalid/", "https://b.invalid/"), sha256="0" * 64)
    with pytest.raises(DataError, match="could not download f.bin"):
        fetch(remote, tmp_path)
    assert len(calls) == 2 and failure_marker(remote, tmp_path).is_file()
    with pytest.raises(DataError) as e:
        fetch(remote, tmp_path)
    assert len(calls) == 2, "a recent failure must not be retried"
    assert "\n" not in str(e.value) and "failed 0 min ago" in str(e.value) and "delete" in str(e.value)
    # a day later it is tried again
    marker = failure_marker(remote, tmp_path)
    marker.write_text(json.dumps({"time": time.time() - 25 * 3600, "error": "old"}))
    with pytest.raises(DataError, match="could not download"):
        fetch(remote, tmp_path)
    assert len(calls) == 4


def test_second_command_gets_a_one_line_warning(tmp_path, monkeypatch):
    from setflow.data.common import DataWarning
    from setflow.data.mnist import load_digit_splits

    monkeypatch.delenv("SETFLOW_OFFLINE", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("down")))
    with pytest.warns(DataWarning) as first:
        load_digit_splits("mnist", data_root=tmp_path)
    with pytest.warns(DataWarning) as second:
        load_digit_splits("mnist", data_root=tmp_path)
    assert str(first[0].message).count("\n") >= 1
    assert len(second) == 1 and "\n" not in str(second[0].message) and "not retried" in str(second[0].message)
