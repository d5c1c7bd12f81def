"""The frame reader: what a stream needs next, without I/O (:class:`FrameReader`).

Both stream layers, asyncio's (``ZCStreamReader``) and anyio's
(``ZCSocketStream``), cut frames out of the views the receive engine
delivers: "exactly n bytes", "up to this separator".  Everything about that
which does not depend on how the layer waits lives here, once: the queue of
views, receiving a big frame straight into one buffer (the engine's gather),
giving a gather up when the wait for its frame ends early, and copying the
queue out of pooled memory when the connection starved on it.  Like h11's
connection object, the reader does no I/O and knows no event loop: a driver
feeds it what the engine delivers and asks it what to do next, and gets one
of the :class:`Next` answers, which it turns into an ``await`` of its own
kind (``_streams.py``, ``anyio.py``).

A frame that is already queued never reaches the reader's methods: the
drivers test ``len(reader.buffer) >= n`` and cut it at once (one length
test and one cut per frame is all the fast path costs).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import final

from ._buffer import ViewBuffer

__all__ = ["FrameReader", "Next"]


class Next(enum.Enum):
    """What a driver must do before the frame it asked for can be cut."""

    #: The frame is queued: cut it.
    READY = enum.auto()
    #: More bytes must arrive: receive now if the socket may hold some,
    #: else wait until it is readable.
    WAIT_READABLE = enum.auto()
    #: Receiving stopped because every buffer the connection may pin is held
    #: by views the application keeps (``on_exhausted="pause"``), and none of
    #: them is the reader's own: wait until the application releases one.
    WAIT_MEMORY = enum.auto()
    #: The stream ended before the frame: its partial bytes stay queued.
    EOF = enum.auto()
    #: The connection failed (:attr:`FrameReader.error`); the bytes received
    #: before the failure stay queued and are read first.
    ERROR = enum.auto()


#: ``gather(buffer, nbytes) -> bool``: ask the engine to receive the rest of
#: an ``nbytes`` frame, whose head ``buffer`` holds, straight into one buffer
#: (it then empties ``buffer``); False if it declines.
Gather = Callable[[ViewBuffer, int], bool]


@final
class FrameReader:
    """The queue a stream cuts frames from, and what it needs next.

    ``gather`` and ``end_gather`` connect it to the receive engine (see
    :data:`Gather`; ``ZCTransport.gather``/``end_gather`` for asyncio, the
    engine's own for anyio); without them big frames are assembled from
    their pieces when complete.
    """

    __slots__ = (
        "buffer", "eof", "error", "_gather", "_end_gather", "_min_gather", "_gathering", "_asked",
        "_starved_at",
    )

    def __init__(
        self,
        gather: Gather | None = None,
        end_gather: Callable[[], None] | None = None,
    ) -> None:
        #: The views received and not yet cut, in order.  The engine's sink
        #: is ``buffer.append``.
        self.buffer = ViewBuffer()
        #: The peer's FIN was reached (the queue may still hold bytes).
        self.eof = False
        #: The connection's error, raised once the bytes before it are read.
        self.error: BaseException | None = None
        self._gather = gather
        self._end_gather = end_gather
        self._min_gather = 2  # asking for "any bytes" (1) never needs it
        self._gathering = 0  # size of the frame the engine gathers, 0: none
        self._asked = 0  # the frame size the engine was asked to gather for
        # The queue's length when receiving starved with none of the memory
        # under it (-1: not starved); anything appended since ends that.
        self._starved_at = -1

    def __len__(self) -> int:
        return len(self.buffer)

    def connect(
        self, gather: Gather, end_gather: Callable[[], None], min_size: int = 2
    ) -> None:
        """Connect to a receive engine once it exists (see the class docstring).

        ``min_size``: the smallest frame the engine gathers (its
        ``min_gather_size``); smaller ones are not offered to it.
        """
        self._gather = gather
        self._end_gather = end_gather
        self._min_gather = max(2, min_size)

    # -- fed by the driver -------------------------------------------------------

    def feed_eof(self) -> None:
        """The stream ended: nothing more will be appended."""
        self.eof = True

    def feed_error(self, exc: BaseException) -> None:
        """The connection failed with ``exc``."""
        self.error = exc

    # Receiving into pooled memory stopped: every buffer the connection may
    # pin is held by views.  If some of them are queued here, a reader that
    # waits for a frame bigger than max_pinned_bytes would wait forever for
    # a release only it can make: copy them out (ViewBuffer.unpin: each
    # byte at most once, so a frame of F bytes under a bound of B costs F,
    # not F * F / B), which frees the memory under them.
    def starved(self) -> bool:
        """Receiving starved: unpin the queue.  True if that freed memory
        (receive again), False if the application holds it all (wait)."""
        if self.buffer.unpin():
            self._starved_at = -1
            return True
        self._starved_at = len(self.buffer)
        return False

    def released(self) -> None:
        """The application released memory: receiving can go on."""
        self._starved_at = -1

    def _waiting(self) -> Next:
        if self._starved_at >= 0 and self._starved_at == len(self.buffer):
            return Next.WAIT_MEMORY
        self._starved_at = -1
        return Next.WAIT_READABLE

    # -- what next -----------------------------------------------------------------

    def need(self, nbytes: int) -> Next:
        """What must happen before ``nbytes`` bytes can be cut."""
        buffer = self.buffer
        if len(buffer) >= nbytes:
            return Next.READY
        if self.error is not None:
            return Next.ERROR
        if self.eof:
            return Next.EOF
        if nbytes >= self._min_gather and self._asked != nbytes and self._gather is not None:
            # A big frame: the engine receives its rest straight into one
            # buffer, and delivers it whole; the head moved there too.  It
            # is asked once per wait (a refusal costs a call per receive),
            # and not for frames under its minimum (a header: it would say
            # no, at three calls and a list per wait).
            self._asked = nbytes
            if self._gather(buffer, nbytes):
                self._gathering = nbytes
        if self._starved_at < 0:
            return Next.WAIT_READABLE  # (the common case, without a call)
        return self._waiting()

    def missing(self, nbytes: int) -> int:
        """How many of ``nbytes`` are still to arrive (a receive's ``want``)."""
        return max(nbytes - len(self.buffer), 0)

    def need_separator(self, separator: bytes, start: int = 0) -> tuple[Next, int]:
        """Where ``separator`` ends in the queue: ``(READY, end)``, or what
        must happen first with the offset the next search may start at."""
        found = self.buffer.find(separator, start)
        if found != -1:
            return Next.READY, found + len(separator)
        resume = max(len(self.buffer) + 1 - len(separator), 0)
        if self.error is not None:
            return Next.ERROR, resume
        if self.eof:
            return Next.EOF, resume
        return self._waiting(), resume

    def done(self, nbytes: int) -> None:
        """The wait for ``nbytes`` bytes ended, complete or not (cancelled,
        failed): a gather left open gives its bytes back to the queue."""
        self._asked = 0
        if self._gathering:
            self._gathering = 0
            if len(self.buffer) < nbytes and self._end_gather is not None:
                self._end_gather()

    def clear(self) -> None:
        """Release every queued view (the stream is closed)."""
        self.buffer.clear()
