"""Per-connection receive statistics (:class:`ZCStats`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, final

__all__ = ["ZCStats"]


@final
@dataclass(frozen=True, slots=True)
class ZCStats:
    """A snapshot of one connection's receive counters.

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
    #: kernel or socket refused, or what ``auto`` measured); None while it
    #: maps.
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

    @property
    def mapped_fraction(self) -> float:
        """Share of received bytes that arrived in mapped pages (0.0 to 1.0)."""
        return self.bytes_mapped / self.bytes_received if self.bytes_received else 0.0
