"""Gathered frames: big frames received straight into one buffer.

``ZCTransport.gather`` (and the stream readers, which call it for
``readexactly`` / ``readexactly_view`` of big frames) moves the partial
frame a reader holds into a pooled buffer of the frame's size and receives
the rest behind it.  These tests check that the bytes are exact and in
order whatever happens meanwhile (EOF, reset, cancellation, views held,
the connection closed), that frames really are gathered (far fewer bytes
assembled than received), and that the gather declines where it cannot
apply (mapping, small frames).

Every test runs on the stdlib loop and on uvloop; the anyio stream's use of
the same engine path is tested in test_anyio.py.
"""

from __future__ import annotations

import asyncio
from typing import Any
import contextlib
import hashlib
import random
import socket
import threading
from collections.abc import Callable

import pytest

import aiozc
from aiozc import ViewBuffer, ZCConfig
from support import Peer, count_socket_maps, payload, sha

KiB = 1 << 10
MiB = 1 << 20
COPY = ZCConfig(zerocopy="never")


def framed(sizes: list[int], seed: int = 7) -> tuple[bytes, list[bytes]]:
    """Length-prefixed frames of the given sizes: (the stream, the payloads)."""
    rnd = random.Random(seed)
    bodies = [rnd.randbytes(n) for n in sizes]
    return b"".join(len(b).to_bytes(4, "big") + b for b in bodies), bodies


class _Staged:
    """A peer in a thread that sends ``parts`` one at a time, each after
    ``step`` is set (the first at once), then finishes with FIN or RST.

    With ``finish_on_step`` it finishes only once ``step`` is set again:
    a reset must not race the client's connect (the listener's backlog
    completes the handshake before the client's loop has seen it, and a
    client starved of CPU then finds ECONNRESET in the connect itself).
    """

    def __init__(self, parts: list[bytes], finish: str = "shutdown",
                 finish_on_step: bool = False) -> None:
        self.parts, self.finish, self.finish_on_step = parts, finish, finish_on_step
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.step = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                for i, part in enumerate(self.parts):
                    if i:
                        assert self.step.wait(30), "test never asked for the next part"
                        self.step.clear()
                    conn.sendall(part)
                if self.finish_on_step:
                    assert self.step.wait(30), "test never asked for the finish"
                if self.finish == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    return
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(30)
                while conn.recv(65536):
                    pass
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc
        finally:
            self.listener.close()

    async def join(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 30)
        assert not self.thread.is_alive(), "peer thread hung"
        if self.error is not None:
            raise self.error


class PauseCounter:
    """Stands in for a transport, counting pause_reading() calls."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.pauses = 0

    def pause_reading(self) -> None:
        self.pauses += 1
        self.transport.pause_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class TestStreams:
    """ZCStreamReader gathers frames of two receives or more."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("api", ["views", "bytes"])
    async def test_big_frames_are_gathered_exactly(self, api: str) -> None:
        sizes = [3 * MiB + 5, 17, 600 * KiB, 4, 2 * MiB, 1, 1 * MiB + 4093, 64 * KiB, 5 * MiB]
        data, bodies = framed(sizes)
        peer = Peer(data, zerocopy=False, max_write=300 * KiB)

        async def main() -> tuple[list[str], int]:
            peer.start()
            reader, writer = await aiozc.open_connection("127.0.0.1", peer.port, config=COPY)
            got = []
            for _ in sizes:
                n = int.from_bytes(await reader.readexactly(4), "big")
                if api == "views":
                    with await reader.readexactly_view(n) as view:
                        assert view.readonly
                        got.append(sha(view))
                else:
                    got.append(sha(await reader.readexactly(n)))
            assert await reader.read() == b""
            stats = reader.stats
            assert stats is not None
            writer.close()
            await writer.wait_closed()
            await asyncio.get_running_loop().run_in_executor(None, peer.join)
            return got, stats.bytes_assembled

        got, assembled = await main()
        assert got == [sha(b) for b in bodies]
        big = sum(n for n in sizes if n >= 512 * KiB)
        # Only the heads of the big frames (each at most one receive, 256
        # KiB) are copied, where assembling them copied every byte.
        assert assembled <= 4 * 256 * KiB + 64 * KiB, (assembled, big)

    @pytest.mark.asyncio
    async def test_consecutive_big_frames_copy_small_heads_and_never_pause(self) -> None:
        # After a gathered frame the engine receives a small piece first
        # (the next header and little else), and a reader waiting for a
        # gathered frame reads no further than its end: the head copied into
        # each next gather buffer stays small, and the queue never grows past
        # the reader's pause mark (a frame plus a head did, pausing and
        # resuming the transport on every frame).
        count, size = 24, 1 * MiB
        data, bodies = framed([size] * count, seed=11)
        peer = Peer(data, zerocopy=False)

        async def main() -> tuple[list[str], int, int]:
            peer.start()
            reader, writer = await aiozc.open_connection("127.0.0.1", peer.port, config=COPY)
            counting = PauseCounter(writer.transport)
            reader._transport = counting  # the reader pauses through it
            got = []
            for _ in range(count):
                n = int.from_bytes(await reader.readexactly(4), "big")
                with await reader.readexactly_view(n) as view:
                    got.append(sha(view))
            stats = reader.stats
            assert stats is not None
            writer.close()
            await writer.wait_closed()
            await asyncio.get_running_loop().run_in_executor(None, peer.join)
            return got, stats.bytes_assembled, counting.pauses

        got, assembled, pauses = await main()
        assert got == [sha(b) for b in bodies]
        # The first frame's head may be a whole receive (256 KiB); every
        # later one at most the 16 KiB receive that follows a gather.
        assert assembled <= 256 * KiB + (count - 1) * 16 * KiB, assembled
        assert pauses == 0

    @pytest.mark.asyncio
    async def test_eof_in_the_middle_of_a_gathered_frame(self) -> None:
        body = payload(2 * MiB, seed=3)
        peer = _Staged([(3 * MiB).to_bytes(4, "big") + body])

        async def main() -> bytes:
            reader, writer = await aiozc.open_connection("127.0.0.1", peer.port, config=COPY)
            n = int.from_bytes(await reader.readexactly(4), "big")
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly_view(n)
            assert info.value.expected == 3 * MiB
            assert reader.at_eof()
            writer.close()
            await peer.join()
            return info.value.partial

        assert sha((await main())) == sha(body)

    @pytest.mark.asyncio
    async def test_reset_in_the_middle_of_a_gathered_frame(self) -> None:
        # The peer resets only when told: once the client is connected and
        # has received all it sent, so the reset always lands while the
        # 3 MiB frame is being gathered (1 MiB of it in), never in the
        # connect (where a loaded machine could put it before).
        peer = _Staged([(3 * MiB).to_bytes(4, "big") + payload(MiB)], finish="reset",
                       finish_on_step=True)

        async def main() -> None:
            reader, writer = await aiozc.open_connection("127.0.0.1", peer.port, config=COPY)
            n = int.from_bytes(await reader.readexactly(4), "big")
            frame = asyncio.ensure_future(reader.readexactly_view(n))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while (stats := reader.stats) is None or stats.bytes_received < 4 + MiB:
                assert loop.time() < deadline, f"the peer's 1 MiB never arrived: {stats}"
                assert not frame.done(), frame
                await asyncio.sleep(0.005)
            assert not frame.done(), frame  # 1 MiB of 3: the gather waits for more
            peer.step.set()
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await frame
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await peer.join()

        await main()

    @pytest.mark.asyncio
    async def test_cancelled_wait_loses_nothing(self) -> None:
        body = payload(3 * MiB, seed=5)
        head, tail = body[: MiB + 17], body[MiB + 17:]
        peer = _Staged([len(body).to_bytes(4, "big") + head, tail])

        async def main() -> None:
            reader, writer = await aiozc.open_connection("127.0.0.1", peer.port, config=COPY)
            n = int.from_bytes(await reader.readexactly(4), "big")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly_view(n), 0.3)
            # What arrived of the frame is queued again, in order ...
            first = await reader.read(len(head))
            assert first == head[: len(first)] and first
            rest_of_head = await reader.readexactly(len(head) - len(first))
            assert first + rest_of_head == head
            # ... and the stream goes on from there.
            peer.step.set()
            with await reader.readexactly_view(len(tail)) as view:
                assert sha(view) == sha(tail)
            assert await reader.read() == b""
            writer.close()
            await peer.join()

        await main()

    @pytest.mark.asyncio
    async def test_held_frames_exhaust_the_pool_and_reading_goes_on(self) -> None:
        # The engine pools four frame buffers; with more frames held it
        # declines, and the reader assembles instead: same bytes.
        sizes = [MiB + i for i in range(7)]
        data, bodies = framed(sizes, seed=11)
        peer = Peer(data, zerocopy=False)

        async def main() -> list[str]:
            peer.start()
            reader, writer = await aiozc.open_connection("127.0.0.1", peer.port, config=COPY)
            held = []
            for _ in sizes:
                n = int.from_bytes(await reader.readexactly(4), "big")
                held.append(await reader.readexactly_view(n))
            digests = [sha(v) for v in held]
            stats = reader.stats
            assert stats is not None and stats.views_outstanding >= 4
            for v in held:
                v.release()
            assert await reader.read() == b""
            writer.close()
            await asyncio.get_running_loop().run_in_executor(None, peer.join)
            return digests

        assert (await main()) == [sha(b) for b in bodies]

    @pytest.mark.asyncio
    async def test_gathered_view_outlives_the_connection(self) -> None:
        body = payload(2 * MiB + 1, seed=9)
        peer = Peer(len(body).to_bytes(4, "big") + body, zerocopy=False)
        maps_before = count_socket_maps()

        async def main() -> memoryview:
            peer.start()
            reader, writer = await aiozc.open_connection("127.0.0.1", peer.port, config=COPY)
            n = int.from_bytes(await reader.readexactly(4), "big")
            view = await reader.readexactly_view(n)
            writer.close()
            await writer.wait_closed()
            await asyncio.get_running_loop().run_in_executor(None, peer.join)
            return view

        view = await main()
        # The connection is gone; the frame's buffer stays until released.
        assert sha(view) == sha(body)
        view.release()
        with pytest.raises(ValueError):
            bytes(view)
        assert count_socket_maps() == maps_before


class _Frames(aiozc.ZCProtocol):
    """Cuts length-prefixed frames with a ViewBuffer, gathering big ones."""

    def __init__(self, gather: bool) -> None:
        self.buf = ViewBuffer()
        self.size = -1
        self.digests: list[str] = []
        self.gathered = 0
        self.use_gather = gather
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: aiozc.ZCTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, aiozc.ZCTransport)
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        assert data.readonly
        buf = self.buf
        buf.append(data)
        while True:
            if self.size < 0:
                if len(buf) < 4:
                    return
                with buf.take(4) as header:
                    self.size = int.from_bytes(header, "big")
            if len(buf) < self.size:
                if self.use_gather:
                    assert self.transport is not None
                    self.gathered += self.transport.gather(buf, self.size)
                return
            with buf.take(self.size) as frame:
                self.digests.append(hashlib.sha256(frame).hexdigest())
            self.size = -1

    def eof_received(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("lost before EOF"))


async def _protocol_run(
    data: bytes, config: ZCConfig, zerocopy_peer: bool, gather: bool = True
) -> tuple[_Frames, aiozc.ZCStats]:
    peer = Peer(data, zerocopy=zerocopy_peer, max_write=700 * KiB)
    peer.start()
    transport, proto = await aiozc.create_connection(
        lambda: _Frames(gather), "127.0.0.1", peer.port, config=config
    )
    try:
        await proto.done
        stats = transport.stats
    finally:
        transport.close()
    await asyncio.get_running_loop().run_in_executor(None, peer.join)
    return proto, stats


class TestProtocol:
    """ZCTransport.gather for a ZCProtocol that frames with a ViewBuffer."""

    @pytest.mark.asyncio
    async def test_big_frames_are_gathered_exactly(self) -> None:
        sizes = [MiB, 3, 2 * MiB + 7, 100 * KiB, 4 * MiB, 512 * KiB, 9, 3 * MiB + 1]
        data, bodies = framed(sizes, seed=13)
        proto, stats = await _protocol_run(data, COPY, zerocopy_peer=False)
        assert proto.digests == [sha(b) for b in bodies]
        assert proto.gathered >= 4  # every frame of 1 MiB and up, at least
        assert proto.buf.bytes_assembled <= 6 * 256 * KiB
        assert stats.bytes_received == len(data)

    @pytest.mark.asyncio
    async def test_gather_declines_while_mapping(self) -> None:
        # Mapped pages cannot be made contiguous with bytes received
        # before: the transport says so and the protocol assembles.
        sizes = [2 * MiB + 3, 3 * MiB, 2 * MiB]
        data, bodies = framed(sizes, seed=17)
        proto, stats = await _protocol_run(data, ZCConfig(zerocopy="always"), zerocopy_peer=True)
        assert proto.digests == [sha(b) for b in bodies]
        assert stats.bytes_mapped > 0
        assert proto.gathered == 0

    @pytest.mark.asyncio
    async def test_gather_declines_small_frames(self) -> None:
        sizes = [256 * KiB + 1, 300 * KiB, 500 * KiB] * 3
        data, bodies = framed(sizes, seed=19)
        proto, _ = await _protocol_run(data, COPY, zerocopy_peer=False)
        assert proto.digests == [sha(b) for b in bodies]
        assert proto.gathered == 0

    @pytest.mark.asyncio
    async def test_same_bytes_with_and_without_gather(self) -> None:
        rnd = random.Random(23)
        sizes = [rnd.choice([rnd.randrange(1, 4096), rnd.randrange(MiB, 3 * MiB)]) for _ in range(12)]
        data, bodies = framed(sizes, seed=29)
        with_gather, _ = await _protocol_run(data, COPY, zerocopy_peer=False, gather=True)
        without, _ = await _protocol_run(data, COPY, zerocopy_peer=False, gather=False)
        assert with_gather.digests == without.digests == [sha(b) for b in bodies]
        assert with_gather.buf.bytes_assembled < without.buf.bytes_assembled / 2


def test_gather_is_public_and_documented() -> None:
    checks: list[Callable[..., object]] = [
        aiozc.ZCTransport.gather, aiozc.ZCTransport.end_gather, ViewBuffer.gather,
    ]
    for fn in checks:
        assert fn.__doc__ and len(fn.__doc__) > 40
    assert "ViewBuffer" in aiozc.__all__
