"""Hypothesis-driven runs: random write sizes, split points, view holding.

Each example is one connection over a link hypothesis picks (veth MTU 1500,
veth MTU 4148 or loopback MTU 65536), to a peer that sends in the writes
hypothesis chose, with MSG_ZEROCOPY or plain sends, into a receiver
configured one of several ways (mapping always, small windows and pinned
bounds, the pause policy, 'auto' with short probes, copying only).

* ``test_views``: a ZCProtocol that holds each view according to a drawn
  pattern (release at once, hold for a few milliseconds, keep a random
  slice of it, or hold it to the end), checking each held view again when
  it lets go;
* ``test_reader_splits``: a stream reader cutting the stream at drawn split
  points with every read method.

Both check every byte against the peer's stream, and that each example
leaves no fd or socket mapping behind.  Both loops (asyncio tests).
``AIOZC_FAULTS_LONG=1`` runs ten times as many examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import socket
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

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
    count_socket_maps,
    finish,
    send_writes,
    socket_inq,
)
from .conftest import Tally

EXAMPLES = 600 if LONG else 60

SETTINGS = settings(
    max_examples=EXAMPLES,
    # Shrinking replays failing examples, and a hang costs STALL seconds a
    # replay: only the long runs shrink.  print_blob reproduces any failure.
    phases=list(Phase) if LONG else [p for p in Phase if p is not Phase.shrink],
    deadline=None,
    database=None,  # nothing written into the repository
    print_blob=True,  # a failure prints how to reproduce it (@reproduce_failure)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)

CONFIGS: dict[str, ZCConfig] = {
    "always": ZCConfig(zerocopy="always"),
    "small-window": ZCConfig(zerocopy="always", window_size=512 * KiB, region_size=64 * KiB,
                             receive_size=32 * KiB, copybuf_size=4 * KiB,
                             max_pinned_bytes=MiB),
    "pause": ZCConfig(zerocopy="always", window_size=MiB, region_size=128 * KiB,
                      max_pinned_bytes=512 * KiB, on_exhausted="pause"),
    "auto": ZCConfig(zerocopy="auto", probe_bytes=256 * KiB, reprobe_bytes=MiB),
    "never": ZCConfig(zerocopy="never", receive_size=16 * KiB),
    "no-copybuf": ZCConfig(zerocopy="always", copybuf_size=0),
}

# Write sizes: anything, with page and segment boundaries over-represented.
WRITE = st.one_of(
    st.integers(1, 300_000),
    st.sampled_from([1, 2, 1447, 1448, 1449, 4095, 4096, 4097, 8192, 65535, 65536, 65537,
                     256 * KiB, MiB]),
)
WRITES = st.lists(WRITE, min_size=1, max_size=24).filter(lambda w: sum(w) <= 6 * MiB)

HOLD = st.sampled_from(["release", "release", "hold-ms", "slice", "end"])


class Holder(ZCProtocol):
    """Holds views as ``pattern`` says; checks each one again when releasing it."""

    def __init__(self, seed: int, pattern: list[str], may_hold_to_end: bool) -> None:
        self.checker = Checker(seed)
        self.pattern = pattern
        self.may_hold_to_end = may_hold_to_end
        self.rnd = random.Random(seed)
        self.to_end: list[tuple[memoryview, int]] = []
        self.timers = 0
        self.n = 0
        self.transport: Any = None
        self.exc: BaseException | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        assert isinstance(data, memoryview) and data.readonly and len(data) > 0
        self.checker.feed(data)
        action = self.pattern[self.n % len(self.pattern)]
        self.n += 1
        if action == "end" and not self.may_hold_to_end:
            action = "hold-ms"
        if action == "release":
            data.release()
        elif action == "hold-ms":
            self._later(data, zlib.crc32(data))
        elif action == "slice":
            a = self.rnd.randrange(len(data))
            b = self.rnd.randrange(a, len(data)) + 1
            piece = data[a:b]
            data.release()
            self._later(piece, zlib.crc32(piece))
        else:
            self.to_end.append((data, zlib.crc32(data)))

    def _later(self, view: memoryview, crc: int) -> None:
        self.timers += 1

        def release() -> None:
            assert zlib.crc32(view) == crc, "a held view changed"
            view.release()
            self.timers -= 1

        asyncio.get_running_loop().call_later(self.rnd.random() * 0.01, release)

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc
        if not self.lost.done():
            self.lost.set_result(None)


async def _join(peer: PeerThread) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, peer.join)


STALL = 10.0  # seconds without the expected progress: a hang, reported


def _state(transport: Any) -> str:
    sock = transport.get_extra_info("socket")
    try:
        inq = socket_inq(sock)
    except OSError:
        inq = -1
    return (f"{inq} bytes unread in the kernel, reading={transport.is_reading()}, "
            f"closing={transport.is_closing()}, stats={transport.get_extra_info('aiozc_stats')}")


def _no_spin(stats: Any, total: int, writes: list[int]) -> None:
    """Receiving costs a bounded number of system calls: a busy loop on a
    readable socket (millions of receive calls for a few megabytes) fails
    here even when the bytes do arrive in the end."""
    bound = 10 * (total // 1024 + len(writes)) + 1000
    assert stats.receive_calls <= bound, f"{stats.receive_calls} receive calls: {stats}"


def _leak_check(before: tuple[int, int]) -> None:
    gc.collect()
    after = count_fds(), count_socket_maps()
    assert after[0] <= before[0] and after[1] <= before[1], f"leak: {before} -> {after}"


@pytest.fixture
def links_by_name(all_links: list[Link]) -> list[Link]:
    return all_links


# Which link: an index into the links this machine has (veth1500, veth4148,
# lo65536; only the last where namespaces cannot be made).
LINK = st.integers(0, 2)


@pytest.mark.asyncio
@SETTINGS
@given(link_at=LINK, writes=WRITES, zerocopy=st.booleans(),
       config=st.sampled_from(sorted(CONFIGS)),
       pattern=st.lists(HOLD, min_size=1, max_size=16))
async def test_views(links_by_name: list[Link], tally: Tally, link_at: int,
               writes: list[int], zerocopy: bool, config: str, pattern: list[str]) -> None:
    link = links_by_name[link_at % len(links_by_name)]
    total = sum(writes)
    cfg = CONFIGS[config]
    seed = zlib.crc32(repr((writes, pattern)).encode())

    def serve(conn: socket.socket) -> str:
        digest = send_writes(conn, seed, writes, zerocopy=zerocopy)
        finish(conn)
        return digest

    async def main() -> tuple[Holder, aiozc.ZCStats]:
        peer = PeerThread(link, serve, may_be_cut_off=True).start()
        sock = await connect(link, peer.port)
        transport, proto = await aiozc.create_connection(
            lambda: Holder(seed, pattern, cfg.on_exhausted == "copy"), sock=sock, config=cfg)
        assert isinstance(transport, ZCTransport) and isinstance(proto, Holder)
        try:
            await asyncio.wait_for(asyncio.shield(proto.lost), STALL)
        except TimeoutError:
            state = _state(transport)
            transport.abort()  # a failed example leaves nothing open
            await _join(peer)
            raise AssertionError(
                f"stalled at {proto.checker.received} of {total} bytes: {state}") from None
        await _join(peer)
        while proto.timers:
            await asyncio.sleep(0.002)
        return proto, transport.stats

    gc.collect()
    before = count_fds(), count_socket_maps()
    proto, stats = await main()
    proto.checker.check(total)
    assert proto.exc is None, proto.exc
    assert stats.bytes_received == total
    _no_spin(stats, total, writes)
    for view, crc in proto.to_end:  # after the connection and the peer are gone
        assert zlib.crc32(view) == crc
        view.release()
    proto.to_end.clear()
    del proto
    _leak_check(before)
    tally.verified(total)


READS = st.sampled_from(["readexactly_view", "read_view", "readexactly", "read"])
SPLIT = st.one_of(st.integers(1, 400_000),
                  st.sampled_from([1, 4095, 4096, 4097, 65536, 128 * KiB, 256 * KiB + 1]))


# Found by this test: the reader stalls for good on the 8th read (the
# pinned bound is reached, the transport starves or spins; see
# test_regressions.py, bugs 2 and 3).
_FOUND_WRITES = [292581, 798, 1048576, 262144, 1447]
_FOUND_READS = [("read", 798), ("readexactly_view", 4096), ("read", 1), ("read", 509),
                ("read_view", 4095), ("readexactly_view", 4095), ("readexactly_view", 4096),
                ("readexactly", 262145), ("read", 65536), ("readexactly", 292581),
                ("readexactly", 2), ("readexactly", 6547)]


@pytest.mark.asyncio
@SETTINGS
@given(link_at=LINK, writes=WRITES, zerocopy=st.booleans(),
       config=st.sampled_from(sorted(CONFIGS)),
       reads=st.lists(st.tuples(READS, SPLIT), min_size=1, max_size=12))
@example(link_at=2, writes=_FOUND_WRITES, zerocopy=True, config="pause", reads=_FOUND_READS)
@example(link_at=1, writes=_FOUND_WRITES, zerocopy=False, config="pause", reads=_FOUND_READS)
async def test_reader_splits(links_by_name: list[Link], tally: Tally, link_at: int,
                       writes: list[int], zerocopy: bool, config: str,
                       reads: list[tuple[str, int]]) -> None:
    link = links_by_name[link_at % len(links_by_name)]
    total = sum(writes)
    cfg = CONFIGS[config]
    seed = zlib.crc32(repr((writes, reads)).encode())

    def serve(conn: socket.socket) -> str:
        digest = send_writes(conn, seed, writes, zerocopy=zerocopy)
        finish(conn)
        return digest

    async def main() -> int:
        peer = PeerThread(link, serve, may_be_cut_off=True).start()
        sock = await connect(link, peer.port)
        reader, writer = await aiozc.open_connection(sock=sock, config=cfg)
        try:
            got = await read_all(reader, writer)
        except BaseException:
            writer.transport.abort()  # a failed example leaves nothing open
            raise
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await _join(peer)
        return got

    async def read_all(reader: aiozc.ZCStreamReader, writer: asyncio.StreamWriter) -> int:
        # A watchdog, not a wait_for() per read: wait_for costs a task per
        # call, 97% of a 1-byte read's time, and hypothesis often draws
        # 1-byte reads of MiBs (a million reads: 15 s an example idle, and
        # a whole test past its timeout on a loaded machine).
        loop = asyncio.get_running_loop()
        at = [0, 0, ""]  # reads started, bytes got, the read in progress
        reading = asyncio.ensure_future(read_through(reader, at))
        last, since = list(at), loop.time()
        while not reading.done():
            await asyncio.wait([reading], timeout=0.5)
            if at != last:
                last, since = list(at), loop.time()
            elif loop.time() - since > STALL and not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
                raise AssertionError(
                    f"read {at[0]} ({at[2]}) stalled at {at[1]} of {total} bytes: "
                    f"{_state(writer.transport)}, reader {reader!r}")
        return reading.result()

    async def read_through(reader: aiozc.ZCStreamReader, at: list[Any]) -> int:
        expected = Stream(seed)
        got = 0
        i = 0
        while True:
            method, n = reads[i % len(reads)]
            i += 1
            at[0], at[2] = i, f"{method} {n}"
            try:
                result = await getattr(reader, method)(n)
            except asyncio.IncompleteReadError as exc:
                assert exc.partial == expected.take(len(exc.partial))
                got += len(exc.partial)
                break
            assert len(result) <= n
            if method.startswith("readexactly"):
                assert len(result) == n
            if not result:
                break
            if isinstance(result, memoryview):
                assert result.readonly
            assert result == expected.take(len(result)), f"read {i} ({method} {n})"
            got += len(result)
            at[1] = got
            if isinstance(result, memoryview):
                result.release()
        assert reader.at_eof()
        _no_spin(reader.stats, total, writes)
        return got

    gc.collect()
    before = count_fds(), count_socket_maps()
    got = await main()
    assert got == total
    _leak_check(before)
    tally.verified(total)
