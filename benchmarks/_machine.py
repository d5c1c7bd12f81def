"""The machine a report was measured on (every benchmark prints it)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path


def machine_info() -> dict[str, str]:
    """Kernel, machine, CPU model, nproc (honours the affinity mask), Python, date."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(os.cpu_count())
    return {
        "kernel": platform.release(), "machine": platform.machine(), "cpu": model,
        "nproc": nproc, "python": platform.python_version(),
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
    }


def machine_lines(m: dict[str, str]) -> str:
    """:func:`machine_info` as the report's markdown list (kernel, CPUs, Python, date)."""
    return (f"- Kernel: `{m['kernel']}` ({m['machine']})\n"
            f"- CPUs: {m['nproc']} × {m['cpu']}\n"
            f"- Python: {m['python']}\n"
            f"- Date: {m['date']}")
