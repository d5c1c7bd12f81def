"""Per-connection receive and send statistics (:class:`ZCStats`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, final

__all__ = ["ZCStats"]


@final
@dataclass(frozen=True, slots=True)
class ZCStats:
    """A snapshot of one connection's receive and send counters.

    Take a new one with ``transport.stats`` (or
    ``transport.get_extra_info('aiozc_stats')``); the object itself does not
    change.
    """

    #: Payload bytes handed to the protocol so far, by every path.
    bytes_received: int
    #: Of those, bytes delivered in pages the kernel mapped (no copy).
    bytes_mapped: int
    #: Of those, bytes the kernel copied (hybrid copy buffer, recv()).
    bytes_copied: int
    #: Receive system calls made (getsockopt and recv together).
    receive_calls: int
    #: Views handed out and not yet released by the application.
    views_outstanding: int
    #: Memory (mapped pages and pooled copy buffers) held by those views.
    bytes_pinned: int
    #: How the connection receives right now: ``'zerocopy'`` or ``'copy'``.
    mode: Literal["zerocopy", "copy"]
    #: Why the connection copies right now (``zerocopy='never'``, the
    #: kernel or socket refused, or what ``auto`` measured).  In
    #: ``'zerocopy'`` mode None while pages map; if bytes arrived and none
    #: of them could be mapped (``bytes_mapped == 0``), it says so and why
    #: that happens, though the connection keeps trying to map.
    fallback_reason: str | None
    #: madvise(MADV_DONTNEED) calls made to recycle regions, and regions
    #: recycled by them (more regions than calls means batching worked).
    zap_calls: int
    regions_recycled: int
    #: Receives that could not use their usual memory because views pinned
    #: it: a mapping receive that found every region held (it copied
    #: instead), or a copy that found every pooled buffer held (it used a
    #: plain heap buffer, or paused with ``on_exhausted='pause'``).
    exhausted_receives: int
    #: Times ``auto`` switched between zerocopy and copy.
    mode_switches: int
    #: Bytes a stream reader copied to join a frame that spanned several
    #: received views (0 for a plain protocol, which cuts no frames).
    bytes_assembled: int = 0

    # -- sending (ZCTransport.write; zero for a stream that does not write
    # through a ZCTransport) --

    #: Payload bytes the kernel accepted with ``MSG_ZEROCOPY``: sent from
    #: the application's own buffers, unless a completion then reported
    #: that the kernel copied them (see ``zerocopy_completions_copied``).
    bytes_sent_zerocopy: int = 0
    #: Payload bytes sent with plain ``send()``: copied into the kernel.
    bytes_sent_copied: int = 0
    #: ``send()`` calls that carried written bytes.  Fewer than writes
    #: where writes were batched (``ZCConfig.batch_writes``: the writes of
    #: one read event leave together) or joined in the write queue.
    send_calls: int = 0
    #: Bytes the transport copied into its own write buffer because the
    #: socket did not take them at once, or because they were written
    #: during a read event (batched): the only copy of outgoing data aiozc
    #: makes in user space.  Writes that go zerocopy wait in the
    #: queue as views of the caller's buffer instead, uncopied.
    bytes_write_buffered: int = 0
    #: ``MSG_ZEROCOPY`` sends whose completion has not arrived yet; the
    #: transport holds a reference to each one's buffer until it does.
    zerocopy_sends_pending: int = 0
    #: ``MSG_ZEROCOPY`` sends whose completion said the kernel copied the
    #: data after all (``SO_EE_CODE_ZEROCOPY_COPIED``: loopback, veth, a
    #: device without scatter-gather, a packet tap).
    zerocopy_completions_copied: int = 0
    #: ``MSG_ZEROCOPY`` sends refused with ENOBUFS (the socket's option
    #: memory or the locked-memory limit was full) and sent by copy instead.
    zerocopy_enobufs: int = 0
    #: Why large immutable writes are sent by copy now
    #: (``send_zerocopy='never'``, the socket refused ``SO_ZEROCOPY``, or
    #: ``auto`` saw the kernel copy); None while they go zerocopy.
    send_fallback_reason: str | None = None

    @property
    def mapped_fraction(self) -> float:
        """Share of received bytes that arrived in mapped pages (0.0 to 1.0)."""
        return self.bytes_mapped / self.bytes_received if self.bytes_received else 0.0
