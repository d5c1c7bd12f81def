"""Measure aiozc's tunables (:class:`aiozc.ZCConfig`) with the engine alone.

Usage::

    python -m benchmarks.tune [--quick] [--mib N] [--repeats N] [--output PATH]

What it does
------------
The receiver is the compiled engine, :class:`aiozc._engine.Receiver`, in
this process, driven by a blocking ``select.poll`` loop and ``rx.pump()``
until ``PUMP_EOF``: no event loop, so what is measured is the kernel and the
engine.  Its sink touches every byte (``zlib.crc32``, checked against the
sender's stream at the end of each run) and releases each view at once, as a
parsing protocol would.

The sender is a separate process (``multiprocessing`` 'spawn' context) that
lives for the whole benchmark and serves one connection per run: it sends the
run's bytes with :class:`aiozc.testing.ZeroCopySender`, cycling over a few
pre-generated random 1 MiB buffers, with ``zerocopy=True`` (a MSG_ZEROCOPY
peer, whose pages the kernel can map) or ``False`` (a plain peer, whose pages
it cannot).  By default the receiver is pinned to one CPU and the sender to
another (``--no-pin`` to turn that off): unpinned, the scheduler often runs
both on one CPU, the loopback delivery work then lands on the receiver's
clock, and its CPU per MB roughly doubles and varies with placement.

Receiver CPU is the main thread's CPU clock (``time.thread_time_ns``: user
and system time, including the softirq work the kernel charges to it) from
the first ``poll`` to EOF, per MB (10**6 bytes) received; ``getrusage`` gives
the user/system split.  Throughput is bytes over the receiver's wall time.

Runs are interleaved (A B C, C B A, A B C, ...) after a discarded warm-up,
so slow drifts of a shared machine hit every cell alike; tables show the
median of the repeats and the min-max spread.  Cells shared between sections
(the defaults) are run once per repeat and reported in each section.

``--quick`` (CI smoke, well under 60 s) runs few small repeats and does not
write ``docs/tuning.md`` unless ``--output`` is given; a full run writes it.
"""

from __future__ import annotations

import argparse
import math
import re
import random
import resource
import select
import socket
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
from aiozc._engine import PUMP_EOF, PUMP_STARVED, Receiver
from aiozc.testing import ZeroCopySender

from ._machine import machine_info, machine_lines
from ._process import pin, pin_cpus, spawn, stop
from ._report import median, median_range, table

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
    pin(cpu)
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
        self._conn, self._proc = spawn(_sender_main, cpu)
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
        stop(self._conn, self._proc)


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
    """A ZCConfig size as the tables name it: '0' (copybuf_size 0 is 'off',
    not a size), else in MiB or KiB (unlike _report.size_label, no 'B')."""
    if n == 0:
        return "0"
    if n % MiB == 0:
        return f"{n // MiB} MiB"
    if n % KiB == 0:
        return f"{n // KiB} KiB"
    return str(n)


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
    return Paired(median(ratios), sum(1 for r in ratios if r < 0), len(ratios))


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


def _window_cost(pump_bytes: Sequence[int], pump_ns: Sequence[int],
                 start: int, length: int) -> float | None:
    """ns/byte over the pumps that begin at or after ``start`` bytes, until
    ``length`` bytes are covered (None if the run is too short)."""
    cum = wb = wn = 0
    for b, t in zip(pump_bytes, pump_ns):
        if cum >= start:
            wb += b
            wn += t
            if wb >= length:
                return wn / wb
        cum += b
    return None


def _run_cost(r: Run) -> float:
    """ns/byte over all of a run's pumps."""
    return sum(r.pump_ns) / sum(r.pump_bytes)


def _decisions(zruns: Sequence[Run], cruns: Sequence[Run], p: int, nbytes: int,
               truth_map: bool, steady_start: int) -> tuple[float, int, float, int]:
    """How often P-byte probes pick the truly cheaper mode.

    First probe: every pairing of a mapping run's [0, P) with a copying run's
    [P, 2P).  Reprobe: within each repeat, mapping over [s, s+P) against
    copying over [s+P, s+2P), s = steady_start, steady_start + 2P, ...
    Returns (share right, pairings, share right, windows); NaN when none.
    """
    zs = [_window_cost(r.pump_bytes, r.pump_ns, 0, p) for r in zruns]
    cs = [_window_cost(r.pump_bytes, r.pump_ns, p, p) for r in cruns]
    pairs = [(z, c) for z in zs for c in cs if z is not None and c is not None]
    first = (sum(1 for z, c in pairs if (z < c) == truth_map) / len(pairs)
             if pairs else math.nan)
    tot = good = 0
    for rz, rc in zip(zruns, cruns):
        s0 = steady_start
        while s0 + 2 * p <= nbytes:
            z = _window_cost(rz.pump_bytes, rz.pump_ns, s0, p)
            c = _window_cost(rc.pump_bytes, rc.pump_ns, s0 + p, p)
            if z is None or c is None:
                break
            tot += 1
            good += (z < c) == truth_map
            s0 += 2 * p
    return first, len(pairs), (good / tot if tot else math.nan), tot


_REASON = re.compile(r"\((\d+) vs (\d+) us/MB")


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

    def policy_cells(self) -> dict[tuple[str, str], Cell]:
        """Section 4's cells by (peer, policy)."""
        return {(peer, pol): c for peer, pol, c in self.sec4}

    def notouch_cells(self) -> dict[tuple[str, str], Cell]:
        """Section 4's cells whose sink does not read the bytes, by (peer, policy)."""
        return {(peer, pol): c for peer, pol, c in self.sec4_notouch}


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
        # A B C, then C B A, ...: still interleaved, and neither a slow drift
        # nor whatever a cell leaves behind favours the cells run early.
        for c in (cells if rep % 2 == 0 else cells[::-1]):
            results[c].append(run_cell(c, nbytes, sender))
        done = rep + 1
        eta = (time.monotonic() - t_start) / done * (repeats - done)
        log(f"repeat {done}/{repeats} done ({len(cells)} cells), ~{eta:.0f} s left")
    return results


class _Figures:
    """The runs of every cell, and the figures the report takes from them."""

    def __init__(self, res: dict[Cell, list[Run]]) -> None:
        self.res = res

    def cpu(self, c: Cell) -> list[float]:
        """Receiver CPU µs/MB of every repeat."""
        return [r.us_per_mb for r in self.res[c]]

    def mcpu(self, c: Cell) -> float:
        """Median receiver CPU µs/MB."""
        return median(self.cpu(c))

    def col(self, c: Cell, attr: str, digits: int = 0) -> str:
        """A table entry: one attribute of the runs, 'median [min–max]'."""
        return median_range([float(getattr(r, attr)) for r in self.res[c]], digits)

    def vs(self, c: Cell, base: Cell) -> Paired:
        """Cell ``c``'s CPU against ``base``'s, repeat by repeat."""
        return _paired(self.cpu(c), self.cpu(base))

    def mstat(self, c: Cell, attr: str) -> float:
        """Median of one attribute of the runs."""
        return median([float(getattr(r, attr)) for r in self.res[c]])

    def map_copy(self, plan: Plan) -> tuple[float, float]:
        """Median CPU of mapping ('always') and of copying ('never') the
        MSG_ZEROCOPY peer's bytes (section 4): the gap probing is about."""
        s4 = plan.policy_cells()
        return self.mcpu(s4[("zc", "always")]), self.mcpu(s4[("zc", "never")])

    def auto_vs_fixed(self, plan: Plan, peer: str) -> Paired:
        """'auto' against the cheaper of the two fixed modes, with ``peer``."""
        s4 = plan.policy_cells()
        cheaper = ("never" if self.mcpu(s4[(peer, "never")]) <= self.mcpu(s4[(peer, "always")])
                   else "always")
        return self.vs(s4[(peer, "auto")], s4[(peer, cheaper)])


Section = tuple[list[str], str]  # the section's lines, its recommendation


def _intro(nbytes: int, repeats: int, pinned: str, machine: str, elapsed: float) -> list[str]:
    """The title, the method in one paragraph, the machine."""
    return [
        "# aiozc tuning measurements\n",
        ("Generated by `python -m benchmarks.tune` (method: see its docstring). The "
         "compiled engine alone (`aiozc._engine.Receiver`), driven by a blocking "
         "`poll` + `pump()` loop; the sink CRC32s every byte and releases each view; "
         "the sender (`aiozc.testing.ZeroCopySender`) is a separate process. "
         f"{nbytes // MiB} MiB per run, {repeats} interleaved repeats per cell after a "
         "warm-up. Entries are **median [min–max]** over the repeats. *CPU* is the "
         "receiver thread's CPU time (user+sys, `time.thread_time_ns`) per MB (10^6 "
         "bytes), from the first `poll` to EOF; *MB/s* is over the receiver's wall "
         f"time. {pinned} *Paired Δ* compares each repeat's run with the baseline's "
         "run of the same repeat (they ran seconds apart) and gives the median of "
         "the per-repeat differences and how many repeats were cheaper; a difference "
         f"counts only if it is at least {_NOISE:.0%} and holds in at least 80% of "
         f"the repeats. Whole benchmark: {elapsed:.0f} s.\n"),
        machine + "\n",
    ]


def _receive_size(plan: Plan, fig: _Figures) -> Section:
    """Section 1: receive_size, on the copying and the mapping path."""
    out = ["## 1. receive_size\n"]
    by = {(lab, rs): c for lab, rs, c in plan.sec1}
    labels = list(dict.fromkeys(lab for lab, _, _ in plan.sec1))
    sizes = sorted({rs for _, rs, _ in plan.sec1})
    d_rs = _DEFAULT.receive_size
    rows = []
    for lab, rs, c in plan.sec1:
        base = by[(lab, d_rs)]
        rows.append([lab, _size(rs), fig.col(c, "us_per_mb"),
                     "baseline" if c == base else str(fig.vs(c, base)),
                     fig.col(c, "mb_per_s"), fig.col(c, "calls_per_mb", 1),
                     fig.col(c, "mapped_pct", 1)])
    out.append(table(["path", "receive_size", "CPU µs/MB", f"paired Δ vs {_size(d_rs)}",
                      "MB/s", "receive calls/MB", "% mapped"], rows) + "\n")
    parts = []
    picks = []
    for lab in labels:
        alts = {rs: fig.vs(by[(lab, rs)], by[(lab, d_rs)]) for rs in sizes if rs != d_rs}
        picks.append(_recommend(d_rs, alts))
        calls = ", ".join(f"{fig.mstat(by[(lab, rs)], 'calls_per_mb'):.1f}" for rs in sizes)
        parts.append(f"{lab.split(' ')[0]} path: "
                     + ", ".join(f"{_size(rs)} {p}" for rs, p in alts.items())
                     + f" (receive calls/MB {calls})")
    rec = max(picks)
    return out, (f"- **receive_size** (default {_size(d_rs)}): paired CPU vs "
                 f"{_size(d_rs)}: " + "; ".join(parts) + ". The data supports **"
                 + _size(rec) + "**" + (" (the current default)." if rec == d_rs else
                                        f", not the current {_size(d_rs)}."))


def _copybuf_size(plan: Plan, fig: _Figures) -> Section:
    """Section 2: copybuf_size, mapping the MSG_ZEROCOPY peer's bytes."""
    return _one_knob(fig, 2, "copybuf_size", _DEFAULT.copybuf_size, plan.sec2,
                     [("% mapped", "mapped_pct", 1), ("receive calls/MB", "calls_per_mb", 1)],
                     [("mapped", "mapped_pct", "{:.1f}%"),
                      ("receive calls/MB", "calls_per_mb", "{:.1f}")])


def _region_size(plan: Plan, fig: _Figures) -> Section:
    """Section 3: region_size, mapping the MSG_ZEROCOPY peer's bytes."""
    return _one_knob(fig, 3, "region_size", _DEFAULT.region_size, plan.sec3,
                     [("zap_calls", "zap_calls", 0), ("regions_recycled", "regions_recycled", 0),
                      ("% mapped", "mapped_pct", 1)],
                     [("zap_calls per run", "zap_calls", "{:.0f}")])


def _one_knob(fig: _Figures, number: int, knob: str, default: int,
              cells: list[tuple[int, Cell]], columns: list[tuple[str, str, int]],
              notes: list[tuple[str, str, str]]) -> Section:
    """A section that varies one size on the mapping path ('always',
    MSG_ZEROCOPY peer) against its default: the table (CPU, paired Δ, MB/s,
    then ``columns``: header, Run attribute, digits) and the recommendation
    (paired Δ, then ``notes``: label, Run attribute, format of its median)."""
    base = dict(cells)[default]
    rows = [[_size(v), fig.col(c, "us_per_mb"),
             "baseline" if v == default else str(fig.vs(c, base)),
             fig.col(c, "mb_per_s"), *(fig.col(c, attr, digits) for _, attr, digits in columns)]
            for v, c in cells]
    out = [f"## {number}. {knob} (zerocopy='always', MSG_ZEROCOPY peer)\n",
           table([knob, "CPU µs/MB", f"paired Δ vs {_size(default)}", "MB/s",
                  *(head for head, _, _ in columns)], rows) + "\n"]
    alts = {v: fig.vs(c, base) for v, c in cells if v != default}
    pick = _recommend(default, alts)
    rec = (f"- **{knob}** (default {_size(default)}): paired CPU vs the default: "
           + ", ".join(f"{_size(v)} {p}" for v, p in alts.items()))
    for label, attr, fmt in notes:
        rec += f"; {label} " + ", ".join(f"{_size(v)} {fmt.format(fig.mstat(c, attr))}"
                                        for v, c in cells)
    return out, (rec + f". The data supports **{_size(pick)}**"
                 + (" (the current default)." if pick == default else "."))


def _policy(plan: Plan, fig: _Figures, nbytes: int) -> Section:
    """Section 4, the headline: zerocopy policy × peer, with and without
    touching the bytes, and where every 'auto' run ended up."""
    s4 = plan.policy_cells()
    nt = plan.notouch_cells()
    out = ["## 4. zerocopy policy × peer (the headline)\n", _policy_table(plan, fig)]
    if nt:
        out += _notouch_table(plan, fig)
    out += _auto_end_states(plan, fig, nbytes)
    out.append("")
    a, n = fig.map_copy(plan)
    au = fig.mcpu(s4[("zc", "auto")])
    pa, pn, pau = (fig.mcpu(s4[("plain", p)]) for p in ("always", "never", "auto"))
    p_map = fig.vs(s4[("zc", "always")], s4[("zc", "never")])
    cheaper = ("mapping" if p_map.better else "copying" if p_map.worse
               else "neither (within noise)")
    p_auto_zc = fig.auto_vs_fixed(plan, "zc")
    p_auto_pl = fig.auto_vs_fixed(plan, "plain")
    line = (f"- **zerocopy** (default '{_DEFAULT.zerocopy}'): with the MSG_ZEROCOPY peer "
            f"mapping costs {a:.0f} µs/MB and copying {n:.0f} (paired {p_map}), so "
            f"{cheaper} is cheaper here")
    if nt:
        line += (f"; without touching the bytes they cost {fig.mcpu(nt[('zc', 'always')]):.0f} "
                 f"vs {fig.mcpu(nt[('zc', 'never')]):.0f}")
    line += (f". 'auto' costs {au:.0f} µs/MB with this peer (paired vs the cheaper fixed "
             f"mode {p_auto_zc}) and {pau:.0f} with the plain peer ({p_auto_pl}; there "
             f"'always' costs {pa:.0f} and 'never' {pn:.0f}). ")
    dearer = [name for name, pp in (("MSG_ZEROCOPY", p_auto_zc), ("plain", p_auto_pl))
              if pp.worse]
    line += ("The data supports **'auto'**: it lands on the cheaper mode with both peers."
             if not dearer else
             f"'auto' is consistently dearer than the cheaper fixed mode with the "
             f"{' and '.join(dearer)} peer here (see the end states above); it still "
             "avoids the dearer mode's cost.")
    return out, line


def _policy_table(plan: Plan, fig: _Figures) -> str:
    """Section 4's table: every policy with every peer."""
    s4 = plan.policy_cells()
    rows = []
    for peer, pol, c in plan.sec4:
        runs = fig.res[c]
        modes = sorted({r.mode for r in runs})
        rows.append([peer, pol, fig.col(c, "us_per_mb"),
                     "baseline" if pol == "never" else str(fig.vs(c, s4[(peer, "never")])),
                     fig.col(c, "mb_per_s"), fig.col(c, "mapped_pct", 1),
                     fig.col(c, "calls_per_mb", 1), fig.col(c, "sender_us_per_mb"),
                     "/".join(modes), f"{median([r.mode_switches for r in runs]):g}"])
    return table(["peer", "zerocopy", "CPU µs/MB", "paired Δ vs never", "MB/s", "% mapped",
                  "receive calls/MB", "sender CPU µs/MB", "final mode", "mode switches"],
                 rows) + "\n"


def _notouch_table(plan: Plan, fig: _Figures) -> list[str]:
    """Section 4 again with a sink that does not read the bytes."""
    s4, nt = plan.policy_cells(), plan.notouch_cells()
    rows = []
    for peer, pol, c in plan.sec4_notouch:
        touch = s4[(peer, pol)]
        rows.append([peer, pol, fig.col(c, "us_per_mb"),
                     "baseline" if pol == "never" else str(fig.vs(c, nt[(peer, "never")])),
                     f"{fig.mcpu(touch) - fig.mcpu(c):.0f}", fig.col(c, "mb_per_s")])
    return [
        ("The same cells with a sink that releases each view **without reading it**: "
         "what receiving alone costs. The difference to the table above is what the "
         "first touch of the bytes costs (presumably more for mapped pages because "
         "they arrive cache- and TLB-cold, while copied bytes were just written by "
         "the copy).\n"),
        table(["peer", "zerocopy", "CPU µs/MB, no touch", "paired Δ vs never",
               "touching adds µs/MB (median diff)", "MB/s"], rows) + "\n",
    ]


def _auto_end_states(plan: Plan, fig: _Figures, nbytes: int) -> list[str]:
    """How every 'auto' run ended, and auto's own figures from its last probe."""
    out = [("End state of every `auto` run (`stats.mode`, `fallback_reason`), and "
            "`auto`'s own figures from its last probe (as the engine times them; the "
            "tables above time the whole receive loop, sink included).\n")]
    w = out.append
    for peer, pol, c in plan.sec4:
        if pol != "auto":
            continue
        runs = fig.res[c]
        reasons: dict[str, int] = {}
        figs: list[tuple[int, int]] = []
        for r in runs:
            m = _REASON.search(r.fallback_reason or "")
            if m:
                figs.append((int(m.group(1)), int(m.group(2))))
                key = f"mode={r.mode!r}, reason='auto: copying measured cheaper than mapping (…)'"
            else:
                key = f"mode={r.mode!r}, reason={r.fallback_reason!r}"
            reasons[key] = reasons.get(key, 0) + 1
        for key, k in reasons.items():
            w(f"- {peer} peer, {k}/{len(runs)} runs: {key}")
        if figs:
            w(f"  - auto's own last-probe figures: copy "
              f"{median_range([float(f[0]) for f in figs])} vs map "
              f"{median_range([float(f[1]) for f in figs])} µs/MB")
        # Bytes that probing alone maps: one mapping probe at the start and
        # one per reprobe_bytes after the first decision.
        probes = 1 + max(0, nbytes - 2 * _DEFAULT.probe_bytes) // _DEFAULT.reprobe_bytes
        odd = [r for r in runs if r.bytes_mapped > (probes + 1) * _DEFAULT.probe_bytes]
        if peer == "zc":
            w(f"  - each run made {probes} decision(s); in {len(odd)} of {len(runs)} "
              "runs a decision chose mapping"
              + (f" (those runs mapped {', '.join(f'{r.mapped_pct:.0f}%' for r in odd)} "
                 "of the stream)" if odd else ""))
    return out


_STEADY_START = 64 * MiB  # where section 5's reprobe windows begin


def _probes(plan: Plan, fig: _Figures, nbytes: int) -> Section:
    """Section 5: how fast the cost estimates converge, how far off a probe
    of P bytes is, and how often it decides right; recommends probe_bytes."""
    out = _convergence(plan, fig) + _first_probe_errors(plan, fig)
    if nbytes >= _STEADY_START + 4 * _PROBE_CANDIDATES[-1]:
        out += _reprobe_errors(plan, fig)
    lines, first_ok, re_ok, overhead = _decision_table(plan, fig, nbytes)
    return out + lines, _probe_bytes_rec(plan, fig, first_ok, re_ok, overhead)


def _convergence(plan: Plan, fig: _Figures) -> list[str]:
    """Section 5's first table: bytes until the running estimates settle."""
    rows = []
    for label, c in plan.sec5:
        runs = fig.res[c]
        med_settle = [_settle_bytes(r.pump_bytes, r.pump_ns, "median") for r in runs]
        rat_settle = [_settle_bytes(r.pump_bytes, r.pump_ns, "ratio") for r in runs]
        pumps = [len(r.pump_bytes) / (r.nbytes / MiB) for r in runs]
        rows.append([label, median_range([x[1] for x in rat_settle]),
                     median_range([x[0] / MiB for x in med_settle], 1),
                     median_range([x[0] / MiB for x in rat_settle], 1), median_range(pumps, 1)])
    return [
        "## 5. probe convergence (per-pump thread CPU time)\n",
        ("Each `pump()` call that delivered bytes is one sample: its thread CPU time "
         "(sink included) over its bytes. *Settled after*: bytes after which the "
         f"running estimate stays within {_NOISE:.0%} of its end-of-run value; "
         "'median' is the running median of per-pump cost/byte, 'ratio' the running "
         "Σns/Σbytes (what `auto` computes).\n"),
        table(["cell", "final ratio µs/MB", "median settled after (MiB)",
               "ratio settled after (MiB)", "pumps per MiB"], rows) + "\n",
    ]


def _first_probe_errors(plan: Plan, fig: _Figures) -> list[str]:
    """The error of auto's first probe, for every candidate P."""
    zc_cell = plan.sec5[0][1]
    rows = []
    for label, c in plan.sec5:
        start_mult = 0 if c is zc_cell else 1
        row = [label]
        for p in _PROBE_CANDIDATES:
            errs = []
            for r in fig.res[c]:
                est = _window_cost(r.pump_bytes, r.pump_ns, start_mult * p, p)
                if est is not None:
                    errs.append(100.0 * (est / _run_cost(r) - 1.0))
            row.append(f"{median(errs):+.1f} [{min(errs):+.1f}…{max(errs):+.1f}]%"
                       if errs else "–")
        rows.append(row)
    return [
        ("**First probe.** What `auto`'s first probe would see: the mapping cost over "
         "bytes [0, P) of an 'always' connection, the copying cost over [P, 2P) of a "
         "'never' connection (auto probes mapping first, then copying). Signed error "
         "against the whole run's Σns/Σbytes, median [min…max] over the repeats "
         "(positive: the probe overestimates).\n"),
        table(["cell"] + [f"P = {_size(p)}" for p in _PROBE_CANDIDATES], rows) + "\n",
    ]


def _reprobe_errors(plan: Plan, fig: _Figures) -> list[str]:
    """The error of a reprobe in the steady state, for every candidate P."""
    rows = []
    for label, c in plan.sec5:
        row = [label]
        for p in _PROBE_CANDIDATES:
            errs = [100 * e for r in fig.res[c]
                    for e in _window_errors(r.pump_bytes, r.pump_ns, _STEADY_START, p)]
            row.append(f"{median(errs):.1f} [{max(errs):.1f}]%" if errs else "–")
        rows.append(row)
    return [
        (f"**Reprobe (steady state).** Every back-to-back window of P bytes after the "
         f"first {_size(_STEADY_START)} of each run, against the Σns/Σbytes of everything "
         f"after {_size(_STEADY_START)}: median [max] |error| over all windows and repeats.\n"),
        table(["cell"] + [f"P = {_size(p)}" for p in _PROBE_CANDIDATES], rows) + "\n",
    ]


def _decision_table(plan: Plan, fig: _Figures, nbytes: int
                    ) -> tuple[list[str], dict[int, float], dict[int, float], dict[int, float]]:
    """Would auto decide right?  Truth: the whole-run medians of section 4.
    Also returns, per P, the share of first probes and of reprobes that
    were right and the expected overhead of probing (µs/MB)."""
    a, n = fig.map_copy(plan)
    truth_map = a < n
    nt = plan.notouch_cells()
    zc_cell, never_zc = plan.sec5[0][1], plan.sec5[1][1]
    rows = []
    first_ok: dict[int, float] = {}
    re_ok: dict[int, float] = {}
    overhead: dict[int, float] = {}
    nt_pair = ((nt[("zc", "always")], nt[("zc", "never")])
               if ("zc", "always") in nt and ("zc", "never") in nt else None)
    for p in _PROBE_CANDIDATES:
        first_ok[p], npairs, re_ok[p], tot = _decisions(
            fig.res[zc_cell], fig.res[never_zc], p, nbytes, truth_map, _STEADY_START)
        pairs = npairs > 0
        ro = ["–", "–"]
        if nt_pair is not None:
            f2, n2, r2, t2 = _decisions(fig.res[nt_pair[0]], fig.res[nt_pair[1]], p, nbytes,
                                        truth_map, _STEADY_START)
            ro = [f"{100 * f2:.0f}%" if n2 else "–", f"{100 * r2:.0f}%" if t2 else "–"]
        # Expected cost of auto's probing with this P, per byte received:
        # every reprobe cycle (R + 2P bytes) sends P bytes through the losing
        # mode, and a wrong decision sends R more.
        wrong = 1.0 - (re_ok[p] if tot else first_ok[p] if pairs else math.nan)
        r_b = _DEFAULT.reprobe_bytes
        overhead[p] = abs(a - n) * (p + wrong * r_b) / (r_b + 2 * p)
        rows.append([_size(p), f"{100 * first_ok[p]:.0f}% of {npairs}" if pairs else "–",
                     f"{100 * re_ok[p]:.0f}% of {tot}" if tot else "–", *ro,
                     "–" if math.isnan(overhead[p]) else f"{overhead[p]:.1f}"])
    lines = [
        ("**Decisions.** How often a probe of P bytes per mode picks the mode that "
         f"is cheaper over whole runs (here: {'mapping' if truth_map else 'copying'}, "
         f"{a:.0f} vs {n:.0f} µs/MB), with the sink timed in both modes. "
         "*First probe*: every pairing of an 'always' run's [0, P) with a 'never' "
         "run's [P, 2P) (MSG_ZEROCOPY peer). *Reprobe*: within each repeat, "
         f"mapping over [s, s+P) against copying over [s+P, s+2P) for s = "
         f"{_size(_STEADY_START)}, {_size(_STEADY_START)}+2P, ...\n"),
        table(["P (probe_bytes)", "first probe right", "reprobe right",
               "first probe right, receive-only timing", "reprobe right, receive-only timing",
               f"expected overhead µs/MB (reprobe_bytes {_size(_DEFAULT.reprobe_bytes)})"],
              rows) + "\n",
        ("The reprobe column pairs windows of two different connections (one per "
         "mode, same repeat), so it includes connection-to-connection variation that "
         "a real reprobe (both modes back to back on one connection) does not: it is "
         "a pessimistic bound. The *receive-only* columns repeat the exercise with "
         "the runs whose sink does not read the bytes (section 4), i.e. with the "
         "first touch of the bytes left out of the timing, against the same truth. "
         "*Expected overhead* = gap × (P + (1 − reprobe right) × "
         "reprobe_bytes) / (reprobe_bytes + 2P): the CPU per MB that probing and wrong "
         f"decisions add on average, with the {abs(a - n):.0f} µs/MB gap measured here.\n"),
    ]
    return lines, first_ok, re_ok, overhead


def _probe_bytes_rec(plan: Plan, fig: _Figures, first_ok: dict[int, float],
                     re_ok: dict[int, float], overhead: dict[int, float]) -> str:
    """The recommendation for probe_bytes, from section 5's decisions."""
    a, n = fig.map_copy(plan)
    d_pb = _DEFAULT.probe_bytes

    def pct(x: float) -> str:
        return "–" if math.isnan(x) else f"{100 * x:.0f}%"

    known = {p: o for p, o in overhead.items() if not math.isnan(o)}
    best_p = min(known, key=lambda p: known[p]) if known else None
    line = (f"- **probe_bytes** (default {_size(d_pb)}): at {_size(d_pb)} the first "
            f"probe picks the cheaper mode in {pct(first_ok.get(d_pb, math.nan))} of "
            f"pairings and a (pessimistic) reprobe in {pct(re_ok.get(d_pb, math.nan))}; "
            "the expected overhead of probing plus wrong decisions is "
            + ", ".join(f"{_size(p)} {o:.1f}" for p, o in known.items()) + " µs/MB. ")
    if best_p is None:
        line += "Runs too short to judge."
    elif best_p == d_pb or known.get(d_pb, math.inf) <= known[best_p] + 0.02 * min(a, n):
        line += (f"The data supports the current default (the optimum, {_size(best_p)}, "
                 f"would save less than 2% of the cheaper mode's cost)." if best_p != d_pb
                 else "The data supports the current default (it is the optimum).")
    else:
        line += f"The data supports {_size(best_p)}."
    line += (" A 5% estimate is not what makes it work: the two modes differ by "
             f"{abs(a - n) / min(a, n):.0%} here, far more than the probes' error.")
    return line


def _unvaried(plan: Plan, fig: _Figures) -> list[str]:
    """The recommendations for the tunables no section varies."""
    s4 = plan.policy_cells()
    a, n = fig.map_copy(plan)
    frac_zc = fig.mstat(s4[("zc", "always")], "mapped_pct")
    frac_plain = fig.mstat(s4[("plain", "always")], "mapped_pct")
    share = _DEFAULT.probe_bytes / _DEFAULT.reprobe_bytes
    exhausted = max(r.exhausted_receives for rs in fig.res.values() for r in rs)
    return [
        (f"- **min_mapped_fraction** (default {_DEFAULT.min_mapped_fraction}): "
         f"'always' maps {frac_zc:.1f}% of the MSG_ZEROCOPY peer's bytes and "
         f"{frac_plain:.1f}% of the plain peer's, so any threshold between them "
         f"separates the peers; {_DEFAULT.min_mapped_fraction} is supported."),
        (f"- **reprobe_bytes** (default {_size(_DEFAULT.reprobe_bytes)}): not "
         f"varied; a reprobe runs each mode for probe_bytes, so "
         f"{100 * share:.1f}% of the bytes go through the losing mode. At the "
         f"{abs(a - n):.0f} µs/MB gap measured here that is about "
         f"{abs(a - n) * share:.0f} µs/MB on average; 'auto' measured "
         f"{fig.auto_vs_fixed(plan, 'zc').pct:+.1f}% vs the cheaper fixed mode with the "
         "MSG_ZEROCOPY peer, the rest being wrong decisions and noise."),
        ("- **window_size**, **max_pinned_bytes**, **on_exhausted**: not exercised "
         "(the sink releases every view at once, so the window never fills; "
         f"`exhausted_receives` was at most {exhausted})."),
    ]


def report(plan: Plan, res: dict[Cell, list[Run]], nbytes: int, repeats: int,
           pinned: str, machine: str, elapsed: float) -> str:
    """The markdown report: one table per section, then one sentence per tunable."""
    fig = _Figures(res)
    out = _intro(nbytes, repeats, pinned, machine, elapsed)
    recs: list[str] = []
    for lines, rec in (_receive_size(plan, fig), _copybuf_size(plan, fig),
                       _region_size(plan, fig), _policy(plan, fig, nbytes),
                       _probes(plan, fig, nbytes)):
        out += lines
        recs.append(rec)
    recs += _unvaried(plan, fig)
    out += ["## Recommended defaults\n", "\n".join(recs) + "\n"]
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

    machine = machine_lines(machine_info())  # before pinning: nproc honours the affinity mask
    rx_cpu, snd_cpu = pin_cpus() if args.pin else (None, None)
    pinned = "Nothing pinned."
    if rx_cpu is not None:
        pin(rx_cpu)
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
    text = report(plan, res, mib * MiB, repeats, pinned, machine, time.monotonic() - t0)
    print(text)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
        log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
