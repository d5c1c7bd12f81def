"""``python -m benchmarks --quick`` runs end to end and writes its three files.

A smoke test: it asserts nothing about speed.  With only the ``test`` extra
installed (no matplotlib, no aiofastnet) the benchmark must still succeed:
it then writes a note instead of the plot and skips the aiofastnet receiver.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import run_module


@pytest.mark.timeout(180)
def test_quick_benchmark_writes_report(tmp_path: Path) -> None:
    proc = run_module(["benchmarks", "--quick", "--no-progress", "--output-dir", str(tmp_path)],
                      timeout=150)
    assert proc.returncode == 0, proc.stderr[-4000:]
    md = (tmp_path / "benchmarks.md").read_text()
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    names = [r["name"] for r in data["receivers"]]
    assert names, "no receiver ran"
    assert any("floor" in n for n in names)
    ran = {r["receiver"] for r in data["runs"]}
    assert ran == set(names)
    for name in names:
        assert f"| {name} |" in md, f"no row for {name}"
    assert "## Targets" in md
    # The sender side ran in the same invocation (benchmarks/send.py).
    assert "## Sender side" in md and "aiozc zc_proxy" in md
    assert (tmp_path / "send.md").exists()
    if importlib.util.find_spec("matplotlib") is not None:
        png = tmp_path / "benchmarks.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "No plot" in md
    if importlib.util.find_spec("aiofastnet") is None:
        assert "aiofastnet" in md  # listed as skipped
