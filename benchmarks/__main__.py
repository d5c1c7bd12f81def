"""aiozc against the peers, in one run: ``python -m benchmarks``.

Usage::

    python -m benchmarks [--quick] [--repeats N] [--scale X] [--no-trio]
                         [--no-send] [--no-connections] [--no-rpc]
                         [--no-pin] [--load N]
                         [--output-dir DIR | --md PATH --png PATH --json PATH]
    python -m benchmarks --from-json docs/benchmarks.json [--png PATH]

``--no-pin`` leaves the receiver and the peer unpinned, as users' processes
are; ``--load N`` runs N busy-loop processes beside the receiver matrix.
The report says which it was.

What runs
---------
A peer process (``multiprocessing`` 'spawn', pinned to CPU 1) connects to
this process (pinned to CPU 0) once per run and sends, either with
``MSG_ZEROCOPY`` (:class:`aiozc.testing.ZeroCopySender`, ``zerocopy=True``:
pages the receiving kernel can map) or with plain ``sendmsg``
(``zerocopy=False``: pages it cannot):

* **bulk**: a stream of length-prefixed frames (4-byte big-endian length,
  payload) of 512 B, 4 KiB, 32 KiB, 256 KiB or 1 MiB; the receiver CRC32s
  every payload;
* **rpc**: 32 KiB requests in the same framing, 8 outstanding at a time; the
  receiver under test is the *server*: it CRC32s each request and writes a
  4-byte reply, which lets the peer send the next request.

Every receiver in ``benchmarks/_receivers.py`` (asyncio Protocol,
BufferedProtocol and streams on the stdlib loop and uvloop, aiofastnet,
anyio, aiozc's ZCProtocol in each mode, its streams and anyio readers, and
the *floor*: aiozc's engine in a blocking ``poll()`` loop with no event
loop) receives every workload from both senders.

Figures: receiver-process CPU (user+sys, ``getrusage``) per message, from
the moment its connection is set up to the last frame (and reply);
throughput over the same wall time; for aiozc, the share of bytes that
arrived in mapped pages.  Runs are interleaved (receivers A B C ... and
reversed on alternate repeats); medians with the min-max spread.

Writes ``docs/benchmarks.md`` (tables, targets), ``docs/benchmarks.png``
(a heatmap of every receiver's CPU per message over the best peer's in
every cell; skipped with a note when matplotlib is missing) and
``docs/benchmarks.json`` (every run).  ``--from-json`` measures nothing: it
draws the plot again from a benchmarks.json.  Receivers whose package
(aiofastnet, anyio, trio) is missing are skipped with a note.  ``--quick``
is a smoke run for CI (well under 60 s): small transfers, one repeat; it
asserts nothing about speed.

After the receivers, the same invocation runs the sender side
(``benchmarks/send.py``, ``send.md``; ``--no-send`` skips it) and the
many-connections benchmark (``benchmarks/connections.py``:
``connections.md`` and ``connections.json`` beside the report, its own
``--quick`` in quick mode; ``--no-connections`` skips it) and the
many-connection RPC benchmark (``benchmarks/rpc.py``: ``rpc.md`` and
``rpc.json``; ``--no-rpc`` skips it), and the report points to them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._receivers import ReceiverSpec, all_receivers
from ._runner import Progress, Run, available, run_matrix
from ._machine import machine_info, machine_lines
from ._report import median, median_range, size_label, table
from ._process import pin, pin_cpus
from ._sender import HEADER, RPC_REQUEST, RPC_WINDOW, Job, Peer

KiB = 1024
MiB = 1024 * KiB

#: Bulk frame sizes -> payload MiB per run in the default (full) run.  Small
#: frames move fewer bytes: 512 B frames cost ~1-10 us each in Python
#: (anyio's BufferedByteReceiveStream ~10 us), so 32 MiB (65,536 frames) is
#: already ~0.6 s for the slowest receiver; larger frames move 128-256 MiB,
#: 0.1-0.5 s per run at 0.5-2 GB/s.  With 22 receivers x 12 cells x 5
#: repeats that keeps the default run near 6-7 minutes on the 2-vCPU VM.
BULK_MIB = {512: 32, 4 * KiB: 128, 32 * KiB: 128, 256 * KiB: 256, 1 * MiB: 256}
#: RPC requests per run (32 KiB each: 256 MiB of requests, ~0.2-0.6 s).
RPC_COUNT = 8192
#: --quick divides every transfer by this (a smoke run, not a measurement).
QUICK_DIVISOR = 32
#: Interleaved repeats (quick: 1).  At least 5; 7 because single runs on
#: the shared VMs swing by up to 1.7x (a 32 KiB cell's system time moved
#: between 1 and 12 µs per frame from run to run), and a median of 5 still
#: let one noisy cell read 1.50x where reruns gave 1.02x.  The whole run
#: stays near 4 minutes.
REPEATS = 7
#: Frame sizes the first target covers ("from 4 KiB up").
TARGET_SIZES = (4 * KiB, 32 * KiB, 256 * KiB, 1 * MiB)
#: aiozc ZCProtocol auto over the best peer's CPU per message: at most this.
T1_MAX = 1.0
#: aiozc streams readexactly_view over asyncio streams at 32 KiB: at most this.
T2_MAX = 0.35
#: aiozc ZCProtocol auto (event loop) over the floor, 256 KiB and up: at most this.
T3_MAX = 1.15

SENDERS = ("zerocopy", "plain")
SENDER_LABEL = {"zerocopy": "MSG_ZEROCOPY sender", "plain": "plain send() sender"}


def make_jobs(scale: float) -> list[Job]:
    """The 12 cells: 5 bulk sizes and the RPC workload, each from both senders."""
    jobs = []
    for zc in (True, False):
        for size, mib in BULK_MIB.items():
            jobs.append(Job("bulk", size, max(8, int(mib * MiB * scale) // size), zc))
        jobs.append(Job("rpc", RPC_REQUEST, max(4 * RPC_WINDOW, int(RPC_COUNT * scale)), zc))
    return jobs


# ---------------------------------------------------------------------------
# aggregation


Key = tuple[str, str, int, str]  # receiver, workload, frame size, sender


class Results:
    """Runs grouped by (receiver, workload, frame size, sender)."""

    def __init__(self, runs: Sequence[Run], receivers: Sequence[ReceiverSpec]) -> None:
        self.runs = list(runs)
        self.receivers = list(receivers)
        self.by: dict[Key, list[Run]] = {}
        for r in runs:
            self.by.setdefault((r.receiver, r.workload, r.frame_size, r.sender), []).append(r)
        self.cells = sorted({(r.workload, r.frame_size, r.sender) for r in runs},
                            key=lambda c: (SENDERS.index(c[2]), c[0] == "rpc", c[1]))

    def us(self, rx: str, cell: tuple[str, int, str]) -> list[float]:
        """CPU µs per message of every repeat."""
        return [r.us_per_msg for r in self.by.get((rx, *cell), [])]

    def med(self, rx: str, cell: tuple[str, int, str]) -> float:
        """Median CPU µs per message (NaN if the receiver did not run)."""
        return median(self.us(rx, cell))

    def best_peer(self, cell: tuple[str, int, str]) -> tuple[str, float]:
        """The non-aiozc receiver with the lowest median CPU per message."""
        peers = [(self.med(s.name, cell), s.name) for s in self.receivers
                 if not s.aiozc and self.us(s.name, cell)]
        m, name = min(peers)
        return name, m

    def ratio(self, rx: str, cell: tuple[str, int, str]) -> float:
        """The receiver's median CPU per message over the best peer's, in one
        cell: what the report's ratio tables and the plot show (below 1:
        cheaper than every peer).  NaN if the receiver did not run there."""
        return self.med(rx, cell) / self.best_peer(cell)[1]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        """The results of a run written to ``benchmarks.json`` (to draw its
        plot again without measuring anything)."""
        known = {f.name for f in dataclasses.fields(Run)}
        runs = [Run(**{k: v for k, v in r.items() if k in known}) for r in data["runs"]]
        receivers = [ReceiverSpec(api=r["api"], runtime=r["runtime"], aiozc=r["aiozc"],
                                  fn=_not_runnable, mode=r["mode"])
                     for r in data["receivers"]]
        return cls(runs, receivers)

    def field(self, rx: str, cell: tuple[str, int, str], attr: str) -> list[float]:
        """One attribute of every repeat (skipping None)."""
        out = []
        for r in self.by.get((rx, *cell), []):
            v = getattr(r, attr)
            if v is not None:
                out.append(float(v))
        return out


def _not_runnable(*args: object) -> None:
    raise RuntimeError("a receiver loaded from benchmarks.json cannot run")


def _cell_label(cell: tuple[str, int, str]) -> str:
    return size_label(cell[1]) if cell[0] == "bulk" else f"RPC {size_label(cell[1])}"


# ---------------------------------------------------------------------------
# targets


def targets(res: Results) -> list[tuple[str, bool, list[str]]]:
    """(target, met, evidence lines) for the brief's three targets."""
    out = []
    # T1: ZCProtocol auto <= 1.0x best peer at >= 4 KiB, both senders, both loops.
    lines, ok = [], True
    for sender in SENDERS:
        for size in TARGET_SIZES:
            cell = ("bulk", size, sender)
            if not res.us(res.receivers[0].name, cell) and not any(
                    res.us(s.name, cell) for s in res.receivers):
                continue
            peer, pm = res.best_peer(cell)
            for rt in ("asyncio", "uvloop"):
                name = f"aiozc ZCProtocol auto [{rt}]"
                m = res.med(name, cell)
                ratio = m / pm
                met = ratio <= T1_MAX
                ok &= met
                lines.append(f"{'met' if met else '**missed**'}: {size_label(size)}, "
                             f"{SENDER_LABEL[sender]}, {rt}: {m:.1f} µs vs {pm:.1f} µs "
                             f"({peer}) = {ratio:.2f}x")
    out.append((f"aiozc `auto` (ZCProtocol) costs at most {T1_MAX:.2f}x the best peer's "
                "CPU per message at every frame size from 4 KiB up, with either sender, "
                "on both loops", ok, lines))
    # T2: streams views at 32 KiB <= 0.35x asyncio streams (same loop).
    lines, ok = [], True
    for sender in SENDERS:
        cell = ("bulk", 32 * KiB, sender)
        for rt in ("asyncio", "uvloop"):
            m = res.med(f"aiozc streams readexactly_view [{rt}]", cell)
            b = res.med(f"asyncio streams readexactly [{rt}]", cell)
            ratio = m / b
            met = ratio <= T2_MAX
            ok &= met
            lines.append(f"{'met' if met else '**missed**'}: {SENDER_LABEL[sender]}, {rt}: "
                         f"{m:.1f} µs vs {b:.1f} µs = {ratio:.2f}x")
    out.append((f"aiozc streams `readexactly_view` at 32 KiB costs at most {T2_MAX:.2f}x "
                "asyncio streams `readexactly` (same loop)", ok, lines))
    # T3: event loop over floor <= 1.15x at >= 256 KiB.
    lines, ok = [], True
    floor = next((s.name for s in res.receivers if s.runtime == "blocking"), None)
    for sender in SENDERS:
        for size in (256 * KiB, 1 * MiB):
            cell = ("bulk", size, sender)
            f = res.med(floor, cell) if floor else float("nan")
            for rt in ("asyncio", "uvloop"):
                m = res.med(f"aiozc ZCProtocol auto [{rt}]", cell)
                ratio = m / f
                met = ratio <= T3_MAX
                ok &= met
                lines.append(f"{'met' if met else '**missed**'}: {size_label(size)}, "
                             f"{SENDER_LABEL[sender]}, {rt}: {m:.1f} µs vs floor {f:.1f} µs "
                             f"= {ratio:.2f}x")
    out.append((f"aiozc on an event loop (ZCProtocol `auto`) costs at most {T3_MAX:.2f}x "
                "its own floor (engine + poll(), no loop) at 256 KiB frames and above",
                ok, lines))
    return out


# ---------------------------------------------------------------------------
# report


def report(res: Results, machine: dict[str, str], repeats: int, jobs: Sequence[Job],
           skipped: list[str], plot_note: str, png_name: str, elapsed: float,
           quick: bool, pinned: str, send_md: str | None = None) -> str:
    """The markdown report."""
    w: list[str] = []
    w.append("# aiozc against the peers\n")
    w.append("Generated by `python -m benchmarks`" + (" --quick (a smoke run: the figures "
             "below are NOT measurements)" if quick else "") + f" in {elapsed:.0f} s. "
             "Receiver CPU per message (frame, or RPC request) for every receiver and "
             "workload; ratios are to the **best peer** (the cheapest non-aiozc receiver) "
             "of each cell.\n")
    w.append(machine_lines(machine) + "\n")
    sizes = sorted({j.frame_size for j in jobs if j.workload == "bulk"})
    per = {j.frame_size: j.count for j in jobs if j.workload == "bulk"}
    rpc_n = next((j.count for j in jobs if j.workload == "rpc"), 0)
    w.append("## Method\n")
    w.append(
        "- **Peer**: a separate process (multiprocessing 'spawn') sends with "
        "`aiozc.testing.ZeroCopySender`, either `zerocopy=True` (*MSG_ZEROCOPY sender*: "
        "the receiving kernel can map about 94% of its bytes) or `zerocopy=False` "
        "(*plain send() sender*: nothing maps, see docs/kernel.md). " + pinned)
    w.append("- **Bulk**: frames of 4-byte big-endian length + payload; the receiver "
             "CRC32s every payload. Frames per run: " + ", ".join(
                 f"{size_label(s)} × {per[s]} ({per[s] * s / MiB:.0f} MiB)" for s in sizes)
             + ". Fewer bytes for small frames keeps the whole run under 10 minutes.")
    w.append(f"- **RPC**: the receiver under test is the server. The peer keeps "
             f"{RPC_WINDOW} requests of {size_label(RPC_REQUEST)} (same framing) outstanding and "
             f"reads 4-byte replies; the server CRC32s each request and replies with the "
             f"CRC. {rpc_n} requests per run.")
    w.append("- **CPU**: the receiver process's user+sys time (`getrusage`) from the "
             "moment its connection is set up (loop running, transport built) to its "
             "last frame and reply, per message. Loop creation and connection set-up "
             "are not counted. **MB/s**: payload over the same wall time. "
             "**% mapped**: aiozc's `stats.mapped_fraction`.")
    w.append(f"- **Runs**: {repeats} repeat(s) of every (receiver, cell) after one "
             "discarded warm-up run; within each cell the receivers run in one order, "
             "reversed on alternate repeats. Each payload stream's CRC is checked "
             "against the sender's. Entries are **median [min–max]**.")
    w.append("- **Receivers**: peers are written as a typical app would with each API: "
             "`asyncio Protocol` appends `bytes` to a `bytearray` and parses frames from "
             "it; `asyncio BufferedProtocol` receives into its own 256 KiB buffer "
             "(grown for bigger frames), parses in place and moves the partial frame "
             "down; streams call `readexactly(4)` and `readexactly(n)`; `aiofastnet "
             "BufferedProtocol` is the same BufferedProtocol over "
             "`aiofastnet.connect_accepted_socket`; anyio wraps the socket "
             "(`SocketStream.from_socket`) in a `BufferedByteReceiveStream`. aiozc's "
             "`ZCProtocol` cuts frames from its views with `aiozc._buffer.ViewBuffer`; "
             "its streams and anyio readers use `readexactly_view` / "
             "`receive_exactly_view`. The **floor** is aiozc's engine "
             "(`aiozc._engine.Receiver`, `zerocopy='auto'`) driven by a blocking "
             "`select.poll` + `pump()` loop, frames cut with the same ViewBuffer: "
             "what aiozc costs without an event loop.")
    if skipped:
        w.append("- **Skipped**: " + "; ".join(skipped) + ".")
    w.append("")

    # targets
    w.append("## Targets\n")
    w.append("Shown, not asserted.\n")
    for i, (text, met, lines) in enumerate(targets(res), 1):
        w.append(f"{i}. {text}: **{'MET' if met else 'MISSED'}**")
        for line in lines:
            w.append(f"   - {line}")
    w.append("")
    notes = Path(__file__).with_name("ANALYSIS.md")
    if notes.exists() and not quick:
        w.append(notes.read_text().rstrip() + "\n")

    # ratio tables
    for sender in SENDERS:
        cells = [c for c in res.cells if c[2] == sender]
        if not cells:
            continue
        w.append(f"## CPU per message vs the best peer, {SENDER_LABEL[sender]}\n")
        w.append("Each entry: median receiver CPU per message / the best peer's median in "
                 "that column (below 1.00x: cheaper than every peer). The best peer is "
                 "**bold**; its own figure is in the last row.\n")
        best = {c: res.best_peer(c) for c in cells}
        rows = []
        for s in res.receivers:
            row = [s.name]
            for c in cells:
                r = res.ratio(s.name, c)
                if r != r:
                    row.append("–")
                    continue
                txt = f"{r:.2f}x"
                row.append(f"**{txt}**" if s.name == best[c][0] else txt)
            rows.append(row)
        rows.append(["*best peer, µs/msg*"] + [f"*{best[c][1]:.1f}*" for c in cells])
        w.append(table(["receiver"] + [_cell_label(c) for c in cells], rows) + "\n")

    w.append(f"![Receiver CPU per message over the best peer's, every receiver and cell]"
             f"({png_name})\n" if not plot_note
             else f"*{plot_note}*\n")

    # detail tables
    for sender in SENDERS:
        cells = [c for c in res.cells if c[2] == sender]
        if not cells:
            continue
        w.append(f"## Details, {SENDER_LABEL[sender]}\n")
        w.append("CPU µs per message, median [min–max] over the repeats.\n")
        rows = [[s.name] + [median_range(res.us(s.name, c), 1) for c in cells]
                for s in res.receivers]
        w.append(table(["receiver"] + [_cell_label(c) for c in cells], rows) + "\n")
        w.append("Throughput, MB/s (10^6 bytes of payload per second of receiver wall "
                 "time), median [min–max].\n")
        rows = [[s.name] + [median_range(res.field(s.name, c, "mb_per_s")) for c in cells]
                for s in res.receivers]
        w.append(table(["receiver"] + [_cell_label(c) for c in cells], rows) + "\n")
        w.append("aiozc receivers: % of the bytes that arrived in mapped pages, "
                 "median [min–max].\n")
        rows = []
        for s in res.receivers:
            if not s.aiozc:
                continue
            rows.append([s.name] + [
                median_range([100 * x for x in res.field(s.name, c, "mapped_fraction")], 1)
                for c in cells])
        w.append(table(["receiver"] + [_cell_label(c) for c in cells], rows) + "\n")
    if send_md:
        # The sender side (benchmarks/send.py), run in the same invocation:
        # its tables, under one heading of this report.
        w.append("## Sender side: zerocopy send and the proxy\n")
        w.append("From `python -m benchmarks.send`, run right after the receivers "
                 "(full report with its method: [send.md](send.md)). Sender "
                 "process CPU per MB (10^6 bytes) sent or forwarded, median [min–max].\n")
        body = send_md.split("## 1. Sending", 1)
        if len(body) == 2:
            w.append(("### 1. Sending" + body[1]).replace("\n## ", "\n### "))
    return "\n".join(w)


#: The plot's colour scale: ratios from 1/RATIO_SPAN (full green) to
#: RATIO_SPAN (full red), on a log scale centred at 1.00 (white).  Narrow,
#: because the differences that matter are 0.9-1.3x; beyond it the colour
#: saturates and the number in the cell tells.
RATIO_SPAN = 1.5


def plot(res: Results, path: Path, machine: dict[str, str] | None = None,
         repeats: int | None = None, quick: bool = False) -> str:
    """A heatmap of :meth:`Results.ratio`: one row per receiver, one column
    per cell (workload, size, sender), green where the receiver costs less
    CPU per message than the best peer, red where it costs more, the ratio
    written in each cell.  Returns '' or a note saying why there is no plot."""
    try:
        import matplotlib
    except ImportError:
        return "No plot: matplotlib is not installed (pip install 'aiozc[bench]')."
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap, LogNorm
    from matplotlib.patches import Rectangle

    # Cells where a peer ran (no ratio without one), receivers that ran.
    cells = [c for c in res.cells
             if any(not s.aiozc and res.us(s.name, c) for s in res.receivers)]
    rxs = [s for s in res.receivers if any(res.us(s.name, c) for c in cells)]
    if not cells or not rxs:
        return "No plot: no peer ran, so there is no ratio to draw."
    best = {c: res.best_peer(c) for c in cells}
    grid = [[res.ratio(s.name, c) for c in cells] for s in rxs]

    cmap = LinearSegmentedColormap.from_list(
        "ratio", ["#1a7f37", "#8fd19e", "#f7f7f7", "#f4a582", "#b2182b"])
    cmap.set_bad("#d9d9d9")
    norm = LogNorm(vmin=1 / RATIO_SPAN, vmax=RATIO_SPAN, clip=True)
    fig_w = 5.0 + 0.95 * len(cells)
    fig_h = max(5.5, 2.6 + 0.34 * len(rxs))
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    img = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    for i, s in enumerate(rxs):
        for j, c in enumerate(cells):
            v = grid[i][j]
            if math.isnan(v):
                ax.text(j, i, "–", ha="center", va="center", fontsize=10, color="#555555")
                continue
            strong = abs(math.log(v)) > 0.7 * math.log(RATIO_SPAN)
            ax.text(j, i, f"{v:.2f}" if v < 10 else f"{v:.1f}", ha="center", va="center",
                    fontsize=10, color="white" if strong else "black",
                    fontweight="bold" if s.aiozc else "normal")
            if s.name == best[c][0]:  # the best peer itself: 1.00 by definition
                ax.add_patch(Rectangle((j - 0.45, i - 0.42), 0.9, 0.84, fill=False,
                                       edgecolor="black", linewidth=1.5, zorder=3))
    ax.set_xticks(range(len(cells)),
                  [f"{_cell_label(c)}\n{best[c][1]:.1f} µs" for c in cells], fontsize=10)
    ax.set_yticks(range(len(rxs)), [s.name for s in rxs], fontsize=10)
    for label, s in zip(ax.get_yticklabels(), rxs):
        if s.aiozc:
            label.set_fontweight("bold")
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    # Thin white gaps between the cells; heavier lines between senders and
    # between the peers and aiozc.
    ax.set_xticks([j - 0.5 for j in range(1, len(cells))], minor=True)
    ax.set_yticks([i - 0.5 for i in range(1, len(rxs))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.2)
    ax.tick_params(which="minor", length=0)
    for j in range(1, len(cells)):
        if cells[j][2] != cells[j - 1][2]:
            ax.axvline(j - 0.5, color="black", linewidth=2)
    for i in range(1, len(rxs)):
        if rxs[i].aiozc != rxs[i - 1].aiozc:
            ax.axhline(i - 0.5, color="black", linewidth=2)
    # Sender names above their columns.
    for sender in SENDERS:
        cols = [j for j, c in enumerate(cells) if c[2] == sender]
        if cols:
            ax.annotate(SENDER_LABEL[sender], xy=((cols[0] + cols[-1]) / 2, 1),
                        xycoords=("data", "axes fraction"), xytext=(0, 34),
                        textcoords="offset points", ha="center", va="bottom",
                        fontsize=12, fontweight="bold")
    bar = fig.colorbar(img, ax=ax, extend="both", fraction=0.03, pad=0.02)
    ticks = [t for t in (0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
             if 1 / RATIO_SPAN - 1e-9 <= t <= RATIO_SPAN + 1e-9]
    bar.set_ticks(ticks, labels=[f"{t:.2f}x" for t in ticks], fontsize=10)
    bar.ax.minorticks_off()
    bar.set_label("ratio to the best peer", fontsize=10)
    m = machine or {}
    where = ", ".join(x for x in (
        m.get("cpu"), f"{m['nproc']} CPUs" if m.get("nproc") else None,
        f"Linux {m['kernel']}" if m.get("kernel") else None,
        f"Python {m['python']}" if m.get("python") else None, m.get("date")) if x)
    title = ("Receiver CPU per message ÷ the best peer's (the cheapest non-aiozc receiver, "
             "boxed) in each cell" + (f", medians of {repeats} repeats" if repeats else ""))
    sub = ("green < 1: cheaper than every peer; red > 1: costlier than the best peer. "
           "Bold rows: aiozc.\nUnder each column's frame size: the best peer's receiver "
           "CPU µs per message (frame, or RPC request)."
           + (f"\n{where}" if where else "")
           + ("\n--quick: a smoke run, NOT a measurement" if quick else ""))
    fig.suptitle(title, fontsize=13, fontweight="bold", x=0.01, ha="left")
    fig.text(0.01, 1 - 0.5 / fig_h, sub, fontsize=10, ha="left", va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.85 + 0.17 * quick) / fig_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""


def plot_from_json(json_path: Path, png_path: Path) -> str:
    """Draw the plot of the run recorded in ``json_path`` (a benchmarks.json)
    to ``png_path``, measuring nothing.  Returns '' or why there is no plot."""
    data = json.loads(json_path.read_text())
    return plot(Results.from_json(data), png_path, data.get("machine"),
                data.get("repeats"), bool(data.get("quick")))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"CI smoke run: transfers / {QUICK_DIVISOR}, 1 repeat, < 60 s")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"interleaved repeats (default {REPEATS}; quick 1)")
    ap.add_argument("--scale", type=float, default=None,
                    help="multiply every transfer size by this (default 1; quick "
                         f"1/{QUICK_DIVISOR})")
    ap.add_argument("--no-trio", dest="trio", action="store_false",
                    help="skip the anyio receivers on the trio backend")
    ap.add_argument("--only", default=None,
                    help="run only receivers whose name contains this (comma-separated)")
    ap.add_argument("--output-dir", default=None,
                    help="write benchmarks.md/.png/.json here (default: docs/)")
    ap.add_argument("--md", default=None, help="markdown report path")
    ap.add_argument("--png", default=None, help="plot path")
    ap.add_argument("--json", default=None, help="raw results path")
    ap.add_argument("--from-json", default=None, metavar="PATH",
                    help="measure nothing: draw the plot of the run recorded in PATH (a "
                         "benchmarks.json) to --png (default: PATH with .png) and exit")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    ap.add_argument("--no-send", dest="send", action="store_false",
                    help="skip the sender-side benchmark (benchmarks/send.py)")
    ap.add_argument("--no-connections", dest="connections", action="store_false",
                    help="skip the many-connections benchmark (benchmarks/connections.py)")
    ap.add_argument("--no-rpc", dest="rpc", action="store_false",
                    help="skip the many-connection RPC benchmark (benchmarks/rpc.py)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="leave receiver and peer where the scheduler puts them, as "
                         "users' processes are (default: one CPU each)")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="run N busy-loop processes beside the receivers (a loaded "
                         "machine, under control); default 0")
    args = ap.parse_args(argv)
    if args.from_json:
        src = Path(args.from_json)
        dst = Path(args.png) if args.png else src.with_suffix(".png")
        note = plot_from_json(src, dst)
        print(note or f"wrote {dst}", file=sys.stderr)
        return 1 if note else 0
    repeats = args.repeats or (1 if args.quick else REPEATS)
    scale = args.scale or (1 / QUICK_DIVISOR if args.quick else 1.0)
    out_dir = Path(args.output_dir) if args.output_dir else (
        Path(__file__).resolve().parent.parent / "docs")
    md = Path(args.md) if args.md else out_dir / "benchmarks.md"
    png = Path(args.png) if args.png else out_dir / "benchmarks.png"
    js = Path(args.json) if args.json else out_dir / "benchmarks.json"

    machine = machine_info()  # before pinning: nproc honours the affinity mask
    allowed = os.sched_getaffinity(0)
    rx_cpu, snd_cpu = pin_cpus() if args.pin else (None, None)
    pin(rx_cpu)
    if rx_cpu is not None:
        pinned = f"Receiver pinned to CPU {rx_cpu}, peer to CPU {snd_cpu}."
    elif args.pin:
        pinned = "Nothing pinned (fewer than 2 CPUs)."
    else:
        pinned = ("Nothing pinned (`--no-pin`): receiver and peer run where the "
                  "scheduler puts them, as users' processes do.")
    pinned += (f" **Loaded**: {args.load} busy-loop processes ran beside them "
               f"(`--load {args.load}`)." if args.load else
               " No load added (`--load 0`): figures are only as quiet as the machine was.")
    receivers, skipped = [], []
    for spec in all_receivers(trio=args.trio):
        if args.only and not any(o in spec.name for o in args.only.split(",")):
            continue
        if available(spec):
            receivers.append(spec)
        else:
            skipped.append(f"{spec.name} ({spec.needs} is not installed)")
    if args.trio is False:
        skipped.append("the trio backend (--no-trio)")
    if importlib.util.find_spec("uvloop") is None:
        receivers = [s for s in receivers if s.runtime != "uvloop"]
        skipped.append("every uvloop receiver (uvloop is not installed)")
    jobs = make_jobs(scale)
    progress = Progress(len(receivers) * len(jobs) * repeats, enabled=args.progress)
    t0 = time.monotonic()
    peer = Peer(snd_cpu)
    # The load: busy loops, unpinned, for the receiver matrix only.
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.load)]
    try:
        runs = run_matrix(receivers, jobs, repeats, peer, progress,
                          log=lambda m: print(f"\n[benchmarks] {m}", file=sys.stderr))
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
        progress.close()
        peer.close()
    send_md = None
    if args.send:
        from . import send

        send_path = md.parent / "send.md"
        os.sched_setaffinity(0, allowed)  # send.py pins its own two processes
        print("\n[benchmarks] sender side (benchmarks/send.py)", file=sys.stderr)
        send.main(["--output", str(send_path), "--repeats", str(repeats),
                   *(["--quick"] if args.quick else []), "--no-print"])
        send_md = send_path.read_text()
    elapsed = time.monotonic() - t0
    conn_rc, conn_md = 0, None
    if args.connections:
        from . import connections

        conn_md = md.parent / "connections.md"
        os.sched_setaffinity(0, allowed)  # connections.py pins its own processes
        print("\n[benchmarks] many connections (benchmarks/connections.py)", file=sys.stderr)
        conn_rc = connections.main(
            ["--md", str(conn_md), "--json", str(md.parent / "connections.json"),
             *(["--quick"] if args.quick else []),
             *([] if args.progress else ["--no-progress"])])
    rpc_md = None
    if args.rpc:
        from . import rpc

        rpc_md = md.parent / "rpc.md"
        os.sched_setaffinity(0, allowed)  # rpc.py pins its own processes
        print("\n[benchmarks] many-connection RPC (benchmarks/rpc.py)", file=sys.stderr)
        rpc.main(["--md", str(rpc_md), "--json", str(md.parent / "rpc.json"),
                  *(["--quick"] if args.quick else [])])
    res = Results(runs, receivers)
    plot_note = plot(res, png, machine, repeats, args.quick)
    text = report(res, machine, repeats, jobs, skipped, plot_note,
                  os.path.relpath(png, md.parent), elapsed, args.quick, pinned, send_md)
    for title, what, path, module in (
        ("Many connections", "Idle memory per connection after one burst, and server CPU "
         "per MB with every connection streaming at once, against the same peers",
         conn_md, "connections"),
        ("RPC servers with many connections", "Server CPU per request, requests/s, "
         "client-side p50/p99 latency and TCP segments per request, 1 to 1,000 "
         "connections", rpc_md, "rpc"),
    ):
        if path is not None:
            text += (f"\n## {title}\n\n{what}: "
                     f"[{path.name}]({os.path.relpath(path, md.parent)}), from "
                     f"`python -m benchmarks.{module}" + (" --quick" if args.quick else "")
                     + "`, run after this report's measurements in the same invocation.\n")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps({
        "machine": machine, "pinned": pinned, "repeats": repeats, "scale": scale,
        "quick": args.quick, "elapsed_s": elapsed, "skipped": skipped,
        "receivers": [{"name": s.name, "api": s.api, "runtime": s.runtime,
                       "aiozc": s.aiozc, "mode": s.mode} for s in receivers],
        "jobs": [{"workload": j.workload, "frame_size": j.frame_size, "count": j.count,
                  "sender": "zerocopy" if j.zerocopy else "plain"} for j in jobs],
        "header_bytes": HEADER,
        "targets": [{"target": t, "met": m, "evidence": ev} for t, m, ev in targets(res)],
        "runs": [r.to_json() for r in runs],
        "connections_report": str(conn_md) if conn_md is not None else None,
    }, indent=1))
    print(f"wrote {md}, {js}" + ("" if plot_note else f", {png}"), file=sys.stderr)
    return conn_rc


if __name__ == "__main__":
    sys.exit(main())
