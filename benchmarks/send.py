"""Sender-side CPU per MB: aiozc's MSG_ZEROCOPY send against ``transport.write``.

Usage::

    python -m benchmarks.send [--quick] [--repeats N] [--output docs/send.md]

What runs
---------
A helper process (``multiprocessing`` 'spawn', pinned to CPU 1) plays every
party that is not measured; this process (pinned to CPU 0) runs one event
loop and the thing measured:

* **send**: this process connects to the helper's sink and writes
  ``bytes`` blobs of 64 KiB, 256 KiB or 1 MiB (a pool of 8 distinct ones,
  cycled) until the total is sent, writing while the transport is not
  paused and again on ``resume_writing()``, then closes.  Senders: aiozc's
  ``ZCTransport`` with ``send_zerocopy='always'`` (every write with
  ``MSG_ZEROCOPY``), ``'auto'`` (which falls back to plain sends here: see
  below) and ``'never'``, on the stdlib loop and on uvloop, against
  asyncio's and uvloop's own transports (a plain ``asyncio.Protocol``).
  Every transport gets a 4 MiB high-water mark: zerocopy sends count as
  buffered until the kernel completes them, and the default 64 KiB would
  let only one write be in flight.
* **proxy**: the helper sends with ``MSG_ZEROCOPY`` (1 MiB sends) into a
  proxy in this process, which forwards to the helper's sink:
  ``examples/zc_proxy.py`` (ZCProtocol views written back with
  ``MSG_ZEROCOPY``; receive ``auto``), the same with
  ``send_zerocopy='never'`` (the views written back by plain ``send()``,
  to tell the send path's share from the receive path's), and the same
  proxy written with plain ``asyncio.Protocol`` legs (bytes in,
  ``transport.write`` out), on both loops.  "Copied in user space" is the
  zc_proxy report's count (``bytes_write_buffered``: what the transports
  copied because a send was partial); asyncio's transports do not count
  theirs.

Figures: this process's CPU (user+sys, ``getrusage``) per MB (10**6 bytes)
sent or forwarded, from before the connection is made to the close (for
aiozc, after the last completion); throughput over the same wall time.
The sink CRC32s every byte and every run is checked against the expected
CRC.  Runs are interleaved (the cells in order, reversed on alternate
repeats); medians with the min-max spread.

**Read the loopback caveat before the numbers.**  Over loopback the
kernel copies a zerocopy send's pages when it delivers them to the local
receiver (``SO_EE_CODE_ZEROCOPY_COPIED``), in the sender's context, so
here ``MSG_ZEROCOPY`` saves no copy and adds its own costs (pinning,
notifications, reaping); that is why ``auto`` falls back.  The figures show
what aiozc's send path costs, not what it saves on a NIC;
``docs/send_threshold.md`` measures the saving on a path that does not copy.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import os
import platform
import random
import resource
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop

import aiozc
from aiozc.testing import ZeroCopySender

from ._machine import machine_info
from ._report import median_range, table
from ._process import pin, pin_cpus, spawn, stop

MiB = 1 << 20
KiB = 1 << 10
ROOT = Path(__file__).resolve().parent.parent
_NBLOBS = 8
_HIGH_WATER = 4 * MiB
_SOURCE_SEND = MiB
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop,
    "uvloop": uvloop.new_event_loop,
}


_BLOBS: dict[int, list[bytes]] = {}


def _blobs(size: int) -> list[bytes]:
    """The ``_NBLOBS`` payloads writes of ``size`` cycle over (same in both processes)."""
    if size not in _BLOBS:
        rnd = random.Random(20261125 + size)
        _BLOBS[size] = [rnd.randbytes(size) for _ in range(_NBLOBS)]
    return _BLOBS[size]


def _expected(size: int, total: int) -> int:
    crc = 0
    blobs = _blobs(size)
    for i in range(total // size):
        crc = zlib.crc32(blobs[i % _NBLOBS], crc)
    return crc


# -- the helper process --------------------------------------------------------


def _sink_one(listener: socket.socket) -> tuple[int, int]:
    conn, _ = listener.accept()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    n = crc = 0
    with conn:
        while True:
            got = conn.recv_into(buf)
            if not got:
                break
            crc = zlib.crc32(view[:got], crc)
            n += got
    return n, crc


def _source(port: int, size: int, total: int) -> None:
    blobs = _blobs(size)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        sender = ZeroCopySender(conn)
        for i in range(total // size):
            sender.send(blobs[i % _NBLOBS])
        sender.flush()
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass


def _helper(pipe: Connection, cpu: int | None) -> None:
    pin(cpu)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    pipe.send(listener.getsockname()[1])
    while True:
        msg = pipe.recv()
        if msg is None:
            return
        try:
            if msg[0] == "sink":
                pipe.send(("ok", _sink_one(listener)))
            else:  # ("proxy", proxy_port, size, total): source -> proxy -> sink
                _, port, size, total = msg
                result: list[tuple[int, int]] = []
                sink = threading.Thread(target=lambda: result.append(_sink_one(listener)))
                sink.start()
                _source(port, size, total)
                sink.join()
                pipe.send(("ok", result[0]))
        except Exception as exc:  # report, keep serving
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))


# -- senders ---------------------------------------------------------------------


class _Feeder(asyncio.Protocol):
    """Writes the job's blobs while not paused, then closes."""

    def __init__(self, size: int, total: int) -> None:
        self.blobs = _blobs(size)
        self.left = total // size
        self.i = 0
        self.paused = False
        self.transport: Any = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._feed()

    def _feed(self) -> None:
        while self.left and not self.paused:
            self.transport.write(self.blobs[self.i % _NBLOBS])
            self.i += 1
            self.left -= 1
        if not self.left and not self.transport.is_closing():
            # Not from inside resume_writing(): CPython 3.11's selector
            # transport then calls connection_lost() twice.
            asyncio.get_running_loop().call_soon(self.transport.close)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._feed()

    def data_received(self, data: Any) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)


class _ZCFeeder(_Feeder, aiozc.ZCProtocol):
    def data_received(self, data: Any) -> None:
        data.release()


@dataclass(frozen=True)
class Cell:
    """One thing measured: a sender or a proxy, on one loop, at one size."""

    kind: str  # "send" | "proxy"
    name: str
    loop: str
    size: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.kind, self.name, self.loop, self.size)


def _send_cells(sizes: list[int]) -> list[Cell]:
    cells = []
    for size in sizes:
        for loop in LOOPS:
            for name in ("aiozc always", "aiozc auto", "aiozc never", "transport.write"):
                cells.append(Cell("send", name, loop, size))
    return cells


def _proxy_cells() -> list[Cell]:
    return [Cell("proxy", name, loop, _SOURCE_SEND)
            for loop in LOOPS
            for name in ("aiozc zc_proxy", "aiozc zc_proxy, send never", "plain asyncio proxy")]


async def _run_send(cell: Cell, port: int, total: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    extra: dict[str, Any] = {}
    transport: asyncio.BaseTransport
    proto: asyncio.BaseProtocol
    if cell.name.startswith("aiozc"):
        policy = cell.name.split()[1]
        transport, proto = await aiozc.create_connection(
            lambda: _ZCFeeder(cell.size, total), "127.0.0.1", port,
            config=aiozc.ZCConfig(send_zerocopy=policy))  # type: ignore[arg-type]
    else:
        transport, proto = await loop.create_connection(
            lambda: _Feeder(cell.size, total), "127.0.0.1", port)
    assert isinstance(proto, _Feeder)
    await proto.done
    if isinstance(transport, aiozc.ZCTransport):
        s = transport.stats
        extra = {"zerocopy": s.bytes_sent_zerocopy, "copied_completions":
                 s.zerocopy_completions_copied, "fallback": s.send_fallback_reason}
    return extra


# -- the plain proxy (the same structure as examples/zc_proxy.py, with bytes) --


class _PlainLeg(asyncio.Protocol):
    def __init__(self) -> None:
        self.other: _PlainLeg | None = None
        self.transport: Any = None
        self.eof = False
        self.early: list[bytes] = []  # what arrived before the legs were linked
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)

    def link(self, other: _PlainLeg) -> None:
        self.other = other
        for data in self.early:
            other.transport.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.other is None:
            self.early.append(data)
        else:
            self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        assert self.other is not None
        self.other.transport.write_eof()
        if self.other.eof:
            self.other.transport.close()
            return False
        return True

    def pause_writing(self) -> None:
        if self.other is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)
        if self.other is not None and not self.other.transport.is_closing():
            self.other.transport.close()


async def _plain_proxy(sink_port: int, started: Callable[[int], None]) -> None:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[_PlainLeg] = loop.create_future()

    def factory() -> _PlainLeg:
        leg = _PlainLeg()
        accepted.set_result(leg)
        return leg

    server = await loop.create_server(factory, "127.0.0.1", 0)
    started(server.sockets[0].getsockname()[1])
    client = await accepted
    _, target = await loop.create_connection(_PlainLeg, "127.0.0.1", sink_port)
    assert isinstance(target, _PlainLeg)
    client.link(target)
    target.link(client)
    await asyncio.gather(client.done, target.done)
    server.close()
    await server.wait_closed()


def _load_zc_proxy() -> Any:
    spec = importlib.util.spec_from_file_location("zc_proxy", ROOT / "examples" / "zc_proxy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ZC_PROXY = _load_zc_proxy()


async def _zc_proxy(sink_port: int, started: Callable[[int], None],
                    send: str) -> dict[str, Any]:
    proxy = _ZC_PROXY.Proxy(("127.0.0.1", sink_port),
                           aiozc.ZCConfig(send_zerocopy=send))  # type: ignore[arg-type]
    server = await proxy.start()
    started(server.sockets[0].getsockname()[1])
    while not proxy.reports:
        await asyncio.sleep(0.005)
    server.close()
    await server.wait_closed()
    report = proxy.reports[0]
    return {"zerocopy": report.target.bytes_sent_zerocopy,
            "user_space_copies": report.copied_in_user_space,
            "mapped": report.client.bytes_mapped}


# -- running -----------------------------------------------------------------------


@dataclass
class Result:
    cell: Cell
    repeat: int
    bytes: int
    cpu_s: float
    wall_s: float
    extra: dict[str, Any]

    @property
    def us_per_mb(self) -> float:
        return self.cpu_s * 1e6 / (self.bytes / 1e6)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.wall_s


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _result(pipe: Connection, timeout: float = 120.0) -> tuple[int, int]:
    if not pipe.poll(timeout):
        raise TimeoutError("helper process did not finish")
    status, value = pipe.recv()
    if status != "ok":
        raise RuntimeError(f"helper failed: {value}")
    n, crc = value
    return int(n), int(crc)


def run_cell(cell: Cell, pipe: Connection, port: int, total: int, repeat: int) -> Result:
    """One run of one cell, on a fresh loop of its kind."""
    runner = asyncio.Runner(loop_factory=LOOPS[cell.loop])

    clock: list[float] = []

    def start_clock() -> None:
        clock.extend((_cpu(), time.perf_counter()))

    async def measured() -> dict[str, Any]:
        if cell.kind == "send":
            pipe.send(("sink",))
            start_clock()
            extra = await _run_send(cell, port, total)
        else:
            def started(proxy_port: int) -> None:
                start_clock()  # the proxy listens: the helper connects now
                pipe.send(("proxy", proxy_port, cell.size, total))

            if cell.name.startswith("aiozc"):
                send = "never" if cell.name.endswith("never") else "always"
                extra = await _zc_proxy(port, started, send)
            else:
                await _plain_proxy(port, started)
                extra = {}
        clock.extend((_cpu(), time.perf_counter()))
        return extra

    with runner:
        coro: Coroutine[Any, Any, dict[str, Any]] = measured()
        extra = runner.run(asyncio.wait_for(coro, 120))
    c0, w0, c1, w1 = clock
    n, crc = _result(pipe)
    expected = _expected(cell.size, total)
    if n != total // cell.size * cell.size or crc != expected:
        raise RuntimeError(f"{cell}: the sink got {n} bytes with the wrong CRC")
    return Result(cell, repeat, n, c1 - c0, w1 - w0, extra)


def _fmt(values: list[float]) -> str:
    return median_range(values, bare_single=True)


def report(results: list[Result], args: argparse.Namespace, total: int, elapsed: float) -> str:
    """The markdown report."""
    by: dict[tuple[str, str, str, int], list[Result]] = {}
    for r in results:
        by.setdefault(r.cell.key, []).append(r)
    model = machine_info()["cpu"]
    doc = (__doc__ or "").split("What runs", 1)[1].split("\n", 2)[2]
    out = [
        "# aiozc send path: sender CPU per MB",
        "",
        f"Generated by `python -m benchmarks.send{' --quick' if args.quick else ''}`. "
        f"{total // MiB} MiB per run, {args.repeats} interleaved repeat(s) per cell; "
        f"entries are **median [min–max]**. Whole benchmark: {elapsed:.0f} s.",
        "",
        f"- Kernel: `{platform.release()}` ({platform.machine()}); CPU: {os.cpu_count()} × {model}",
        f"- Python {platform.python_version()}, uvloop {getattr(uvloop, '__version__', '?')}",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "",
        "## Method",
        "",
        doc.strip(),
        "",
        "## 1. Sending (sender process CPU µs per MB; MB/s)",
        "",
    ]

    def share(rs: list[Result]) -> str:
        zc = rs[0].extra.get("zerocopy")
        return "—" if zc is None else f"{zc / rs[0].bytes:.0%}"

    rows: list[list[str]] = []
    for (kind, name, loop, size), rs in sorted(by.items(), key=lambda kv: (kv[0][3], kv[0][2])):
        if kind != "send":
            continue
        rows.append([f"{size // KiB} KiB", loop, name, _fmt([r.us_per_mb for r in rs]),
                     _fmt([r.mb_per_s for r in rs]), share(rs)])
    out.append(table(["write size", "loop", "sender", "CPU µs/MB", "MB/s",
                      "sent with MSG_ZEROCOPY"], rows))
    out += [
        "",
        "## 2. Proxying (proxy process CPU µs per MB forwarded; MB/s)",
        "",
    ]
    rows = []
    for (kind, name, loop, _size), rs in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if kind != "proxy":
            continue
        copies = rs[0].extra.get("user_space_copies")
        rows.append([loop, name, _fmt([r.us_per_mb for r in rs]), _fmt([r.mb_per_s for r in rs]),
                     share(rs), "not counted" if copies is None else f"{copies} B"])
    out.append(table(["loop", "proxy", "CPU µs/MB", "MB/s", "sent with MSG_ZEROCOPY",
                      "copied in user space"], rows))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 8 MiB per run, one size, one repeat")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--output", default=str(ROOT / "docs" / "send.md"))
    ap.add_argument("--no-print", dest="print", action="store_false",
                    help="write the report without printing it")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 5)
    total = (8 if args.quick else 256) * MiB
    sizes = [MiB] if args.quick else [64 * KiB, 256 * KiB, MiB]
    cells = _send_cells(sizes) + _proxy_cells()
    for size in {*sizes, _SOURCE_SEND}:
        _blobs(size)  # off the clock

    tx_cpu, rx_cpu = pin_cpus()
    pipe, proc = spawn(_helper, rx_cpu)
    port = pipe.recv()
    pin(tx_cpu)
    started = time.monotonic()
    results: list[Result] = []
    try:
        for repeat in range(args.repeats):
            order = cells if repeat % 2 == 0 else cells[::-1]
            for cell in order:
                results.append(run_cell(cell, pipe, port, total, repeat))
    finally:
        stop(pipe, proc)
    text = report(results, args, total, time.monotonic() - started)
    Path(args.output).write_text(text)
    if args.print:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
