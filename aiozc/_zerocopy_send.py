"""``MSG_ZEROCOPY`` sends for :class:`~aiozc.ZCTransport` (:class:`ZeroCopySendTracker`).

One job: decide which writes go zerocopy, make those sends, and hold each
one's buffer until the kernel says it is done with it.  The transport owns
the write queue, the event-loop registrations and flow control; this module
knows nothing of event loops.

The kernel contract (``Documentation/networking/msg_zerocopy.rst``, and
``tcp_sendmsg_locked`` / ``msg_zerocopy_realloc`` in the 6.18 source;
docs/kernel.md, "MSG_ZEROCOPY completions"; the completion format itself
is read in ``_errqueue.py``):

* ``SO_ZEROCOPY`` must be set on the socket first; without it the kernel
  ignores ``MSG_ZEROCOPY`` silently (and sends no notification).
* Every ``send(MSG_ZEROCOPY)`` that moves at least one byte consumes one
  notification id from a per-socket 32-bit counter, a partial send
  included; a send that moves nothing (EAGAIN, or an error before the first
  byte) gives its id back.  Ids start at 0.
* When the kernel no longer needs the pages of a run of sends it queues a
  notification on the socket's error queue: a ``sock_extended_err`` with
  ``ee_origin = SO_EE_ORIGIN_ZEROCOPY`` and the inclusive id range
  ``[ee_info, ee_data]``.  Consecutive ranges are coalesced into the
  notification still queued, so one ``recvmsg(MSG_ERRQUEUE)`` can complete
  thousands of sends.  Ranges usually arrive in order, but need not.
* ``ee_code & SO_EE_CODE_ZEROCOPY_COPIED``: the kernel copied the data
  after all (local delivery over loopback or veth, a device without
  scatter-gather, a packet tap).  For a coalesced notification the flag is
  the first range's.
* Until the notification, the kernel may still read the pages: on loopback
  the copy happens at delivery, long after ``send()`` returned.  A buffer
  freed or changed before then puts other bytes on the wire.  Hence the
  hold, and hence only immutable buffers qualify.
* Each send in flight holds a notification skb charged to the socket's
  option memory (``net.core.optmem_max``), and, without CAP_IPC_LOCK, its
  pages count against RLIMIT_MEMLOCK.  When either is full the send fails
  with ENOBUFS before moving a byte: that write is sent by copy instead.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Final, Literal, final

from ._config import ZCConfig
from ._errqueue import MSG_ZEROCOPY, SO_ZEROCOPY, drain_completions
from ._pool import is_pool_view

__all__ = ["ZeroCopySendTracker", "immutable_view"]

_ID_MASK: Final = 0xFFFFFFFF


def immutable_view(data: bytes | bytearray | memoryview) -> memoryview | None:
    """A new read-only byte view of ``data`` if nobody can change it, else None.

    Immutable: ``bytes`` (and subclasses), and read-only, C-contiguous
    memoryviews whose exporter is a ``bytes`` or one of aiozc's own receive
    chunks (so every view a ZCProtocol or a stream reader hands out
    qualifies, slices included).  A read-only view of anything else (a
    read-only ``mmap``, numpy with ``writeable=False``) does not: its
    owner can still change the memory underneath.

    The view is new so that the caller's ``release()`` of its own view (the
    ``with data:`` idiom) cannot end the hold: both views share the
    exporter's buffer, which stays exported until the last one goes.
    """
    if isinstance(data, bytes):
        return memoryview(data)
    if not isinstance(data, memoryview) or not data.readonly or not data.c_contiguous:
        return None
    obj = data.obj
    if not (isinstance(obj, bytes) or is_pool_view(data)):
        return None
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


@final
class ZeroCopySendTracker:
    """One socket's ``MSG_ZEROCOPY`` sends: the holds, the reaping, the policy.

    ``view_for(data)`` says whether a write goes zerocopy (and gives the
    view to send and hold); ``send(view)`` sends it; ``reap()`` reads the
    error queue and releases every buffer whose sends completed;
    ``release_all()`` drops every hold at once when the kernel can no longer
    read the pages.  Each buffer is released exactly once, by whichever
    comes first.
    """

    __slots__ = (
        "_sock", "_policy", "_threshold", "_copied_limit", "_armed", "_next_id",
        "_held", "_copied_run", "active", "min_size", "fallback_reason", "pending_bytes",
        "bytes_zerocopy", "bytes_copied", "bytes_buffered", "send_calls", "completions_copied",
        "enobufs", "notifications",
    )

    def __init__(self, sock: socket.socket, config: ZCConfig) -> None:
        self._sock = sock
        self._policy: Literal["auto", "always", "never"] = config.send_zerocopy
        self._threshold = 0 if self._policy == "always" else config.send_zerocopy_threshold
        self._copied_limit = config.send_zerocopy_copied_limit
        self._armed = False  # SO_ZEROCOPY set
        self._next_id = 0  # the id the kernel gives the next zerocopy send
        # id -> (bytes sent, the view held); ids are the kernel's u32s.
        self._held: dict[int, tuple[int, memoryview]] = {}
        self._copied_run = 0
        #: Whether eligible writes go zerocopy now.
        self.active = self._policy != "never"
        #: The smallest write that may go zerocopy: the threshold while
        #: active, else ``sys.maxsize`` (one comparison on every write
        #: spares small writes the call to :meth:`view_for`).
        self.min_size = self._threshold if self.active else sys.maxsize
        #: Why they do not (None while they do).
        self.fallback_reason: str | None = (
            None if self.active else "send_zerocopy='never'"
        )
        #: Bytes of the sends still held (sent, not yet completed).
        self.pending_bytes = 0
        #: Bytes accepted with MSG_ZEROCOPY, and bytes sent by plain send()
        #: (the transport adds its own plain sends here).
        self.bytes_zerocopy = 0
        self.bytes_copied = 0
        #: Bytes the transport copied into its write queue (it counts them).
        self.bytes_buffered = 0
        #: send() calls that carried write() bytes, zerocopy or not (the
        #: transport counts its plain ones here too).
        self.send_calls = 0
        #: Zerocopy sends whose completion said the kernel copied.
        self.completions_copied = 0
        #: Zerocopy sends refused with ENOBUFS and sent by copy.
        self.enobufs = 0
        #: Error-queue notifications read so far.
        self.notifications = 0

    @property
    def pending(self) -> int:
        """Zerocopy sends whose buffers the kernel may still read."""
        return len(self._held)

    def view_for(self, data: bytes | bytearray | memoryview) -> memoryview | None:
        """The view to send zerocopy and hold, or None: send ``data`` by copy."""
        if not self.active:
            return None
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size < self._threshold:
            return None
        view = immutable_view(data)
        if view is None or (not self._armed and not self._arm()):
            return None
        return view

    def _arm(self) -> bool:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        except OSError as exc:
            # EOPNOTSUPP: not TCP or UDP (AF_UNIX); ENOPROTOOPT: a kernel
            # older than 4.14.
            self.active = False
            self.min_size = sys.maxsize
            self.fallback_reason = (
                f"the socket refused SO_ZEROCOPY ({os.strerror(exc.errno or 0)}): "
                "every write is sent by copy"
            )
            return False
        self._armed = True
        return True

    def send(self, view: memoryview) -> int:
        """Send ``view`` with MSG_ZEROCOPY, holding it if the kernel took any of it.

        Returns the bytes sent.  Raises BlockingIOError when the socket
        takes nothing (nothing is held then), and any other socket error.
        ENOBUFS (option memory or the locked-memory limit full) sends the
        bytes by plain ``send()`` instead, for this call only.
        """
        self.send_calls += 1
        try:
            n = self._sock.send(view, MSG_ZEROCOPY)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            self.enobufs += 1
            n = self._sock.send(view)
            self.bytes_copied += n
            return n
        if n > 0:
            self._held[self._next_id] = (n, view)
            self._next_id = (self._next_id + 1) & _ID_MASK
            self.pending_bytes += n
            self.bytes_zerocopy += n
        return n

    def reap(self) -> int:
        """Read the completions queued; release their buffers.

        Returns the number of notifications read (0: the error queue was
        empty).  Stops as soon as nothing is held, which saves the
        ``recvmsg`` that would only say EAGAIN.
        """
        held = self._held
        if not held:
            return 0
        read = 0
        try:
            for completion in drain_completions(self._sock):
                read += 1  # any message read counts: it was an EPOLLERR
                if completion is not None:
                    self._complete(*completion)
                if not held:
                    break
        except OSError:
            # A pending socket error is reported here first (sock_error
            # clears it); the receive or send path reports it again
            # through its own call, or the connection is closing.
            pass
        self.notifications += read
        return read

    def _complete(self, lo: int, hi: int, copied: bool) -> None:
        held = self._held
        count = ((hi - lo) & _ID_MASK) + 1
        for i in range(count):
            entry = held.pop((lo + i) & _ID_MASK, None)
            if entry is not None:  # each id is popped once: released once
                self.pending_bytes -= entry[0]
                _release(entry[1])
        if not copied:
            self._copied_run = 0
            return
        self.completions_copied += count
        self._copied_run += count
        if (self._policy == "auto" and self.active
                and self._copied_run >= self._copied_limit):
            self.active = False
            self.min_size = sys.maxsize
            self.fallback_reason = (
                f"the kernel copied {self._copied_run} MSG_ZEROCOPY sends in a row "
                "(SO_EE_CODE_ZEROCOPY_COPIED: loopback, veth, a device without "
                "scatter-gather or a packet tap), so writes are sent by copy"
            )

    def release_all(self) -> int:
        """Drop every hold (the kernel can no longer read the pages); returns how many."""
        held = self._held
        count = len(held)
        entries = list(held.values())
        held.clear()
        self.pending_bytes = 0
        for _, view in entries:
            _release(view)
        return count


def _release(view: memoryview) -> None:
    # Our own view (immutable_view made it), so nobody else exports it and
    # release() cannot fail; releasing at once, rather than when the last
    # reference goes, returns a receive chunk to its pool now.
    try:
        view.release()
    except BufferError:  # pragma: no cover - only if someone exported our view
        pass
