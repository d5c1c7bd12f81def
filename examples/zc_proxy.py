"""A TCP proxy that forwards without copying a payload byte in user space.

Each direction of a proxied connection is a ``ZCProtocol``: ``data_received``
gets read-only views from aiozc's receive engine (pages the kernel mapped,
or the pooled buffer it copied into) and hands each one, as it is, to the
other leg's ``ZCTransport.write()``.  The views qualify for ``MSG_ZEROCOPY``
(nobody can change them), so the kernel sends from the very pages the views
cover, and the transport holds each view until the kernel's completion says
it is done; the proxy releases its own view right after ``write()``.

"No payload byte copied in user space", precisely: the proxy's Python code
never makes ``bytes`` of a view or joins views, and aiozc copied nothing
either, which two counters per leg show: ``bytes_write_buffered`` (the only
copy aiozc makes of outgoing data: bytes the socket did not take at once,
copied into the transport's buffer; zerocopy writes wait there as views
instead) and ``bytes_sent_copied`` (plain ``send()``, a copy into the kernel
made by the kernel); ``bytes_sent_zerocopy`` equals the bytes forwarded.
The kernel still copies in two places: the hybrid copy buffer on the
receive side (``bytes_copied``: stragglers that are not whole pages, or
everything when mapping does not pay), and, on loopback or veth, the
delivery of the zerocopy send to a local socket (counted in
``zerocopy_completions_copied``).  Over a real NIC that second copy does not
happen.

    python examples/zc_proxy.py --listen 127.0.0.1:8889 --target 127.0.0.1:8888
    python examples/zc_proxy.py --demo [--loop uvloop] [--mib 256]

``--demo`` runs a MSG_ZEROCOPY sender, the proxy and a hashing sink in one
process and prints both legs' statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import aiozc
from aiozc.testing import ZeroCopySender

MiB = 1 << 20

# Zerocopy sends count as buffered until the kernel completes them (an
# ACK's round trip later), so the default 64 KiB high-water mark would let
# one write at a time be in flight.  4 MiB is Linux's largest autotuned
# send buffer (net.ipv4.tcp_wmem): about a bandwidth-delay product.
HIGH_WATER = 4 * MiB


@dataclass(frozen=True)
class Report:
    """One proxied connection, closed: each leg's final statistics.

    ``client`` is the leg facing the connecting client (it receives the
    client's bytes and sends the target's), ``target`` the leg facing the
    target.
    """

    client: aiozc.ZCStats
    target: aiozc.ZCStats

    @property
    def forwarded(self) -> int:
        """Payload bytes forwarded, both directions."""
        return self.client.bytes_received + self.target.bytes_received

    @property
    def copied_in_user_space(self) -> int:
        """Bytes aiozc copied in user space to forward them (0 with zerocopy)."""
        return (self.client.bytes_write_buffered + self.target.bytes_write_buffered
                + self.client.bytes_assembled + self.target.bytes_assembled)


class _Leg(aiozc.ZCProtocol):
    """One side of a proxied connection; forwards what it receives to ``other``."""

    def __init__(self, on_connected: Callable[[_Leg], object] | None = None) -> None:
        self._on_connected = on_connected
        self.other: _Leg | None = None
        self.transport: aiozc.ZCTransport | None = None
        self.eof = False
        self.done: asyncio.Future[aiozc.ZCStats] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: aiozc.ZCTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        # Nothing to forward to until both legs are connected and linked:
        # read nothing until then (Proxy._connect resumes both).
        transport.pause_reading()
        if self._on_connected is not None:
            self._on_connected(self)

    def data_received(self, data: memoryview) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            # MSG_ZEROCOPY: the transport keeps its own view of these
            # bytes until the kernel has sent them ...
            other.transport.write(data)
        # ... so this one can go now.
        data.release()

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write_eof()
            if other.eof:
                other.transport.close()
                return False
        return True  # keep the other direction going

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.transport is not None
        if not self.done.done():
            self.done.set_result(self.transport.stats)
        other = self.other
        if other is not None and other.transport is not None:
            if exc is not None:
                other.transport.abort()
            else:
                other.transport.close()


class Proxy:
    """Accepts connections and forwards each one to ``target``.

    ``config`` applies to both legs; the default receives with ``auto`` and
    sends every view with ``MSG_ZEROCOPY`` (``send_zerocopy='always'``).
    With ``'auto'`` instead, views under ``send_zerocopy_threshold`` (a
    mapped view on loopback is about 28 KiB) and every send on a path where
    the kernel copies anyway (loopback) go out by plain ``send()``.
    """

    def __init__(self, target: tuple[str, int], config: aiozc.ZCConfig | None = None) -> None:
        self.target = target
        self.config = config if config is not None else aiozc.ZCConfig(send_zerocopy="always")
        #: A report per connection, once both legs have closed.
        self.reports: list[Report] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> aiozc.Server:
        """Listen; the port is ``server.sockets[0].getsockname()[1]``."""
        return await aiozc.create_server(self._accept, host, port, config=self.config)

    def _accept(self) -> _Leg:
        return _Leg(on_connected=self._client_connected)

    def _client_connected(self, client: _Leg) -> None:
        task = asyncio.ensure_future(self._connect(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, client: _Leg) -> None:
        assert client.transport is not None
        try:
            _, target = await aiozc.create_connection(
                _Leg, *self.target, config=self.config)
        except OSError:
            client.transport.abort()
            return
        assert target.transport is not None
        client.other, target.other = target, client
        client.transport.resume_reading()
        target.transport.resume_reading()
        c, t = await asyncio.gather(client.done, target.done)
        self.reports.append(Report(client=c, target=t))

    async def wait_idle(self) -> None:
        """Wait until every connection accepted so far has been reported."""
        while self._tasks:
            await asyncio.gather(*self._tasks)


def describe(report: Report) -> str:
    """The report as a few lines of text."""
    c, t = report.client, report.target
    lines = [f"forwarded {report.forwarded} bytes"]
    for name, s in (("client leg", c), ("target leg", t)):
        if s.bytes_received:
            lines.append(
                f"  {name} received {s.bytes_received} B: {s.bytes_mapped} mapped "
                f"({s.mapped_fraction:.1%}), {s.bytes_copied} copied by the kernel "
                f"into pooled buffers (mode {s.mode})")
        sent = s.bytes_sent_zerocopy + s.bytes_sent_copied
        if sent:
            lines.append(
                f"  {name} sent {sent} B: {s.bytes_sent_zerocopy} with MSG_ZEROCOPY, "
                f"{s.bytes_sent_copied} by plain send(); completions the kernel "
                f"copied anyway: {s.zerocopy_completions_copied}"
                + (f" ({s.send_fallback_reason})" if s.send_fallback_reason else ""))
    lines.append(f"  copied in user space: {report.copied_in_user_space} B")
    return "\n".join(lines)


async def demo(mib: int, config: aiozc.ZCConfig | None = None) -> Report:
    """Sender thread (MSG_ZEROCOPY) -> proxy -> hashing sink thread, over loopback."""
    data = os.urandom(mib * MiB)
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(1)
    digest: list[str] = []

    def drain() -> None:
        conn, _ = sink.accept()
        h = hashlib.sha256()
        with conn:
            while chunk := conn.recv(1 << 20):
                h.update(chunk)
        digest.append(h.hexdigest())

    proxy = Proxy(sink.getsockname(), config)
    server = await proxy.start()
    port = server.sockets[0].getsockname()[1]

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            sender = ZeroCopySender(conn)
            view = memoryview(data)
            for i in range(0, len(data), MiB):
                sender.send(bytes(view[i:i + MiB]))
            sender.flush()
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass

    threads = [threading.Thread(target=drain), threading.Thread(target=send)]
    for th in threads:
        th.start()

    def join_all() -> None:
        for th in threads:
            th.join()

    await asyncio.get_running_loop().run_in_executor(None, join_all)
    await proxy.wait_idle()
    server.close()
    await server.wait_closed()
    sink.close()
    assert digest == [hashlib.sha256(data).hexdigest()], "the sink got other bytes"
    return proxy.reports[0]


async def serve(listen: tuple[str, int], target: tuple[str, int],
                config: aiozc.ZCConfig) -> None:
    """Run the proxy until interrupted, printing a report per connection."""
    proxy = Proxy(target, config)
    server = await proxy.start(*listen)
    print(f"proxying {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}")
    async with server:
        while True:
            await asyncio.sleep(1)
            while proxy.reports:
                print(describe(proxy.reports.pop(0)), flush=True)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 8889))
    parser.add_argument("--target", type=_address, default=("127.0.0.1", 8888))
    parser.add_argument("--zerocopy", choices=["auto", "always", "never"], default="auto",
                        help="receive policy (ZCConfig.zerocopy)")
    parser.add_argument("--send-zerocopy", choices=["auto", "always", "never"],
                        default="always", help="send policy (ZCConfig.send_zerocopy)")
    parser.add_argument("--demo", action="store_true",
                        help="forward --mib MiB from a built-in sender to a built-in sink")
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    cfg = aiozc.ZCConfig(zerocopy=args.zerocopy, send_zerocopy=args.send_zerocopy)
    uv = args.loop == "uvloop"
    if args.demo:
        print(describe(aiozc.run(demo(args.mib, cfg), use_uvloop=uv)))
    else:
        aiozc.run(serve(args.listen, args.target, cfg), use_uvloop=uv)
