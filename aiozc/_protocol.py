"""The protocol class that opts in to zerocopy views (:class:`ZCProtocol`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._transport import ZCTransport

__all__ = ["AnyProtocol", "ZCProtocol"]


# At run time a ZCProtocol is an asyncio.BaseProtocol (as
# asyncio.BufferedProtocol is), so loops and libraries accept it, and not an
# asyncio.Protocol, whose data_received takes bytes.  Type checkers are shown
# a base class of its own instead (_Base): a type checker checks an override
# against every base class, and BaseProtocol declares
# connection_made(BaseTransport), which would make the natural
# connection_made(self, transport: aiozc.ZCTransport) an [override] error in
# every user's program, with no annotation that satisfies both.  So
# ZCProtocol owns all its signatures, and aiozc's own functions and loops
# (the only ones that give a ZCProtocol its transport) accept it by type.
if TYPE_CHECKING:
    class _Base:
        def connection_lost(self, exc: Exception | None) -> None: ...
        def pause_writing(self) -> None: ...
        def resume_writing(self) -> None: ...
else:
    _Base = asyncio.BaseProtocol


class ZCProtocol(_Base):
    """A protocol that receives read-only memoryviews.

    Subclass it and override :meth:`data_received` (and, as with
    ``asyncio.Protocol``, :meth:`connection_made`, :meth:`eof_received`,
    ``connection_lost``, ``pause_writing`` and ``resume_writing``).  Build
    connections with :func:`aiozc.create_connection`, :func:`aiozc.create_server`,
    :func:`aiozc.connect_accepted_socket`, or the methods of a loop from
    :func:`aiozc.new_event_loop`; each gives a ZCProtocol a
    :class:`aiozc.ZCTransport`.

    At run time it is an ``asyncio.BaseProtocol`` (as
    ``asyncio.BufferedProtocol`` is), not an ``asyncio.Protocol``.  Its
    methods take a memoryview and a :class:`~aiozc.ZCTransport`, and type
    checkers see it as a class of its own, so overrides annotated that way
    type-check without casts or ignores.
    """

    #: Which writes ``ZCConfig.batch_writes`` sends together: ``"event"``
    #: (the default) those made while one read event is delivered (every
    #: ``data_received`` of one wake-up); ``"iteration"`` those made in one
    #: loop iteration after the first write since the last read event,
    #: sent at the start of the next iteration, for a protocol that hands
    #: data to tasks that answer (aiozc's stream reader does).
    batch_scope: str = "event"

    def connection_made(self, transport: ZCTransport) -> None:
        """Called when the connection is made, with its :class:`~aiozc.ZCTransport`.

        The default does nothing.
        """

    def data_received(self, data: memoryview) -> None:
        """Called with each piece of the stream, in order, as a read-only view.

        The view may lie over pages the kernel mapped into the process, or
        over a pooled copy buffer.  It stays valid until you release it
        (``data.release()``, ``with data:``, or dropping every reference to
        it and to its slices); until then it pins its memory, up to
        ``ZCConfig.max_pinned_bytes`` per connection.  Copy
        (``bytes(data)``) what you keep for long.  Writing to it raises
        ``TypeError``.  The default does nothing.
        """

    def eof_received(self) -> bool | None:
        """Called when the peer has finished sending (its FIN was reached).

        As with ``asyncio.Protocol``: return a true value to keep the
        connection open for writing (half-close); by default (None) the
        transport closes itself.
        """
        return None

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



#: What aiozc's connection functions accept from a protocol factory: a
#: :class:`ZCProtocol` (zerocopy transport) or any asyncio protocol (the
#: loop's usual transport).
AnyProtocol = ZCProtocol | asyncio.BaseProtocol
