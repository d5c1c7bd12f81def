"""Hostile applications, run in a child process (``conftest.isolated``).

``python -m faults._scenarios NAME --loop asyncio|uvloop --link JSON ...``
runs scenario ``NAME`` once per link, each on a fresh event loop, then
checks that every fd and socket mapping it opened is gone, and prints one
JSON line: ``{"ok": true, "tally": {...}, "details": {...}}``.

These are the scenarios in which a bug in aiozc would not fail an assertion
but kill the process: an application that touches views after the
connection closed, after the peer vanished, after the loop closed, from
other threads, or keeps slices of them while the window is recycled under
them thousands of times.  A SIGBUS or SIGSEGV shows in the parent as the
child's death by that signal.  Every view is checked again (CRC32 against
the value taken when it arrived, and against the peer's stream) each time
it is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import json
import mmap
import random
import socket
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

import aiozc
from aiozc import ZCConfig, ZCProtocol, ZCTransport

from ._harness import (
    LONG,
    Checker,
    KiB,
    Link,
    MiB,
    PeerThread,
    Stream,
    connect,
    count_fds,
    describe_transport,
    count_socket_maps,
    finish,
    link_down,
    link_up,
    payload,
    reset,
    send_stream,
    sha,
)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop,
    "uvloop": uvloop.new_event_loop,
}

SCENARIOS: dict[str, Callable[[Link, str, dict[str, int]], dict[str, Any]]] = {}


def scenario(fn: Callable[[Link, str, dict[str, int]], dict[str, Any]]) -> Any:
    SCENARIOS[fn.__name__] = fn
    return fn


def maps_pages(link: Link) -> bool:
    return link.mtu >= 4096 + 52


class Held:
    """A view the application keeps, with what it must read: its CRC32 and
    its offset in the peer's stream."""

    __slots__ = ("view", "crc", "offset")

    def __init__(self, view: memoryview, offset: int) -> None:
        self.view = view
        self.crc = zlib.crc32(view)
        self.offset = offset

    def check(self) -> None:
        assert zlib.crc32(self.view) == self.crc, f"view at {self.offset} changed"


class App(ZCProtocol):
    """Checks every view against the peer's stream; keeps those ``keep`` says."""

    def __init__(self, seed: int, keep: Callable[[App, memoryview], bool]) -> None:
        self.checker = Checker(seed)
        self.keep = keep
        self.held: list[Held] = []
        self.views_seen = 0
        self.transport: Any = None
        self.eof = False
        self.exc: BaseException | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        assert isinstance(data, memoryview) and data.readonly
        offset = self.checker.received
        self.checker.feed(data)
        self.views_seen += 1
        if self.keep(self, data):
            self.held.append(Held(data, offset))
        else:
            data.release()

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc
        if not self.lost.done():
            self.lost.set_result(None)

    def check_held(self) -> None:
        for held in self.held:
            held.check()

    def release_held(self, rnd: random.Random) -> None:
        rnd.shuffle(self.held)
        for held in self.held:
            held.check()
            held.view.release()
        self.held.clear()


async def open_app(link: Link, peer: PeerThread, seed: int, config: ZCConfig,
                   keep: Callable[[App, memoryview], bool]) -> tuple[ZCTransport, App]:
    sock = await connect(link, peer.port)
    transport, app = await aiozc.create_connection(lambda: App(seed, keep), sock=sock,
                                                   config=config)
    assert isinstance(transport, ZCTransport) and isinstance(app, App)
    return transport, app


async def lost(app: App, timeout: float = 20) -> None:
    """Wait for connection_lost; a hang fails with the transport's state."""
    try:
        await asyncio.wait_for(asyncio.shield(app.lost), timeout)
    except TimeoutError:
        raise AssertionError(
            f"connection_lost never came ({app.checker.received} bytes received): "
            f"{describe_transport(app.transport)}") from None


async def join(peer: PeerThread, timeout: float = 20) -> Any:
    # Within the scenario's own 60 s: a hung peer fails with its stack.
    return await asyncio.get_running_loop().run_in_executor(None, peer.join, timeout)


def _never(app: App, view: memoryview) -> bool:
    return False


def serve_stream(seed: int, total: int, end: str = "finish") -> Callable[[socket.socket], str]:
    def serve(conn: socket.socket) -> str:
        digest = send_stream(conn, seed, total, write_seed=seed)
        if end == "finish":
            finish(conn)
        elif end == "reset":
            reset(conn)
        return digest

    return serve


def run_on(loop: str, coro: Awaitable[Any]) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(asyncio.wait_for(coro, 60))


# -- scenarios ---------------------------------------------------------------------


@scenario
def hold_forever(link: Link, loop: str, tally: dict[str, int]) -> dict[str, Any]:
    """Hold every view, past the pinned bound: the rest arrives in heap copies;
    then read them all again after the connection and the loop are gone."""
    total = (96 if LONG else 24) * MiB
    config = ZCConfig(zerocopy="always", window_size=2 * MiB, region_size=256 * KiB,
                      max_pinned_bytes=4 * MiB)
    pinned: list[int] = []

    def keep(app: App, view: memoryview) -> bool:
        pinned.append(app.transport.stats.bytes_pinned)
        return True

    async def main() -> tuple[App, aiozc.ZCStats]:
        peer = PeerThread(link, serve_stream(61, total)).start()
        transport, app = await open_app(link, peer, 61, config, keep)
        await lost(app)
        await join(peer)
        return app, transport.stats

    app, stats = run_on(loop, main())
    app.checker.check(total)
    assert app.eof and app.exc is None
    # The loop is closed, the socket too, the peer gone: every view reads.
    app.check_held()
    assert sha(b"".join(h.view for h in app.held)) == sha(payload(total, 61))
    assert stats.exhausted_receives > 0, stats
    bound = config.max_pinned_bytes + config.region_size + config.receive_size
    assert max(pinned) <= bound, (max(pinned), bound)
    if maps_pages(link):
        assert stats.bytes_mapped > 0, stats
    app.release_held(random.Random(1))
    gc.collect()
    assert count_socket_maps() == 0
    tally["bytes_verified"] += 2 * total
    tally["connections"] += 1
    return {"exhausted_receives": stats.exhausted_receives, "max_pinned": max(pinned),
            "mapped": stats.bytes_mapped}


@scenario
def hold_forever_pause(link: Link, loop: str, tally: dict[str, int]) -> dict[str, Any]:
    """on_exhausted='pause': held views stop reading (within the bound) until
    released; then everything arrives."""
    total = (64 if LONG else 16) * MiB
    config = ZCConfig(zerocopy="always", window_size=2 * MiB, region_size=256 * KiB,
                      max_pinned_bytes=2 * MiB, on_exhausted="pause")
    holding = [True]

    def keep(app: App, view: memoryview) -> bool:
        return holding[0]

    async def main() -> tuple[App, aiozc.ZCStats, int, int]:
        peer = PeerThread(link, serve_stream(62, total)).start()
        transport, app = await open_app(link, peer, 62, config, keep)
        # Wait until reading stops for want of memory.
        last = -1
        while app.checker.received != last:
            last = app.checker.received
            await asyncio.sleep(0.2)
        stalled_at = app.checker.received
        assert not app.lost.done() and stalled_at < total
        pinned = transport.stats.bytes_pinned
        assert pinned <= config.max_pinned_bytes + config.region_size + config.receive_size
        # Release everything (in random order) and stop holding: it resumes.
        holding[0] = False
        app.release_held(random.Random(2))
        await lost(app)
        await join(peer)
        return app, transport.stats, stalled_at, pinned

    app, stats, stalled_at, pinned = run_on(loop, main())
    app.checker.check(total)
    assert stats.exhausted_receives > 0 and stats.views_outstanding == 0
    tally["bytes_verified"] += total
    tally["connections"] += 1
    tally["faults"] += 1
    return {"stalled_at": stalled_at, "pinned_when_stalled": pinned}


@scenario
def random_release(link: Link, loop: str, tally: dict[str, int]) -> dict[str, Any]:
    """Keep up to 64 views and release a random one (or several) per
    arrival, some from worker threads, while a small window is recycled."""
    total = (128 if LONG else 32) * MiB
    config = ZCConfig(zerocopy="always", window_size=2 * MiB, region_size=128 * KiB)
    rnd = random.Random(3)
    workers = concurrent.futures.ThreadPoolExecutor(3)
    released = [0]

    def release(held: Held) -> None:
        held.check()
        held.view.release()

    class Keeper(App):
        def data_received(self, data: memoryview) -> None:  # type: ignore[override]
            offset = self.checker.received
            self.checker.feed(data)
            self.views_seen += 1
            self.held.append(Held(data, offset))
            while len(self.held) > rnd.randint(0, 64):
                held = self.held.pop(rnd.randrange(len(self.held)))
                released[0] += 1
                if rnd.random() < 0.2:
                    workers.submit(release, held)
                else:
                    release(held)

    async def main() -> tuple[App, aiozc.ZCStats]:
        peer = PeerThread(link, serve_stream(63, total)).start()
        sock = await connect(link, peer.port)
        transport, app = await aiozc.create_connection(lambda: Keeper(63, _never), sock=sock,
                                                       config=config)
        assert isinstance(app, Keeper) and isinstance(transport, ZCTransport)
        await lost(app)
        await join(peer)
        return app, transport.stats

    try:
        app, stats = run_on(loop, main())
    finally:
        workers.shutdown(wait=True)
    app.checker.check(total)
    app.release_held(rnd)
    gc.collect()
    assert count_socket_maps() == 0
    if maps_pages(link):
        assert stats.bytes_mapped > 0 and stats.regions_recycled > 8, stats
    tally["bytes_verified"] += total
    tally["connections"] += 1
    return {"views": app.views_seen, "released": released[0],
            "regions_recycled": stats.regions_recycled}


@scenario
def release_after_close(link: Link, loop: str, tally: dict[str, int]) -> dict[str, Any]:
    """Hold views across every way a connection can end (FIN, RST, our own
    abort mid-stream, and on veth a peer that vanished), then touch them
    after the transport closed, after the loop closed, after the transport
    was collected, and release them from worker threads in random order."""
    ends = ["fin", "rst", "abort"] + (["vanish"] if link.netns else [])
    total = (32 if LONG else 8) * MiB
    config = ZCConfig(zerocopy="always", window_size=4 * MiB, region_size=256 * KiB)
    kept: list[tuple[str, App]] = []
    verified = 0

    def keep(app: App, view: memoryview) -> bool:
        return app.views_seen % 3 == 0

    async def one(end: str) -> App:
        seed = 64 + len(kept)
        if end == "vanish":
            peer = PeerThread(link, _vanishing_peer(link, seed, total), may_be_cut_off=True)
        else:
            peer = PeerThread(link, serve_stream(seed, total, "reset" if end == "rst" else "finish"),
                              may_be_cut_off=end == "abort")
        peer.start()
        try:
            transport, app = await open_app(link, peer, seed, config, keep)
            if end == "abort":
                while app.checker.received < total // 2:
                    await asyncio.sleep(0.001)
                transport.abort()
            elif end == "vanish":
                # The application's timeout: 0.3 s of silence, then abort.
                last = -1
                while app.checker.received != last:
                    last = app.checker.received
                    await asyncio.sleep(0.3)
                transport.abort()
            await lost(app)
            # Touch the views in connection_lost's wake, socket closed.
            app.check_held()
        finally:
            if end == "vanish":
                await asyncio.get_running_loop().run_in_executor(None, link_up, link)
        await join(peer)
        return app

    async def main() -> None:
        for end in ends:
            kept.append((end, await one(end)))

    run_on(loop, main())
    # The loop is closed now; the transports are unreachable but for the views.
    gc.collect()
    results = {}
    with concurrent.futures.ThreadPoolExecutor(4) as workers:
        rnd = random.Random(4)
        futures = []
        for end, app in kept:
            # (Exact counts for the RST case are test_peers.py's job.)
            app.checker.check({"fin": total, "vanish": total // 2}.get(end))
            if end == "abort":
                assert app.checker.received >= total // 2
            if end == "rst":
                assert isinstance(app.exc, ConnectionResetError), app.exc
            app.check_held()
            verified += app.checker.received + sum(len(h.view) for h in app.held)
            results[end] = {"received": app.checker.received, "held": len(app.held)}
            held, app.held = app.held, []
            app.transport = None
            rnd.shuffle(held)
            futures += [workers.submit(_check_and_release, h) for h in held]
        for future in futures:
            future.result()
    kept.clear()
    gc.collect()
    assert count_socket_maps() == 0
    tally["bytes_verified"] += verified
    tally["connections"] += len(ends)
    tally["faults"] += len(ends)
    return results


def _check_and_release(held: Held) -> None:
    held.check()
    held.view.release()


def _vanishing_peer(link: Link, seed: int, total: int) -> Callable[[socket.socket], None]:
    def serve(conn: socket.socket) -> None:
        send_stream(conn, seed, total // 2, write_seed=seed)
        link_down(link)  # the RST of the close below is lost
        reset(conn)

    return serve


@scenario
def slices_across_receives(link: Link, loop: str, tally: dict[str, int]) -> dict[str, Any]:
    """Keep a slice of every 25th view (releasing the view itself) and check
    it 1,000 receive calls later; a tiny receive size makes thousands of
    receives and a small window recycles its regions hundreds of times
    meanwhile.  A few slices are kept to the very end, past the connection
    and the loop."""
    total = (128 if LONG else 32) * MiB
    # ~40 slices are alive at a time, each pinning its 64 KiB region: 128
    # regions leave room to map while they are held.
    config = ZCConfig(zerocopy="always", window_size=8 * MiB, region_size=64 * KiB,
                      receive_size=8 * KiB, copybuf_size=4 * KiB)
    pending: list[tuple[int, memoryview, bytes, Any]] = []  # (due, slice, expected, exporter)
    forever: list[tuple[memoryview, bytes]] = []
    checked = [0]
    stream = Stream(65)

    class Slicer(App):
        def data_received(self, data: memoryview) -> None:  # type: ignore[override]
            offset = self.checker.received
            expected = stream.take(len(data))
            self.checker.feed(data)
            self.views_seen += 1
            n = self.views_seen
            calls = self.transport.stats.receive_calls
            while pending and pending[0][0] <= calls:
                _, piece, want, exporter = pending.pop(0)
                assert piece == want, f"slice changed (view {n})"
                piece.release()
                # The exporter refuses a new export once its view is gone.
                try:
                    memoryview(exporter)
                except BufferError:
                    pass
                else:
                    raise AssertionError("a released chunk exported again")
                checked[0] += 1
            if n % 25 == 0 and len(data) > 8:
                a = random.Random(n).randrange(len(data) - 4)
                piece = data[a:a + 4 + n % 300]
                entry = (calls + 1000, piece, expected[a:a + 4 + n % 300], data.obj)
                if n % 1000 == 0:
                    forever.append((piece, entry[2]))
                else:
                    pending.append(entry)
            data.release()

    async def main() -> tuple[App, aiozc.ZCStats]:
        peer = PeerThread(link, serve_stream(65, total)).start()
        sock = await connect(link, peer.port)
        transport, app = await aiozc.create_connection(lambda: Slicer(65, _never),
                                                       sock=sock, config=config)
        assert isinstance(app, Slicer) and isinstance(transport, ZCTransport)
        await lost(app)
        await join(peer)
        return app, transport.stats

    app, stats = run_on(loop, main())
    app.checker.check(total)
    # Thousands of receives: at least 32 MiB / 32 KiB (a skip-hint recv
    # fills up to a copy slab of four receive_size), ~3,000 in practice.
    assert stats.receive_calls >= total // (4 * config.receive_size), stats
    assert checked[0] >= 10, checked
    if maps_pages(link):
        assert stats.bytes_mapped > 0 and stats.regions_recycled > 50, stats
    for piece, want in forever:
        assert piece == want
    for _, piece, want, _ in pending:
        assert piece == want
        piece.release()
    pending.clear()
    for piece, _ in forever:
        piece.release()
    forever.clear()
    gc.collect()
    assert count_socket_maps() == 0
    tally["bytes_verified"] += total
    tally["connections"] += 1
    return {"receive_calls": stats.receive_calls, "slices_checked": checked[0],
            "regions_recycled": stats.regions_recycled, "mapped": stats.bytes_mapped}


@scenario
def selftest_sigbus(link: Link, loop: str, tally: dict[str, int]) -> dict[str, Any]:
    """Not aiozc: read a page of a socket window that nothing mapped.  The
    kernel must kill this process with SIGBUS, which shows that the parent
    really detects the crash these scenarios guard against."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = socket.create_connection(server.getsockname())
        window = mmap.mmap(sock.fileno(), 1 << 20, mmap.MAP_SHARED, mmap.PROT_READ)
        print("touching", flush=True)
        return {"byte": window[0]}  # not reached


# -- main --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=sorted(SCENARIOS))
    parser.add_argument("--loop", choices=sorted(LOOPS), required=True)
    parser.add_argument("--link", action="append", default=[], type=Link.from_json)
    args = parser.parse_args()
    fn = SCENARIOS[args.name]
    # Process-wide fds first (libuv's signal pipe), then the baseline.
    run_on(args.loop, asyncio.sleep(0))
    gc.collect()
    fds, windows = count_fds(), count_socket_maps()
    tally = {"bytes_verified": 0, "connections": 0, "faults": 0, "leak_checks": 0}
    details = {}
    started = time.monotonic()
    links = args.link if args.name != "selftest_sigbus" else args.link[-1:]
    for link in links:
        details[link.name] = fn(link, args.loop, tally)
        gc.collect()
        after = count_fds(), count_socket_maps()
        assert after == (fds, windows), (
            f"{args.name} over {link.name}: leak: (fds, socket mappings) "
            f"were {(fds, windows)}, now {after}")
        tally["leak_checks"] += 1
    print(json.dumps({"ok": True, "tally": tally, "details": details,
                      "seconds": round(time.monotonic() - started, 2)}))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
