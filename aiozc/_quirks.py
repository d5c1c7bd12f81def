"""What aiozc must know about the event loop it runs on (:class:`LoopQuirks`).

aiozc drives its sockets through public loop methods only (``add_reader``,
``add_writer``; anyio's ``wait_readable``), and the loops differ in one
respect that matters to it: what they do when epoll reports ``EPOLLERR``.

* asyncio's selector loops report the descriptor readable and writable, and,
  being level-triggered, keep reporting it until the error is collected.
* libuv (uvloop) treats ``EPOLLERR`` on a poll handle as fatal: it stops the
  handle, calls the callbacks once with an error, and never reports the
  descriptor again.  Two things raise ``EPOLLERR`` on a TCP socket: a reset
  (``SO_ERROR`` set) and a ``MSG_ZEROCOPY`` completion queued on the error
  queue.  So on such a loop the receive engine collects a pending socket
  error eagerly (after each receive that drained the queue, and before
  stopping at its per-event budget with bytes still queued), or a reset
  would leave the connection hanging; and the transport registers its
  callbacks again after each read of the error queue, or the socket would
  silently stop being watched.
* trio's ``wait_readable`` (used through anyio) keeps reporting the
  descriptor, like the selector loops.

The quirks are decided here, once per connection, from the loop's class;
every other module asks this one.  Any loop that is not asyncio's selector
loop is treated as libuv is: the safe assumption costs one
``getsockopt(SO_ERROR)`` per drained receive, and a loop that keeps
reporting errors gets nothing wrong from it.
"""

from __future__ import annotations

import asyncio
from asyncio.selector_events import BaseSelectorEventLoop
from dataclasses import dataclass

__all__ = ["LoopQuirks", "quirks_of", "running_asyncio_loop", "running_quirks"]


@dataclass(frozen=True, slots=True)
class LoopQuirks:
    """The event-loop behaviours aiozc adapts to."""

    #: The loop stops watching a socket after reporting EPOLLERR once:
    #: collect socket errors eagerly instead of waiting to be told.
    collect_errors_eagerly: bool
    #: ... which a MSG_ZEROCOPY completion also raises: register the
    #: socket's callbacks again after each read of the error queue.
    rearm_after_errqueue: bool


#: asyncio's selector loops, and trio: EPOLLERR is reported until handled.
LEVEL_TRIGGERED = LoopQuirks(collect_errors_eagerly=False, rearm_after_errqueue=False)
#: libuv (uvloop), and any loop not known to report EPOLLERR repeatedly.
ONE_SHOT_ERRORS = LoopQuirks(collect_errors_eagerly=True, rearm_after_errqueue=True)


def quirks_of(loop: asyncio.AbstractEventLoop) -> LoopQuirks:
    """The quirks of an asyncio event loop."""
    return LEVEL_TRIGGERED if isinstance(loop, BaseSelectorEventLoop) else ONE_SHOT_ERRORS


def running_quirks() -> LoopQuirks:
    """The quirks of whatever runs the current task (for aiozc.anyio).

    An asyncio loop is judged by :func:`quirks_of`; with no asyncio loop
    running, the caller runs on trio (anyio's other backend).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return LEVEL_TRIGGERED
    return quirks_of(loop)


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running the current task, or None on any other
    library (trio, including trio in guest mode on an asyncio host, where
    an asyncio loop runs in the same thread but the task is trio's).

    Decided as anyio decides it: by sniffio where it is installed (trio
    needs it), else by whether an asyncio loop runs in this thread.
    """
    try:
        import sniffio
    except ModuleNotFoundError:
        pass
    else:
        try:
            if sniffio.current_async_library() != "asyncio":
                return None
        except sniffio.AsyncLibraryNotFoundError:
            return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
