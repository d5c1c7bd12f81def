"""RPC servers with many connections: server CPU per request, latency, segments.

Usage::

    python -m benchmarks.rpc [--quick] [--connections 1,100,1000]
                             [--sizes 512,4096,32768] [--windows 1,8]
                             [--requests N] [--repeats N] [--only NAME,...]
                             [--md PATH] [--json PATH]

Issue 14, item 3.  A client process holds C connections; each keeps W
requests outstanding (4-byte big-endian length + payload) and sends the
next as soon as a reply comes back.  The server under test, a real server
built with its API's own ``create_server`` / ``start_server`` /
``create_tcp_listener`` in a fresh process, CRC32s each request and replies
with the 4-byte CRC; the client checks every reply.  Each receiver is
written the way its API is meant to be used: the protocols parse frames as
bytes arrive and ``transport.write`` each reply; the stream handlers
``readexactly`` a header and then the body, and ``writer.write`` the reply
(aiozc: ``readexactly(4)`` + ``readexactly_view(n)``, as the README shows);
aiozc's ZCProtocol two ways, both of which users write: each view copied
into a bytearray that frames are parsed from (``with data:`` releasing it,
as the README shows), and views queued in an ``aiozc.ViewBuffer`` that
each request is taken from as one view;
aiozc's anyio listener ``receive_exactly_view`` + ``send``.  Every socket
has the options its server gives it in real use (``TCP_NODELAY`` on all:
asyncio sets it on the IPPROTO_TCP sockets its servers make).

Reported per cell (C connections, request size, window W), median of
``--repeats`` interleaved server processes: **server CPU per request**
(``getrusage`` user+sys of the server process over the run, in µs),
**requests/s** (all connections, client wall time), **p50/p99 latency**
measured at the client (send of a request to receipt of its reply, in µs;
the client is one Python process, so its own delays are part of every
receiver's figure alike) and **TCP segments per request** (the machine's
``TcpOutSegs`` delta from ``/proc/net/snmp`` over the run, both directions
of loopback, divided by requests).  Ratios are to the best peer (the
non-aiozc server with the lowest CPU per request) in the same cell.

The client sends with plain ``send()``: over loopback a MSG_ZEROCOPY
request is copied by the kernel at delivery anyway, and the single-connection
RPC cell of ``python -m benchmarks`` covers that sender.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import socket
import statistics
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ._machine import machine_info, machine_lines
from ._process import pin, pin_cpus, spawn, stop
from ._report import table

HOST = "127.0.0.1"
HEADER = 4
CONNECTIONS = (1, 100, 1000)
SIZES = (512, 4096, 32768)
WINDOWS = (1, 8)
#: Requests per cell, over all connections (at least 20 per connection).
REQUESTS = 20000
REPEATS = 3
QUICK = {"connections": (1, 100), "sizes": (4096,), "windows": (8,), "requests": 2000,
         "repeats": 1}
#: --quick: a few servers (a smoke run: its figures are not measurements).
QUICK_SERVERS = ("asyncio BufferedProtocol [asyncio]", "aiozc ZCProtocol auto [asyncio]",
                 "aiozc ZCProtocol auto, ViewBuffer [uvloop]", "aiozc streams [uvloop]",
                 "aiozc anyio [asyncio]", "floor (Python epoll, no loop) [blocking]")


@dataclass(frozen=True)
class Server:
    """One server under test."""

    api: str  # protocol | buffered | streams | zc-auto | zc-never | zc-streams | zc-anyio
    loop: str  # asyncio | uvloop

    @property
    def name(self) -> str:
        """The name in the report."""
        return {
            "protocol": "asyncio Protocol", "buffered": "asyncio BufferedProtocol",
            "aiofastnet": "aiofastnet BufferedProtocol", "streams": "asyncio streams",
            "zc-auto": "aiozc ZCProtocol auto", "zc-never": "aiozc ZCProtocol never",
            "zc-views": "aiozc ZCProtocol auto, ViewBuffer",
            "zc-streams": "aiozc streams", "zc-anyio": "aiozc anyio",
            "floor": "floor (Python epoll, no loop)",
        }[self.api] + f" [{self.loop}]"

    @property
    def aiozc(self) -> bool:
        """Whether this is an aiozc server."""
        return self.api.startswith("zc")

    @property
    def peer(self) -> bool:
        """Whether this is a peer (the ratios are to the best of them)."""
        return not self.aiozc and self.api != "floor"


def all_servers() -> list[Server]:
    """Every server, on both loops (anyio on asyncio)."""
    out = []
    for loop in ("asyncio", "uvloop"):
        for api in ("protocol", "buffered", "aiofastnet", "streams", "zc-auto", "zc-never",
                    "zc-views", "zc-streams"):
            out.append(Server(api, loop))
    out.append(Server("zc-anyio", "asyncio"))
    out.append(Server("floor", "blocking"))
    return out


# ---------------------------------------------------------------------------
# the server process

#: --nodelay off: every server turns TCP_NODELAY off on each connection it
#: accepts (Nagle's algorithm, as asyncio's transports had on proto-0
#: sockets), instead of keeping what its API sets in real use.
NAGLE = False


def _real_use_or_nagle(sock: Any) -> None:
    """Apply --nodelay off to one accepted connection's socket."""
    if NAGLE and sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)


class _Frames:
    """Cuts length-prefixed requests out of a byte stream; replies with CRC32."""

    def __init__(self, reply: Callable[[bytes], None]) -> None:
        self.buf = bytearray()
        self.reply = reply

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= HEADER:
            n = int.from_bytes(buf[pos:pos + HEADER], "big")
            if len(buf) - pos - HEADER < n:
                break
            start = pos + HEADER
            self.reply(zlib.crc32(memoryview(buf)[start:start + n]).to_bytes(4, "big"))
            pos = start + n
        if pos:
            del buf[:pos]


async def _start(srv: Server) -> tuple[int, Any]:
    loop = asyncio.get_running_loop()
    if srv.api in ("protocol", "zc-auto", "zc-never"):
        if srv.api == "protocol":
            base: type = asyncio.Protocol
        else:
            import aiozc

            base = aiozc.ZCProtocol

        class Rpc(base):  # type: ignore[misc]
            def connection_made(self, transport: Any) -> None:
                _real_use_or_nagle(transport.get_extra_info("socket"))
                self.frames = _Frames(transport.write)

            def data_received(self, data: Any) -> None:
                if isinstance(data, memoryview):
                    with data:  # the README's pattern: release each view
                        self.frames.feed(data)
                else:
                    self.frames.feed(data)

        if srv.api == "protocol":
            server = await loop.create_server(Rpc, HOST, 0, backlog=4096)
            return server.sockets[0].getsockname()[1], server
        import aiozc

        config = aiozc.ZCConfig(zerocopy="auto" if srv.api == "zc-auto" else "never")
        zserver = await aiozc.create_server(Rpc, HOST, 0, backlog=4096, config=config)
        return zserver.sockets[0].getsockname()[1], zserver
    if srv.api == "zc-views":
        # The other way a ZCProtocol user cuts frames: the views queued in
        # an aiozc.ViewBuffer, each request taken as one view (no copy into
        # a bytearray), as the single-connection suite's receiver does.
        import aiozc

        class ViewRpc(aiozc.ZCProtocol):
            def connection_made(self, transport: Any) -> None:
                _real_use_or_nagle(transport.get_extra_info("socket"))
                self.transport = transport
                self.vb = aiozc.ViewBuffer()
                self.size = -1

            def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                vb = self.vb
                vb.append(data)
                while True:
                    if self.size < 0:
                        if len(vb) < HEADER:
                            return
                        self.size = vb.take_int(HEADER)
                    if len(vb) < self.size:
                        self.transport.gather(vb, self.size)
                        return
                    with vb.take(self.size) as body:
                        crc = zlib.crc32(body)
                    self.size = -1
                    self.transport.write(crc.to_bytes(4, "big"))

        vserver = await aiozc.create_server(ViewRpc, HOST, 0, backlog=4096)
        return vserver.sockets[0].getsockname()[1], vserver
    if srv.api in ("buffered", "aiofastnet"):
        class BufRpc(asyncio.BufferedProtocol):
            def connection_made(self, transport: Any) -> None:
                _real_use_or_nagle(transport.get_extra_info("socket"))
                self.write = transport.write
                self.buf = bytearray(64 * 1024)
                self.view = memoryview(self.buf)
                self.have = 0

            def get_buffer(self, sizehint: int) -> memoryview:
                if self.have == len(self.buf):
                    self.buf.extend(bytes(len(self.buf)))
                    self.view = memoryview(self.buf)
                return self.view[self.have:]

            def buffer_updated(self, nbytes: int) -> None:
                self.have += nbytes
                pos, have, buf = 0, self.have, self.buf
                while have - pos >= HEADER:
                    n = int.from_bytes(buf[pos:pos + HEADER], "big")
                    if have - pos - HEADER < n:
                        break
                    start = pos + HEADER
                    self.write(zlib.crc32(self.view[start:start + n]).to_bytes(4, "big"))
                    pos = start + n
                if pos:
                    buf[:have - pos] = buf[pos:have]
                    self.have = have - pos

        if srv.api == "buffered":
            server = await loop.create_server(BufRpc, HOST, 0, backlog=4096)
        else:
            import aiofastnet

            server = await aiofastnet.create_server(loop, BufRpc, HOST, 0, backlog=4096)
        return server.sockets[0].getsockname()[1], server
    if srv.api in ("streams", "zc-streams"):
        views = srv.api == "zc-streams"

        async def handle(reader: Any, writer: asyncio.StreamWriter) -> None:
            _real_use_or_nagle(writer.get_extra_info("socket"))
            try:
                while True:
                    n = int.from_bytes(await reader.readexactly(HEADER), "big")
                    if views:  # aiozc, as the README shows: the body as a view
                        with await reader.readexactly_view(n) as body:
                            crc = zlib.crc32(body)
                    else:
                        crc = zlib.crc32(await reader.readexactly(n))
                    writer.write(crc.to_bytes(4, "big"))
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        if views:
            import aiozc

            zserver = await aiozc.start_server(handle, HOST, 0, backlog=4096)
            return zserver.sockets[0].getsockname()[1], zserver
        server = await asyncio.start_server(handle, HOST, 0, backlog=4096)
        return server.sockets[0].getsockname()[1], server
    if srv.api == "zc-anyio":
        import anyio
        from anyio.abc import SocketAttribute

        import aiozc.anyio

        async def ahandle(stream: Any) -> None:
            _real_use_or_nagle(stream.extra(SocketAttribute.raw_socket))
            try:
                async with stream:
                    while True:
                        with await stream.receive_exactly_view(HEADER) as head:
                            n = int.from_bytes(head, "big")
                        with await stream.receive_exactly_view(n) as view:
                            crc = zlib.crc32(view)
                        await stream.send(crc.to_bytes(4, "big"))
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
                    OSError):
                pass

        listener = await aiozc.anyio.create_tcp_listener(local_host=HOST, local_port=0,
                                                         backlog=4096)
        task = loop.create_task(listener.serve(ahandle))
        return listener.extra(SocketAttribute.local_port), (listener, task)
    raise ValueError(srv.api)


def _rusage() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _serve(srv: Server, pipe: Connection) -> None:
    port, _server = await _start(srv)
    pipe.send(("port", port))
    loop = asyncio.get_running_loop()
    while True:
        if not pipe.poll():
            fut: asyncio.Future[None] = loop.create_future()
            def readable() -> None:
                if not fut.done():
                    fut.set_result(None)

            loop.add_reader(pipe.fileno(), readable)
            try:
                await fut
            finally:
                loop.remove_reader(pipe.fileno())
        cmd = pipe.recv()
        if cmd is None:
            os._exit(0)
        pipe.send(("cpu", _rusage()))


# The floor: a Python server with no event loop, transport or protocol at
# all.  One epoll, non-blocking sockets, a recv() of up to 256 KiB per
# readiness, the requests it completes CRC'd and their replies joined into
# one send().  Where every server costs about what it does (one request per
# readiness: windows of 1), what is left is the kernel's share and
# Python's, and a target far below it is out of reach of any asyncio
# server.  (It is not a bound where a server can do less kernel work than
# one recv and one send per readiness: replies batched across events, or
# fewer wake-ups, can beat it.)  The report prints every server's ratio to
# it beside the ratio to the best peer.
def _floor_serve(pipe: Connection) -> None:
    import resource
    import select

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, 0))
    lsock.listen(4096)
    lsock.setblocking(False)
    pipe.send(("port", lsock.getsockname()[1]))
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    ep.register(pipe.fileno(), select.EPOLLIN)
    conns: dict[int, tuple[socket.socket, bytearray]] = {}
    lfd, pfd = lsock.fileno(), pipe.fileno()
    crc32 = zlib.crc32
    while True:
        for fd, _ev in ep.poll():
            if fd == lfd:
                while True:
                    try:
                        c, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0 if NAGLE else 1)
                    conns[c.fileno()] = (c, bytearray())
                    ep.register(c.fileno(), select.EPOLLIN)
            elif fd == pfd:
                if pipe.recv() is None:
                    os._exit(0)
                ru = resource.getrusage(resource.RUSAGE_SELF)
                pipe.send(("cpu", ru.ru_utime + ru.ru_stime))
            else:
                c, buf = conns[fd]
                try:
                    data = c.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    ep.unregister(fd)
                    del conns[fd]
                    c.close()
                    continue
                buf += data
                pos, have, out = 0, len(buf), []
                while have - pos >= HEADER:
                    n = int.from_bytes(buf[pos:pos + HEADER], "big")
                    if have - pos - HEADER < n:
                        break
                    start = pos + HEADER
                    out.append(crc32(memoryview(buf)[start:start + n]).to_bytes(4, "big"))
                    pos = start + n
                if pos:
                    del buf[:pos]
                if out:
                    c.send(b"".join(out) if len(out) > 1 else out[0])


def _server_main(pipe: Connection, api: str, loop_name: str, cpu: int | None,
                 nagle: bool = False) -> None:
    global NAGLE
    NAGLE = nagle
    _raise_nofile()
    pin(cpu)
    if api == "floor":
        _floor_serve(pipe)
        return
    srv = Server(api, loop_name)
    if loop_name == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        factory = asyncio.SelectorEventLoop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(srv, pipe))


def _raise_nofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------
# the client


def run_client(port: int, conns: int, size: int, window: int, requests: int
               ) -> dict[str, Any]:
    """Drive one cell from this process; return wall time and latencies."""
    payload = os.urandom(size)
    request = size.to_bytes(HEADER, "big") + payload
    want = zlib.crc32(payload).to_bytes(4, "big")
    per_conn = max(20, requests // conns)
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(conns):
        sock = socket.create_connection((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
    state = {}
    t0 = time.perf_counter()
    for sock in socks:
        sock.setblocking(False)
        st = {"sent": 0, "done": 0, "inbuf": bytearray(), "times": deque(),
              "out": bytearray()}
        state[sock] = st
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
    latencies: list[float] = []
    live = conns
    bad = 0
    while live:
        for key, mask in sel.select(30):
            s, st = key.fileobj, key.data
            assert isinstance(s, socket.socket)  # registered above
            now = time.perf_counter()
            if mask & selectors.EVENT_READ:
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("the server closed a connection")
                inbuf = st["inbuf"]
                inbuf += data
                k = len(inbuf) // 4
                for i in range(k):
                    if inbuf[4 * i:4 * i + 4] != want:
                        bad += 1
                    latencies.append(now - st["times"].popleft())
                del inbuf[:4 * k]
                st["done"] += k
            # Keep `window` requests outstanding.
            while st["sent"] < per_conn and st["sent"] - st["done"] < window:
                st["out"] += request
                st["times"].append(now)
                st["sent"] += 1
            if st["out"]:
                try:
                    n = s.send(st["out"])
                    del st["out"][:n]
                except BlockingIOError:
                    pass
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if st["out"] else 0)
            if st["done"] >= per_conn:
                sel.unregister(s)
                live -= 1
            elif events != key.events:
                sel.modify(s, events, st)
    wall = time.perf_counter() - t0
    for sock in socks:
        sock.close()
    latencies.sort()
    n = len(latencies)
    return {"wall_s": wall, "requests": n, "bad": bad,
            "p50_us": latencies[n // 2] * 1e6, "p99_us": latencies[min(n - 1, n * 99 // 100)] * 1e6}


def _out_segs() -> int:
    with open("/proc/net/snmp") as f:
        lines = [ln.split() for ln in f if ln.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutSegs")])


def run_cell(srv: Server, conns: int, size: int, window: int, requests: int,
             cpus: tuple[int | None, int | None]) -> dict[str, Any]:
    """One server process, one client run in this process."""
    pipe, proc = spawn(_server_main, srv.api, srv.loop, cpus[0], NAGLE)
    try:
        if not pipe.poll(60):
            raise TimeoutError(f"{srv.name}: the server did not start")
        tag, port = pipe.recv()
        pipe.send("cpu")
        cpu0 = pipe.recv()[1]
        segs0 = _out_segs()
        res = run_client(port, conns, size, window, requests)
        segs = _out_segs() - segs0
        pipe.send("cpu")
        cpu = pipe.recv()[1] - cpu0
    finally:
        stop(pipe, proc)
    res.update(server=srv.name, aiozc=srv.aiozc, peer=srv.peer, conns=conns, size=size, window=window,
               cpu_us=cpu * 1e6 / res["requests"], segs_per_req=segs / res["requests"],
               req_per_s=res["requests"] / res["wall_s"])
    return res


# ---------------------------------------------------------------------------
# the report


def report(rows: list[dict[str, Any]], machine: dict[str, str], args: argparse.Namespace
           ) -> str:
    """The markdown report."""
    cells = sorted({(r["conns"], r["size"], r["window"]) for r in rows})
    servers = [s for s in dict.fromkeys(r["server"] for r in rows)]
    med: dict[tuple[str, tuple[int, int, int], str], float] = {}
    for srv in servers:
        for cell in cells:
            rs = [r for r in rows if r["server"] == srv and (r["conns"], r["size"], r["window"]) == cell]
            for k in ("cpu_us", "req_per_s", "p50_us", "p99_us", "segs_per_req"):
                med[(srv, cell, k)] = statistics.median(r[k] for r in rs) if rs else float("nan")
    non_peers = {r["server"] for r in rows if not r.get("peer", not r["aiozc"])}
    floors = [r["server"] for r in rows if r["server"].startswith("floor")]
    out = ["# RPC servers with many connections", "",
           f"Generated by `python -m benchmarks.rpc` ({args.repeats} interleaved server "
           f"processes per cell, medians). {__doc__.split(chr(10) + chr(10))[1]}", ""]
    out += machine_lines(machine).splitlines()
    out += [("- TCP_NODELAY on the servers' connections: "
             + ("**off** on every one (`--nodelay off`: Nagle's algorithm)"
                if NAGLE else "as each API sets it in real use (on, for every server here)"))]
    out += ["", "## Server CPU per request (µs) and ratio to the best peer", ""]
    if floors:
        out += [("The second ratio (after /) is to the floor: a Python server with no "
                 "event loop (one epoll, a recv() per readiness, one send() of the "
                 "replies it completes). Where a cell's servers all cost about what it "
                 "does, the rest is the kernel's share and Python's, not the loop's "
                 "or aiozc's."), ""]
    head = ["server"] + [f"{c} conn × {s} B × W{w}" for c, s, w in cells]
    body = []
    best = {}
    for cell in cells:
        peers = [(med[(s, cell, "cpu_us")], s) for s in servers if s not in non_peers]
        best[cell] = min(peers)[0] if peers else float("nan")
    floor = {c: med[(floors[0], c, "cpu_us")] if floors else float("nan") for c in cells}

    def cpu_cell(srv: str, c: tuple[int, int, int]) -> str:
        v = med[(srv, c, "cpu_us")]
        return f"{v:.1f} ({v / best[c]:.2f}x" + (f" / {v / floor[c]:.2f}x)" if floors else ")")

    for srv in servers:
        body.append([srv] + [cpu_cell(srv, c) for c in cells])
    out += table(head, body).splitlines()
    for title, key, fmt in (("Requests per second (all connections)", "req_per_s", "{:.0f}"),
                            ("p50 / p99 latency at the client (µs)", "p50_us", ""),
                            ("TCP segments per request (both directions)", "segs_per_req", "{:.2f}")):
        out += ["", f"## {title}", ""]
        body = []
        for srv in servers:
            if key == "p50_us":
                body.append([srv] + [f"{med[(srv, c, 'p50_us')]:.0f} / {med[(srv, c, 'p99_us')]:.0f}"
                                     for c in cells])
            else:
                body.append([srv] + [fmt.format(med[(srv, c, key)]) for c in cells])
        out += table(head, body).splitlines()
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rpc",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (< 2 minutes)")
    ap.add_argument("--connections", default=None)
    ap.add_argument("--sizes", default=None)
    ap.add_argument("--windows", default=None)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", default=None, help="servers whose name contains one of these")
    ap.add_argument("--nodelay", choices=("real-use", "off"), default="real-use",
                    help="TCP_NODELAY on the servers' connections: as each API sets it "
                         "(default; every one here sets it), or off on all")
    ap.add_argument("--md", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    global NAGLE
    NAGLE = args.nodelay == "off"

    def ints(v: str | None, default: Sequence[int]) -> list[int]:
        return [int(x) for x in v.split(",")] if v else list(default)

    q: dict[str, Any] = QUICK if args.quick else {}
    conns = ints(args.connections, q.get("connections", CONNECTIONS))
    sizes = ints(args.sizes, q.get("sizes", SIZES))
    windows = ints(args.windows, q.get("windows", WINDOWS))
    requests = args.requests or q.get("requests", REQUESTS)
    args.repeats = args.repeats or q.get("repeats", REPEATS)
    servers = [s for s in all_servers()
               if (not args.only or any(o in s.name for o in args.only.split(",")))
               and (not args.quick or args.only or s.name in QUICK_SERVERS)]
    _raise_nofile()
    machine = machine_info()
    cpus = pin_cpus()
    pin(cpus[1])  # the client
    rows: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for c in conns:
            for size in sizes:
                for w in windows:
                    order = servers if rep % 2 == 0 else servers[::-1]
                    for srv in order:
                        r = run_cell(srv, c, size, w, requests, cpus)
                        if r["bad"]:
                            raise RuntimeError(f"{srv.name}: {r['bad']} wrong replies")
                        rows.append(r)
                        print(f"[rpc] {srv.name:<40} {c:>5} × {size:>6} B × W{w}: "
                              f"{r['cpu_us']:7.1f} µs/req  {r['req_per_s']:8.0f} req/s  "
                              f"p99 {r['p99_us']:7.0f} µs", file=sys.stderr)
    md = report(rows, machine, args)
    if args.md:
        Path(args.md).write_text(md)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if not args.md:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
