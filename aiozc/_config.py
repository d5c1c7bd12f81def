"""Tunables of a zerocopy connection (:class:`ZCConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, final

__all__ = ["ZCConfig", "ZerocopyPolicy", "ExhaustedPolicy"]

ZerocopyPolicy = Literal["auto", "always", "never"]
ExhaustedPolicy = Literal["copy", "pause"]

_PAGE = 4096
KiB = 1024
MiB = 1024 * KiB


@final
@dataclass(frozen=True, slots=True)
class ZCConfig:
    """Tunables for one aiozc connection; pass it as ``config=``.

    Every default below was measured on the project's machines (Linux 6.18,
    x86_64, 4 KiB pages); ``benchmarks/tune.py`` reruns the measurement.
    """

    # ``auto`` decides per connection, from measurement, whether mapping or
    # copying is cheaper (see ``_receiver.pyx``, "Choosing a mode").  On the
    # project's virtual machines mapping costs ~220 us/MB of receiver CPU
    # against ~136 us/MB for copying (shared/KERNEL.md), so ``auto`` settles
    # on copying there; on bare metal the kernel's own test program reports
    # the reverse, and ``auto`` maps.
    zerocopy: ZerocopyPolicy = "auto"

    # Address space reserved per connection for mapped pages (one
    # mmap() of the socket).  It bounds how much mapped memory the
    # application's views can pin.  16 MiB = 32 regions of 512 KiB: enough
    # that the batched zap (one madvise per 4 regions) never waits for the
    # application in a bulk transfer, and only address space (not memory)
    # when idle.  1,000 connections reserve 16 GiB of the 128 TiB x86_64
    # user address space.
    window_size: int = 16 * MiB

    # The window is carved into regions; a region is recycled (zapped and
    # reused) once every view over it has been released.  512 KiB is the
    # per-call size at which shared/KERNEL.md measured the mapping cost;
    # smaller regions recycle sooner but cost more madvise calls.
    region_size: int = 512 * KiB

    # Bytes asked of the kernel per receive call, mapped or copied.  256 KiB
    # is what CPython's selector transport reads per call (max_size), and
    # what benchmarks/tune.py found to be the knee: 64 KiB costs ~15% more
    # CPU per MB in copy mode, 1 MiB saves under 2% and pins 4x more.
    receive_size: int = 256 * KiB

    # The hybrid copy buffer handed to TCP_ZEROCOPY_RECEIVE.  The kernel
    # uses it twice: a queue of at most this many bytes is copied whole in
    # the one call (the small-read threshold: such reads never map), and the
    # unaligned straggler after the mapped pages is copied into it (on
    # loopback one straggler is ~4 KiB per 64 KiB skb).  16 KiB holds any
    # single straggler, so no second recv() is needed, and keeps frames of
    # 32 KiB and up on the mapped path.
    copybuf_size: int = 16 * KiB

    # Upper bound on memory the application's live views may pin (mapped
    # pages plus pooled copy buffers).  Past it, new data arrives in plain
    # heap buffers (``on_exhausted='copy'``) or reading pauses until views
    # are released (``'pause'``).  64 MiB is 4 windows' worth: a streams
    # reader holding a few partial frames never comes near it.
    max_pinned_bytes: int = 64 * MiB

    on_exhausted: ExhaustedPolicy = "copy"

    # ``auto`` probes each mode for this many bytes before comparing their
    # measured CPU cost per byte.  4 MiB is ~120 receive calls on loopback,
    # enough for the median cost to settle within 5% (benchmarks/tune.py).
    probe_bytes: int = 4 * MiB

    # How long ``auto`` keeps its decision before probing again.  256 MiB
    # keeps probing below 2% of the bytes while following a peer that
    # changes behaviour within a fraction of a second at loopback speeds.
    reprobe_bytes: int = 256 * MiB

    # ``auto`` stops mapping when less than this fraction of probed bytes
    # could be mapped: a plain send() peer over loopback maps 0%, a
    # MSG_ZEROCOPY peer ~88-94%.
    min_mapped_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.zerocopy not in ("auto", "always", "never"):
            raise ValueError(
                f"zerocopy must be 'auto', 'always' or 'never', not {self.zerocopy!r}"
            )
        if self.on_exhausted not in ("copy", "pause"):
            raise ValueError(
                f"on_exhausted must be 'copy' or 'pause', not {self.on_exhausted!r}"
            )
        for name in ("window_size", "region_size"):
            value = getattr(self, name)
            if value <= 0 or value % _PAGE:
                raise ValueError(
                    f"{name} must be a positive multiple of the page size "
                    f"({_PAGE}), not {value}"
                )
        if self.window_size < self.region_size:
            raise ValueError("window_size must hold at least one region_size")
        if self.window_size // self.region_size > 4096:
            raise ValueError("window_size / region_size must be at most 4096 regions")
        if self.receive_size < _PAGE or self.receive_size > (1 << 30):
            raise ValueError("receive_size must be between 4 KiB and 1 GiB")
        if self.copybuf_size < 0 or self.copybuf_size > self.receive_size:
            raise ValueError("copybuf_size must be between 0 and receive_size")
        if self.max_pinned_bytes < 0:
            raise ValueError("max_pinned_bytes must not be negative")
        if self.probe_bytes <= 0 or self.reprobe_bytes <= 0:
            raise ValueError("probe_bytes and reprobe_bytes must be positive")
        if not 0.0 <= self.min_mapped_fraction <= 1.0:
            raise ValueError("min_mapped_fraction must be between 0 and 1")
