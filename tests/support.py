"""Helpers shared by the test suite: a plain module, not a conftest.

Test modules import these names with ``from support import ...`` (pytest's
default 'prepend' import mode puts tests/ on ``sys.path``, for the modules
in tests/ and for the packages tests/faults and tests/interop alike); the
fault suite's child processes get tests/ on their ``PYTHONPATH``.
tests/conftest.py keeps only the fixtures, built on these.

* ``LOOPS`` and ``loop_kind``: the event loops every asyncio test runs on
  (conftest's pytest-asyncio hook), and which one a test is running on.
* ``Echo`` and ``ZCEcho``: echo protocols, plain and zerocopy; ``Plain``,
  a plain protocol that hashes what it receives.
* ``Peer``: a blocking peer in a thread that sends with MSG_ZEROCOPY (pages
  the kernel can map) or with plain sendmsg (pages it cannot).
* ``payload``, ``sha``: reproducible bytes and their digest.
* ``wait_acked``: wait until the peer has acked every byte written.
* ``crowded``, ``watched_by_loop``, ``epoll_watchers``: run a connection
  with other aiozc connections open beside it (so that aiozc's poller, not
  the loop, watches it on uvloop), say which watches a transport, and how
  many epoll instances watch a descriptor.
* ``count_fds``, ``count_maps``, ``count_socket_maps``: leak counters.
* ``ROOT``, ``run_module``: ``python -m ...`` in the repository's root, a
  hang reported with its stacks.

It imports nothing from pytest at module level, so that the fault suite's
child processes (which import its leak counters) need no pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

import aiozc
from aiozc import ZCProtocol
from aiozc._poller import DIRECT_MAX, poller_for
from aiozc.testing import ZeroCopySender

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop,
    "uvloop": uvloop.new_event_loop,
}


def loop_kind() -> str:
    """The ``LOOPS`` name of the running loop (inside an asyncio test)."""
    return "uvloop" if isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio"


class Plain(asyncio.Protocol):
    """A plain protocol that hashes what it receives and records its end."""

    def __init__(self) -> None:
        self.hasher, self.received = hashlib.sha256(), 0
        self.exc: BaseException | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.hasher.update(data)
        self.received += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc
        self.lost.set_result(None)


class Echo(asyncio.Protocol):
    """Echoes everything; records its transport and when it is lost."""

    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class ZCEcho(Echo, ZCProtocol):
    """Echo on a zerocopy connection."""


def payload(size: int, seed: int = 0) -> bytes:
    """Reproducible random bytes."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Peer:
    """A blocking peer in a thread: sends ``data`` in random-sized writes.

    ``zerocopy=True`` sends with MSG_ZEROCOPY, so the kernel delivers whole
    pages that the receiver can map; False sends with plain sendmsg.
    ``finish`` says how the peer ends: 'shutdown' (FIN, then wait for the
    receiver to close), 'close', or 'reset' (SO_LINGER 0: RST).

    A 'reset' waits for ``connected`` first, which the test sets once its
    connect returned: what fits in the sockets' buffers (a few MiB over
    loopback, with plain sends) is sent before the client's loop has seen
    its connect complete if the loop is short of CPU, and a reset then
    makes the connect itself fail (asyncio and trio read ECONNRESET from
    SO_ERROR), outside what a test of the reset expects.
    """

    data: bytes
    zerocopy: bool = True
    finish: str = "shutdown"
    max_write: int = 1 << 20
    seed: int = 1
    sent_sha: str = ""
    error: BaseException | None = None
    listener: socket.socket = field(default_factory=socket.socket)
    thread: threading.Thread | None = None
    before_finish: threading.Event | None = None
    #: The receiver may close first: a broken pipe or reset is no error.
    may_be_cut_off: bool = False
    #: Set by the test when its connect returned (awaited by 'reset').
    connected: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port

    def start(self) -> Peer:
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                sender = ZeroCopySender(conn, zerocopy=self.zerocopy)
                rnd = random.Random(self.seed)
                view = memoryview(self.data)
                while view:
                    n = min(len(view), rnd.randint(1, self.max_write))
                    sender.send(bytes(view[:n]))
                    view = view[n:]
                sender.flush()
                self.sent_sha = sha(self.data)
                if self.before_finish is not None:
                    self.before_finish.wait(30)
                if self.finish == "reset":
                    assert self.connected.wait(30), "the test never set Peer.connected"
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                elif self.finish == "shutdown":
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(30)
                    while conn.recv(65536):
                        pass
        except BaseException as exc:  # reported by join()
            if not (self.may_be_cut_off and isinstance(exc, ConnectionError)):
                self.error = exc
        finally:
            self.listener.close()

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(60)
        assert not self.thread.is_alive(), "peer thread hung"
        if self.error is not None:
            raise self.error


def wait_acked(sock: socket.socket, timeout: float = 30.0) -> None:
    """Return once every byte written to TCP socket ``sock`` has been acked:
    it sits in the other end's socket (or was read), where a reset that
    follows cannot take it back (an RST discards only what is unacked).
    A sleep is no substitute on a loaded machine, where loopback's softirq
    work waits for ksoftirqd."""
    import fcntl
    import struct
    import termios
    import time

    deadline = time.monotonic() + timeout
    while True:
        unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                  b"\0\0\0\0"))[0]
        if unacked == 0:
            return
        assert time.monotonic() < deadline, f"{unacked} bytes still unacked after {timeout} s"
        time.sleep(0.001)


@contextlib.asynccontextmanager
async def crowded(on: bool = True) -> AsyncIterator[None]:
    """With ``on``, keep ``DIRECT_MAX`` idle aiozc connections open on the
    running loop meanwhile.  On uvloop aiozc's poller then watches the
    connections made inside with its own epoll, instead of leaving them to
    the loop (aiozc/_poller.pyx): the path most connections of a busy
    server take."""
    if not on:
        yield
        return
    idle = []
    with socket.create_server(("127.0.0.1", 0), backlog=DIRECT_MAX) as listener:
        try:
            for _ in range(DIRECT_MAX):
                transport, _ = await aiozc.create_connection(
                    ZCProtocol, "127.0.0.1", listener.getsockname()[1])
                idle.append((transport, listener.accept()[0]))
                assert watched_by_loop(transport) is True  # the loop's own
            yield
        finally:
            for transport, conn in idle:
                transport.close()
                conn.close()
            await asyncio.sleep(0)  # connection_lost


def watched_by_loop(transport: asyncio.BaseTransport) -> bool | None:
    """True if the loop watches ``transport``'s socket for reading itself,
    False if aiozc's poller's epoll does, None if nothing does."""
    sock = transport.get_extra_info("socket")
    return poller_for(asyncio.get_running_loop()).watched_by_loop(sock.fileno())


def epoll_watchers(fd: int) -> int:
    """How many epoll instances of this process watch ``fd`` (from
    /proc/self/fdinfo: the loop's, aiozc's poller's)."""
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/self/fdinfo/{name}") as f:
                n += sum(1 for line in f if line.split()[:2] == ["tfd:", str(fd)])
        except OSError:
            continue  # closed meanwhile
    return n


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def count_maps() -> int:
    """Entries in /proc/self/maps."""
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def count_socket_maps() -> int:
    """Mappings of sockets (aiozc windows): shown as ``socket:[inode]``."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "socket:[" in line)


ROOT = Path(__file__).resolve().parent.parent


def run_module(args: list[str], timeout: float,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m *args`` in the repository's root, output captured as text.

    Like ``subprocess.run(..., timeout=timeout)``, except that a run still
    going at the timeout fails the test with every thread's stack of every
    Python process it started (faulthandler, on SIGABRT to its process
    group), instead of a bare TimeoutExpired: a hang says where it hangs.
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONFAULTHANDLER"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        import pytest  # here: the module itself needs no pytest (see above)

        pytest.fail(f"`python -m {' '.join(args)}` still running after {timeout} s; "
                    f"its stacks on SIGABRT:\n--- stderr\n{err[-12000:]}\n"
                    f"--- stdout\n{out[-3000:]}", pytrace=False)
    finally:
        if proc.poll() is None:  # (an exception in this function: no orphan left)
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def inq(sock: Any) -> int:
    """Bytes queued on a socket for reading (FIONREAD)."""
    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])
