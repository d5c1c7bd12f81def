"""The soak, short: ``python -m benchmarks.soak --quick`` (200 connections, 10 s).

Both loops at once (the stdlib one and uvloop, each in a thread), loopback
only.  It must verify every session (SHA-256 at both ends), see no error
but the resets its peers send on purpose, hold ~200 connections throughout,
and end with the fds, mappings and (after malloc_trim) RSS it started with;
see benchmarks/soak.py for the checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, Tally


@pytest.mark.timeout(150)
def test_quick_soak(tmp_path: Path, tally: Tally) -> None:
    report_path = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--quick", "--no-progress",
         "--json", str(report_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=140,
    )
    assert report_path.exists(), f"status {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    report = json.loads(report_path.read_text())
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert proc.returncode == 0 and not failed, f"failed: {failed}\n{proc.stdout}"
    assert report["sessions_verified"] > 1000
    assert report["concurrent_min"] >= 150, report["concurrent_min"]
    assert report["bytes_mapped"] > 0  # the MSG_ZEROCOPY peers' pages were mapped
    assert report["end"]["fds"] == report["start"]["fds"]
    assert report["end"]["socket_maps"] == 0
    tally.verified(report["bytes_verified"], connections=report["sessions_opened"],
                   faults=report["sessions_reset"])
