"""Receiver CPU per 32 KiB frame: aiozc's framed readers against the peers.

A thin wrapper over the shared pieces of ``python -m benchmarks`` (the
peer process in ``_sender.py``, the receivers in ``_receivers.py``, the
interleaved runner in ``_runner.py``): the bulk workload at one frame size,
streams-style readers only, one sender.  The full comparison is
``python -m benchmarks``.

    python -m benchmarks.frames [--quick] [--frames N] [--repeats N] [--peer zc|plain]
                                [--output PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from ._process import pin, pin_cpus
from ._receivers import all_receivers
from ._report import emit, median_range, table
from ._runner import Progress, available, run_matrix
from ._sender import Job, Peer

#: The frame size this report is about (the size of the README's figure).
FRAME = 32 * 1024
#: Each reader is compared with its runtime's stdlib (or anyio) reader.
_BASELINE = {"asyncio": "asyncio streams readexactly", "uvloop": "asyncio streams readexactly",
             "anyio-asyncio": "anyio BufferedByteReceiveStream",
             "anyio-trio": "anyio BufferedByteReceiveStream"}
_APIS = ("asyncio streams readexactly", "aiozc streams readexactly_view",
         "anyio BufferedByteReceiveStream", "aiozc anyio receive_exactly_view",
         "aiozc floor (engine + poll, no loop)")
#: The floor: aiozc's engine in a blocking poll() loop, frames cut with the
#: same ViewBuffer, no event loop at all.  No reader on an event loop can be
#: cheaper, so floor / baseline is the best ratio any of them could reach.
_FLOOR = "aiozc floor (engine + poll, no loop) [blocking]"


def main(argv: list[str] | None = None) -> int:
    """Run the frame benchmark and print a markdown report."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (CI)")
    parser.add_argument("--frames", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer", choices=["zc", "plain"], default="zc")
    parser.add_argument("--output", help="also write the report to this file")
    args = parser.parse_args(argv)
    frames, repeats = (256, 1) if args.quick else (args.frames, args.repeats)
    rx_cpu, snd_cpu = pin_cpus()
    pin(rx_cpu)
    receivers = [s for s in all_receivers() if s.api in _APIS and available(s)]
    job = Job("bulk", FRAME, frames, args.peer == "zc")
    start = time.monotonic()
    peer = Peer(snd_cpu)
    progress = Progress(len(receivers) * repeats)
    try:
        runs = run_matrix(receivers, [job], repeats, peer, progress)
    finally:
        progress.close()
        peer.close()
    results: dict[str, list[float]] = {}
    for r in runs:
        results.setdefault(r.receiver, []).append(r.us_per_msg)

    lines = [
        f"# Receiver CPU per {FRAME // 1024} KiB frame",
        "",
        f"{frames} frames per run, {repeats} interleaved runs, "
        f"{'MSG_ZEROCOPY' if args.peer == 'zc' else 'plain send()'} sender in another process; "
        "the receiver CRC32s every payload byte. aiozc with the default ZCConfig (zerocopy='auto').",
        f"Linux {platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.monotonic() - start:.0f} s.",
        "",
    ]
    floor = statistics.median(results[_FLOOR]) if _FLOOR in results else float("nan")
    rows = []
    for s in receivers:
        values = results[s.name]
        if s.name == _FLOOR:
            rows.append(["(none)", s.api, median_range(values, 1), "(the floor)"])
            continue
        base_name = f"{_BASELINE[s.runtime]} [{s.runtime}]"
        base = statistics.median(results[base_name]) if base_name in results else float("nan")
        rows.append([s.runtime, s.api, median_range(values, 1),
                     f"{statistics.median(values) / base:.2f}x"])
    lines.append(table(["runtime", "receiver", "µs per frame (median [min–max])",
                        "vs the runtime's stdlib reader"], rows))
    lines += ["", "The best ratio any reader could reach on this machine is the floor over "
              "each baseline: " + ", ".join(
                  f"{rt} {floor / statistics.median(results[f'{b} [{rt}]']):.2f}x"
                  for rt, b in _BASELINE.items() if f"{b} [{rt}]" in results) + "."]
    emit("\n".join(lines) + "\n", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
