"""The protocol class that opts in to zerocopy views (:class:`ZCProtocol`)."""

from __future__ import annotations

import asyncio

__all__ = ["ZCProtocol"]


class ZCProtocol(asyncio.Protocol):
    """An ``asyncio.Protocol`` that receives read-only memoryviews.

    Subclass it and override :meth:`data_received`.  Build connections with
    :func:`aiozc.create_connection`, :func:`aiozc.create_server`,
    :func:`aiozc.connect_accepted_socket`, or the methods of a loop from
    :func:`aiozc.new_event_loop`; each gives a ZCProtocol a
    :class:`aiozc.ZCTransport`.
    """

    #: Which writes ``ZCConfig.batch_writes`` sends together: ``"event"``
    #: (the default) those made while one read event is delivered (every
    #: ``data_received`` of one wake-up); ``"iteration"`` those made in one
    #: loop iteration after the first write since the last read event,
    #: sent at the start of the next iteration, for a protocol that hands
    #: data to tasks that answer (aiozc's stream reader does).
    batch_scope: str = "event"

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        """Called with each piece of the stream, in order, as a read-only view.

        The view may lie over pages the kernel mapped into the process, or
        over a pooled copy buffer.  It stays valid until you release it
        (``data.release()``, ``with data:``, or dropping every reference to
        it and to its slices); until then it pins its memory, up to
        ``ZCConfig.max_pinned_bytes`` per connection.  Copy
        (``bytes(data)``) what you keep for long.  Writing to it raises
        ``TypeError``.

        Type checkers: ``asyncio.Protocol`` declares ``data_received(bytes)``,
        so an override taking ``memoryview`` needs
        ``# type: ignore[override]`` under mypy, as this one has.
        """

    def memory_exhausted(self) -> None:
        """Called when receiving stopped for want of memory.

        With ``ZCConfig(on_exhausted="pause")``, reading pauses once the
        views this connection's application holds pin ``max_pinned_bytes``;
        it resumes by itself as soon as one of them is released.  A protocol
        that keeps views queued while it waits for more bytes (a frame
        reader) may be holding the very memory it waits for: here it can
        release them, copying out what it must keep (``bytes(view)``).
        The default does nothing.
        """

