"""Memory across connections: idle connections hold nothing, the loop-wide
bound holds, and a window that cannot be mapped means copying, not a crash.

Over loopback against real peers, on the stdlib loop and uvloop (``run``);
the mapped cases use MSG_ZEROCOPY peers and assert that pages mapped.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import platform
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

import aiozc
from aiozc import ZCConfig, ZCProtocol
from aiozc.testing import ZeroCopySender

from support import payload, sha

MiB = 1 << 20
KiB = 1 << 10


def window_rss() -> int:
    """Resident bytes of every aiozc window (socket mappings) in this process."""
    total = 0
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0]:  # a mapping's header line
                inside = "socket:[" in line
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


class Sink(ZCProtocol):
    """Hashes every byte; holds the views when told to."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.hasher = hashlib.sha256()
        self.received = 0
        self.views: list[memoryview] = []
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        self.hasher.update(data)
        self.received += len(data)
        if self.hold:
            self.views.append(data)
        else:
            data.release()


def _peers(port: int, blobs: list[bytes], zerocopy: bool, stop: threading.Event) -> None:
    """One connection per blob: send it, then stay connected until ``stop``."""
    conns = []
    try:
        for blob in blobs:
            conn = socket.create_connection(("127.0.0.1", port))
            conns.append(conn)
            sender = ZeroCopySender(conn, zerocopy=zerocopy)
            sender.send(blob)
            sender.flush()
        stop.wait(60)
    finally:
        for conn in conns:
            conn.close()


async def serve(
    blobs: list[bytes], config: ZCConfig, *, zerocopy: bool, hold: bool = False,
    settle: float = 0.3, check: Any = None,
) -> tuple[list[Sink], aiozc.ZCMemoryStats]:
    """A server gets one burst per connection; ``check()`` runs with them idle."""
    sinks: list[Sink] = []

    def factory() -> Sink:
        sink = Sink(hold)
        sinks.append(sink)
        return sink

    server = await aiozc.create_server(factory, "127.0.0.1", 0, config=config, backlog=512)
    port = server.sockets[0].getsockname()[1]
    stop = threading.Event()
    thread = threading.Thread(target=_peers, args=(port, blobs, zerocopy, stop), daemon=True)
    thread.start()
    total = sum(map(len, blobs))
    try:
        for _ in range(3000):
            if len(sinks) == len(blobs) and sum(s.received for s in sinks) >= total:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"received {sum(s.received for s in sinks)} of {total}")
        # Idle: the sweeper releases a connection 50-100 ms after its last
        # receive.  Unheld, wait for that (a busy machine delays timers);
        # held, views keep what they pin and a moment is all there is to wait.
        await asyncio.sleep(settle)
        for _ in range(500 if not hold else 0):
            if aiozc.memory_stats().slabs_in_use == 0 and window_rss() == 0:
                break
            await asyncio.sleep(0.01)
        stats = aiozc.memory_stats()
        if check is not None:
            check(sinks)
    finally:
        stop.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 30)
        server.close()
        for sink in sinks:
            if sink.transport is not None:
                sink.transport.abort()
        await server.wait_closed()
    return sinks, stats


class TestIdleConnectionsHoldNothing:
    """A drained connection with no view outstanding holds no slab and no page."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("size", [4 * KiB, 64 * KiB, MiB])
    async def test_copying(self, size: int) -> None:
        blobs = [payload(size, seed=i) for i in range(40)]
        pinned: list[int] = []

        def check(sinks: list[Sink]) -> None:
            pinned.extend(s.transport.stats.bytes_pinned for s in sinks)

        sinks, stats = await serve(blobs, ZCConfig(zerocopy="never"), zerocopy=False,
                                 check=check)
        assert sorted(s.hasher.hexdigest() for s in sinks) == sorted(map(sha, blobs))
        assert stats.slabs_in_use == 0, stats
        assert stats.bytes_pinned == 0 and pinned == [0] * len(blobs)

    @pytest.mark.asyncio
    async def test_connections_share_slabs(self) -> None:
        # Views released in data_received: each pump gives its slab back,
        # and the next connection's pump takes the same one (still cached).
        blobs = [payload(MiB, seed=50 + i) for i in range(40)]
        sinks, stats = await serve(blobs, ZCConfig(zerocopy="never"), zerocopy=False)
        assert sorted(s.hasher.hexdigest() for s in sinks) == sorted(map(sha, blobs))
        assert stats.slabs_in_use == 0, stats
        assert stats.slab_bytes <= 8 * MiB, stats  # not one slab per connection

    @pytest.mark.asyncio
    async def test_free_slabs_follow_recent_demand(self) -> None:
        # 30 connections whose views are held need 30 slabs at once; once
        # they are released and the process is quiet, demand halves every
        # second and the store gives the slabs back.
        blobs = [payload(MiB, seed=60 + i) for i in range(30)]

        async def main() -> tuple[aiozc.ZCMemoryStats, aiozc.ZCMemoryStats,
                                  aiozc.ZCMemoryStats]:
            before = aiozc.memory_stats()
            held: list[aiozc.ZCMemoryStats] = []

            def release(sinks: list[Sink]) -> None:
                held.append(aiozc.memory_stats())
                for sink in sinks:
                    while sink.views:
                        sink.views.pop().release()

            await serve(blobs, ZCConfig(zerocopy="never"), zerocopy=False, hold=True,
                        settle=0.1, check=release)
            await asyncio.sleep(2.5)
            return before, held[0], aiozc.memory_stats()

        before, during, after = await main()
        assert during.slabs_in_use >= 30, during
        assert after.slabs_in_use == 0, after
        # At least two half-lives passed: this store keeps at most a quarter
        # of its peak (and its floor of 2).  memory_stats() counts the free
        # slabs of every store in the process, one per slab size, and those
        # that earlier tests made keep their floor: in a full run the uvloop
        # case found 12 free before it began (7 in the asyncio case) and
        # ended with 19, over a fixed bound of 15; alone it ends with 7-15.
        assert after.slabs_free <= before.slabs_free + during.slabs_in_use // 4 + 2, (
            before, during, after)
        assert after.slabs_returned > during.slabs_returned, (during, after)

    @pytest.mark.asyncio
    async def test_small_connections_map_nothing(self) -> None:
        # auto copies a connection's first probe_after_bytes untimed: 40
        # connections of 256 KiB from a MSG_ZEROCOPY peer never probe, so
        # none of them maps its window (no socket VMA, no page mapped).
        blobs = [payload(256 * KiB, seed=300 + i) for i in range(40)]
        seen: dict[str, Any] = {}

        def check(sinks: list[Sink]) -> None:
            seen["mapped"] = sum(s.transport.stats.bytes_mapped for s in sinks)
            seen["reasons"] = {s.transport.stats.fallback_reason for s in sinks}
            with open("/proc/self/maps") as f:
                seen["socket_maps"] = sum("socket:[" in line for line in f)

        sinks, _ = await serve(blobs, ZCConfig(), zerocopy=True, check=check)
        assert sorted(s.hasher.hexdigest() for s in sinks) == sorted(map(sha, blobs))
        assert seen["mapped"] == 0 and seen["socket_maps"] == 0, seen
        assert all("copies the first" in str(r) for r in seen["reasons"]), seen

    @pytest.mark.asyncio
    async def test_mapping(self) -> None:
        blobs = [payload(2 * MiB, seed=100 + i) for i in range(12)]
        seen: dict[str, int] = {}

        def check(sinks: list[Sink]) -> None:
            seen["mapped"] = sum(s.transport.stats.bytes_mapped for s in sinks)
            seen["window_rss"] = window_rss()
            seen["pinned"] = sum(s.transport.stats.bytes_pinned for s in sinks)

        sinks, stats = await serve(blobs, ZCConfig(zerocopy="always"), zerocopy=True,
                                 check=check)
        assert sorted(s.hasher.hexdigest() for s in sinks) == sorted(map(sha, blobs))
        assert seen["mapped"] > len(blobs) * MiB, seen  # pages really mapped
        # ... and, the connections idle with every view released, none of
        # them is resident any more: zapped when they went idle.
        assert seen["window_rss"] == 0, seen
        assert seen["pinned"] == 0 and stats.slabs_in_use == 0, (seen, stats)


class TestLoopWideBound:
    """set_memory_limit bounds what views pin over every connection of a loop."""

    @pytest.mark.asyncio
    async def test_copy_policy_holds_the_bound(self) -> None:
        limit = 4 * MiB
        blobs = [payload(MiB, seed=200 + i) for i in range(16)]

        async def main() -> tuple[list[Sink], aiozc.ZCMemoryStats]:
            aiozc.set_memory_limit(limit)
            try:
                return await serve(blobs, ZCConfig(zerocopy="never"), zerocopy=False,
                                   hold=True)
            finally:
                aiozc.set_memory_limit(None)

        sinks, stats = await main()
        assert sorted(s.hasher.hexdigest() for s in sinks) == sorted(map(sha, blobs))
        assert stats.peak_bytes_pinned <= limit, stats
        assert stats.exhausted_receives > 0, stats  # the rest went to heap copies
        for sink in sinks:
            for view in sink.views:
                view.release()

    @pytest.mark.asyncio
    async def test_pause_policy_waits_for_any_release(self) -> None:
        limit = 4 * MiB
        blobs = [payload(MiB, seed=300 + i) for i in range(12)]
        config = ZCConfig(zerocopy="never", on_exhausted="pause")

        async def main() -> tuple[list[Sink], aiozc.ZCMemoryStats, int]:
            aiozc.set_memory_limit(limit)
            sinks: list[Sink] = []

            def factory() -> Sink:
                sink = Sink(hold=True)
                sinks.append(sink)
                return sink

            server = await aiozc.create_server(factory, "127.0.0.1", 0, config=config)
            port = server.sockets[0].getsockname()[1]
            stop = threading.Event()
            thread = threading.Thread(target=_peers, args=(port, blobs, False, stop),
                                      daemon=True)
            thread.start()
            total = sum(map(len, blobs))
            try:
                # The application holds everything: reading stops at the bound.
                for _ in range(1000):
                    if aiozc.memory_stats().exhausted_receives:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)
                stalled = aiozc.memory_stats()
                assert stalled.bytes_pinned <= limit, stalled
                assert sum(s.received for s in sinks) < total
                # Releasing views on some connections lets every one go on.
                released = 0
                for _ in range(3000):
                    for sink in sinks:
                        while sink.views:
                            released += 1
                            sink.views.pop().release()
                    if sum(s.received for s in sinks) >= total and len(sinks) == len(blobs):
                        break
                    await asyncio.sleep(0.01)
                stats = aiozc.memory_stats()
            finally:
                aiozc.set_memory_limit(None)
                stop.set()
                await asyncio.get_running_loop().run_in_executor(None, thread.join, 30)
                server.close()
                for sink in sinks:
                    sink.transport.abort()
                await server.wait_closed()
            return sinks, stats, released

        sinks, stats, released = await main()
        assert released > 0
        assert sorted(s.hasher.hexdigest() for s in sinks) == sorted(map(sha, blobs))
        assert stats.peak_bytes_pinned <= limit, stats


# The child programs' MSG_ZEROCOPY peer (a thread sending DATA) and sink.
CHILD_PEER_AND_SINK = """
def peer(listener):
    conn, _ = listener.accept()
    with conn:
        sender = ZeroCopySender(conn, zerocopy=True)
        sender.send(DATA)
        sender.flush()
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(30)
        while conn.recv(65536):
            pass

class Sink(aiozc.ZCProtocol):
    def __init__(self):
        self.got = bytearray()
        self.done = asyncio.get_running_loop().create_future()
    def data_received(self, data):
        with data:
            self.got += data
    def connection_lost(self, exc):
        self.done.set_result(exc)
"""

MMAP_FAILS = """
import asyncio, resource, socket, sys, threading
import aiozc
from aiozc.testing import ZeroCopySender

DATA = bytes(range(256)) * 8192   # 2 MiB

""" + CHILD_PEER_AND_SINK + """
async def main():
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=peer, args=(listener,), daemon=True).start()
    # Room for Python, not for a 64 MiB window: its mmap() fails (ENOMEM).
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (48 << 20), resource.RLIM_INFINITY))
    config = aiozc.ZCConfig(zerocopy="always", window_size=64 << 20)
    transport, proto = await aiozc.create_connection(
        Sink, "127.0.0.1", listener.getsockname()[1], config=config)
    exc = await proto.done
    stats = transport.stats
    assert exc is None, exc
    assert bytes(proto.got) == DATA
    assert stats.bytes_mapped == 0, stats
    assert stats.mode == "copy", stats
    assert "mmap() of the socket" in stats.fallback_reason, stats.fallback_reason
    assert "Cannot allocate memory" in stats.fallback_reason, stats.fallback_reason
    print("fell back:", stats.fallback_reason)

if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


class TestWindowCannotBeMapped:
    """mmap() of the window fails (address space limit): that connection
    copies, says why, and nothing crashes."""

    def test_fallback_reason(self, loop_name: str) -> None:
        proc = subprocess.run([sys.executable, "-c", MMAP_FAILS, loop_name],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        assert "fell back: mmap() of the socket failed" in proc.stdout, proc.stdout


# getsockopt(TCP_ZEROCOPY_RECEIVE) refused as a container's seccomp profile
# (or an LSM) refuses it: a seccomp filter in the child process makes
# getsockopt(..., optname 35, ...) fail with the errno given.  x86_64 only
# (the syscall number); the filter checks nothing else.
SECCOMP_REFUSES = """
import asyncio, ctypes, errno, socket, struct, sys, threading
import aiozc
from aiozc.testing import ZeroCopySender

DATA = bytes(range(256)) * 16384   # 4 MiB: past auto's first MiB too

def refuse_zerocopy_getsockopt(err):
    LD, JEQ, RET = 0x20, 0x15, 0x06                # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    ALLOW, ERRNO = 0x7FFF0000, 0x00050000
    prog = [(LD, 0, 0, 0), (JEQ, 0, 3, 55),        # nr == getsockopt (x86_64)
            (LD, 0, 0, 32), (JEQ, 0, 1, 35),       # optname == TCP_ZEROCOPY_RECEIVE
            (RET, 0, 0, ERRNO | err), (RET, 0, 0, ALLOW)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0         # PR_SET_NO_NEW_PRIVS
    fprog = Prog(len(prog), ctypes.addressof(code))
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER

""" + CHILD_PEER_AND_SINK + """
async def main(policy):
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=peer, args=(listener,), daemon=True).start()
    transport, proto = await aiozc.create_connection(
        Sink, "127.0.0.1", listener.getsockname()[1],
        config=aiozc.ZCConfig(zerocopy=policy, probe_after_bytes=1 << 20))
    exc = await proto.done
    stats = transport.stats
    assert exc is None, exc
    assert bytes(proto.got) == DATA
    assert stats.bytes_mapped == 0 and stats.mode == "copy", stats
    print(policy, "fell back:", stats.fallback_reason)

refuse_zerocopy_getsockopt(getattr(errno, sys.argv[2]))
for policy in ("always", "auto"):
    if sys.argv[1] == "uvloop":
        import uvloop
        uvloop.run(main(policy))
    else:
        asyncio.run(main(policy))
"""


class TestZerocopyRefusedBySeccomp:
    """A seccomp profile that refuses getsockopt(TCP_ZEROCOPY_RECEIVE)
    (EPERM, or ENOSYS): the connection copies, says why, loses nothing."""

    @pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter uses x86_64's syscall number")
    @pytest.mark.parametrize("err", ["EPERM", "ENOSYS", "EACCES"])
    def test_copies_and_says_why(self, loop_name: str, err: str) -> None:
        proc = subprocess.run([sys.executable, "-c", SECCOMP_REFUSES, loop_name, err],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        reason = f"getsockopt(TCP_ZEROCOPY_RECEIVE) failed with {os.strerror(getattr(errno, err))}"
        for policy in ("always", "auto"):
            assert f"{policy} fell back: {reason}" in proc.stdout, proc.stdout


ANYIO_BACKENDS = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param("trio", id="trio"),
]


class TestIdleAnyioStream:
    """An anyio stream waiting on a drained socket holds no slab and no page."""

    @pytest.mark.anyio
    @pytest.mark.parametrize("anyio_backend", ANYIO_BACKENDS)
    @pytest.mark.parametrize("policy", ["always", "never"])
    async def test_waiting_stream_holds_nothing(self, policy: str) -> None:
        import anyio

        import aiozc.anyio

        data = payload(2 * MiB, seed=400)
        listener = socket.create_server(("127.0.0.1", 0))
        stop = threading.Event()

        def peer() -> None:
            conn, _ = listener.accept()
            with conn:
                sender = ZeroCopySender(conn, zerocopy=True)
                sender.send(data)
                sender.flush()
                stop.wait(30)

        thread = threading.Thread(target=peer, daemon=True)
        thread.start()
        hasher = hashlib.sha256()
        try:
            config = ZCConfig(zerocopy=policy)  # type: ignore[arg-type]
            async with await aiozc.anyio.connect_tcp(
                "127.0.0.1", listener.getsockname()[1], config=config
            ) as stream:
                got = 0
                while got < len(data):
                    with await stream.receive_view() as view:
                        hasher.update(view)
                        got += len(view)
                with anyio.move_on_after(0.2):
                    await stream.receive_view()  # waits: the peer is idle
                stats = stream.stats
                idle_window = window_rss()
                memory = aiozc.memory_stats()
        finally:
            stop.set()
            thread.join(10)
            listener.close()
        assert hasher.hexdigest() == sha(data)
        if policy == "always":
            assert stats.bytes_mapped > MiB, stats
        assert stats.bytes_pinned == 0, stats
        assert idle_window == 0
        assert memory.slabs_in_use == 0, memory

    def test_quiet_process_gives_slabs_back(self) -> None:
        # anyio on trio: the streams start a trio system task that gives free
        # slabs back while the run is quiet (no stream, no I/O).
        import trio

        import aiozc.anyio

        blobs = [payload(MiB, seed=500 + i) for i in range(16)]
        listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        stop = threading.Event()
        thread = threading.Thread(target=_serve_blobs, args=(listener, blobs, stop), daemon=True)
        thread.start()

        async def burst() -> tuple[aiozc.ZCMemoryStats, aiozc.ZCMemoryStats, list[str]]:
            before = aiozc.memory_stats()
            port = listener.getsockname()[1]
            streams = [await aiozc.anyio.connect_tcp(
                "127.0.0.1", port, config=ZCConfig(zerocopy="never")) for _ in blobs]
            held: list[list[memoryview]] = [[] for _ in blobs]
            digests = []
            for stream, views in zip(streams, held):
                got = 0
                while got < MiB:
                    view = await stream.receive_view()
                    views.append(view)  # held: every connection keeps its slabs
                    got += len(view)
            during = aiozc.memory_stats()
            for stream, views in zip(streams, held):
                hasher = hashlib.sha256()
                for view in views:
                    hasher.update(view)
                    view.release()
                digests.append(hasher.hexdigest())
                await stream.aclose()
            return before, during, digests

        async def burst_then_quiet() -> tuple[aiozc.ZCMemoryStats, aiozc.ZCMemoryStats,
                                              list[str], aiozc.ZCMemoryStats]:
            before, during, digests = await burst()
            await trio.sleep(2.5)  # quiet: two halvings of demand
            return before, during, digests, aiozc.memory_stats()

        try:
            before, during, digests, after = trio.run(burst_then_quiet)
        finally:
            stop.set()
            thread.join(10)
            listener.close()
        assert sorted(digests) == sorted(map(sha, blobs))
        assert during.slabs_in_use >= len(blobs), during
        assert after.slabs_in_use == 0, after
        assert after.slabs_free <= before.slabs_free + during.slabs_in_use // 4 + 2, (
            before, during, after)
        assert after.slabs_returned > during.slabs_returned, (during, after)


def _serve_blobs(listener: socket.socket, blobs: list[bytes], stop: threading.Event) -> None:
    """Accept one connection per blob, send it, stay connected until ``stop``."""
    conns = []
    try:
        for blob in blobs:
            conn, _ = listener.accept()
            conns.append(conn)
            conn.sendall(blob)
        stop.wait(60)
    finally:
        for conn in conns:
            conn.close()
