"""Replies batched per read event (ZCConfig.batch_writes), on both loops.

The writes an application makes while one read event is handled leave
together when the event ends: fewer send() calls (``stats.send_calls``),
the same bytes in the same order, and close(), write_eof(), flow control
and errors behaving as they do unbatched.  A real client over loopback
checks every byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from typing import Any

import pytest

import aiozc
from aiozc import ZCConfig, ZCProtocol

from support import payload, sha

KiB = 1024

#: Requests of 4-byte length + body, all sent in one send() by the client.
PIPELINED = 16


class Replier(ZCProtocol):
    """Answers each length-prefixed request with ``answer(request)``, and
    then does ``after(transport)`` once per read event (close, write_eof...)."""

    def __init__(self, answer: Any, after: Any = None) -> None:
        self.answer, self.after = answer, after
        self.buf = bytearray()
        self.transport: Any = None
        self.paused = 0
        self.resumed = 0
        self.lost: asyncio.Future[Exception | None] = (
            asyncio.get_running_loop().create_future())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        with data:
            self.buf += data
        while len(self.buf) >= 4:
            n = int.from_bytes(self.buf[:4], "big")
            if len(self.buf) < 4 + n:
                break
            request = bytes(self.buf[4:4 + n])
            del self.buf[:4 + n]
            self.answer(self.transport, request)
        if self.after is not None:
            self.after(self.transport)

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def _frames(bodies: list[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(4, "big") + b for b in bodies)


async def pipelined_client(port: int, bodies: list[bytes], expect: int | None = None) -> bytes:
    """Send ``bodies`` length-prefixed in one send(); read until EOF (or
    ``expect`` bytes), in a thread."""
    got = bytearray()

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.settimeout(30)
            conn.sendall(_frames(bodies))
            while expect is None or len(got) < expect:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                got.extend(chunk)

    await asyncio.get_running_loop().run_in_executor(None, client)
    return bytes(got)


async def exchange(config: ZCConfig, bodies: list[bytes], answer: Any, after: Any = None,
                   expect: int | None = None) -> tuple[bytes, Replier, aiozc.ZCStats]:
    """A client sends ``bodies`` pipelined in one send() and reads until EOF
    (or ``expect`` bytes); returns what it read, the protocol and its stats."""
    protos: list[Replier] = []

    def factory() -> Replier:
        proto = Replier(answer, after)
        protos.append(proto)
        return proto

    server = await aiozc.create_server(factory, "127.0.0.1", 0, config=config)
    try:
        got = await pipelined_client(server.sockets[0].getsockname()[1], bodies, expect)
        proto = protos[0]
        stats = proto.transport.stats
        proto.transport.close()
        await asyncio.wait_for(proto.lost, 30)
    finally:
        server.close()
        await server.wait_closed()
    return got, proto, stats


def _echo_upper(transport: Any, request: bytes) -> None:
    transport.write(request.upper())


class TestBatching:
    """Writes of one read event leave together, in order."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
    async def test_pipelined_replies(self, batch: bool) -> None:
        bodies = [b"request %d " % i * 3 for i in range(PIPELINED)]
        want = b"".join(b.upper() for b in bodies)
        got, _, stats = await exchange(ZCConfig(batch_writes=batch), bodies, _echo_upper,
                                     expect=len(want))
        assert got == want
        if batch:
            # 16 requests in one event (they arrived in one segment, and
            # are pumped at once): the first answer at once, the other 15
            # in one send at the end of the event.
            assert stats.send_calls < PIPELINED, stats
            assert stats.send_calls <= 2, stats
        else:
            assert stats.send_calls == PIPELINED, stats

    @pytest.mark.asyncio
    async def test_interleaved_write_writelines_write_eof(self) -> None:
        def answer(transport: Any, request: bytes) -> None:
            transport.write(b"<")
            transport.writelines([request, b"|", bytearray(request[::-1])])
            transport.write(memoryview(b">"))

        def after(transport: Any) -> None:
            transport.write(b"!")
            transport.write_eof()

        bodies = [b"abc", b"defg", b"h"]
        want = b"".join(b"<" + b + b"|" + b[::-1] + b">" for b in bodies) + b"!"
        got, proto, _ = await exchange(ZCConfig(), bodies, answer, after)
        assert got == want  # every byte in order, then EOF (the client's loop ended)

    @pytest.mark.asyncio
    async def test_close_inside_the_event_sends_first(self) -> None:
        def after(transport: Any) -> None:
            transport.write(b"bye")
            transport.close()  # the batch still goes out first, then FIN

        bodies = [b"x" * 100, b"y" * 10]
        got, proto, _ = await exchange(ZCConfig(), bodies, _echo_upper, after)
        assert got == b"X" * 100 + b"Y" * 10 + b"bye"

    @pytest.mark.asyncio
    async def test_flow_control_fires_inside_the_event(self) -> None:
        big = payload(256 * KiB, seed=7)

        def answer(transport: Any, request: bytes) -> None:
            transport.set_write_buffer_limits(high=64 * KiB)
            transport.write(b"<")  # the event's first write goes at once
            transport.write(bytearray(big))  # mutable: copied, not zerocopy
            # Held for the end of the event: above the high-water mark as
            # soon as it is queued, as with a socket that took nothing.
            assert transport.get_write_buffer_size() >= len(big)

        got, proto, _ = await exchange(ZCConfig(), [b"go"], answer, expect=len(big) + 1)
        assert got[:1] == b"<"
        assert hashlib.sha256(got[1:]).hexdigest() == sha(big)
        assert proto.paused >= 1 and proto.resumed >= 1, (proto.paused, proto.resumed)

    @pytest.mark.asyncio
    async def test_zerocopy_writes_in_a_batch(self) -> None:
        big = [payload(128 * KiB, seed=10 + i) for i in range(3)]

        def answer(transport: Any, request: bytes) -> None:
            i = int(request)
            transport.write(b"head%d" % i)
            transport.write(big[i])  # immutable and large: MSG_ZEROCOPY
            transport.write(b"tail%d" % i)

        want = b"".join(b"head%d" % i + big[i] + b"tail%d" % i for i in range(3))
        config = ZCConfig(send_zerocopy="always")
        got, _, stats = await exchange(config, [b"0", b"1", b"2"], answer, expect=len(want))
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()
        assert stats.bytes_sent_zerocopy >= sum(map(len, big)), stats

    @pytest.mark.asyncio
    async def test_error_in_the_batched_send_is_reported(self) -> None:
        def answer(transport: Any, request: bytes) -> None:
            # The write side fails before the event ends: the batched send
            # meets EPIPE, reported as any write error is.
            transport.get_extra_info("socket").shutdown(socket.SHUT_WR)
            transport.write(b"too late")

        async def main() -> Exception | None:
            protos: list[Replier] = []

            def factory() -> Replier:
                protos.append(Replier(answer))
                return protos[-1]

            server = await aiozc.create_server(factory, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            stop = threading.Event()

            def client() -> None:
                with socket.create_connection(("127.0.0.1", port)) as conn:
                    conn.sendall(_frames([b"req"]))
                    stop.wait(30)

            thread = threading.Thread(target=client, daemon=True)
            thread.start()
            try:
                while not protos:
                    await asyncio.sleep(0.01)
                return await asyncio.wait_for(protos[0].lost, 30)
            finally:
                stop.set()
                thread.join(10)
                server.close()
                await server.wait_closed()

        exc = await main()
        assert isinstance(exc, BrokenPipeError), exc


class TestStreamBatching:
    """A stream handler's answers, written from its task, join the batch of
    the read event that woke it (batch_scope = "iteration")."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
    async def test_pipelined_stream_replies(self, batch: bool) -> None:
        bodies = [b"stream request %d" % i for i in range(PIPELINED)]
        want = b"".join(b.upper() for b in bodies)

        async def main() -> tuple[bytes, aiozc.ZCStats]:
            stats: list[aiozc.ZCStats] = []

            async def handle(reader: Any, writer: asyncio.StreamWriter) -> None:
                for _ in bodies:
                    n = int.from_bytes(await reader.readexactly(4), "big")
                    with await reader.readexactly_view(n) as view:
                        writer.write(bytes(view).upper())
                await writer.drain()
                stats.append(writer.transport.stats)  # type: ignore[attr-defined]
                writer.close()

            server = await aiozc.start_server(handle, "127.0.0.1", 0,
                                              config=ZCConfig(batch_writes=batch))
            try:
                got = await pipelined_client(server.sockets[0].getsockname()[1], bodies)
            finally:
                server.close()
                await server.wait_closed()
            return got, stats[0]

        got, stats = await main()
        assert got == want
        if batch:
            assert stats.send_calls <= 2, stats
        else:
            assert stats.send_calls == PIPELINED, stats

    @pytest.mark.asyncio
    async def test_one_request_in_flight_is_answered_at_once(self) -> None:
        """A client that waits for each answer before its next request: every
        answer leaves in its own send() as soon as it is written (nothing is
        held for a batch that never comes), and the client gets each one."""
        rounds = 50

        async def main() -> tuple[list[bytes], aiozc.ZCStats]:
            stats: list[aiozc.ZCStats] = []

            async def handle(reader: Any, writer: asyncio.StreamWriter) -> None:
                for _ in range(rounds):
                    n = int.from_bytes(await reader.readexactly(4), "big")
                    with await reader.readexactly_view(n) as view:
                        writer.write(bytes(view).upper())
                stats.append(writer.transport.stats)  # type: ignore[attr-defined]
                writer.close()

            server = await aiozc.start_server(handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            answers: list[bytes] = []

            def client() -> None:
                with socket.create_connection(("127.0.0.1", port)) as conn:
                    conn.settimeout(30)
                    for i in range(rounds):
                        body = b"request %d" % i
                        conn.sendall(_frames([body]))
                        got = b""
                        while len(got) < len(body):
                            chunk = conn.recv(1024)
                            assert chunk, "the server closed early"
                            got += chunk
                        answers.append(got)

            try:
                await asyncio.get_running_loop().run_in_executor(None, client)
            finally:
                server.close()
                await server.wait_closed()
            return answers, stats[0]

        answers, stats = await main()
        assert answers == [b"REQUEST %d" % i for i in range(rounds)]
        assert stats.send_calls == rounds, stats

    @pytest.mark.asyncio
    async def test_writes_without_reads_between_them_keep_their_order(self) -> None:
        """A handler that pushes messages from its task over several loop
        iterations, with no read event between them: the first goes at once,
        later ones may wait for the next iteration, and all arrive in order."""
        messages = [b"push %03d;" % i for i in range(40)]

        async def main() -> bytes:
            async def handle(reader: Any, writer: asyncio.StreamWriter) -> None:
                await reader.readexactly(4)
                for i, m in enumerate(messages):
                    writer.write(m)
                    if i % 3 == 0:
                        await asyncio.sleep(0)  # the next iteration
                    elif i % 7 == 0:
                        await asyncio.sleep(0.002)
                await writer.drain()
                writer.close()

            server = await aiozc.start_server(handle, "127.0.0.1", 0)
            try:
                got = await pipelined_client(server.sockets[0].getsockname()[1], [b""])
            finally:
                server.close()
                await server.wait_closed()
            return got

        assert (await main()) == b"".join(messages)
