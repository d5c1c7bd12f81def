"""Plumbing of the fault suite: links, peers, verified streams, leak counters.

Imported by the suite's conftest and tests, and by the scenarios that run in
child processes (``_scenarios.py``), so it depends on nothing from pytest.

Links
-----
A :class:`Link` is a path between the receiver (aiozc, always in the
process's own network namespace) and a peer:

* ``veth1500`` and ``veth4148``: a veth pair with one end in the root
  namespace and the other in a namespace of its own, where the peer lives.
  4148 = 4096 + IPv4 (20) + TCP (20) + timestamps (12): one page of payload
  per packet, as a header-split NIC delivers it.  Segmentation offload is
  disabled on both ends (``gso_max_segs 1``), so every packet really is one
  MTU on the wire; with offload on, a veth carries 64 KiB GSO packets
  whatever its MTU.
* ``lo65536``: the loopback device, MTU 65536 (veth stops at 65535).  It
  needs no namespace, so it also runs where namespaces cannot be made.

Peers
-----
A peer is a thread (it enters the link's namespace with ``setns``, which
affects only the calling thread) or, when the test must SIGKILL it, a
process started under ``ip netns exec`` (``_peer.py``).  Peers send with
``MSG_ZEROCOPY`` (:class:`aiozc.testing.ZeroCopySender`) unless told
otherwise, so that the receiver can map their pages.

Streams
-------
Payloads come from :class:`Stream`, a reproducible byte stream of any
length; :class:`Checker` compares what the receiver gets with the stream at
the same offset, so a lost, duplicated or corrupted byte is reported with
its offset, even for streams with no planned end (a peer killed at a random
point).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The leak counters are the whole suite's (tests/support.py: tests/ is on
# sys.path under pytest, and on the PYTHONPATH of the suite's child processes),
# re-exported here for the fault suite's modules.
from support import count_fds as count_fds
from support import count_socket_maps as count_socket_maps

MiB = 1 << 20
KiB = 1 << 10

#: ``AIOZC_FAULTS_LONG=1`` enlarges every count and size of the suite.
LONG = os.environ.get("AIOZC_FAULTS_LONG", "") not in ("", "0")

CLONE_NEWNET = 0x40000000
SIOCINQ = 0x541B  # FIONREAD: bytes queued in a socket's receive queue


# -- links -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Link:
    """A path from the receiver (root namespace) to a peer."""

    name: str
    mtu: int
    #: Namespace the peer lives in; None: the root namespace (loopback).
    netns: str | None
    #: The receiver's address and the peer's.
    local: str
    remote: str
    #: The veth ends (root side, namespace side); None on loopback.
    root_dev: str | None = None
    ns_dev: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Link:
        return cls(**json.loads(text))


LOOPBACK = Link("lo65536", 65536, None, "127.0.0.1", "127.0.0.1")

#: The veth links: name -> MTU.
VETH_MTUS = {"veth1500": 1500, "veth4148": 4096 + 20 + 20 + 12}

_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str | None) -> None:
    """Move the calling *thread* into network namespace ``name``."""
    if name is None:
        return
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_inq(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue (SIOCINQ)."""
    import fcntl

    buf = fcntl.ioctl(sock.fileno(), SIOCINQ, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


def describe_transport(transport: Any) -> str:
    """A ZCTransport's state, for the message of a test that found it stuck."""
    try:
        sock = transport.get_extra_info("socket")
        inq = socket_inq(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        kernel = f"{inq} bytes unread in the kernel, SO_ERROR={err}, TCP state {state}"
    except (OSError, AttributeError) as exc:
        kernel = f"socket: {exc!r}"
    flags = {name: getattr(transport, name, None)
             for name in ("_closing", "_paused", "_starved", "_at_eof", "_reader_on")}
    return f"{transport!r}: {kernel}; {flags}; {transport.get_extra_info('aiozc_stats')}"


# -- reproducible streams ----------------------------------------------------------


class Stream:
    """The reproducible byte stream number ``seed``, read front to back."""

    BLOCK = MiB

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.pos = 0
        self._index = -1
        self._block = b""

    def _load(self, index: int) -> None:
        self._index = index
        self._block = random.Random(f"aiozc-faults/{self.seed}/{index}").randbytes(self.BLOCK)

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes of the stream."""
        out = []
        while n > 0:
            index, offset = divmod(self.pos, self.BLOCK)
            if index != self._index:
                self._load(index)
            piece = self._block[offset:offset + n]
            out.append(piece)
            self.pos += len(piece)
            n -= len(piece)
        return out[0] if len(out) == 1 else b"".join(out)


def payload(size: int, seed: int) -> bytes:
    """The first ``size`` bytes of stream ``seed``."""
    return Stream(seed).take(size)


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class Checker:
    """Checks received pieces against stream ``seed``, in order.

    ``feed`` compares each piece with the stream at the same offset; the
    first mismatch is kept (``bad_offset``), so the test can say exactly
    which byte was lost, duplicated or corrupted.
    """

    def __init__(self, seed: int) -> None:
        self.stream = Stream(seed)
        self.received = 0
        self.bad_offset: int | None = None

    def feed(self, piece: bytes | memoryview) -> None:
        n = len(piece)
        expected = self.stream.take(n)
        if self.bad_offset is None and piece != expected:
            got = bytes(piece)
            first = next(i for i in range(n) if got[i] != expected[i])
            self.bad_offset = self.received + first
        self.received += n

    def check(self, expected_total: int | None = None) -> None:
        assert self.bad_offset is None, f"stream corrupted at byte {self.bad_offset}"
        if expected_total is not None:
            assert self.received == expected_total, (
                f"received {self.received} bytes, expected {expected_total}")


# -- peers -------------------------------------------------------------------------


class PeerThread:
    """A blocking peer in a thread inside ``link``'s namespace.

    It listens on the link's remote address, accepts one connection and runs
    ``serve(conn)``.  An exception in ``serve`` is re-raised by :meth:`join`
    unless it is a ConnectionError and ``may_be_cut_off`` is set.
    """

    def __init__(self, link: Link, serve: Callable[[socket.socket], Any], *,
                 may_be_cut_off: bool = False, rcvbuf: int | None = None) -> None:
        self.link = link
        self.serve = serve
        self.may_be_cut_off = may_be_cut_off
        self.rcvbuf = rcvbuf
        self.port = 0
        self.result: Any = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"peer-{link.name}")

    def start(self) -> PeerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("peer did not start listening")
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        try:
            enter_netns(self.link.netns)
            with socket.socket() as listener:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.link.remote, 0))
                listener.listen(1)
                listener.settimeout(30)
                self.port = listener.getsockname()[1]
                self._ready.set()
                conn, _ = listener.accept()
            # Blocking, with no timeout: ZeroCopySender's non-blocking reap
            # (recvmsg MSG_DONTWAIT) would wait out a socket timeout.
            conn.settimeout(None)
            with conn:
                self.result = self.serve(conn)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            if not (self.may_be_cut_off and _cut_off(exc)):
                self.error = exc
        finally:
            self._ready.set()

    def join(self, timeout: float = 60) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Say where: a hang here has meant a peer blocked on a window
            # the receiver never reopened (see _engine.end_connection).
            frame = sys._current_frames().get(self._thread.ident or -1)
            where = "".join(traceback.format_stack(frame)) if frame is not None else "?"
            raise AssertionError(f"peer thread hung for {timeout} s, in:\n{where}")
        if self.error is not None:
            raise self.error
        return self.result


def _cut_off(exc: BaseException) -> bool:
    """Whether ``exc`` is what a peer gets when the receiver closed first."""
    return isinstance(exc, ConnectionError) or (
        isinstance(exc, OSError) and exc.errno in (errno.ENOTCONN, errno.EPIPE))


def send_stream(conn: socket.socket, seed: int, total: int, *, zerocopy: bool = True,
                max_write: int = MiB, write_seed: int = 0) -> str:
    """Send the first ``total`` bytes of stream ``seed`` in random-sized writes.

    Returns the sha256 of what was sent; returns once the kernel released
    every zerocopy buffer (for a MSG_ZEROCOPY send over loopback or veth
    that means the receiver's socket has the bytes).
    """
    from aiozc.testing import ZeroCopySender

    sender = ZeroCopySender(conn, zerocopy=zerocopy)
    stream = Stream(seed)
    rnd = random.Random(write_seed)
    hasher = hashlib.sha256()
    left = total
    while left:
        piece = stream.take(min(left, rnd.randint(1, max_write)))
        hasher.update(piece)
        sender.send(piece)
        left -= len(piece)
    sender.flush()
    return hasher.hexdigest()


def send_writes(conn: socket.socket, seed: int, sizes: list[int], *,
                zerocopy: bool = True) -> str:
    """Send stream ``seed`` in writes of exactly ``sizes``; returns the sha256."""
    from aiozc.testing import ZeroCopySender

    sender = ZeroCopySender(conn, zerocopy=zerocopy)
    stream = Stream(seed)
    hasher = hashlib.sha256()
    for size in sizes:
        piece = stream.take(size)
        hasher.update(piece)
        sender.send(piece)
    sender.flush()
    return hasher.hexdigest()


def reset(conn: socket.socket) -> None:
    """Make close() send RST (SO_LINGER with a zero timeout)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def finish(conn: socket.socket) -> None:
    """Half-close, then wait for the receiver to close (or reset)."""
    conn.shutdown(socket.SHUT_WR)
    try:
        while conn.recv(65536):
            pass
    except ConnectionResetError:
        pass


async def connect(link: Link, port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """A connected non-blocking socket from the receiver's side of ``link``.

    ``rcvbuf`` sets SO_RCVBUF before connecting (so that the window is
    scaled to it).  Works under any asyncio loop.
    """
    import asyncio

    sock = socket.socket()
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (link.remote, port))
    except BaseException:
        sock.close()
        raise
    return sock


def connect_blocking(link: Link, port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """A connected blocking socket (for trio and anyio)."""
    sock = socket.socket()
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect((link.remote, port))
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


class PeerProcess:
    """``_peer.py`` in the link's namespace: a peer that can be SIGKILLed."""

    def __init__(self, link: Link, seed: int, *extra: str) -> None:
        tests = Path(__file__).resolve().parent.parent
        cmd = [sys.executable, "-m", "faults._peer", link.remote, str(seed), *extra]
        if link.netns is not None:
            cmd = ["ip", "netns", "exec", link.netns, *cmd]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(tests.parent), str(tests)])
        self.proc = subprocess.Popen(cmd, cwd=tests, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.kill()
            raise RuntimeError(f"peer did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.port = int(line)

    def wait_for(self, word: str) -> str:
        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            if line.startswith(word):
                return line
        raise RuntimeError(f"peer ended before {word!r}: {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        assert self.proc.returncode in (-signal.SIGKILL, 0), self.proc.returncode
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def link_down(link: Link) -> None:
    """Cut a veth link (from the namespace's side): nothing crosses it."""
    subprocess.run(["ip", "-n", str(link.netns), "link", "set", str(link.ns_dev), "down"],
                   check=True, timeout=10)


def link_up(link: Link) -> None:
    subprocess.run(["ip", "-n", str(link.netns), "link", "set", str(link.ns_dev), "up"],
                   check=True, timeout=10)
