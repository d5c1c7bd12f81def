"""Measure aiozc's tunables (:class:`aiozc.ZCConfig`) with the engine alone.

Usage::

    python -m benchmarks.tune [--quick] [--mib N] [--repeats N] [--output PATH]

What it does
------------
The receiver is the compiled engine, :class:`aiozc._receiver.Receiver`, in
this process, driven by a blocking ``select.poll`` loop and ``rx.pump()``
until ``PUMP_EOF``: no event loop, so what is measured is the kernel and the
engine.  Its sink touches every byte (``zlib.crc32``, checked against the
sender's stream at the end of each run) and releases each view at once, as a
parsing protocol would.

The sender is a separate process (``multiprocessing`` 'spawn' context) that
lives for the whole benchmark and serves one connection per run: it sends the
run's bytes with :class:`aiozc.sender.ZeroCopySender`, cycling over a few
pre-generated random 1 MiB buffers, with ``zerocopy=True`` (a MSG_ZEROCOPY
peer, whose pages the kernel can map) or ``False`` (a plain peer, whose pages
it cannot).  By default the receiver is pinned to one CPU and the sender to
another (``--no-pin`` to turn that off).

Receiver CPU is the main thread's CPU clock (``time.thread_time_ns``: user
and system time, including the softirq work the kernel charges to it) from
the first ``poll`` to EOF, per MB (10**6 bytes) received; ``getrusage`` gives
the user/system split.  Throughput is bytes over the receiver's wall time.

Runs are interleaved (A B C ... A B C ...) after one discarded warm-up round,
so slow drifts of a shared machine hit every cell alike; tables show the
median of the repeats and the min-max spread.  Cells shared between sections
(the defaults) are run once per repeat and reported in each section.

``--quick`` (CI smoke, well under 60 s) runs few small repeats and does not
write ``docs/tuning.md`` unless ``--output`` is given; a full run writes it.
"""

from __future__ import annotations

import argparse
import datetime
import math
import re
import multiprocessing
import os
import platform
import random
import resource
import select
import socket
import statistics
import subprocess
import sys
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

from aiozc._config import KiB, MiB, ZCConfig
from aiozc._receiver import PUMP_EOF, PUMP_STARVED, Receiver
from aiozc.sender import ZeroCopySender

Policy = Literal["auto", "always", "never"]

_BUF_SIZE = 1 * MiB
_NBUFS = 4
_SEED = 20261125
_MB = 1_000_000
#: Relative band within which two medians are called indistinguishable.
_NOISE = 0.05
#: probe_bytes candidates judged in section 5.
_PROBE_CANDIDATES = (1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB)

_DEFAULT = ZCConfig()


# ---------------------------------------------------------------------------
# cells and results


@dataclass(frozen=True)
class Cell:
    """One benchmark configuration: a peer, an engine config and a sink."""

    zc_peer: bool
    policy: Policy
    receive_size: int = _DEFAULT.receive_size
    copybuf_size: int = _DEFAULT.copybuf_size
    region_size: int = _DEFAULT.region_size
    #: False: the sink only releases each view (no byte is read).
    touch: bool = True

    def config(self) -> ZCConfig:
        """The :class:`ZCConfig` this cell runs with."""
        return ZCConfig(
            zerocopy=self.policy,
            receive_size=self.receive_size,
            copybuf_size=self.copybuf_size,
            region_size=self.region_size,
        )

    @property
    def peer(self) -> str:
        """'zc' for the MSG_ZEROCOPY peer, 'plain' for plain sendmsg."""
        return "zc" if self.zc_peer else "plain"

    def label(self) -> str:
        """A short human-readable name."""
        return (f"{self.policy}/{self.peer} rs={_size(self.receive_size)} "
                f"cb={_size(self.copybuf_size)} region={_size(self.region_size)}"
                + ("" if self.touch else " no-touch"))


@dataclass
class Run:
    """What one run of one cell measured."""

    cell: Cell
    nbytes: int
    cpu_ns: int
    utime: float
    stime: float
    wall: float
    receive_calls: int
    bytes_mapped: int
    zap_calls: int
    regions_recycled: int
    exhausted_receives: int
    mode_switches: int
    mode: str
    fallback_reason: str | None
    sender_cpu: float
    copied_completions: int
    completions: int
    #: Per pump() that delivered bytes: bytes delivered and thread CPU ns.
    pump_bytes: array[int] = field(default_factory=lambda: array("q"))
    pump_ns: array[int] = field(default_factory=lambda: array("q"))

    @property
    def us_per_mb(self) -> float:
        """Receiver CPU microseconds per MB (10**6 bytes)."""
        return self.cpu_ns / 1e3 / (self.nbytes / _MB)

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB/s over the receiver's wall time."""
        return self.nbytes / _MB / self.wall

    @property
    def sender_us_per_mb(self) -> float:
        """Sender process CPU microseconds per MB."""
        return self.sender_cpu * 1e6 / (self.nbytes / _MB)

    @property
    def mapped_pct(self) -> float:
        """Percent of the bytes that arrived in mapped pages."""
        return 100.0 * self.bytes_mapped / self.nbytes

    @property
    def calls_per_mb(self) -> float:
        """Receive system calls (getsockopt + recv) per MB."""
        return self.receive_calls / (self.nbytes / _MB)

    @property
    def sys_pct(self) -> float:
        """Share of the receiver's rusage CPU that was system time."""
        total = self.utime + self.stime
        return 100.0 * self.stime / total if total else 0.0


# ---------------------------------------------------------------------------
# the sender process


def _make_buffers() -> list[bytes]:
    return [random.Random(_SEED + i).randbytes(_BUF_SIZE) for i in range(_NBUFS)]


def _stream_pieces(bufs: Sequence[bytes], nbytes: int) -> Iterable[bytes]:
    """The run's stream: the buffers in turn, the last one cut to fit."""
    left = nbytes
    i = 0
    while left > 0:
        buf = bufs[i % len(bufs)]
        if len(buf) > left:
            buf = buf[:left]
        yield buf
        left -= len(buf)
        i += 1


def _sender_main(conn: Connection, cpu: int | None) -> None:
    """Serve runs: for each (port, nbytes, zerocopy) connect and send."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    bufs = _make_buffers()
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        port, nbytes, zerocopy = msg
        sock = socket.create_connection(("127.0.0.1", port))
        try:
            t0 = time.thread_time()
            sender = ZeroCopySender(sock, zerocopy=zerocopy)
            for piece in _stream_pieces(bufs, nbytes):
                sender.send(piece)
            sender.flush()
            sock.shutdown(socket.SHUT_WR)
            cpu_s = time.thread_time() - t0
            # Wait for the receiver's close, so that nothing is reset.
            while sock.recv(4096):
                pass
        finally:
            sock.close()
        conn.send((cpu_s, sender.completions, sender.copied_completions))


class SenderProcess:
    """The long-lived sender process and the pipe that commands it."""

    def __init__(self, cpu: int | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_sender_main, args=(child, cpu), daemon=True)
        self._proc.start()
        child.close()
        if self._conn.recv() != "ready":
            raise RuntimeError("sender process failed to start")

    def start(self, port: int, nbytes: int, zerocopy: bool) -> None:
        """Ask for one connection to ``port`` carrying ``nbytes``."""
        self._conn.send((port, nbytes, zerocopy))

    def result(self) -> tuple[float, int, int]:
        """(sender CPU seconds, completions, copied completions) of the last run."""
        if not self._conn.poll(120):
            raise TimeoutError("sender process did not finish its run")
        res: tuple[float, int, int] = self._conn.recv()
        return res

    def close(self) -> None:
        """Stop the process."""
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()


# ---------------------------------------------------------------------------
# the receiver


_expected_crc: dict[int, int] = {}


def _expected(nbytes: int) -> int:
    if nbytes not in _expected_crc:
        crc = 0
        for piece in _stream_pieces(_make_buffers(), nbytes):
            crc = zlib.crc32(piece, crc)
        _expected_crc[nbytes] = crc
    return _expected_crc[nbytes]


def run_cell(cell: Cell, nbytes: int, sender: SenderProcess) -> Run:
    """Receive ``nbytes`` from the sender process with ``cell``'s config."""
    state = [0, 0]  # crc, bytes

    if cell.touch:
        def sink(view: memoryview) -> None:
            state[0] = zlib.crc32(view, state[0])
            state[1] += len(view)
            view.release()
    else:
        def sink(view: memoryview) -> None:
            state[1] += len(view)
            view.release()

    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        sender.start(ls.getsockname()[1], nbytes, cell.zc_peer)
        ls.settimeout(30)
        s, _ = ls.accept()
    with s:
        s.setblocking(False)
        rx = Receiver(s.fileno(), cell.config(), sink)
        poller = select.poll()
        poller.register(s.fileno(), select.POLLIN)
        pump_bytes = array("q")
        pump_ns = array("q")
        pump = rx.pump
        clock = time.thread_time_ns
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        w0 = time.perf_counter()
        c0 = clock()
        while True:
            if not poller.poll(30_000):
                raise TimeoutError(f"{cell.label()}: no data for 30 s")
            before = state[1]
            t = clock()
            r = pump()
            t = clock() - t
            got = state[1] - before
            if got:
                pump_bytes.append(got)
                pump_ns.append(t)
            if r == PUMP_EOF:
                break
            if r == PUMP_STARVED:
                raise RuntimeError("PUMP_STARVED with a sink that releases every view")
        cpu_ns = clock() - c0
        wall = time.perf_counter() - w0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        st = rx.stats()
        mode, reason = rx.mode, rx.fallback_reason
        rx.close()
    sender_cpu, completions, copied = sender.result()
    if state[1] != nbytes:
        raise RuntimeError(f"{cell.label()}: received {state[1]} of {nbytes} bytes")
    if cell.touch and state[0] != _expected(nbytes):
        raise RuntimeError(f"{cell.label()}: stream corrupted (crc mismatch)")
    return Run(
        cell=cell, nbytes=nbytes, cpu_ns=cpu_ns,
        utime=ru1.ru_utime - ru0.ru_utime, stime=ru1.ru_stime - ru0.ru_stime,
        wall=wall, receive_calls=st.receive_calls, bytes_mapped=st.bytes_mapped,
        zap_calls=st.zap_calls, regions_recycled=st.regions_recycled,
        exhausted_receives=st.exhausted_receives, mode_switches=st.mode_switches,
        mode=mode, fallback_reason=reason, sender_cpu=sender_cpu,
        completions=completions, copied_completions=copied,
        pump_bytes=pump_bytes, pump_ns=pump_ns,
    )


# ---------------------------------------------------------------------------
# statistics and formatting


def _size(n: int) -> str:
    if n == 0:
        return "0"
    if n % MiB == 0:
        return f"{n // MiB} MiB"
    if n % KiB == 0:
        return f"{n // KiB} KiB"
    return str(n)


def _med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def _fmt(xs: Sequence[float], digits: int = 0) -> str:
    """'median [min-max]'."""
    return (f"{_med(xs):.{digits}f} [{min(xs):.{digits}f}–{max(xs):.{digits}f}]")


def _pct(a: float, b: float) -> str:
    """a relative to b, as a signed percentage."""
    return f"{100.0 * (a - b) / b:+.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def _machine_info() -> str:
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
    return (f"- Kernel: `{platform.release()}` ({platform.machine()})\n"
            f"- CPUs: {nproc} × {model}\n"
            f"- Python: {platform.python_version()}\n"
            f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")


@dataclass(frozen=True)
class Paired:
    """A cell against a baseline, repeat by repeat (runs of one repeat ran
    seconds apart, so slow drifts of the machine cancel out)."""

    #: Median over repeats of (cell / baseline - 1), in percent.
    pct: float
    #: Repeats in which the cell was cheaper than the baseline.
    wins: int
    n: int

    @property
    def consistent(self) -> bool:
        """The sign held in at least 80% of the repeats (a sign test)."""
        need = math.ceil(0.8 * self.n)
        return (self.wins if self.pct < 0 else self.n - self.wins) >= need

    @property
    def better(self) -> bool:
        """Cheaper by at least _NOISE, consistently."""
        return self.consistent and self.pct <= -100 * _NOISE

    @property
    def worse(self) -> bool:
        """Dearer by at least _NOISE, consistently."""
        return self.consistent and self.pct >= 100 * _NOISE

    def __str__(self) -> str:
        return f"{self.pct:+.1f}% ({self.wins}/{self.n} cheaper)"


def _paired(xs: Sequence[float], base: Sequence[float]) -> Paired:
    ratios = [100.0 * (x / b - 1.0) for x, b in zip(xs, base)]
    return Paired(_med(ratios), sum(1 for r in ratios if r < 0), len(ratios))


def _recommend(default: int, alternatives: dict[int, Paired]) -> int:
    """Keep ``default`` unless an alternative is consistently cheaper by
    at least _NOISE; then the cheapest such alternative."""
    better = {v: p for v, p in alternatives.items() if p.better}
    return min(better, key=lambda v: better[v].pct) if better else default


# -- section 5: probe convergence ------------------------------------------


def _settle_bytes(pump_bytes: Sequence[int], pump_ns: Sequence[int],
                  estimator: Literal["median", "ratio"]) -> tuple[int, float]:
    """Bytes after which the running estimate of cost per byte stays within
    _NOISE of its final value, and that final value (us/MB).

    'median': running median of the per-pump cost/byte;
    'ratio': running sum(ns)/sum(bytes), which is what ``auto`` computes.
    """
    n = len(pump_bytes)
    running: list[float] = []
    cum = 0
    cums: list[int] = []
    if estimator == "ratio":
        tot_ns = 0
        for b, t in zip(pump_bytes, pump_ns):
            cum += b
            tot_ns += t
            cums.append(cum)
            running.append(tot_ns / cum)
    else:
        # Running median over a growing sample: insertion into a sorted list
        # is O(n) per step, fine for the few thousand pumps of a run.
        import bisect
        ordered: list[float] = []
        for b, t in zip(pump_bytes, pump_ns):
            cum += b
            cums.append(cum)
            bisect.insort(ordered, t / b)
            k = len(ordered)
            mid = k // 2
            running.append(ordered[mid] if k % 2 else (ordered[mid - 1] + ordered[mid]) / 2)
    final = running[-1]
    settled = n - 1
    for i in range(n - 1, -1, -1):
        if abs(running[i] - final) > _NOISE * final:
            break
        settled = i
    return cums[settled], final * 1e3  # ns/byte -> us/MB


def _prefix_error(pump_bytes: Sequence[int], pump_ns: Sequence[int],
                  probe: int) -> float:
    """Cost over the first ``probe`` bytes / cost over the run - 1 (ratios of
    sums; positive: a probe at connection start overestimates the cost)."""
    cum = tot = 0
    pre: float | None = None
    for b, t in zip(pump_bytes, pump_ns):
        cum += b
        tot += t
        if pre is None and cum >= probe:
            pre = tot / cum
    final = tot / cum
    if pre is None:
        pre = final
    return pre / final - 1.0


def _window_errors(pump_bytes: Sequence[int], pump_ns: Sequence[int],
                   start: int, probe: int) -> list[float]:
    """Errors of back-to-back ``probe``-byte windows after ``start`` bytes
    (what a reprobe sees) against the ratio over everything after ``start``."""
    wins: list[tuple[int, int]] = []
    cum = 0
    wb = wn = 0
    tot_b = tot_n = 0
    for b, t in zip(pump_bytes, pump_ns):
        cum += b
        if cum <= start:
            continue
        tot_b += b
        tot_n += t
        wb += b
        wn += t
        if wb >= probe:
            wins.append((wb, wn))
            wb = wn = 0
    if not tot_b:
        return []
    ref = tot_n / tot_b
    return [abs((n / b) / ref - 1.0) for b, n in wins]


# ---------------------------------------------------------------------------
# the benchmark


@dataclass
class Plan:
    """The cells of every section, deduplicated."""

    sec1: list[tuple[str, int, Cell]]
    sec2: list[tuple[int, Cell]]
    sec3: list[tuple[int, Cell]]
    sec4: list[tuple[str, Policy, Cell]]
    sec4_notouch: list[tuple[str, Policy, Cell]]
    sec5: list[tuple[str, Cell]]

    def cells(self) -> list[Cell]:
        """Every distinct cell, in first-mention order."""
        seen: dict[Cell, None] = {}
        for group in (self.sec1, self.sec2, self.sec3, self.sec4,
                      self.sec4_notouch, self.sec5):
            for item in group:
                cell = item[-1]
                assert isinstance(cell, Cell)
                seen.setdefault(cell, None)
        return list(seen)


def make_plan() -> Plan:
    """The cells the brief asks for (see the module docstring)."""
    zc_always = Cell(True, "always")
    sec1 = []
    for rs in (64 * KiB, 256 * KiB, 1 * MiB):
        sec1.append(("copy (never, plain peer)", rs,
                     Cell(False, "never", receive_size=rs)))
        sec1.append(("map (always, MSG_ZEROCOPY peer)", rs,
                     Cell(True, "always", receive_size=rs)))
    sec2 = [(cb, replace(zc_always, copybuf_size=cb))
            for cb in (0, 4 * KiB, 16 * KiB, 64 * KiB)]
    sec3 = [(rg, replace(zc_always, region_size=rg))
            for rg in (128 * KiB, 512 * KiB, 2 * MiB)]
    pols: tuple[Policy, ...] = ("always", "never", "auto")
    sec4 = [(peer, pol, Cell(peer == "zc", pol))
            for peer in ("zc", "plain") for pol in pols]
    sec4_notouch = [("zc", pol, Cell(True, pol, touch=False))
                    for pol in pols[:2]]
    sec5 = [("always, MSG_ZEROCOPY peer", zc_always),
            ("never, MSG_ZEROCOPY peer", Cell(True, "never")),
            ("never, plain peer", Cell(False, "never"))]
    return Plan(sec1, sec2, sec3, sec4, sec4_notouch, sec5)


def run_all(plan: Plan, nbytes: int, repeats: int, sender: SenderProcess,
            log: Callable[[str], None]) -> dict[Cell, list[Run]]:
    """Warm up once, then run every cell ``repeats`` times, interleaved."""
    cells = plan.cells()
    results: dict[Cell, list[Run]] = {c: [] for c in cells}
    _expected(nbytes)
    warm = min(nbytes, 32 * MiB)
    for c in (Cell(True, "always"), Cell(False, "never")):
        run_cell(c, warm, sender)
    t_start = time.monotonic()
    for rep in range(repeats):
        for c in cells:
            results[c].append(run_cell(c, nbytes, sender))
        done = rep + 1
        eta = (time.monotonic() - t_start) / done * (repeats - done)
        log(f"repeat {done}/{repeats} done ({len(cells)} cells), ~{eta:.0f} s left")
    return results


def report(plan: Plan, res: dict[Cell, list[Run]], nbytes: int, repeats: int,
           pinned: str, elapsed: float) -> str:
    """The markdown report."""
    def cpu(c: Cell) -> list[float]:
        return [r.us_per_mb for r in res[c]]

    def mcpu(c: Cell) -> float:
        return _med(cpu(c))

    def col(c: Cell, attr: str, digits: int = 0) -> str:
        return _fmt([float(getattr(r, attr)) for r in res[c]], digits)

    out: list[str] = []
    w = out.append
    w("# aiozc tuning measurements\n")
    w("Generated by `python -m benchmarks.tune` (see its docstring for the method): "
      "the compiled engine driven by a blocking `poll` loop, a sink that CRC32s "
      "every byte and releases each view, a sender in a separate process. "
      f"{nbytes // MiB} MiB per run, {repeats} interleaved repeats per cell; "
      "each entry is the **median [min–max]** of the repeats. "
      "CPU is the receiver thread's CPU time (user+sys) in µs per MB (10^6 bytes); "
      f"MB/s is over the receiver's wall time. {pinned} "
      f"Whole run: {elapsed:.0f} s.\n")
    w(_machine_info() + "\n")

    recs: list[str] = []

    # ---- 1
    w("## 1. receive_size\n")
    rows = []
    for label, rs, c in plan.sec1:
        rows.append([label, _size(rs), col(c, "us_per_mb"), col(c, "mb_per_s"),
                     col(c, "calls_per_mb", 1), col(c, "mapped_pct", 1), col(c, "sys_pct")])
    w(_table(["path", "receive_size", "CPU µs/MB", "MB/s", "receive calls/MB",
              "% mapped", "% sys"], rows) + "\n")
    sizes = sorted({rs for _, rs, _ in plan.sec1})
    by = {(lab, rs): c for lab, rs, c in plan.sec1}
    labels = list(dict.fromkeys(lab for lab, _, _ in plan.sec1))
    parts = []
    picks = []
    for lab in labels:
        base = mcpu(by[(lab, 256 * KiB)]) if (lab, 256 * KiB) in by else mcpu(by[(lab, sizes[0])])
        rel = ", ".join(f"{_size(rs)} {_pct(mcpu(by[(lab, rs)]), base)}"
                        for rs in sizes if rs != 256 * KiB)
        def path_cost(rs: int, lab: str = lab) -> float:
            return mcpu(by[(lab, rs)])
        pick = _pick(sizes, path_cost, lambda rs: rs)
        picks.append(pick)
        parts.append(f"{lab.split(' ')[0]} path vs 256 KiB: {rel} (smallest size within "
                     f"{_NOISE:.0%} of the cheapest: {_size(pick)})")
    rec = max(picks)
    recs.append(f"- **receive_size** (default {_size(_DEFAULT.receive_size)}): "
                + "; ".join(parts) + f". The data supports **{_size(rec)}**"
                + (" (the current default)." if rec == _DEFAULT.receive_size else
                   f", not the current {_size(_DEFAULT.receive_size)}."))

    # ---- 2
    w("## 2. copybuf_size (zerocopy='always', MSG_ZEROCOPY peer)\n")
    rows = [[_size(cb), col(c, "us_per_mb"), col(c, "mb_per_s"), col(c, "mapped_pct", 1),
             col(c, "calls_per_mb", 1)] for cb, c in plan.sec2]
    w(_table(["copybuf_size", "CPU µs/MB", "MB/s", "% mapped", "receive calls/MB"], rows) + "\n")
    cbs = [cb for cb, _ in plan.sec2]
    cbc = dict(plan.sec2)
    base = mcpu(cbc[_DEFAULT.copybuf_size])
    # Prefer the default on a tie, then the smallest (less memory per slab).
    pick = _pick(cbs, lambda cb: mcpu(cbc[cb]),
                 lambda cb: (-1 if cb == _DEFAULT.copybuf_size else cb))
    rel = ", ".join(f"{_size(cb)} {_pct(mcpu(cbc[cb]), base)}"
                    for cb in cbs if cb != _DEFAULT.copybuf_size)
    recs.append(f"- **copybuf_size** (default {_size(_DEFAULT.copybuf_size)}): CPU vs the "
                f"default: {rel}; receive calls/MB "
                + ", ".join(f"{_size(cb)} {_med([r.calls_per_mb for r in res[cbc[cb]]]):.1f}"
                            for cb in cbs)
                + f". The data supports **{_size(pick)}**"
                + (" (the current default)." if pick == _DEFAULT.copybuf_size else "."))

    # ---- 3
    w("## 3. region_size (zerocopy='always', MSG_ZEROCOPY peer)\n")
    rows = [[_size(rg), col(c, "us_per_mb"), col(c, "mb_per_s"), col(c, "zap_calls"),
             col(c, "regions_recycled"), col(c, "mapped_pct", 1)] for rg, c in plan.sec3]
    w(_table(["region_size", "CPU µs/MB", "MB/s", "zap_calls", "regions_recycled",
              "% mapped"], rows) + "\n")
    rgs = [rg for rg, _ in plan.sec3]
    rgc = dict(plan.sec3)
    base = mcpu(rgc[_DEFAULT.region_size])
    pick = _pick(rgs, lambda rg: mcpu(rgc[rg]),
                 lambda rg: (-1 if rg == _DEFAULT.region_size else rg))
    rel = ", ".join(f"{_size(rg)} {_pct(mcpu(rgc[rg]), base)}"
                    for rg in rgs if rg != _DEFAULT.region_size)
    recs.append(f"- **region_size** (default {_size(_DEFAULT.region_size)}): CPU vs the "
                f"default: {rel}. The data supports **{_size(pick)}**"
                + (" (the current default)." if pick == _DEFAULT.region_size else "."))

    # ---- 4
    w("## 4. zerocopy policy × peer (the headline)\n")
    rows = []
    for peer, pol, c in plan.sec4:
        runs = res[c]
        modes = sorted({r.mode for r in runs})
        rows.append([peer, pol, col(c, "us_per_mb"), col(c, "mb_per_s"),
                     col(c, "mapped_pct", 1), col(c, "sender_us_per_mb"),
                     "/".join(modes), f"{_med([r.mode_switches for r in runs]):g}"])
    w(_table(["peer", "zerocopy", "CPU µs/MB", "MB/s", "% mapped", "sender CPU µs/MB",
              "final mode", "mode switches"], rows) + "\n")
    w("Without touching the bytes (sink releases each view unread; shows what "
      "the receive path alone costs, and what the first touch of mapped pages adds):\n")
    rows = [[peer, pol, col(c, "us_per_mb"), col(c, "mb_per_s"), col(c, "mapped_pct", 1)]
            for peer, pol, c in plan.sec4_notouch]
    w(_table(["peer", "zerocopy", "CPU µs/MB (no touch)", "MB/s", "% mapped"], rows) + "\n")
    w("Final state of the `auto` runs (stats.mode, fallback_reason, one line per repeat):\n")
    for peer, pol, c in plan.sec4:
        if pol != "auto":
            continue
        for r in res[c]:
            w(f"- {peer} peer: mode={r.mode!r}, reason={r.fallback_reason!r}, "
              f"{r.mapped_pct:.1f}% mapped, {r.us_per_mb:.0f} µs/MB")
    w("")
    s4 = {(peer, pol): c for peer, pol, c in plan.sec4}
    nt = {(peer, pol): c for peer, pol, c in plan.sec4_notouch}
    a, n, au = (mcpu(s4[("zc", p)]) for p in ("always", "never", "auto"))
    pa, pn, pau = (mcpu(s4[("plain", p)]) for p in ("always", "never", "auto"))
    cheaper = "mapping" if a < n * (1 - _NOISE) else (
        "copying" if n < a * (1 - _NOISE) else "neither (within noise)")
    best_zc, best_plain = min(a, n), min(pa, pn)
    line = (f"- **zerocopy** (default '{_DEFAULT.zerocopy}'): with the MSG_ZEROCOPY peer, "
            f"mapping costs {a:.0f} µs/MB and copying {n:.0f} µs/MB "
            f"({_pct(a, n)}), so {cheaper} is cheaper here")
    if ("zc", "always") in nt and ("zc", "never") in nt:
        line += (f" (without touching the bytes: {mcpu(nt[('zc', 'always')]):.0f} vs "
                 f"{mcpu(nt[('zc', 'never')]):.0f} µs/MB)")
    line += (f"; 'auto' costs {au:.0f} µs/MB ({_pct(au, best_zc)} vs the cheaper fixed mode) "
             f"with this peer and {pau:.0f} µs/MB ({_pct(pau, best_plain)}) with the plain "
             f"peer, where 'always' costs {pa:.0f} and 'never' {pn:.0f}. ")
    auto_ok = au <= best_zc * (1 + _NOISE) and pau <= best_plain * (1 + _NOISE)
    line += ("The data supports **'auto'** (it tracks the cheaper mode with both peers)."
             if auto_ok else
             "'auto' does **not** track the cheaper mode within "
             f"{_NOISE:.0%} here; see its fallback reasons above.")
    recs.append(line)

    # ---- 5
    w("## 5. probe convergence (per-pump thread CPU time)\n")
    w("Each pump() call that delivered bytes is one sample (its thread CPU time, "
      "sink included, over its bytes). *Settled after* = bytes after which the running "
      f"estimate stays within {_NOISE:.0%} of its end-of-run value; 'median' is the "
      "running median of per-pump cost/byte, 'ratio' is running Σns/Σbytes (what "
      "`auto` computes). Then, for each candidate probe_bytes, the signed error of "
      "the ratio over the first probe_bytes of the connection (what `auto`'s first "
      "probe sees) against the whole run: median [min…max] over the repeats; "
      "positive means the probe overestimates the cost.\n")
    rows = []
    worst_need: list[int] = []
    for label, c in plan.sec5:
        med_settle = [_settle_bytes(r.pump_bytes, r.pump_ns, "median") for r in res[c]]
        rat_settle = [_settle_bytes(r.pump_bytes, r.pump_ns, "ratio") for r in res[c]]
        pumps = [len(r.pump_bytes) / (r.nbytes / MiB) for r in res[c]]
        rows.append([label, _fmt([x[1] for x in med_settle]),
                     _fmt([x[0] / MiB for x in med_settle], 1),
                     _fmt([x[0] / MiB for x in rat_settle], 1), _fmt(pumps, 1)])
    w(_table(["cell", "final median µs/MB", "median settled after (MiB)",
              "ratio settled after (MiB)", "pumps per MiB"], rows) + "\n")
    rows = []
    for label, c in plan.sec5:
        row = [label]
        for p in _PROBE_CANDIDATES:
            errs = [100 * _prefix_error(r.pump_bytes, r.pump_ns, p) for r in res[c]]
            row.append(f"{_med(errs):+.1f} [{min(errs):+.1f}…{max(errs):+.1f}]%")
        rows.append(row)
    w(_table(["cell"] + [f"probe {_size(p)}" for p in _PROBE_CANDIDATES], rows) + "\n")
    steady_start = 64 * MiB
    if nbytes >= steady_start + 4 * _PROBE_CANDIDATES[-1]:
        w(f"Reprobe (steady state): every back-to-back probe_bytes window after the first "
          f"{_size(steady_start)} of each run, against the ratio over everything after "
          f"{_size(steady_start)}: median [max] error over all windows and repeats.\n")
        rows = []
        for label, c in plan.sec5:
            row = [label]
            for p in _PROBE_CANDIDATES:
                errs = [100 * e for r in res[c]
                        for e in _window_errors(r.pump_bytes, r.pump_ns, steady_start, p)]
                row.append(f"{_med(errs):.1f} [{max(errs):.1f}]%" if errs else "–")
            rows.append(row)
        w(_table(["cell"] + [f"probe {_size(p)}" for p in _PROBE_CANDIDATES], rows) + "\n")
    for p in _PROBE_CANDIDATES:
        meds = [_med([abs(_prefix_error(r.pump_bytes, r.pump_ns, p)) for r in res[c]])
                for _, c in plan.sec5]
        if max(meds) <= _NOISE:
            worst_need.append(p)
    need = worst_need[0] if worst_need else None
    line = (f"- **probe_bytes** (default {_size(_DEFAULT.probe_bytes)}): the first "
            "probe_bytes of a connection estimate its cost/byte within "
            f"{_NOISE:.0%} (median over repeats, every cell) from "
            + (f"**{_size(need)}** on" if need else f"no candidate up to {_size(_PROBE_CANDIDATES[-1])}")
            + "; ")
    if need is not None and need <= _DEFAULT.probe_bytes:
        line += "the data supports the current default."
    elif need is not None:
        line += f"the data supports raising it to {_size(need)}."
    else:
        line += "the probe is dominated by start-up costs at every size measured."
    # Can a probe of the default size tell the two modes apart at all?
    gap = abs(a - n) / min(a, n)
    line += (f" The two modes differ by {gap:.0%} on this machine, so an estimate "
             f"within {_NOISE:.0%} {'suffices' if gap > 2 * _NOISE else 'cannot reliably'} "
             "to pick the cheaper one.")
    recs.append(line)
    frac_zc = _med([r.mapped_pct for r in res[s4[("zc", "always")]]])
    frac_plain = _med([r.mapped_pct for r in res[s4[("plain", "always")]]])
    recs.append(f"- **min_mapped_fraction** (default {_DEFAULT.min_mapped_fraction}): "
                f"'always' maps {frac_zc:.1f}% of the MSG_ZEROCOPY peer's bytes and "
                f"{frac_plain:.1f}% of the plain peer's, so any threshold between them "
                "separates the peers; 0.5 is supported.")
    recs.append(f"- **reprobe_bytes** (default {_size(_DEFAULT.reprobe_bytes)}): not measured "
                f"directly; a reprobe runs each mode for probe_bytes, so the losing mode "
                f"handles {100 * _DEFAULT.probe_bytes / _DEFAULT.reprobe_bytes:.1f}% of the bytes "
                f"(both probes together: {200 * _DEFAULT.probe_bytes / _DEFAULT.reprobe_bytes:.1f}%)."
                f" At the {abs(a - n):.0f} µs/MB gap measured here that costs about "
                f"{abs(a - n) * _DEFAULT.probe_bytes / _DEFAULT.reprobe_bytes:.0f} µs/MB on average.")
    recs.append("- **window_size**, **max_pinned_bytes**, **on_exhausted**: not exercised "
                "(the sink releases every view at once, so the window never fills and "
                "`exhausted_receives` stays "
                f"{max(r.exhausted_receives for rs in res.values() for r in rs)}).")

    w("## Recommended defaults\n")
    w("\n".join(recs) + "\n")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tune",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke: 32 MiB runs, 3 repeats, well under 60 s; "
                         "writes no file unless --output is given")
    ap.add_argument("--mib", type=int, default=None, help="MiB per run (default 512; quick 32)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved repeats per cell (default 15; quick 3)")
    ap.add_argument("--output", default=None,
                    help="where to write the report (default docs/tuning.md; "
                         "quick: none). '-' writes no file")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin receiver and sender to different CPUs")
    args = ap.parse_args(argv)
    mib = args.mib if args.mib is not None else (32 if args.quick else 512)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 15)
    if args.output is None:
        output = None if args.quick else str(Path(__file__).resolve().parent.parent
                                              / "docs" / "tuning.md")
    else:
        output = None if args.output == "-" else args.output
    if mib < 1 or repeats < 1:
        ap.error("--mib and --repeats must be positive")

    def log(msg: str) -> None:
        print(f"[tune] {msg}", file=sys.stderr, flush=True)

    cpus = sorted(os.sched_getaffinity(0))
    rx_cpu = snd_cpu = None
    pinned = "Nothing pinned."
    if args.pin and len(cpus) >= 2:
        rx_cpu, snd_cpu = cpus[0], cpus[1]
        os.sched_setaffinity(0, {rx_cpu})
        pinned = f"Receiver pinned to CPU {rx_cpu}, sender process to CPU {snd_cpu}."
    plan = make_plan()
    ncells = len(plan.cells())
    log(f"{ncells} cells × {repeats} repeats × {mib} MiB; {pinned}")
    t0 = time.monotonic()
    sender = SenderProcess(snd_cpu)
    try:
        res = run_all(plan, mib * MiB, repeats, sender, log)
    finally:
        sender.close()
    text = report(plan, res, mib * MiB, repeats, pinned, time.monotonic() - t0)
    print(text)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
        log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
