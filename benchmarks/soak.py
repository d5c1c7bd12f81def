"""Soak: a thousand concurrent connections for a few minutes, verified.

``python -m benchmarks.soak`` holds 1,000 concurrent connections for 180
seconds; ``--quick`` holds 200 for 10 (what CI runs,
tests/faults/test_soak.py).  Loopback only: every socket is on 127.0.0.1.

The receiver (this process) runs aiozc servers on the stdlib loop and on
uvloop at once, each loop in its own thread, each with a protocol server
(``aiozc.create_server``) and a stream server (``aiozc.start_server``).
The peers run in a child process (the stdlib loop): each of the N slots
keeps one connection open at all times, session after session, to the
four servers in turn.  A session sends a random amount (1 KiB to 4 MiB)
with MSG_ZEROCOPY or plain sends, in one of four styles (bulk, paced,
one-to-64-byte trickle, or idle for seconds first), hashing what it sends;
it then half-closes, and the receiver, which hashed everything it got,
replies with its byte count and SHA-256, which the peer compares with its
own.  3% of the sessions reset mid-stream instead (RST), unverified.

The receiving applications misbehave on purpose: a third of the protocol
connections hold up to 16 views, release them in random order, and keep
them up to 0.2 s past the connection's end; a fifth pause reading for a
few milliseconds at random; the stream readers cut random-sized frames
(4 bytes to 1 MiB) and hold some.  Servers alternate 'always' and 'auto'.

Every second it samples the live connections, RSS, the memory views pin
(``ZCStats.bytes_pinned`` summed), open fds and mappings.  At the end it
reports throughput, the peaks, the figures at the start (after a warm-up)
and at the end (everything closed), and judges two kinds of things:

* checks, which hold however loaded the machine is: every session
  verified, no unexpected error, fds back to the start exactly, no socket
  mapping left, no other mapping left beyond glibc's arena heaps;
* trends, which are measurements: RSS, fds and mappings flat over the
  steady state, RSS back near the start after ``malloc_trim``.  They are
  judged only in a full run (not ``--quick``): in 10 s, or on a busy
  machine where the receiver lags its peers and holds more, the "steady
  state" is still a ramp.  Run the full soak on a quiet machine for them.

Exit status 0 only if every check passed and, in a full run, every trend.
``--json PATH`` writes the report as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import errno
import gc
import hashlib
import itertools
import json
import os
import random
import resource
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiozc
from aiozc import ZCConfig, ZCProtocol
from aiozc._errqueue import MSG_ZEROCOPY, SO_ZEROCOPY

HOST = "127.0.0.1"
KiB, MiB = 1 << 10, 1 << 20
REPLY = struct.Struct("!Q32s")  # byte count, SHA-256


def raise_nofile(need: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < need:
        raise SystemExit(f"soak: needs {need} file descriptors, RLIMIT_NOFILE allows {soft}")
    return soft


# -- the receiver -------------------------------------------------------------------


class LoopSide:
    """One event loop (in its own thread) serving a protocol and a stream server."""

    def __init__(self, name: str, factory: Callable[[], asyncio.AbstractEventLoop],
                 seed: int) -> None:
        self.name = name
        self.factory = factory
        self.rnd = random.Random(seed)
        self.ports: list[int] = []
        self.live: set[Any] = set()  # connections, until their views are released
        self.open = 0  # connections not yet lost
        self.sample: dict[str, int] = {"open": 0, "views": 0, "pinned": 0}
        self.replied = 0
        self.bytes = 0
        self.bytes_mapped = 0
        self.opened = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.failure: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"soak-{name}", daemon=True)

    def start(self) -> list[int]:
        self._thread.start()
        if not self._ready.wait(30) or self.failure is not None:
            raise RuntimeError(f"{self.name}: servers did not start: {self.failure!r}")
        return self.ports

    def idle(self) -> bool:
        """No connection open and no view held."""
        return not self.live

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        if self._thread.is_alive():
            raise RuntimeError(f"{self.name}: loop did not stop")
        if self.failure is not None:
            raise self.failure

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=self.factory) as runner:
                runner.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        first, second = ("always", "auto") if self.name == "asyncio" else ("auto", "always")
        # Smaller windows than the default: 1,000 connections x 4 MiB of
        # address space, and holders pin at most 8 MiB each.
        proto_cfg = ZCConfig(zerocopy=first, window_size=4 * MiB, region_size=256 * KiB,  # type: ignore[arg-type]
                             max_pinned_bytes=8 * MiB)
        stream_cfg = ZCConfig(zerocopy=second, window_size=4 * MiB, region_size=256 * KiB,  # type: ignore[arg-type]
                              max_pinned_bytes=8 * MiB)
        servers = [
            await aiozc.create_server(lambda: SoakProtocol(self), HOST, 0, backlog=4096,
                                      config=proto_cfg),
            await aiozc.start_server(self._handle, HOST, 0, backlog=4096, config=stream_cfg),
        ]
        self.ports = [s.sockets[0].getsockname()[1] for s in servers]
        sampler = asyncio.create_task(self._sampler())
        self._ready.set()
        await self._stop.wait()
        for server in servers:
            server.close()
        deadline = time.monotonic() + 30
        while self.live and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.live):
            # A connection the peers are done with that never ended here:
            # say what state it is in (it fails the soak), then abort it.
            self.errors[f"still open 30 s after the peers exited: {conn.describe()}"[:600]] += 1
            conn.abort()
        await asyncio.sleep(0.3)
        sampler.cancel()
        for server in servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 10)
            except TimeoutError:
                self.errors["Server.wait_closed() did not return"] += 1

    async def _sampler(self) -> None:
        while True:
            views = pinned = 0
            for conn in list(self.live):
                stats = conn.stats()
                if stats is not None:
                    views += stats.views_outstanding
                    pinned += stats.bytes_pinned
            self.sample = {"open": self.open, "views": views, "pinned": pinned}
            await asyncio.sleep(0.25)

    async def _handle(self, reader: Any, writer: asyncio.StreamWriter) -> None:
        """The stream server: random-sized frames, some held, then the reply."""
        rnd = random.Random(self.rnd.random())
        entry = _StreamEntry(reader, writer)
        self.live.add(entry)
        self.opened += 1
        self.open += 1
        hasher = hashlib.sha256()
        received = 0
        held: list[memoryview] = []
        try:
            while True:
                size = rnd.choice([4, 100, 4096, 65536, 300_000, MiB])
                entry.stage = f"readexactly_view({size}) after {received} bytes"
                try:
                    view = await reader.readexactly_view(size)
                except asyncio.IncompleteReadError as exc:
                    hasher.update(exc.partial)
                    received += len(exc.partial)
                    break
                hasher.update(view)
                received += len(view)
                if rnd.random() < 0.3:
                    held.append(view)
                    if len(held) > 8:
                        held.pop(rnd.randrange(len(held))).release()
                else:
                    view.release()
            stats = reader.stats
            self.bytes_mapped += stats.bytes_mapped
            entry.stage = "replying"
            writer.write(REPLY.pack(received, hasher.digest()))
            await writer.drain()
            self.replied += 1
        except ConnectionResetError:
            self.errors["reset by the peer (expected: the peer's RST sessions)"] += 1
        except Exception as exc:  # noqa: BLE001 - counted, reported, fails the soak
            self.errors[f"stream handler: {exc!r}"[:200]] += 1
        finally:
            self.bytes += received
            for view in held:
                view.release()
            held.clear()
            entry.stage = "closing"
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
            self.open -= 1
            self.live.discard(entry)


def _describe_transport(transport: Any) -> str:
    state = "?"
    try:
        sock = transport.get_extra_info("socket")
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        state = {1: "ESTABLISHED", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK",
                 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT"}.get(info[0], str(info[0]))
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        state += f", SO_ERROR={err}"
    except (OSError, AttributeError) as exc:
        state = f"socket: {exc!r}"
    flags = {name: getattr(transport, name, None)
             for name in ("_closing", "_paused", "_starved", "_at_eof", "_reader_on")}
    return (f"{transport!r} tcp={state} {flags} "
            f"stats={transport.get_extra_info('aiozc_stats')}")


class _StreamEntry:
    def __init__(self, reader: Any, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.stage = "starting"

    def stats(self) -> Any:
        return self.writer.transport.get_extra_info("aiozc_stats")

    def describe(self) -> str:
        return (f"stream handler at {self.stage}, reader {self.reader!r}, "
                f"{_describe_transport(self.writer.transport)}")

    def abort(self) -> None:
        self.writer.transport.abort()


class SoakProtocol(ZCProtocol):
    """The protocol server's application: sink, holder or pauser."""

    def __init__(self, side: LoopSide) -> None:
        self.side = side
        self.rnd = random.Random(side.rnd.random())
        self.kind = self.rnd.choices(["sink", "holder", "pauser"], [45, 35, 20])[0]
        self.hasher = hashlib.sha256()
        self.received = 0
        self.held: list[memoryview] = []
        self.transport: Any = None
        self.closed = False

    def stats(self) -> Any:
        return self.transport.stats if self.transport is not None else None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.side.live.add(self)
        self.side.opened += 1
        self.side.open += 1

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        self.hasher.update(data)
        self.received += len(data)
        if self.kind == "holder":
            self.held.append(data)
            while len(self.held) > self.rnd.randint(0, 16):
                self.held.pop(self.rnd.randrange(len(self.held))).release()
        else:
            data.release()
            if self.kind == "pauser" and self.rnd.random() < 0.05:
                self.transport.pause_reading()
                asyncio.get_running_loop().call_later(
                    self.rnd.uniform(0.001, 0.005), self._resume)

    def describe(self) -> str:
        return (f"protocol {self.kind}, {self.received} bytes, {len(self.held)} views held, "
                f"lost={self.closed}, {_describe_transport(self.transport)}")

    def abort(self) -> None:
        self.transport.abort()
        if self.closed:
            self._done()

    def _resume(self) -> None:
        if not self.closed:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.transport.write(REPLY.pack(self.received, self.hasher.digest()))
        self.transport.close()
        self.side.replied += 1
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        side = self.side
        side.open -= 1
        side.bytes += self.received
        side.bytes_mapped += self.transport.stats.bytes_mapped
        if isinstance(exc, ConnectionResetError):
            side.errors["reset by the peer (expected: the peer's RST sessions)"] += 1
        elif exc is not None:
            side.errors[f"protocol: {exc!r}"[:200]] += 1
        if self.held:
            # Views outlive their connection for a while.
            asyncio.get_running_loop().call_later(self.rnd.uniform(0, 0.2), self._done)
        else:
            self._done()

    def _done(self) -> None:
        for view in self.held:
            view.release()
        self.held.clear()
        self.side.live.discard(self)


# -- measurements -------------------------------------------------------------------


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def figures() -> dict[str, int]:
    """fds, mappings (all / of sockets), RSS of this process, now."""
    with open("/proc/self/maps") as f:
        maps = f.readlines()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "maps": len(maps),
        "socket_maps": sum(1 for line in maps if "socket:[" in line),
        "rss": _proc_status("VmRSS"),
    }


def maps_snapshot() -> set[tuple[str, str, str]]:
    """This process's mappings as (address range, permissions, path)."""
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            out.add((fields[0], fields[1], fields[5].strip() if len(fields) > 5 else ""))
    return out


# glibc's per-thread malloc arenas grow in heaps of HEAP_MAX_SIZE (64 MiB on
# 64-bit), each mmap()ed at an address aligned to that size, and keep them
# mapped (trimmed) once freed: after a peak of N x 64 MiB of memory in the
# loop threads, up to ~2N such mappings (the used part and the reserve)
# remain.  They are the allocator's, bounded by the peak, not per connection.
_HEAP_MAX = 64 * MiB


def describe_new_mappings(before: set[tuple[str, str, str]]) -> dict[str, int]:
    """Mappings that were not there at the start, counted by kind."""
    kinds: collections.Counter[str] = collections.Counter()
    for addresses, perms, path in maps_snapshot() - before:
        lo, hi = (int(x, 16) for x in addresses.split("-"))
        if path == "" and perms in ("rw-p", "---p") and lo // _HEAP_MAX == (hi - 1) // _HEAP_MAX:
            kinds["glibc arena heap (anonymous, inside one 64 MiB-aligned block)"] += 1
        else:
            size = hi - lo
            bucket = ("<= 256 KiB" if size <= 256 * KiB else "<= 4 MiB" if size <= 4 * MiB
                      else "> 4 MiB")
            kinds[f"other: {path or 'anonymous'} {perms} {bucket}"] += 1
    return dict(kinds.most_common())


def _trimmed_rss() -> int:
    """RSS once glibc has returned its free memory to the kernel.

    Freed memory that malloc keeps for reuse counts in RSS; malloc_trim(0)
    hands it back, so what remains is what the process still uses.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return _proc_status("VmRSS")


def warm_up(ports: list[int]) -> None:
    """A few sessions through every server (lazily made pools, arenas, executors)."""
    for port in ports:
        for zerocopy in (True, False):
            with socket.create_connection((HOST, port), timeout=10) as sock:
                if zerocopy:
                    sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
                data = random.Random(port).randbytes(3 * MiB)
                sock.sendall(data)  # plain send; the sender's own pages stay alive
                sock.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := sock.recv(64):
                    reply += chunk
                if reply != REPLY.pack(len(data), hashlib.sha256(data).digest()):
                    raise RuntimeError(f"warm-up session to {port} not verified")


# -- the peers (child process) -------------------------------------------------------


class Peers:
    """N slots, each one connection at a time, session after session."""

    def __init__(self, ports: list[int], slots: int, duration: float, seed: int) -> None:
        self.ports = ports
        self.slots = slots
        self.deadline = time.monotonic() + duration
        self.rnd = random.Random(seed)
        # Every write is a slice of this block: immutable and alive for the
        # whole process, so MSG_ZEROCOPY never sees its pages change.
        self.block = memoryview(random.Random(seed).randbytes(8 * MiB))
        self.ok = 0
        self.verified = 0
        self.resets = 0
        self.mismatches: list[str] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.styles: collections.Counter[str] = collections.Counter()
        self.zerocopy_sessions = 0
        self.max_open = 0
        self.open = 0

    async def run(self) -> dict[str, Any]:
        await asyncio.gather(*(self._slot(i) for i in range(self.slots)))
        return {
            "sessions_verified": self.ok, "bytes_verified": self.verified,
            "sessions_reset": self.resets, "mismatches": self.mismatches[:20],
            "errors": dict(self.errors), "styles": dict(self.styles),
            "zerocopy_sessions": self.zerocopy_sessions, "max_open": self.max_open,
        }

    async def _slot(self, i: int) -> None:
        """One connection after another; the next one is opened before the
        current one ends, so the slot never goes without a connection."""
        rnd = random.Random(self.rnd.random())
        await asyncio.sleep(rnd.uniform(0, 1))  # stagger the first connections
        ports = itertools.cycle(self.ports[i % len(self.ports):] + self.ports[:i % len(self.ports)])

        def connect_next() -> asyncio.Task[tuple[socket.socket, int]]:
            return asyncio.create_task(self._connect(next(ports)))

        pending: asyncio.Task[tuple[socket.socket, int]] | None = connect_next()
        while pending is not None:
            following: list[asyncio.Task[tuple[socket.socket, int]]] = []
            final = time.monotonic() >= self.deadline

            def ending() -> None:  # the session is about to end: open the next
                if not final and not following:
                    following.append(connect_next())

            try:
                sock, port = await pending
            except Exception as exc:  # noqa: BLE001 - counted, fails the soak
                self.errors[f"connect: {exc!r}"[:200]] += 1
                await asyncio.sleep(0.1)
            else:
                try:
                    await asyncio.wait_for(self._session(sock, port, rnd, final, ending), 120)
                except Exception as exc:  # noqa: BLE001 - counted, fails the soak
                    self.errors[repr(exc)[:200]] += 1
                finally:
                    sock.close()
                    self.open -= 1
            ending()
            pending = following[0] if following else None

    async def _connect(self, port: int) -> tuple[socket.socket, int]:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        except BaseException:
            sock.close()
            raise
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        return sock, port

    async def _session(self, sock: socket.socket, port: int, rnd: random.Random, final: bool,
                       ending: Callable[[], None]) -> None:
        """One verified session (``final``: an empty one, to end the slot)."""
        style = "final" if final else rnd.choices(
            ["bulk", "paced", "trickle", "idle"], [15, 70, 10, 5])[0]
        self.styles[style] += 1
        if style == "final":
            size = 0
        elif style == "trickle":
            size = rnd.randint(1, 2 * KiB)
        else:
            size = int(2 ** rnd.uniform(10, 22))  # 1 KiB to 4 MiB, log-uniform
        zerocopy = style in ("bulk", "paced", "idle") and rnd.random() < 0.6
        reset_at = rnd.randint(0, size) if size and rnd.random() < 0.03 else None
        if zerocopy:
            sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
            self.zerocopy_sessions += 1
        if style == "idle":
            await asyncio.sleep(rnd.uniform(1, 4))
        hasher = hashlib.sha256()
        sent = 0
        while sent < size:
            if style == "trickle":
                n = rnd.randint(1, 64)
            elif style == "bulk":
                n = rnd.randint(1, 1 << 20)
            else:
                n = rnd.randint(1, 128 * KiB)
            n = min(n, size - sent)
            offset = rnd.randrange(len(self.block) - n)
            piece = self.block[offset:offset + n]
            await self._send(sock, piece, zerocopy)
            hasher.update(piece)
            sent += n
            if reset_at is not None and sent >= reset_at:
                ending()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.resets += 1
                return  # the caller's close() sends the RST
            if style == "paced":
                await asyncio.sleep(rnd.uniform(0.002, 0.02))
            elif style == "trickle":
                await asyncio.sleep(rnd.uniform(0.005, 0.05))
        ending()
        sock.shutdown(socket.SHUT_WR)
        reply = await self._recv_exactly(sock, REPLY.size)
        if reply != REPLY.pack(sent, hasher.digest()):
            got = REPLY.unpack(reply) if len(reply) == REPLY.size else reply
            self.mismatches.append(f"port {port}: sent {sent} bytes, reply {got!r}"[:300])
        else:
            self.ok += 1
            self.verified += sent

    async def _wait(self, sock: socket.socket, writable: bool) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fd = sock.fileno()
        add, remove = ((loop.add_writer, loop.remove_writer) if writable
                       else (loop.add_reader, loop.remove_reader))
        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        add(fd, wake)
        try:
            await fut
        finally:
            remove(fd)
        _reap(sock)  # EPOLLERR (a completion) wakes us too

    async def _send(self, sock: socket.socket, view: memoryview, zerocopy: bool) -> None:
        flags = MSG_ZEROCOPY if zerocopy else 0
        while view:
            try:
                n = sock.send(view, flags)
            except BlockingIOError:
                await self._wait(sock, writable=True)
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # Completions not yet reaped fill the socket's option memory.
                _reap(sock)
                await asyncio.sleep(0.001)
                continue
            view = view[n:]
            if zerocopy:
                _reap(sock)

    async def _recv_exactly(self, sock: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            try:
                chunk = sock.recv(size - len(data))
            except BlockingIOError:
                await self._wait(sock, writable=False)
                continue
            if not chunk:
                break
            data += chunk
        return data


def _reap(sock: socket.socket) -> None:
    """Discard MSG_ZEROCOPY completions (the buffers live for the whole run)."""
    while True:
        try:
            sock.recvmsg(0, 256, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return


def peers_main(args: argparse.Namespace) -> None:
    raise_nofile(args.connections + 64)
    ports = [int(p) for p in args.ports.split(",")]
    peers = Peers(ports, args.connections, args.duration, args.seed)
    result = asyncio.run(peers.run())
    print(json.dumps(result), flush=True)


# -- the report ----------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def soak(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    raise_nofile(2 * args.connections + 256)
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.SelectorEventLoop, "uvloop": uvloop.new_event_loop}
    names = list(factories) if args.loop == "both" else [args.loop]
    sides = [LoopSide(name, factories[name], args.seed + i) for i, name in enumerate(names)]
    ports = [port for side in sides for port in side.start()]
    warm_up(ports)
    gc.collect()
    time.sleep(0.5)  # the warm-up's held views are released within 0.2 s
    gc.collect()
    start = figures()
    start_maps = maps_snapshot()

    cmd = [sys.executable, "-m", "benchmarks.soak", "--role", "peers",
           "--ports", ",".join(map(str, ports)), "--connections", str(args.connections),
           "--duration", str(args.duration), "--seed", str(args.seed)]
    root = Path(__file__).resolve().parent.parent
    t0 = time.monotonic()
    peers = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True)
    samples: list[dict[str, Any]] = []
    while peers.poll() is None:
        time.sleep(1)
        sample: dict[str, float] = {"t": round(time.monotonic() - t0, 1), **figures()}
        for key in ("open", "views", "pinned"):
            sample[key] = sum(side.sample[key] for side in sides)
        sample["bytes"] = sum(side.bytes for side in sides)
        samples.append(sample)
        if args.progress:
            print(f"  t={sample['t']:6.1f}s open={sample['open']:5.0f} "
                  f"rss={sample['rss'] / MiB:7.1f} MiB pinned={sample['pinned'] / MiB:7.1f} MiB "
                  f"fds={sample['fds']:5.0f} maps={sample['maps']:5.0f} "
                  f"received={sample['bytes'] / MiB:9.1f} MiB", file=sys.stderr, flush=True)
        if time.monotonic() - t0 > args.duration + 180:
            peers.kill()
    elapsed = time.monotonic() - t0
    out, _ = peers.communicate()
    try:
        peer_report = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        peer_report = {"errors": {f"the peers' process failed (status {peers.returncode})": 1}}
    # The end: every connection closed and every view released, the loops
    # and their servers still up (as at the start).
    deadline = time.monotonic() + 30
    while not all(side.idle() for side in sides) and time.monotonic() < deadline:
        time.sleep(0.05)
    gc.collect()
    end = figures()
    end["rss_after_malloc_trim"] = _trimmed_rss()
    end["maps_after_malloc_trim"] = figures()["maps"]
    new_mappings = describe_new_mappings(start_maps)
    for side in sides:
        side.stop()
    gc.collect()
    stopped = figures()

    # Steady state: from 20% of the run to the deadline (not the drain).
    steady = [s for s in samples if 0.2 * args.duration <= s["t"] <= args.duration]
    third = max(1, len(steady) // 3)
    early, late = steady[:third], steady[-third:]
    growth = {}
    for key in ("rss", "fds", "maps", "pinned"):
        a, b = _median([s[key] for s in early]), _median([s[key] for s in late])
        growth[key] = {"early_median": a, "late_median": b}
    receiver_errors: collections.Counter[str] = collections.Counter()
    for side in sides:
        receiver_errors.update(side.errors)
    expected_resets = sum(v for k, v in receiver_errors.items() if k.startswith("reset by the peer"))
    unexpected = {k: v for k, v in receiver_errors.items() if not k.startswith("reset by the peer")}
    live = [s["open"] for s in steady]
    report: dict[str, Any] = {
        "connections": args.connections,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 1),
        "loops": names,
        "sessions_opened": sum(side.opened for side in sides),
        "sessions_verified": peer_report.get("sessions_verified", 0),
        "sessions_reset": peer_report.get("sessions_reset", 0),
        "bytes_verified": peer_report.get("bytes_verified", 0),
        "bytes_received": sum(side.bytes for side in sides),
        "bytes_mapped": sum(side.bytes_mapped for side in sides),
        "throughput_MBps": round(sum(side.bytes for side in sides) / elapsed / 1e6, 1),
        "concurrent_min": min(live, default=0),
        "concurrent_median": _median(live),
        "concurrent_max": max((s["open"] for s in samples), default=0),
        "peak_rss": max([start["rss"], *(s["rss"] for s in samples)]),
        "peak_pinned": max((s["pinned"] for s in samples), default=0),
        "peak_views": max((s["views"] for s in samples), default=0),
        "peak_fds": max((s["fds"] for s in samples), default=0),
        "peak_maps": max((s["maps"] for s in samples), default=0),
        "start": start,
        "end": end,
        "after_loops_closed": stopped,
        "new_mappings_at_end": new_mappings,
        "growth": growth,
        "peer_styles": peer_report.get("styles", {}),
        "zerocopy_sessions": peer_report.get("zerocopy_sessions", 0),
        "mismatches": peer_report.get("mismatches", []),
        "peer_errors": peer_report.get("errors", {}),
        "receiver_resets": expected_resets,
        "receiver_errors": unexpected,
        "samples": samples,
    }
    report["checks"] = checks(report)
    report["trends"] = trends(report)
    report["trends_judged"] = not args.quick
    report["ok"] = all(report["checks"].values()) and (
        not report["trends_judged"] or all(report["trends"].values()))
    return report


def checks(r: dict[str, Any]) -> dict[str, bool]:
    """What must hold however loaded the machine: exact counts and end states."""
    start, end = r["start"], r["end"]
    return {
        "every session verified (no mismatch)": not r["mismatches"] and r["sessions_verified"] > 0,
        "no unexpected error at either end": not r["peer_errors"] and not r["receiver_errors"],
        "no more resets seen than the peers sent": r["receiver_resets"] <= r["sessions_reset"],
        "fds back to the start": end["fds"] == start["fds"],
        "no socket mapping left": end["socket_maps"] == 0,
        "mappings back to the start (+16), apart from glibc's arena heaps":
            sum(n for kind, n in r["new_mappings_at_end"].items() if kind.startswith("other"))
            <= 16,
    }


def trends(r: dict[str, Any]) -> dict[str, bool]:
    """Measurements over time: judged in a full run only (see the docstring).

    How much the receiver holds (socket buffers copied into pooled buffers,
    views, glibc's arenas grown to the peak) depends on how far it lags its
    peers, so on the CPU it gets: a 10 s run on a busy machine (load 4 on
    2 CPUs) saw RSS medians of 199 MB in the first third of its "steady
    state" and 295 MB in the last, a ramp that only a longer run tells from
    a leak; the fd and mapping counts follow the connections in flight.
    """
    start, end, growth = r["start"], r["end"], r["growth"]
    return {
        "RSS at the end (after malloc_trim) within start + 64 MiB":
            end["rss_after_malloc_trim"] <= start["rss"] + 64 * MiB,
        "RSS flat in the steady state (late <= early x1.25 + 32 MiB)":
            growth["rss"]["late_median"] <= growth["rss"]["early_median"] * 1.25 + 32 * MiB,
        "fds flat in the steady state (late <= early x1.1 + 16)":
            growth["fds"]["late_median"] <= growth["fds"]["early_median"] * 1.1 + 16,
        "mappings flat in the steady state (late <= early x1.1 + 64)":
            growth["maps"]["late_median"] <= growth["maps"]["early_median"] * 1.1 + 64,
    }


def print_report(r: dict[str, Any]) -> None:
    def mib(n: float) -> str:
        return f"{n / MiB:,.1f} MiB"

    print(f"aiozc soak: {r['connections']} concurrent connections for {r['duration_s']} s "
          f"on {' + '.join(r['loops'])} (elapsed {r['elapsed_s']} s with the drain)")
    print(f"  sessions: {r['sessions_opened']:,} opened, {r['sessions_verified']:,} verified "
          f"byte-exact (SHA-256 at both ends), {r['sessions_reset']:,} reset by the peer "
          f"on purpose, {len(r['mismatches'])} mismatched")
    print(f"  bytes: {r['bytes_verified']:,} verified, {r['bytes_received']:,} received "
          f"({r['bytes_mapped']:,} in mapped pages); {r['throughput_MBps']} MB/s")
    print(f"  concurrent connections in the steady state: min {r['concurrent_min']:.0f}, "
          f"median {r['concurrent_median']:.0f}, max {r['concurrent_max']:.0f}")
    print(f"  peaks: RSS {mib(r['peak_rss'])}, pinned by views {mib(r['peak_pinned'])} "
          f"({r['peak_views']:,} views), fds {r['peak_fds']:,}, mappings {r['peak_maps']:,}")
    for when in ("start", "end"):
        f = r[when]
        trimmed = (f", {mib(f['rss_after_malloc_trim'])} after malloc_trim"
                   if "rss_after_malloc_trim" in f else "")
        print(f"  {when:5}: fds {f['fds']}, mappings {f['maps']} ({f['socket_maps']} of sockets), "
              f"RSS {mib(f['rss'])}{trimmed}")
    if r["new_mappings_at_end"]:
        print("  mappings at the end that were not there at the start: "
              + ", ".join(f"{n} {kind}" for kind, n in r["new_mappings_at_end"].items()))
    f = r["after_loops_closed"]
    print(f"  loops closed: fds {f['fds']}, mappings {f['maps']} "
          f"({f['socket_maps']} of sockets), RSS {mib(f['rss'])}")
    for key, g in r["growth"].items():
        print(f"  steady state {key}: early median {g['early_median']:,.0f}, "
              f"late median {g['late_median']:,.0f}")
    if r["peer_errors"] or r["receiver_errors"]:
        print(f"  errors: peers {r['peer_errors']}, receiver {r['receiver_errors']}")
    for name, ok in r["checks"].items():
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    if r["trends_judged"]:
        print("  trends:")
    else:
        print("  trends (not judged: a --quick run is too short for a steady state, "
              "and load inflates them; run the full soak on a quiet machine):")
    for name, ok in r["trends"].items():
        mark = "ok" if ok else "FAILED" if r["trends_judged"] else "grew"
        print(f"  [{mark}] {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=None,
                        help="concurrent connections (default 1000; --quick: 200)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of traffic (default 180; --quick: 10)")
    parser.add_argument("--quick", action="store_true", help="200 connections for 10 s")
    parser.add_argument("--loop", choices=["both", "asyncio", "uvloop"], default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--role", choices=["receiver", "peers"], default="receiver",
                        help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.connections is None:
        args.connections = 200 if args.quick else 1000
    if args.duration is None:
        args.duration = 10.0 if args.quick else 180.0
    if not 1 <= args.connections <= 5000 or not 0 < args.duration <= 3600:
        parser.error("bounded: 1-5000 connections, up to 3600 s")
    if args.role == "peers":
        peers_main(args)
        return 0
    report = soak(args)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
