"""``python -m benchmarks --quick`` runs end to end and writes its files.

A smoke test: it asserts nothing about speed.  With only the ``test`` extra
installed (no matplotlib, no aiofastnet) the benchmark must still succeed:
it then writes a note instead of the plot and skips the aiofastnet receiver.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from support import ROOT, run_module

pytestmark = pytest.mark.benchmarks


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
    # The many-connections benchmark ran through the hook (its own quick mode).
    assert "## Many connections" in md and "(connections.md)" in md
    assert (tmp_path / "connections.md").read_text().startswith("# Many connections")
    assert json.loads((tmp_path / "connections.json").read_text())["quick"] is True
    # So did the many-connection RPC benchmark: every reply checked, a row per cell.
    rows = json.loads((tmp_path / "rpc.json").read_text())
    assert rows and all(r["bad"] == 0 and r["requests"] > 0 for r in rows)
    assert "## Server CPU per request" in (tmp_path / "rpc.md").read_text()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", ["recorded", "partial"])
def test_plot_from_json(tmp_path: Path, which: str) -> None:
    """``python -m benchmarks --from-json``: the plot of a recorded run, drawn
    again without measuring (docs/benchmarks.png is made so), from the last
    full run's JSON and from a smaller one with a receiver missing a cell
    and a cell no peer ran in (quick, as a smoke run's)."""
    pytest.importorskip("matplotlib")
    src = ROOT / "docs" / "benchmarks.json"
    if which == "partial":
        data = json.loads(src.read_text())
        peers = [r for r in data["receivers"] if not r["aiozc"]][:3]
        ours = [r for r in data["receivers"] if r["aiozc"]][:2]
        data["receivers"] = peers + ours
        names = {r["name"] for r in data["receivers"]}
        data["runs"] = [
            r for r in data["runs"] if r["receiver"] in names
            and not (r["receiver"] == ours[0]["name"] and r["frame_size"] == 512)
            and not (not r["aiozc"] and r["workload"] == "rpc" and r["sender"] == "plain")]
        data["quick"] = True
        src = tmp_path / "partial.json"
        src.write_text(json.dumps(data))
    png = tmp_path / "plot.png"
    proc = run_module(["benchmarks", "--from-json", str(src), "--png", str(png)], timeout=50)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["plot.png"] + (["partial.json"] if which == "partial" else []))


@pytest.mark.timeout(150)
def test_quick_connections_writes_report(tmp_path: Path) -> None:
    """``python -m benchmarks.connections --quick``: every cell completes, both
    phases are reported, the targets and the machine state are printed."""
    md_path, js_path = tmp_path / "connections.md", tmp_path / "connections.json"
    proc = run_module(["benchmarks.connections", "--quick", "--no-progress",
                       "--md", str(md_path), "--json", str(js_path)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    md = md_path.read_text()
    data = json.loads(js_path.read_text())
    names = [r["name"] for r in data["receivers"]]
    assert any(not r["aiozc"] for r in data["receivers"]), "no peer ran"
    assert any(r["aiozc"] for r in data["receivers"]), "no aiozc receiver ran"
    cells = data["cells"]
    assert {c["receiver"] for c in cells} == set(names)
    assert {c["sender"] for c in cells} == {"zerocopy", "plain"}
    for c in cells:
        assert "error" not in c and "aborted" not in c, c
        assert c["bad_frames"] == 0
        assert c["after"]["VmRSS"] > 0 and c["before"]["VmRSS"] > 0
        assert c["stream"]["bytes"] == c["n"] * data["stream_frame"] * \
            data["stream_frames"][str(c["n"])]
        if c["aiozc"]:
            assert c["zc_idle"]["connections"] == c["n"]
    for name in names:
        assert f"| {name} |" in md, f"no row for {name}"
    assert "## Targets" in md and "## Phase 1, N = 100" in md and "## Phase 2, N = 100" in md
    assert "Load average (1, 5, 15 min) at the start" in md
    assert "NOT measurements" in md


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", [[], ["--same-process"]])
def test_delivery_writes_report(tmp_path: Path, mode: list[str]) -> None:
    """``python -m benchmarks.delivery``: every receiver row is measured (the
    engine's own rows included) and written to --output as printed."""
    out = tmp_path / "delivery.md"
    proc = run_module(["benchmarks.delivery", "--rounds", "1", "--deliveries", "200",
                       "--sizes", "4096,65536", "--output", str(out), *mode], timeout=100)
    assert proc.returncode == 0, proc.stderr[-4000:]
    md = out.read_text(encoding="utf-8")
    assert md.strip() in proc.stdout
    rows = [line for line in md.splitlines() if line.startswith("| ") and "KiB |" not in line]
    names = {row.split(" | ")[0][2:] for row in rows}
    assert {"sock.recv_into(64 KiB)", "aiozc engine, never", "aiozc engine, auto"} <= names
    for row in rows:
        cells = row.strip("| ").split(" | ")[1:]
        assert len(cells) == 2 and all(float(c.split(" ")[0]) > 0 for c in cells), row
