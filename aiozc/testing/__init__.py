"""Test helpers for code that uses aiozc: peers the receiver can be tested against.

:class:`ZeroCopySender` is a blocking ``MSG_ZEROCOPY`` sender, the far end
of a connection in aiozc's demo, tests and benchmarks::

    from aiozc.testing import ZeroCopySender

    sender = ZeroCopySender(sock)          # sock: a connected TCP socket
    sender.send(payload)                   # bytes: kept until the kernel is done
    sender.flush()                         # wait for every completion

Over loopback (or veth), data sent with ``MSG_ZEROCOPY`` reaches the
receiver in fresh whole pages that ``TCP_ZEROCOPY_RECEIVE`` can map; data
sent with plain ``send()`` does not (docs/kernel.md, "Which pages map").
``ZeroCopySender(sock, zerocopy=False)`` is the second kind of peer, so a
test switches between them with one flag.

To run a test suite on aiozc's event loops: :func:`loop_factories` (what
the pytest plugin :mod:`aiozc.testing.pytest_plugin` hands pytest-asyncio)
and :func:`anyio_backends` (for anyio's pytest plugin).
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import select
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, final

from .._errqueue import MSG_ZEROCOPY, SO_ZEROCOPY, drain_completions
from .._loop import loop_factory

__all__ = ["ZeroCopySender", "anyio_backends", "loop_factories"]


def loop_factories() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Factories of aiozc's event loops, by name, for a test runner.

    ``"asyncio"``: the stdlib selector loop; ``"uvloop"``: uvloop, if it is
    installed; both zerocopy-aware (:func:`aiozc.loop_factory`).  The shape
    of pytest-asyncio's ``pytest_asyncio_loop_factories`` hook (see
    :mod:`aiozc.testing.pytest_plugin`).
    """
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": loop_factory(),
    }
    if importlib.util.find_spec("uvloop") is not None:
        factories["uvloop"] = loop_factory(use_uvloop=True)
    return factories


def anyio_backends(*, trio: bool | None = None) -> list[Any]:
    """Values for anyio's ``anyio_backend`` fixture: every backend aiozc runs on.

    asyncio on each loop of :func:`loop_factories` (``("asyncio",
    {"loop_factory": ...})``), and ``"trio"`` when trio is installed (or
    as ``trio`` says).  Use them as the fixture's params::

        @pytest.fixture(params=aiozc.testing.anyio_backends())
        def anyio_backend(request):
            return request.param
    """
    backends: list[Any] = [
        ("asyncio", {"loop_factory": factory}) for factory in loop_factories().values()
    ]
    if trio is None:
        trio = importlib.util.find_spec("trio") is not None
    if trio:
        backends.append("trio")
    return backends


@final
class ZeroCopySender:
    """Send ``bytes`` over a connected blocking TCP socket with ``MSG_ZEROCOPY``.

    Two kernel rules shape it (docs/kernel.md, "MSG_ZEROCOPY completions"):

    * every buffer must stay alive and unchanged until the kernel's
      completion for it arrives on the socket's error queue (on loopback
      the copy happens at delivery, long after ``sendmsg`` returned), so the
      sender keeps a reference to each ``bytes`` object until then;
    * completions must be reaped, or ``sendmsg`` starts failing with
      ENOBUFS once the socket's option memory is full.

    ``zerocopy=False`` sends the same way with plain ``sendmsg`` (a peer
    whose pages cannot be mapped).  The socket may be blocking or have a
    timeout; reaping never waits on it.
    """

    def __init__(self, sock: socket.socket, *, zerocopy: bool = True) -> None:
        """Wrap ``sock``, setting ``SO_ZEROCOPY`` on it unless ``zerocopy`` is false."""
        self._sock = sock
        self._zerocopy = zerocopy
        if zerocopy:
            sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        self._next_id = 0
        # (notification id, buffer) for every zerocopy sendmsg not yet
        # completed, in id order.
        self._held: deque[tuple[int, bytes]] = deque()
        self._done_below = 0  # every id below this has completed
        self._done_ranges: list[tuple[int, int]] = []
        #: Completion notifications reaped, and how many of them said the
        #: kernel copied the data after all.
        self.completions = 0
        self.copied_completions = 0
        #: Payload bytes sent.
        self.bytes_sent = 0

    def send(self, data: bytes) -> None:
        """Send all of ``data``, keeping it referenced until the kernel is done."""
        if not isinstance(data, bytes):
            raise TypeError("ZeroCopySender.send() takes bytes (immutable), "
                            f"not {type(data).__name__}")
        view = memoryview(data)
        flags = MSG_ZEROCOPY if self._zerocopy else 0
        while view:
            try:
                n = self._sock.sendmsg([view], [], flags)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS and self._held:
                    self._reap(block=True)
                    continue
                raise
            if self._zerocopy:
                self._held.append((self._next_id, data))
                self._next_id += 1
            self.bytes_sent += n
            view = view[n:]
            if self._held:
                self._reap(block=False)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until the kernel has released every buffer sent so far.

        Raises ``TimeoutError`` if ``timeout`` seconds pass with no
        completion arriving while sends are still outstanding.
        """
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLERR)
        while self._held:
            if not poller.poll(int(timeout * 1000)):
                raise TimeoutError(
                    f"{len(self._held)} MSG_ZEROCOPY sends not completed in {timeout}s"
                )
            self._reap(block=False)

    @property
    def pending(self) -> int:
        """Sends whose buffers the kernel may still be reading."""
        return len(self._held)

    def _reap(self, *, block: bool) -> None:
        if block:
            # Wait for a completion: POLLERR (select()'s except set would
            # wait for POLLPRI, which never comes, for the whole timeout).
            poller = select.poll()
            poller.register(self._sock.fileno(), 0)  # POLLERR is always reported
            poller.poll(1000)
        # A socket with a timeout (settimeout(t), t > 0) makes Python poll
        # for POLLIN before every recvmsg, whatever the flags say, so an
        # empty error queue would block for the whole timeout.  Its file is
        # already O_NONBLOCK in that mode, so timeout 0 for the reap changes
        # nothing the kernel sees.
        timeout = self._sock.gettimeout()
        if timeout:
            self._sock.settimeout(0.0)
        try:
            self._drain_errqueue()
        finally:
            if timeout:
                self._sock.settimeout(timeout)

    def _drain_errqueue(self) -> None:
        for completion in drain_completions(self._sock):
            if completion is None:
                continue
            lo, hi, copied = completion
            self.completions += 1
            if copied:
                self.copied_completions += 1
            self._complete(lo, hi)

    def _complete(self, lo: int, hi: int) -> None:
        # Ids arrive as inclusive ranges, usually in order; an out-of-order
        # range waits in _done_ranges until the gap before it fills.  (Ids
        # are 32-bit in the kernel; this sender never makes 2**32 sends.)
        self._done_ranges.append((lo, hi))
        self._done_ranges.sort()
        while self._done_ranges and self._done_ranges[0][0] <= self._done_below:
            _, hi = self._done_ranges.pop(0)
            self._done_below = max(self._done_below, hi + 1)
        while self._held and self._held[0][0] < self._done_below:
            self._held.popleft()
