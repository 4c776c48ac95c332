"""The benchmark scripts' plumbing: the official-code switch, the headline table, the mode runner."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_official_code_is_optional_and_checked(monkeypatch, tmp_path, capsys):
    bench = _script("bench_official")
    monkeypatch.delenv("SURVAE_OFFICIAL", raising=False)
    assert bench.official_root() is None
    assert "SURVAE_OFFICIAL" in capsys.readouterr().out  # the one line saying the column is skipped
    monkeypatch.setenv("SURVAE_OFFICIAL", str(tmp_path))
    with pytest.raises(SystemExit, match="not a survae_flows checkout"):
        bench.official_root()


def test_headline_table_with_baseline_column():
    bench = _script("bench_setflow")
    rows = [bench._row("a / b", [2.0, 4.0, 3.0], "d", ">= 1"), bench._row("not compared", [], "ours 5 ms")]
    assert rows[0]["median"] == 3.0 and (rows[0]["min"], rows[0]["max"]) == (2.0, 4.0)
    lines = bench.format_headline(rows, "machine", old={"a / b": {"median": 1.5}})
    assert lines[1].endswith("new / old |")
    assert lines[3] == "| a / b | 3x | 2-4 | >= 1 | d | 2.00 |"
    assert lines[4] == "| not compared | - | - |  | ours 5 ms | - |"
    assert not any("new / old" in line for line in bench.format_headline(rows, "machine"))


def test_step_modes_rows_on_cpu(tmp_path):
    modes = _script("step_modes")
    table = tmp_path / "modes.md"
    cfg = str(Path(__file__).resolve().parents[1] / "configs/set_codec/spatial_mnist_cpu.yaml")
    for mode in ("eager", "bf16", "graphs"):
        assert modes.main([cfg, "--mode", mode, "--device", "cpu", "--batch", "2", "--steps", "1", "--warmup", "0",
                           "--table", str(table)]) == 0
    rows = table.read_text().splitlines()
    assert [r.split("|")[2].strip() for r in rows] == ["eager", "bf16", "graphs"]
    assert float(rows[0].split("|")[5]) > 0 and rows[0].endswith("| ok |")
    assert rows[2].endswith("| graphs: CUDA only |")  # CUDA graphs are reported, not faked, off a GPU
