"""Many connections: what an idle connection costs, and many streaming at once.

Usage::

    python -m benchmarks.connections [--quick] [--connections 100,1000,10000]
                                     [--bursts 4096,65536,1048576] [--repeats N]
                                     [--only NAME,...] [--no-pin]
                                     [--md PATH] [--json PATH]

Issue 13, item 4.  Every benchmark before this one measures one connection;
aiozc's users are servers holding hundreds to tens of thousands of them,
most idle at any moment.

What runs
---------
For every *cell* (one receiver, one connection count N, one burst size, one
sender) a **fresh server process** (``multiprocessing`` 'spawn', pinned to
CPU 0 unless ``--no-pin``) runs the receiver under test as a real server on
127.0.0.1 (the API's own ``create_server`` / ``start_server`` /
``create_tcp_listener``), so that its RSS baseline is clean.  One long-lived
**client process** ('spawn', pinned to CPU 1) holds the connections.  Both
raise ``RLIMIT_NOFILE``'s soft limit to the hard one; an N that does not
fit is skipped with a note.

1. **Baseline.**  The listener is up; one warm-up connection sends one
   4 KiB frame and closes (imports, first-call caches, the loop's own
   buffers); then ``gc.collect()``, 0.2 s, and the *before* snapshot:
   ``VmRSS`` and ``VmPTE`` (``/proc/self/status``) and the number of
   mappings (``/proc/self/maps`` lines).
2. **Phase 1: idle after one burst.**  The client opens N connections,
   then sends ONE length-prefixed frame (4-byte big-endian length, payload)
   of 4 KiB, 64 KiB or 1 MiB on each, one connection after the other, with
   ``ZeroCopySender`` (``MSG_ZEROCOPY``: pages the receiving kernel can
   map) or plain ``sendmsg`` (pages it cannot), and leaves every connection
   open and idle.  The server reads and releases everything, CRC32s every
   payload (checked per frame), and once all N frames have arrived it
   waits 0.5 s more (idle-time work may happen), runs ``gc.collect()`` and
   takes the *after* snapshot.  Reported per connection: RSS growth, new
   mappings (VMAs), page-table growth; for aiozc also the bytes its views
   still pin (``transport.stats.bytes_pinned`` summed), the resident bytes
   of its socket mappings (``/proc/self/smaps``, the ``socket:`` VMAs), and
   the share of the burst that arrived mapped (``stats.bytes_mapped``).
   A memory measurement: one sample per cell (more when ``--repeats``
   exceeds the number of burst sizes), not a median of repeats.
3. **Phase 2: all streaming at once.**  In the same process, over the same
   N connections, the client sends 32 KiB frames round-robin over every
   connection (each send blocking until the socket takes it), so all N
   connections stream at once; ~1.5 GiB in total, split evenly.  Reported:
   the server process's CPU (``getrusage``, user+sys) per MB (10^6 bytes
   of payload) and the aggregate MB/s, from the moment it is told to
   expect the data to its last frame.  One sample per server process:
   ``--repeats`` (default 3) processes per (receiver, N, sender), each
   after a different phase-1 burst; medians with [min-max].

The server processes run interleaved: for each N, process k (burst
``bursts[k % len(bursts)]``) of every receiver, in list order, reversed on
alternate k, for each sender in turn.

Receivers (server side), each written the way its API is meant to be used:
``asyncio Protocol`` (bytes, parsed as they come), ``asyncio
BufferedProtocol`` (its own 64 KiB buffer per connection), the same two on
uvloop, ``aiofastnet BufferedProtocol`` (``aiofastnet.create_server``) on
both loops, ``asyncio streams readexactly`` and ``anyio
BufferedByteReceiveStream`` as the stream peers; aiozc's ``ZCProtocol`` as
the README shows it (``with data:`` on every view, parsed as it comes) in
each mode on both loops, aiozc streams (``aiozc.start_server``, the
README's ``readexactly(4)`` header then ``readexactly_view(size)``) on
both loops, and ``aiozc.anyio.create_tcp_listener`` with
``receive_exactly_view`` on asyncio.

The report prints the load average at the start and the end, the CPU in
use in a 2 s sample just before the run and the CPU time other processes
used during it (``/proc/stat`` against this run's own ``getrusage``): a
busy machine by either measure is named as such at the top of the report.
It also names the aiozc commit measured, uncommitted changes under
``aiozc/``, compiled modules older than their source, and whether any of
that changed during the run (each server process imports aiozc afresh).  Targets (issue 13, item 5) are shown, not
asserted.  ``--quick`` is a smoke run (100 connections, one burst size,
both senders, a few receivers, well under 60 s): its figures are not
measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import resource
import socket
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ._machine import machine_info, machine_lines
from ._process import pin, pin_cpus, spawn, stop
from ._report import median, median_range, rank_sum_p, size_label, table
from ._runner import Progress
from ._sender import HEADER, payloads

try:
    from aiozc.testing import ZeroCopySender
except ImportError:  # a tree from before the test peer moved to aiozc.testing
    from aiozc.sender import ZeroCopySender  # type: ignore[no-redef,import-not-found,unused-ignore]

KiB = 1024
MiB = 1024 * KiB
HOST = "127.0.0.1"

#: Connection counts (issue 13).
CONNECTIONS = (100, 1000, 10000)
#: Phase-1 burst sizes (payload bytes of the one frame each connection sends).
BURSTS = (4 * KiB, 64 * KiB, 1 * MiB)
SENDERS = ("zerocopy", "plain")
SENDER_LABEL = {"zerocopy": "MSG_ZEROCOPY sender", "plain": "plain send() sender"}
#: Phase-2 frame size and total payload per server process (split over the
#: N connections: 491 frames each at N=100, 49 at 1,000, 4 at 10,000).
#: 1.5 GiB: about 1 s per sample here (at 384 MiB, 0.25 s samples of one
#: cell spread over 1.5-2x), and every connection at N <= 1,000 passes
#: ZCConfig.probe_after_bytes (1 MiB), so that 'auto''s probes are in the
#: figure, as they are on a server's busy connections (at 384 MiB no
#: connection at N=1,000 ever probed).
STREAM_FRAME = 32 * KiB
STREAM_TOTAL = 1536 * MiB
#: Phase-2 samples per (receiver, N, sender): server processes.
REPEATS = 3
#: Seconds the server waits after the last burst frame before measuring.
IDLE_S = 0.5
#: The warm-up connection's frame.
WARMUP = 4 * KiB
#: The peers' BufferedProtocol buffer, one per connection.
BUFFERED_SIZE = 64 * KiB
#: Listen backlog asked for (the kernel caps it at net.core.somaxconn).
BACKLOG = 4096
#: File descriptors each process needs beyond the N connections.
FD_MARGIN = 64
#: The server aborts a cell when its RSS grows past this (a shared machine
#: with no swap): at most this share of MemAvailable, and at most 8 GiB.
GUARD_SHARE = 0.4
GUARD_MAX = 8 << 30

#: --quick: N, bursts, phase-2 total, receivers.
QUICK_N = (100,)
QUICK_BURSTS = (64 * KiB,)
QUICK_STREAM_TOTAL = 32 * MiB
QUICK_RECEIVERS = ("asyncio Protocol [asyncio]", "asyncio Protocol [uvloop]",
                   "asyncio BufferedProtocol [asyncio]",
                   "aiozc ZCProtocol auto [asyncio]", "aiozc ZCProtocol auto [uvloop]",
                   "aiozc streams readexactly_view [asyncio]",
                   "aiozc anyio receive_exactly_view [anyio-asyncio]")

#: Target 1: an idle connection after any burst costs at most this times
#: asyncio Protocol's RSS per connection (same loop).
T1_MAX = 2.0
#: Target 2: with this many connections streaming, aiozc's CPU per MB is at
#: most T2_MAX times the best peer's.
T2_N = 1000
T2_MAX = 1.0
#: Other processes using more CPU than this on average (CPUs), during the
#: run or in a short sample just before it: a busy machine.
BUSY_CPUS = 0.25
PRE_SAMPLE_S = 2.0


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


# ---------------------------------------------------------------------------
# the server side: receivers


class Hub:
    """What all connections of one server received, and the phase waits."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.bad = 0  # frames whose CRC did not match
        self.opened = 0
        self.closed = 0
        self.crcs: dict[int, int] = {}
        self.target = 1 << 62
        self.waiter: asyncio.Future[None] | None = None
        #: Live aiozc connections -> a callable returning their ZCStats.
        self.sources: dict[int, Callable[[], Any]] = {}
        self.conn_waiter: tuple[int, asyncio.Future[None]] | None = None

    def frame(self, size: int, crc: int) -> None:
        """One whole frame's payload arrived, with this CRC32."""
        self.frames += 1
        self.bytes += size
        if self.crcs.get(size) != crc:
            self.bad += 1
        if self.frames >= self.target:
            w = self.waiter
            if w is not None and not w.done():
                w.set_result(None)

    def arm(self, frames: int) -> asyncio.Future[None]:
        """A future done when ``frames`` more frames have arrived."""
        self.target = self.frames + frames
        self.waiter = asyncio.get_running_loop().create_future()
        if self.frames >= self.target:
            self.waiter.set_result(None)
        return self.waiter

    def open(self, key: object, stats: Callable[[], Any] | None = None) -> None:
        """A connection was accepted (``stats``: its ZCStats, for aiozc)."""
        self.opened += 1
        if stats is not None:
            self.sources[id(key)] = stats
        self._check_live()

    def close(self, key: object) -> None:
        """A connection is gone."""
        self.closed += 1
        self.sources.pop(id(key), None)
        self._check_live()

    def live(self) -> int:
        return self.opened - self.closed

    def wait_live(self, n: int) -> asyncio.Future[None]:
        """A future done once exactly ``n`` connections are open."""
        fut = asyncio.get_running_loop().create_future()
        self.conn_waiter = (n, fut)
        self._check_live()
        return fut

    def _check_live(self) -> None:
        if self.conn_waiter is not None:
            n, fut = self.conn_waiter
            if self.live() == n and not fut.done():
                fut.set_result(None)


class _Parser:
    """Length-prefixed frames parsed as bytes arrive: the header, then the
    payload CRC32'd chunk by chunk (no frame is buffered whole)."""

    __slots__ = ("hub", "need", "size", "crc", "head")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.need = -1  # payload bytes still to come; -1: reading a header
        self.size = 0
        self.crc = 0
        self.head = b""

    def feed(self, mv: memoryview) -> None:
        pos, end = 0, len(mv)
        while pos < end:
            need = self.need
            if need < 0:
                k = min(HEADER - len(self.head), end - pos)
                head = self.head + bytes(mv[pos:pos + k])
                pos += k
                if len(head) < HEADER:
                    self.head = head
                    return
                self.head = b""
                self.size = need = int.from_bytes(head, "big")
                self.crc = 0
            avail = end - pos
            if avail >= need:
                self.crc = zlib.crc32(mv[pos:pos + need], self.crc)
                pos += need
                self.need = -1
                self.hub.frame(self.size, self.crc)
            else:
                self.crc = zlib.crc32(mv[pos:] if pos else mv, self.crc)
                self.need = need - avail
                return


class BytesRx(asyncio.Protocol):
    """asyncio.Protocol: bytes in, parsed as they come, dropped."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.parser = _Parser(hub)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.hub.open(self)

    def data_received(self, data: bytes) -> None:
        with memoryview(data) as mv:
            self.parser.feed(mv)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.close(self)


class BufferedRx(asyncio.BufferedProtocol):
    """asyncio.BufferedProtocol: one 64 KiB buffer of its own, parsed in place."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.parser = _Parser(hub)
        self.buf = bytearray(BUFFERED_SIZE)
        self.mv = memoryview(self.buf)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.hub.open(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.mv

    def buffer_updated(self, nbytes: int) -> None:
        self.parser.feed(self.mv[:nbytes])

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.close(self)


def _zc_protocol_class() -> type:
    import aiozc

    class ZCRx(aiozc.ZCProtocol):
        """aiozc.ZCProtocol as the README writes it: release every view."""

        def __init__(self, hub: Hub) -> None:
            self.hub = hub
            self.parser = _Parser(hub)

        def connection_made(self, transport: Any) -> None:
            self.hub.open(self, lambda: transport.stats)

        def data_received(self, data: memoryview) -> None:  # type: ignore[override]
            with data:
                self.parser.feed(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.hub.close(self)

    return ZCRx


@dataclass(frozen=True)
class Receiver:
    """One server under test: an API on a runtime."""

    api: str
    runtime: str  # "asyncio" | "uvloop" | "anyio-asyncio"
    aiozc: bool
    kind: str
    mode: str | None = None
    needs: str | None = None

    @property
    def name(self) -> str:
        return f"{self.api} [{self.runtime}]"

    @property
    def loop(self) -> str:
        """The event loop it runs on."""
        return "uvloop" if self.runtime == "uvloop" else "asyncio"


def all_receivers() -> list[Receiver]:
    """Every receiver, peers first."""
    out: list[Receiver] = []
    for rt in ("asyncio", "uvloop"):
        out += [
            Receiver("asyncio Protocol", rt, False, "protocol"),
            Receiver("asyncio BufferedProtocol", rt, False, "buffered"),
            Receiver("aiofastnet BufferedProtocol", rt, False, "aiofastnet", needs="aiofastnet"),
        ]
    out += [
        Receiver("asyncio streams readexactly", "asyncio", False, "streams"),
        Receiver("anyio BufferedByteReceiveStream", "anyio-asyncio", False, "anyio",
                 needs="anyio"),
    ]
    for rt in ("asyncio", "uvloop"):
        for mode in ("auto", "always", "never"):
            out.append(Receiver(f"aiozc ZCProtocol {mode}", rt, True, "zc", mode=mode))
    for rt in ("asyncio", "uvloop"):
        out.append(Receiver("aiozc streams readexactly_view", rt, True, "zc-streams",
                            mode="auto"))
    out.append(Receiver("aiozc anyio receive_exactly_view", "anyio-asyncio", True,
                        "zc-anyio", mode="auto", needs="anyio"))
    return out


def _by_name(name: str) -> Receiver:
    for rx in all_receivers():
        if rx.name == name:
            return rx
    raise KeyError(name)


async def _start(rx: Receiver, hub: Hub) -> tuple[int, object]:
    """Start ``rx``'s server on 127.0.0.1; (port, the server object)."""
    loop = asyncio.get_running_loop()
    if rx.kind in ("protocol", "buffered"):
        cls: Any = BytesRx if rx.kind == "protocol" else BufferedRx
        srv: Any = await loop.create_server(lambda: cls(hub), HOST, 0, backlog=BACKLOG)
        return srv.sockets[0].getsockname()[1], srv
    if rx.kind == "aiofastnet":
        import aiofastnet

        srv = await aiofastnet.create_server(loop, lambda: BufferedRx(hub), HOST, 0,
                                             backlog=BACKLOG)
        return srv.sockets[0].getsockname()[1], srv
    if rx.kind == "zc":
        import aiozc

        zc_cls = _zc_protocol_class()
        srv = await aiozc.create_server(lambda: zc_cls(hub), HOST, 0, backlog=BACKLOG,
                                        config=aiozc.ZCConfig(zerocopy=rx.mode))  # type: ignore[arg-type]
        return srv.sockets[0].getsockname()[1], srv
    if rx.kind == "streams":
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hub.open(writer)
            try:
                while True:
                    try:
                        head = await reader.readexactly(HEADER)
                    except asyncio.IncompleteReadError:
                        break
                    size = int.from_bytes(head, "big")
                    payload = await reader.readexactly(size)
                    hub.frame(size, zlib.crc32(payload))
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                hub.close(writer)
                writer.close()

        srv = await asyncio.start_server(handle, HOST, 0, backlog=BACKLOG)
        return srv.sockets[0].getsockname()[1], srv
    if rx.kind == "zc-streams":
        import aiozc

        async def zhandle(reader: Any, writer: asyncio.StreamWriter) -> None:
            hub.open(writer, lambda: reader.stats)
            try:
                while True:
                    try:
                        size = int.from_bytes(await reader.readexactly(HEADER), "big")
                    except asyncio.IncompleteReadError:
                        break
                    with await reader.readexactly_view(size) as frame:
                        hub.frame(size, zlib.crc32(frame))
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                hub.close(writer)
                writer.close()

        srv = await aiozc.start_server(zhandle, HOST, 0, backlog=BACKLOG)
        return srv.sockets[0].getsockname()[1], srv
    if rx.kind in ("anyio", "zc-anyio"):
        import anyio
        from anyio.abc import SocketAttribute

        async def ahandle(stream: Any) -> None:
            from anyio.streams.buffered import BufferedByteReceiveStream

            hub.open(stream)
            try:
                async with stream:
                    buffered = BufferedByteReceiveStream(stream)
                    while True:
                        try:
                            head = await buffered.receive_exactly(HEADER)
                        except (anyio.EndOfStream, anyio.IncompleteRead):
                            break
                        size = int.from_bytes(head, "big")
                        payload = await buffered.receive_exactly(size)
                        hub.frame(size, zlib.crc32(payload))
            except (OSError, anyio.BrokenResourceError, anyio.IncompleteRead):
                pass
            finally:
                hub.close(stream)

        async def zahandle(stream: Any) -> None:
            hub.open(stream, lambda: stream.stats)
            try:
                async with stream:
                    while True:
                        try:
                            with await stream.receive_exactly_view(HEADER) as head:
                                size = int.from_bytes(head, "big")
                        except (anyio.EndOfStream, anyio.IncompleteRead):
                            break
                        with await stream.receive_exactly_view(size) as view:
                            hub.frame(size, zlib.crc32(view))
            except (OSError, anyio.BrokenResourceError, anyio.IncompleteRead):
                pass
            finally:
                hub.close(stream)

        if rx.kind == "anyio":
            listener: Any = await anyio.create_tcp_listener(local_host=HOST, local_port=0,
                                                            backlog=BACKLOG)
            handler: Any = ahandle
        else:
            import aiozc.anyio

            listener = await aiozc.anyio.create_tcp_listener(local_host=HOST, local_port=0,
                                                             backlog=BACKLOG)
            handler = zahandle
        port = listener.extra(SocketAttribute.local_port)
        task = loop.create_task(listener.serve(handler))
        return port, (listener, task)
    raise ValueError(rx.kind)


# ---------------------------------------------------------------------------
# the server side: measurements


def _status() -> dict[str, int]:
    """VmRSS, VmPTE, VmSize, RssAnon, RssFile (bytes) from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmPTE", "VmSize", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _maps() -> tuple[int, int]:
    """(mappings, of them over sockets) from /proc/self/maps."""
    n = sock = 0
    with open("/proc/self/maps") as f:
        for line in f:
            n += 1
            if "socket:[" in line:
                sock += 1
    return n, sock


def _socket_rss() -> int:
    """Resident bytes of the socket mappings (aiozc's windows), /proc/self/smaps."""
    total = 0
    in_socket = False
    with open("/proc/self/smaps") as f:
        for line in f:
            c = line[0]
            if c in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                in_socket = "socket:[" in line
            elif in_socket and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def snapshot(full: bool) -> dict[str, int]:
    """The process's memory figures now."""
    snap = _status()
    snap["maps"], snap["socket_maps"] = _maps()
    snap["fds"] = len(os.listdir("/proc/self/fd"))
    if full:
        snap["socket_rss"] = _socket_rss()
    return snap


def _zc_totals(hub: Hub) -> dict[str, Any] | None:
    """aiozc's stats summed over the live connections (public ZCStats fields)."""
    if not hub.sources:
        return None
    tot: dict[str, Any] = {"connections": 0, "bytes_pinned": 0, "bytes_mapped": 0,
                           "bytes_received": 0, "bytes_copied": 0, "views_outstanding": 0,
                           "exhausted_receives": 0, "zerocopy_mode": 0, "copy_mode": 0}
    reasons: dict[str, int] = {}
    for get in hub.sources.values():
        st = get()
        if st is None:
            continue
        tot["connections"] += 1
        for k in ("bytes_pinned", "bytes_mapped", "bytes_received", "bytes_copied",
                  "views_outstanding", "exhausted_receives"):
            tot[k] += getattr(st, k)
        tot["zerocopy_mode" if st.mode == "zerocopy" else "copy_mode"] += 1
        if st.fallback_reason:
            reasons[st.fallback_reason] = reasons.get(st.fallback_reason, 0) + 1
    tot["fallback_reasons"] = reasons
    return tot


def _pool() -> dict[str, int] | None:
    """aiozc's process-wide slab figures (aiozc.memory_stats), if aiozc is loaded."""
    if "aiozc" not in sys.modules:
        return None
    import aiozc

    st = aiozc.memory_stats()
    return {"slabs_in_use": st.slabs_in_use, "slabs_free": st.slabs_free,
            "slab_bytes": st.slab_bytes, "slabs_returned": st.slabs_returned}


def _rusage() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


async def _recv(pipe: Connection) -> Any:
    """The next command, without blocking the loop."""
    if not pipe.poll():
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = pipe.fileno()

        def readable() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await fut
        finally:
            loop.remove_reader(fd)
    return pipe.recv()


async def _guard(pipe: Connection, base: int, limit: int, hub: Hub) -> None:
    """Abort the cell (and the process) if RSS grows past ``limit``."""
    while True:
        await asyncio.sleep(0.1)
        rss = _rss()
        if rss - base > limit:
            pipe.send(("aborted", {"rss_growth": rss - base, "limit": limit,
                                   "frames": hub.frames, "live": hub.live()}))
            os._exit(3)


async def _serve(rx: Receiver, pipe: Connection, guard_limit: int) -> None:
    hub = Hub()
    port, server = await _start(rx, hub)
    pipe.send(("listening", port))
    base_rss = 0
    guard: asyncio.Task[None] | None = None
    t0: tuple[float, float, float, int, int] | None = None
    while True:
        cmd = await _recv(pipe)
        try:
            op = cmd[0]
            if op == "arm":
                _, frames, sizes = cmd
                for s in sizes:
                    if s not in hub.crcs:
                        hub.crcs[s] = zlib.crc32(payloads(s)[0])
                hub.arm(frames)
                pipe.send(("armed",))
            elif op == "baseline":
                _, timeout = cmd
                await asyncio.wait_for(hub.waiter, timeout)  # type: ignore[arg-type]
                await asyncio.wait_for(hub.wait_live(0), timeout)
                gc.collect()
                await asyncio.sleep(0.2)
                snap = snapshot(False)
                base_rss = snap["VmRSS"]
                pipe.send(("baseline", snap))
            elif op == "accept":
                _, n, timeout = cmd
                t = time.perf_counter()
                await asyncio.wait_for(hub.wait_live(n), timeout)
                if guard is None:
                    guard = asyncio.get_running_loop().create_task(
                        _guard(pipe, base_rss, guard_limit, hub))
                pipe.send(("accepted", time.perf_counter() - t))
            elif op == "idle":
                _, idle_s, timeout = cmd
                t = time.perf_counter()
                try:
                    await asyncio.wait_for(hub.waiter, timeout)  # type: ignore[arg-type]
                except TimeoutError:
                    raise TimeoutError(f"{hub.target - hub.frames} frames short after "
                                       f"{timeout:.0f} s") from None
                took = time.perf_counter() - t
                gc.collect()
                await asyncio.sleep(idle_s)
                snap = snapshot(True)
                pipe.send(("idle", {"snap": snap, "zc": _zc_totals(hub), "pool": _pool(),
                                    "bad": hub.bad,
                                    "frames": hub.frames, "live": hub.live(),
                                    "burst_s": took}))
            elif op == "stream-arm":
                _, frames, sizes = cmd
                for s in sizes:
                    if s not in hub.crcs:
                        hub.crcs[s] = zlib.crc32(payloads(s)[0])
                gc.collect()
                hub.arm(frames)
                u, s_ = _rusage()
                t0 = (u, s_, time.perf_counter(), hub.bytes, hub.bad)
                pipe.send(("armed",))
            elif op == "stream":
                _, timeout = cmd
                assert t0 is not None
                await asyncio.wait_for(hub.waiter, timeout)  # type: ignore[arg-type]
                u, s_ = _rusage()
                wall = time.perf_counter() - t0[2]
                pipe.send(("stream", {"user_s": u - t0[0], "sys_s": s_ - t0[1], "wall_s": wall,
                                      "bytes": hub.bytes - t0[3], "bad": hub.bad - t0[4],
                                      "zc": _zc_totals(hub)}))
            elif op == "exit":
                u, s_ = _rusage()
                pipe.send(("bye", {"user_s": u, "sys_s": s_}))
                pipe.close()
                sys.stdout.flush()
                sys.stderr.flush()
                # 10,000 transports need not be torn down one by one.
                os._exit(0)
        except Exception as exc:
            pipe.send(("error", f"{type(exc).__name__}: {exc} (frames {hub.frames}, "
                                f"live {hub.live()})"))


def _server_main(pipe: Connection, name: str, cpu: int | None, guard_limit: int) -> None:
    """Server process: one receiver, one cell."""
    raise_nofile()
    pin(cpu)
    rx = _by_name(name)
    factory: Callable[[], asyncio.AbstractEventLoop]
    if rx.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        factory = asyncio.SelectorEventLoop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(rx, pipe, guard_limit))
    except Exception as exc:
        try:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    os._exit(1)


# ---------------------------------------------------------------------------
# the client process


def _frame(size: int) -> bytes:
    return size.to_bytes(HEADER, "big") + payloads(size)[0]


def _client_main(pipe: Connection, cpu: int | None) -> None:
    """Client process: holds N connections and sends what it is told."""
    nofile = raise_nofile()
    pin(cpu)
    pipe.send(("ready", nofile))
    conns: list[socket.socket] = []
    senders: list[Any] = []
    frames: dict[int, bytes] = {}

    def frame(size: int) -> bytes:
        if size not in frames:
            frames[size] = _frame(size)
        return frames[size]

    def close_all() -> None:
        for s in conns:
            try:
                s.close()
            except OSError:
                pass
        conns.clear()
        senders.clear()

    while True:
        msg = pipe.recv()
        if msg is None:
            close_all()
            return
        op = msg[0]
        t = time.perf_counter()
        try:
            if op == "warmup":
                _, port = msg
                with socket.create_connection((HOST, port)) as s:
                    s.sendall(frame(WARMUP))
                    s.shutdown(socket.SHUT_WR)
                    s.settimeout(30)
                    while s.recv(65536):
                        pass
            elif op == "connect":
                _, port, n, zc = msg
                for _ in range(n):
                    s = socket.create_connection((HOST, port), timeout=60)
                    s.settimeout(None)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns.append(s)
                    senders.append(ZeroCopySender(s, zerocopy=zc))
            elif op == "burst":
                _, size = msg
                blob = frame(size)
                for snd in senders:
                    snd.send(blob)
                for snd in senders:
                    snd.flush()
            elif op == "stream":
                _, size, count = msg
                blob = frame(size)
                for _ in range(count):
                    for snd in senders:
                        snd.send(blob)
                for snd in senders:
                    snd.flush()
            elif op == "close":
                close_all()
            pipe.send(("ok", time.perf_counter() - t))
        except Exception as exc:
            close_all()
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))


class Client:
    """The long-lived client process and the pipe that commands it."""

    def __init__(self, cpu: int | None) -> None:
        self.cpu = cpu
        self._start()

    def _start(self) -> None:
        self.pipe, self.proc = spawn(_client_main, self.cpu)
        try:
            if not self.pipe.poll(60):
                raise EOFError
            _, self.nofile = self.pipe.recv()
        except EOFError:
            raise RuntimeError("client process failed to start") from None

    def send(self, *msg: Any) -> None:
        if not self.proc.is_alive():
            self._start()
        self.pipe.send(msg)

    def result(self, timeout: float) -> float:
        """Seconds the last command took (raises on its failure).  A client
        that does not answer in time is stopped (a new one starts with the
        next command): its late answer must not be read as the next one's."""
        try:
            status, value = _expect_raw(self.pipe, timeout, "client")
        except CellError:
            self.proc.kill()
            self.proc.join()
            raise
        if status != "ok":
            raise CellError(f"client: {value}")
        return float(value)

    def close(self) -> None:
        stop(self.pipe, self.proc, 30)


# ---------------------------------------------------------------------------
# the orchestrator


class CellError(Exception):
    """A cell failed."""


class CellAborted(Exception):
    """The server hit the memory guard."""

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(f"RSS grew past {info['limit'] / 2**30:.1f} GiB")
        self.info = info


def _expect_raw(pipe: Connection, timeout: float, who: str) -> tuple[str, Any]:
    if not pipe.poll(timeout):
        raise CellError(f"{who}: no answer in {timeout:.0f} s")
    try:
        msg = pipe.recv()
    except EOFError:
        raise CellError(f"{who}: process died") from None
    return msg[0], (msg[1] if len(msg) > 1 else None)


def _expect(pipe: Connection, tag: str, timeout: float) -> Any:
    status, value = _expect_raw(pipe, timeout, "server")
    if status == "aborted":
        raise CellAborted(value)
    if status != tag:
        raise CellError(f"server: {value}" if status == "error" else
                        f"server: expected {tag!r}, got {status!r}")
    return value


def _timeout(nbytes: int) -> float:
    """Generous: 60 s plus 20 MB/s (a loaded 2-CPU machine, a slow receiver)."""
    return 60.0 + nbytes / 20e6


@dataclass
class Plan:
    """What one server process does."""

    rx: Receiver
    n: int
    burst: int
    sender: str
    stream_frames: int  # per connection; 0: no phase 2 in this process
    k: int  # index of the process among those of (rx, n, sender)


def run_cell(plan: Plan, client: Client, cpu: int | None, guard_limit: int,
             idle_s: float) -> dict[str, Any]:
    """One server process: baseline, phase 1, then (maybe) phase 2."""
    out: dict[str, Any] = {"receiver": plan.rx.name, "api": plan.rx.api,
                           "runtime": plan.rx.runtime, "aiozc": plan.rx.aiozc,
                           "mode": plan.rx.mode, "n": plan.n, "burst": plan.burst,
                           "sender": plan.sender, "k": plan.k}
    t_cell = time.perf_counter()
    pipe, proc = spawn(_server_main, plan.rx.name, cpu, guard_limit)
    n = plan.n
    connected = clean = False
    try:
        port = _expect(pipe, "listening", 60)
        # Baseline: one warm-up connection, then the "before" snapshot.
        pipe.send(("arm", 1, [WARMUP]))
        _expect(pipe, "armed", 30)
        client.send("warmup", port)
        client.result(60)
        pipe.send(("baseline", 30.0))
        out["before"] = _expect(pipe, "baseline", 60)
        # N connections.
        connected = True
        client.send("connect", port, n, plan.sender == "zerocopy")
        out["connect_s"] = client.result(120 + n / 50)
        pipe.send(("accept", n, 60 + n / 100))
        out["accept_wait_s"] = _expect(pipe, "accepted", 120 + n / 50)
        # Phase 1: one burst per connection, then idle.
        burst_bytes = n * plan.burst
        pipe.send(("arm", n, [plan.burst]))
        _expect(pipe, "armed", 30)
        pipe.send(("idle", idle_s, _timeout(burst_bytes)))
        client.send("burst", plan.burst)
        try:
            out["client_burst_s"] = client.result(_timeout(burst_bytes) + 30)
        except CellError:
            # The server may have aborted on its memory guard (the client's
            # sends then fail): say which.
            if pipe.poll(10):
                _expect(pipe, "idle", 1)
            raise
        idle = _expect(pipe, "idle", _timeout(burst_bytes) + idle_s + 60)
        out["after"] = idle["snap"]
        out["zc_idle"] = idle["zc"]
        out["pool_idle"] = idle.get("pool")
        out["bad_frames"] = idle["bad"]
        out["burst_s"] = idle["burst_s"]
        out["live"] = idle["live"]
        if idle["live"] != n:
            raise CellError(f"{idle['live']} of {n} connections still open after the burst")
        # Phase 2: all N streaming at once.
        if plan.stream_frames:
            frames = n * plan.stream_frames
            pipe.send(("stream-arm", frames, [STREAM_FRAME]))
            _expect(pipe, "armed", 60)
            pipe.send(("stream", _timeout(frames * STREAM_FRAME)))
            client.send("stream", STREAM_FRAME, plan.stream_frames)
            out["client_stream_s"] = client.result(_timeout(frames * STREAM_FRAME) + 30)
            st = _expect(pipe, "stream", _timeout(frames * STREAM_FRAME) + 60)
            out["stream"] = st
            out["bad_frames"] += st["bad"]
            if st["bad"]:
                raise CellError(f"{st['bad']} frames with a wrong CRC in phase 2")
        if out["bad_frames"]:
            raise CellError(f"{out['bad_frames']} frames with a wrong CRC")
        pipe.send(("exit",))
        out["server_rusage"] = _expect(pipe, "bye", 60)
        clean = True
    except CellAborted as exc:
        out["aborted"] = exc.info
    except CellError as exc:
        out["error"] = str(exc)
    finally:
        # A server that failed may still be serving: stop it at once.
        proc.join(30 if clean or "aborted" in out else 0.5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        pipe.close()
        if connected:
            try:
                client.send("close")
                client.result(120)
            except CellError as exc:
                out.setdefault("error", f"closing: {exc}")
    out["cell_s"] = time.perf_counter() - t_cell
    return out


def code_state() -> dict[str, Any]:
    """The aiozc measured: the commit, uncommitted changes under aiozc/, and
    compiled modules older than their .pyx source (a stale build)."""
    import subprocess

    import aiozc

    import hashlib

    pkg = Path(aiozc.__file__).resolve().parent
    out: dict[str, Any] = {"commit": None, "dirty": [], "stale": [], "built": {}}
    try:
        out["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=pkg, capture_output=True,
            text=True, check=True).stdout.strip()
        out["dirty"] = [line[3:] for line in subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=pkg, capture_output=True,
            text=True, check=True).stdout.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        pass
    for pyx in sorted(pkg.glob("*.pyx")):
        built = sorted(pkg.glob(pyx.stem + ".*.so"))
        deps = [pyx] + ([pyx.with_suffix(".pxd")] if pyx.with_suffix(".pxd").exists() else [])
        newest = max(d.stat().st_mtime for d in deps)
        if not built or built[-1].stat().st_mtime < newest:
            out["stale"].append(pyx.name)
        if built:
            out["built"][built[-1].name] = hashlib.sha256(built[-1].read_bytes()).hexdigest()[:12]
    return out


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _cpu_times() -> tuple[float, float, float] | None:
    """(busy, steal, total) CPU seconds of the whole machine (/proc/stat);
    busy is user+nice+system+irq+softirq.  Interrupt time counts as busy:
    without CONFIG_IRQ_TIME_ACCOUNTING the softirq work (loopback delivery)
    done in a process's context is in that process's getrusage times too,
    so the comparison with this run's own figures needs it on both sides."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq) / hz, steal / hz, sum(f) / hz


def _own_cpu() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


# ---------------------------------------------------------------------------
# aggregation


def _per_conn(cell: dict[str, Any], key: str) -> float | None:
    if "after" not in cell:
        return None
    return float(cell["after"][key] - cell["before"][key]) / int(cell["n"])


class Results:
    """Cells grouped for the tables."""

    def __init__(self, cells: Sequence[dict[str, Any]], receivers: Sequence[Receiver]) -> None:
        self.cells = list(cells)
        self.receivers = list(receivers)
        self.p1: dict[tuple[str, int, int, str], list[dict[str, Any]]] = {}
        self.p2: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        for c in cells:
            if "after" in c:
                self.p1.setdefault((c["receiver"], c["n"], c["burst"], c["sender"]), []).append(c)
            if "stream" in c:
                self.p2.setdefault((c["receiver"], c["n"], c["sender"]), []).append(c)

    def mem(self, rx: str, n: int, burst: int, sender: str, key: str) -> list[float]:
        """Per-connection growth of a snapshot field, every sample."""
        return [v for c in self.p1.get((rx, n, burst, sender), [])
                if (v := _per_conn(c, key)) is not None]

    def rss_kib(self, rx: str, n: int, burst: int, sender: str) -> float:
        return median(self.mem(rx, n, burst, sender, "VmRSS")) / KiB

    def aborted(self, rx: str, n: int, burst: int, sender: str) -> dict[str, Any] | None:
        for c in self.cells:
            if (c["receiver"], c["n"], c["burst"], c["sender"]) == (rx, n, burst, sender) \
                    and "aborted" in c:
                return c["aborted"]  # type: ignore[no-any-return]
        return None

    def best_mem_peer(self, n: int, burst: int, sender: str) -> tuple[str, float] | None:
        peers = [(self.rss_kib(s.name, n, burst, sender), s.name) for s in self.receivers
                 if not s.aiozc and self.mem(s.name, n, burst, sender, "VmRSS")]
        if not peers:
            return None
        m, name = min(peers)
        return name, m

    def cpu(self, rx: str, n: int, sender: str) -> list[float]:
        """Server CPU µs per MB (10^6 payload bytes), every sample."""
        out = []
        for c in self.p2.get((rx, n, sender), []):
            st = c["stream"]
            out.append((st["user_s"] + st["sys_s"]) * 1e6 / (st["bytes"] / 1e6))
        return out

    def mbps(self, rx: str, n: int, sender: str) -> list[float]:
        return [c["stream"]["bytes"] / 1e6 / c["stream"]["wall_s"]
                for c in self.p2.get((rx, n, sender), [])]

    def best_cpu_peer(self, n: int, sender: str) -> tuple[str, float] | None:
        peers = [(median(self.cpu(s.name, n, sender)), s.name) for s in self.receivers
                 if not s.aiozc and self.cpu(s.name, n, sender)]
        if not peers:
            return None
        m, name = min(peers)
        return name, m


# ---------------------------------------------------------------------------
# targets


def _protocol_ref(rx: Receiver) -> str:
    return f"asyncio Protocol [{rx.loop}]"


def targets(res: Results, ns: Sequence[int], bursts: Sequence[int]
            ) -> list[tuple[str, bool | None, list[str]]]:
    """(target, met (None: not evaluated), evidence lines)."""
    out: list[tuple[str, bool | None, list[str]]] = []
    # T1: idle RSS per connection <= 2x asyncio Protocol's (same loop).
    lines: list[str] = []
    ok: bool | None = None
    for n in ns:
        for rx in res.receivers:
            if not rx.aiozc:
                continue
            worst: tuple[float, str] | None = None
            missed = evaluated = 0
            notes: list[str] = []
            for burst in bursts:
                for sender in SENDERS:
                    ab = res.aborted(rx.name, n, burst, sender)
                    if ab is not None:
                        evaluated += 1
                        missed += 1
                        notes.append(f"{size_label(burst)} {sender}: aborted at "
                                      f"{ab['rss_growth'] / n / KiB:.0f}+ KiB/conn")
                        continue
                    m = res.rss_kib(rx.name, n, burst, sender)
                    ref = res.rss_kib(_protocol_ref(rx), n, burst, sender)
                    if m != m:
                        continue
                    if ref != ref:
                        notes.append(f"{size_label(burst)} {sender}: no {_protocol_ref(rx)} "
                                     "in this run")
                        continue
                    if ref <= 0:
                        notes.append(f"{size_label(burst)} {sender}: asyncio Protocol grew "
                                     f"{ref:.1f} KiB/conn, no ratio")
                        continue
                    evaluated += 1
                    r = m / ref
                    if r > T1_MAX:
                        missed += 1
                    if worst is None or r > worst[0]:
                        worst = (r, f"{size_label(burst)}, {SENDER_LABEL[sender]}: {m:.1f} vs "
                                    f"{ref:.1f} KiB")
            if not evaluated:
                if notes:
                    lines.append(f"not evaluated: N={n:,}, {rx.name}: " + "; ".join(notes))
                continue
            met = missed == 0
            ok = met if ok is None else (ok and met)
            w = f"worst {worst[0]:.1f}x ({worst[1]})" if worst else "no ratio"
            lines.append(f"{'met' if met else '**missed**'}: N={n:,}, {rx.name}: "
                         f"{evaluated - missed}/{evaluated} cells within {T1_MAX:.0f}x; {w}"
                         + ("; " + "; ".join(notes) if notes else ""))
    out.append((f"an idle connection after any burst costs at most {T1_MAX:.0f}x asyncio "
                "`Protocol`'s RSS growth per connection (same loop; anyio on asyncio "
                "against the stdlib loop's), every aiozc receiver, both senders", ok, lines))
    # T2: N=1000 streaming, ZCProtocol auto <= 1.0x the best peer's CPU per MB.
    lines = []
    ok = None
    n2 = T2_N if T2_N in ns else None
    if n2 is None:
        lines.append(f"not evaluated: N={T2_N:,} was not run")
    else:
        for sender in SENDERS:
            best = res.best_cpu_peer(n2, sender)
            if best is None:
                continue
            peer, pm = best
            for rx in res.receivers:
                if not rx.aiozc:
                    continue
                xs = res.cpu(rx.name, n2, sender)
                if not xs:
                    continue
                m = median(xs)
                r = m / pm
                judged = rx.kind == "zc" and rx.mode == "auto"
                if judged:
                    met = r <= T2_MAX
                    ok = met if ok is None else (ok and met)
                    tag = "met" if met else "**missed**"
                else:
                    tag = "(shown)"
                # The rank-sum test says whether the samples differ at all
                # (phase 2 over loopback is noisy; the median decides).
                p = rank_sum_p(res.cpu(peer, n2, sender), xs)
                lines.append(f"{tag}: {SENDER_LABEL[sender]}, {rx.name}: {m:.0f} vs "
                             f"{pm:.0f} µs/MB ({peer}) = {r:.2f}x (rank-sum p {p:.2f})")
    out.append((f"with {T2_N:,} connections streaming at once, aiozc `auto` (ZCProtocol, "
                f"both loops) costs at most {T2_MAX:.1f}x the best peer's server CPU per MB "
                "(other aiozc receivers shown, not judged)", ok, lines))
    return out


# ---------------------------------------------------------------------------
# the report


def report(res: Results, meta: dict[str, Any]) -> str:
    w: list[str] = []
    m = meta["machine"]
    busy = meta["busy"]
    w.append("# Many connections: idle memory and many streams at once\n")
    if busy:
        w.append("> **Taken on a busy machine: these are not final figures.** "
                 + meta["busy_reason"] + "\n")
    if meta["quick"]:
        w.append("> **`--quick` smoke run: the figures below are NOT measurements.**\n")
    w.append(f"Generated by `python -m benchmarks.connections{' --quick' if meta['quick'] else ''}`"
             f" in {meta['elapsed_s']:.0f} s ({len(res.cells)} server processes). Issue 13, "
             "item 4: what an idle connection costs after one burst (phase 1), and "
             "server CPU per MB with every connection streaming at once (phase 2), for "
             "aiozc and its peers.\n")
    w.append(machine_lines(m))
    cs, ce = meta["code"], meta["code_end"]
    w.append(f"- aiozc measured: commit `{cs['commit']}`"
             + (f", with uncommitted changes in {', '.join(f'`{d}`' for d in cs['dirty'])}"
                if cs["dirty"] else ", no uncommitted change under `aiozc/`")
             + (f"; **compiled modules older than their source: {', '.join(cs['stale'])}**"
                if cs["stale"] else ""))
    if ce != cs:
        w.append(f"- **aiozc changed during the run** (at the end: commit `{ce['commit']}`"
                 + (", compiled modules rebuilt" if ce["built"] != cs["built"] else "")
                 + (", uncommitted changes differ" if ce["dirty"] != cs["dirty"] else "")
                 + "): each server process imports aiozc afresh, so later cells may have "
                 "measured different code")
    la0, la1 = meta["loadavg_start"], meta["loadavg_end"]
    w.append(f"- Load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in la0)}; "
             f"at the end: {', '.join(f'{x:.2f}' for x in la1)} (these lag: they include what "
             "ran in the minutes before, and the end includes this run's own processes)")
    if meta.get("busy_before_cpus") is not None:
        w.append(f"- CPU in use just before the run (a {PRE_SAMPLE_S:.0f} s sample of "
                 f"`/proc/stat`): {meta['busy_before_cpus']:.2f} CPUs")
    if meta.get("others_cpus") is not None:
        w.append(f"- CPU used by other processes during the run: about "
                 f"{meta['others_cpu_s']:.0f} CPU-seconds over {meta['elapsed_s']:.0f} s "
                 f"({meta['others_cpus']:.2f} CPUs on average: the machine's non-idle time in "
                 "`/proc/stat` minus this run's own user+sys, so approximate)"
                 + (f"; steal time {100 * meta['steal']:.1f}% of the machine's CPU time"
                    if meta.get("steal") is not None else ""))
    w.append(f"- Machine state: **{'busy' if busy else 'quiet by these measures'}**")
    w.append(f"- {meta['pinned']}")
    w.append(f"- RLIMIT_NOFILE: {meta['nofile']} (soft raised to hard in both processes)\n")
    if meta["skipped"]:
        w.append("Skipped: " + "; ".join(meta["skipped"]) + ".\n")

    w.append("## Method\n")
    w.append(
        "- **Processes.** Each cell (receiver, N connections, burst size, sender) is a "
        "fresh server process (multiprocessing 'spawn') running the receiver as a real "
        "server on 127.0.0.1; one long-lived client process holds the N connections "
        "(blocking sockets, `TCP_NODELAY`). The client sends with `ZeroCopySender`: "
        "`zerocopy=True` (*MSG_ZEROCOPY sender*: pages the receiving kernel can map) or "
        "`zerocopy=False` (*plain send() sender*: pages it cannot).")
    w.append(
        f"- **Baseline (\"before\").** The listener is up, one warm-up connection has "
        f"sent one {size_label(WARMUP)} frame through the receiver and closed, then "
        "`gc.collect()` and 0.2 s. Snapshot: `VmRSS` and `VmPTE` from "
        "`/proc/self/status`, lines of `/proc/self/maps`.")
    w.append(
        f"- **Phase 1 (idle after one burst).** The client opens N connections, then "
        "sends one length-prefixed frame (4-byte length + payload) on each, connection "
        "after connection (a blocking send each), and leaves them all open and idle. The "
        "server reads everything, CRC32s every payload (checked against the expected CRC "
        "per frame) and releases it; once all N frames have arrived it runs "
        f"`gc.collect()`, waits {meta['idle_s']} s and takes the \"after\" snapshot. "
        "Figures are (after − before) / N: **RSS** (KiB per connection), **VMAs** "
        "(new `/proc/self/maps` lines per connection), **page tables** (`VmPTE`, bytes "
        "per connection); for aiozc also **pinned** (the sum of `stats.bytes_pinned` over "
        "the open connections: memory views still hold), **socket-mapped** (resident "
        "bytes of the `socket:` mappings in `/proc/self/smaps`: aiozc's windows) and "
        "**% mapped** (`bytes_mapped / bytes_received`: how much of the burst arrived in "
        "mapped pages). glibc's `malloc_trim` is not called: what the allocator keeps is "
        "part of what a server costs. A memory measurement: **one sample per cell** "
        "(more where `--repeats` exceeds the number of burst sizes: then median [min–max]).")
    per = meta["stream_frames"]
    w.append(
        f"- **Phase 2 (all streaming at once).** In the same process, over the same N "
        f"connections, the client sends {size_label(STREAM_FRAME)} frames round-robin over "
        "every connection (a blocking send each: every connection has data queued at "
        "once): " + ", ".join(
            f"N={n:,}: {f} frame(s) per connection ({n * f * STREAM_FRAME / MiB:.0f} MiB)"
            for n, f in per.items()) + ". **CPU/MB**: the server process's user+sys time "
        "(`getrusage`) from the moment it is told to expect the data to its last frame, "
        "per MB (10^6 bytes of payload), in µs; **MB/s**: payload over the same wall time. "
        f"{meta['repeats']} server process(es) per (receiver, N, sender), each after a "
        "different phase-1 burst (every receiver gets the same sequence); median "
        "[min–max].")
    w.append(
        "- **Order.** For each N, server process k of every receiver (burst "
        "`bursts[k % len(bursts)]`) runs in list order, reversed on alternate k, for each "
        "sender in turn, so a drift of the machine hits every receiver alike.")
    w.append(
        f"- **Receivers.** Callback receivers parse frames as bytes arrive (header, "
        "then the payload CRC32'd chunk by chunk; no frame is buffered whole): `asyncio "
        "Protocol` gets `bytes` and drops them; `asyncio BufferedProtocol` receives into "
        f"its own {size_label(BUFFERED_SIZE)} buffer, one per connection (`aiofastnet` the "
        "same, served by `aiofastnet.create_server`); aiozc's `ZCProtocol` is written as "
        "the README shows it (`with data:` around every view), served by "
        "`aiozc.create_server` with `ZCConfig(zerocopy=mode)`. Stream receivers read each "
        "frame whole: `asyncio streams` `readexactly(4)` + `readexactly(n)`; aiozc "
        "streams (`aiozc.start_server`) the README's pattern, `readexactly(4)` (bytes) + "
        "`readexactly_view(n)` (released at once); anyio's `BufferedByteReceiveStream` "
        "`receive_exactly`; aiozc's anyio listener (`aiozc.anyio.create_tcp_listener`) "
        "`receive_exactly_view` for both. aiozc's streams and anyio listener use the "
        "default config (`auto`).")
    w.append(
        f"- **Memory guard.** A server whose RSS grows by more than "
        f"{meta['guard_limit'] / 2**30:.2f} GiB is stopped (a shared machine, perhaps "
        "without swap, must survive the run); its cell shows the growth per connection at that moment as a lower "
        "bound (\">\").")
    w.append(
        "- **Ratios** are to the best peer (the non-aiozc receiver with the lowest median) "
        "of the same cell in the same run; the best peer is **bold**.\n")

    # targets
    w.append("## Targets\n")
    w.append("Issue 13, item 5. Shown, not asserted; judged on the medians above.\n")
    for i, (text, met, lines) in enumerate(targets(res, meta["connections"], meta["bursts"]), 1):
        verdict = "NOT EVALUATED" if met is None else ("MET" if met else "MISSED")
        w.append(f"{i}. {text}: **{verdict}**")
        for line in lines:
            w.append(f"   - {line}")
    w.append("")

    cols = [(b, s) for s in SENDERS for b in meta["bursts"]]
    head = ["receiver"] + [f"{size_label(b)}, {'MSG_ZC' if s == 'zerocopy' else 'plain'}"
                           for b, s in cols]
    for n in meta["connections"]:
        if not any(k[1] == n for k in res.p1) and not any(c["n"] == n for c in res.cells):
            continue
        w.append(f"## Phase 1, N = {n:,}: idle after one burst\n")
        w.append("RSS growth per connection, KiB (ratio to the best peer of the column). "
                 "Columns: burst size, sender (MSG_ZC: MSG_ZEROCOPY).\n")
        best = {c: res.best_mem_peer(n, *c) for c in cols}
        rows = []
        for rx in res.receivers:
            row = [rx.name]
            for c in cols:
                ab = res.aborted(rx.name, n, *c)
                xs = [x / KiB for x in res.mem(rx.name, n, c[0], c[1], "VmRSS")]
                if ab is not None:
                    row.append(f"> {ab['rss_growth'] / n / KiB:.0f} (aborted)")
                    continue
                if not xs:
                    row.append("–")
                    continue
                txt = median_range(xs, 1, bare_single=True)
                b = best[c]
                if b is not None and b[1] > 0:
                    txt += f" ({median(xs) / b[1]:.1f}x)"
                row.append(f"**{txt}**" if b is not None and b[0] == rx.name else txt)
            rows.append(row)
        w.append(table(head, rows) + "\n")
        w.append("New mappings (VMAs) per connection, and page-table growth (`VmPTE`) "
                 "per connection in bytes: VMAs / PTE.\n")
        rows = []
        for rx in res.receivers:
            row = [rx.name]
            for c in cols:
                v = res.mem(rx.name, n, c[0], c[1], "maps")
                p = res.mem(rx.name, n, c[0], c[1], "VmPTE")
                row.append(f"{median(v):.2f} / {median(p):.0f}" if v else "–")
            rows.append(row)
        w.append(table(head, rows) + "\n")
        w.append("aiozc after the burst, per connection: pinned bytes (`stats.bytes_pinned`) "
                 "/ resident socket-mapped bytes (smaps) / % of the burst that arrived "
                 "mapped.\n")
        rows = []
        for rx in res.receivers:
            if not rx.aiozc:
                continue
            row = [rx.name]
            for c in cols:
                cs = res.p1.get((rx.name, n, c[0], c[1]), [])
                if not cs or cs[0]["zc_idle"] is None:
                    row.append("–")
                    continue
                pin_ = median([x["zc_idle"]["bytes_pinned"] / n for x in cs])
                smap = median([x["after"].get("socket_rss", 0) / n for x in cs])
                frac = median([100 * x["zc_idle"]["bytes_mapped"] /
                             max(1, x["zc_idle"]["bytes_received"]) for x in cs])
                row.append(f"{pin_:.0f} / {smap:.0f} / {frac:.0f}%")
            rows.append(row)
        w.append(table(head, rows) + "\n")

    for n in meta["connections"]:
        if not any(k[1] == n for k in res.p2):
            continue
        f = per.get(n, 0)
        w.append(f"## Phase 2, N = {n:,}: all streaming at once\n")
        w.append(f"{f} × {size_label(STREAM_FRAME)} per connection, "
                 f"{n * f * STREAM_FRAME / MiB:.0f} MiB in all. Server CPU µs per MB, "
                 "median [min–max] (ratio of the medians to the best peer), and aggregate "
                 "MB/s.\n")
        rows = []
        best2 = {s: res.best_cpu_peer(n, s) for s in SENDERS}
        for rx in res.receivers:
            row = [rx.name]
            for s in SENDERS:
                xs = res.cpu(rx.name, n, s)
                if not xs:
                    row += ["–", "–"]
                    continue
                txt = median_range(xs, bare_single=True)
                b = best2[s]
                if b is not None:
                    txt += f" ({median(xs) / b[1]:.2f}x)"
                row.append(f"**{txt}**" if b is not None and b[0] == rx.name else txt)
                row.append(median_range(res.mbps(rx.name, n, s), bare_single=True))
            rows.append(row)
        w.append(table(["receiver", "CPU µs/MB, MSG_ZC", "MB/s, MSG_ZC",
                         "CPU µs/MB, plain", "MB/s, plain"], rows) + "\n")

    errs = [c for c in res.cells if "error" in c]
    aborted = [c for c in res.cells if "aborted" in c]
    if errs or aborted:
        w.append("## Cells that did not complete\n")
        for cell in aborted:
            a = cell["aborted"]
            w.append(f"- {cell['receiver']}, N={cell['n']:,}, {size_label(cell['burst'])}, "
                     f"{cell['sender']}: memory guard: RSS grew {a['rss_growth'] / 2**30:.2f} "
                     f"GiB ({a['frames']:,} of {cell['n']:,} burst frames in)")
        for cell in errs:
            w.append(f"- {cell['receiver']}, N={cell['n']:,}, {size_label(cell['burst'])}, "
                     f"{cell['sender']}: {cell['error']}")
        w.append("")
    return "\n".join(w)


# ---------------------------------------------------------------------------
# main


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(prog="python -m benchmarks.connections",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 100 connections, one burst size, a few receivers, < 60 s")
    ap.add_argument("--connections", type=_ints, default=None,
                    help="connection counts, comma-separated (default 100,1000,10000)")
    ap.add_argument("--bursts", type=_ints, default=None,
                    help="phase-1 burst sizes in bytes (default 4096,65536,1048576)")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"phase-2 samples (server processes) per receiver, N and sender "
                         f"(default {REPEATS}; quick 1)")
    ap.add_argument("--stream-mib", type=float, default=None,
                    help=f"phase-2 payload per server process, MiB (default "
                         f"{STREAM_TOTAL // MiB}; quick {QUICK_STREAM_TOTAL // MiB})")
    ap.add_argument("--senders", default=",".join(SENDERS),
                    help="zerocopy, plain or both (default both)")
    ap.add_argument("--only", default=None,
                    help="run only receivers whose name contains one of these (comma-separated)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the server and the client to CPUs")
    ap.add_argument("--idle", type=float, default=IDLE_S,
                    help=f"seconds between the last burst frame and the snapshot ({IDLE_S})")
    ap.add_argument("--max-rss-gib", type=float, default=None,
                    help="memory guard: stop a server whose RSS grows past this (default "
                         f"{GUARD_SHARE * 100:.0f}%% of MemAvailable, at most {GUARD_MAX >> 30} GiB)")
    ap.add_argument("--md", default=str(root / "docs" / "connections.md"))
    ap.add_argument("--json", default=str(root / "docs" / "connections.json"))
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)

    quick = args.quick
    ns = args.connections or (QUICK_N if quick else CONNECTIONS)
    bursts = args.bursts or (QUICK_BURSTS if quick else BURSTS)
    repeats = args.repeats or (1 if quick else REPEATS)
    total = int((args.stream_mib * MiB) if args.stream_mib else
                (QUICK_STREAM_TOTAL if quick else STREAM_TOTAL))
    guard = int(args.max_rss_gib * 2**30) if args.max_rss_gib else min(
        GUARD_MAX, int(_available_memory() * GUARD_SHARE))

    machine = machine_info()
    code = code_state()
    la0 = _loadavg()
    pre = _cpu_times()
    time.sleep(PRE_SAMPLE_S)
    cpu0 = _cpu_times()
    busy_before = ((cpu0[0] - pre[0]) / PRE_SAMPLE_S
                   if pre is not None and cpu0 is not None else None)
    own0 = _own_cpu()
    t0 = time.monotonic()

    skipped: list[str] = []
    receivers: list[Receiver] = []
    for rx in all_receivers():
        if quick and not args.only and rx.name not in QUICK_RECEIVERS:
            continue
        if args.only and not any(o in rx.name for o in args.only.split(",")):
            continue
        if rx.needs and importlib.util.find_spec(rx.needs) is None:
            skipped.append(f"{rx.name} ({rx.needs} is not installed)")
            continue
        if rx.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            skipped.append(f"{rx.name} (uvloop is not installed)")
            continue
        receivers.append(rx)

    nofile = raise_nofile()
    fit = [n for n in ns if n + FD_MARGIN <= nofile]
    for n in ns:
        if n not in fit:
            skipped.append(f"N={n:,} (needs {n + FD_MARGIN} file descriptors; "
                           f"RLIMIT_NOFILE allows {nofile})")
    ns = tuple(fit)

    if args.pin:
        srv_cpu, cli_cpu = pin_cpus()
        pinned = (f"Server pinned to CPU {srv_cpu}, client to CPU {cli_cpu}."
                  if srv_cpu is not None else "Nothing pinned (fewer than 2 CPUs).")
    else:
        srv_cpu = cli_cpu = None
        pinned = "Nothing pinned (`--no-pin`)."

    stream_frames = {n: max(1, round(total / (n * STREAM_FRAME))) for n in ns}
    senders = [s for s in SENDERS if s in args.senders.split(",")]
    procs = max(len(bursts), repeats)
    plans: list[Plan] = []
    for n in ns:
        for k in range(procs):
            for sender in senders:
                order = receivers if k % 2 == 0 else receivers[::-1]
                for rx in order:
                    plans.append(Plan(rx, n, bursts[k % len(bursts)], sender,
                                      stream_frames[n] if k < repeats else 0, k))

    def log(msg: str) -> None:
        print(f"\n[connections] {msg}", file=sys.stderr)

    progress = Progress(len(plans), enabled=args.progress)
    cells: list[dict[str, Any]] = []
    client = Client(cli_cpu)
    try:
        for plan in plans:
            cell = run_cell(plan, client, srv_cpu, guard, args.idle)
            cells.append(cell)
            if "error" in cell:
                log(f"{plan.rx.name}, N={plan.n}, {size_label(plan.burst)}, {plan.sender}: "
                    f"{cell['error']}")
            if "aborted" in cell:
                log(f"{plan.rx.name}, N={plan.n}, {size_label(plan.burst)}, {plan.sender}: "
                    f"memory guard ({cell['aborted']['rss_growth'] / 2**30:.1f} GiB)")
            progress.step(f"{plan.rx.name} N={plan.n} {size_label(plan.burst)} {plan.sender}")
    finally:
        progress.close()
        client.close()

    elapsed = time.monotonic() - t0
    la1 = _loadavg()
    cpu1 = _cpu_times()
    own = _own_cpu() - own0
    others: float | None = None
    others_cpus: float | None = None
    steal: float | None = None
    if cpu0 is not None and cpu1 is not None:
        others = max(0.0, cpu1[0] - cpu0[0] - own)
        others_cpus = others / elapsed if elapsed > 0 else None
        cpu_total = cpu1[2] - cpu0[2]
        steal = (cpu1[1] - cpu0[1]) / cpu_total if cpu_total > 0 else None
    reasons = []
    if busy_before is not None and busy_before > BUSY_CPUS:
        reasons.append(f"{busy_before:.2f} CPUs were in use just before the run")
    if others_cpus is not None and others_cpus > BUSY_CPUS:
        reasons.append(f"other processes used {others_cpus:.2f} CPUs on average during "
                       "the run")
    meta: dict[str, Any] = {
        "machine": machine, "code": code, "code_end": code_state(), "quick": quick,
        "elapsed_s": elapsed, "busy_before_cpus": busy_before,
        "loadavg_start": la0, "loadavg_end": la1,
        "others_cpu_s": others, "others_cpus": others_cpus, "steal": steal,
        "busy": bool(reasons),
        "busy_reason": ("By this run's own measure: " + "; ".join(reasons) + ".")
        if reasons else "",
        "pinned": pinned, "nofile": nofile, "skipped": skipped,
        "connections": list(ns), "bursts": list(bursts), "repeats": repeats,
        "stream_frames": stream_frames, "stream_frame": STREAM_FRAME,
        "idle_s": args.idle, "guard_limit": guard,
    }
    res = Results(cells, receivers)
    text = report(res, meta)
    md, js = Path(args.md), Path(args.json)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps({
        **meta,
        "stream_frames": {str(k): v for k, v in stream_frames.items()},
        "receivers": [{"name": r.name, "api": r.api, "runtime": r.runtime, "aiozc": r.aiozc,
                       "mode": r.mode} for r in receivers],
        "targets": [{"target": t, "met": m, "evidence": ev}
                    for t, m, ev in targets(res, ns, bursts)],
        "cells": cells,
    }, indent=1))
    print(f"wrote {md}, {js} ({elapsed:.0f} s)", file=sys.stderr)
    for i, (t, m, _) in enumerate(targets(res, ns, bursts), 1):
        print(f"target {i}: {'not evaluated' if m is None else ('MET' if m else 'MISSED')}: {t}",
              file=sys.stderr)
    return 1 if any("error" in c for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
