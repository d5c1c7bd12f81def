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

    The comments beside the defaults quote ``python -m benchmarks.tune``
    on the project's machines (Linux 6.18, x86_64, 2 vCPUs, 4 KiB pages;
    full tables in docs/tuning.md): receiver CPU per MB, medians of 15
    interleaved runs paired against the default, with a sink that CRC32s
    every byte; ranges are over four full runs of the benchmark.
    """

    # ``auto`` decides per connection, from measurement, whether mapping or
    # copying is cheaper (see ``_policy.pyx``, "Choosing a mode").  On the
    # project's virtual machines mapping costs ~154 us/MB of receiver CPU
    # against ~127 us/MB for copying, ~332 against ~215 once every byte is
    # read (docs/kernel.md, "What it costs here"), so ``auto`` settles on
    # copying there; on bare metal the kernel's own test program reports
    # the reverse, and ``auto`` maps.
    zerocopy: ZerocopyPolicy = "auto"

    # Address space reserved per connection for mapped pages (one mmap() of
    # the socket); it bounds the mapped memory views can pin.  Not tuned by
    # measurement but derived: 32 regions of 512 KiB leave 27 free for the
    # application to hold while 4 wait for the batched zap and 1 fills, and
    # cost only address space when idle (1,000 connections reserve 16 GiB of
    # the 128 TiB x86_64 user address space).
    window_size: int = 16 * MiB

    # The window is carved into regions; a region is recycled (zapped and
    # reused) once every view over it has been released.  Measured against
    # 512 KiB: 128 KiB regions are within noise (-3.8 to +15.5%) for 4x the
    # madvise calls; 2 MiB regions cost +14.3 to +24.6% in every run.
    region_size: int = 512 * KiB

    # Bytes asked of the kernel per receive call, mapped or copied (a copy
    # slab holds four).  Measured against 256 KiB: 64 KiB costs +4.5 to
    # +13% when mapping and is within noise (-4.3 to +3.5%) when copying;
    # 1 MiB saves nothing measurable (-0.4 to +4.5%) while pinning 4x more
    # memory per held view.  256 KiB is also what CPython's selector
    # transport reads per call.
    receive_size: int = 256 * KiB

    # The hybrid copy buffer handed to TCP_ZEROCOPY_RECEIVE.  The kernel
    # uses it twice: a queue of at most this many bytes is copied whole in
    # the one call (so it is also the small-read threshold: such reads never
    # map), and the unaligned straggler after the mapped pages (~4 KiB per
    # 64 KiB skb on loopback) is copied into it.  Measured against 16 KiB:
    # none at all costs +5.8 to +14.5% (a second recv() per call: ~31
    # calls/MB instead of 15.3); 4 KiB +0.6 to +6.1%; 64 KiB is as cheap
    # (-1.9 to +4.9%) but maps only 86.6-88.9% of the bytes instead of
    # 93.8%, because whole queues under 64 KiB are copied, not mapped.
    copybuf_size: int = 16 * KiB

    # Upper bound on memory the application's live views may pin (mapped
    # pages plus pooled copy buffers).  Past it, new data arrives in plain
    # heap buffers (``on_exhausted='copy'``) or reading pauses until views
    # are released (``'pause'``).  The bound is checked when a region or a
    # slab is taken for receiving, before the views over it pin it, so the
    # pinned total can pass it by at most one region and one copy slab.
    # A policy bound, not a tuned one: 64 MiB
    # is the whole window plus 192 copy slabs, far above what an
    # application that releases views within a frame or two ever pins.
    max_pinned_bytes: int = 64 * MiB

    on_exhausted: ExhaustedPolicy = "copy"

    # ``auto`` probes each mode for this many bytes before comparing their
    # measured CPU cost per byte.  Measured: a first probe of 4 MiB per mode
    # picked the cheaper mode in 89-100% of 225 pairings per run (the modes
    # differ by 30-45% here, far more than a probe's error), and the
    # expected cost of probing plus wrong decisions at 4 MiB was within
    # 1.5 us/MB of the best probe size (2, 4 or 8 MiB, depending on the run).
    probe_bytes: int = 4 * MiB

    # ``auto`` copies a connection's first bytes, untimed, and probes only
    # once this much has arrived.  A probe costs two extra system calls per
    # receive (the thread's CPU clock has no vDSO) and maps the 16 MiB
    # window; a connection that carries little (small RPC requests, the idle
    # majority of a server's connections, a short burst) never repays that,
    # and mapping only pays on big transfers anyway.  1 MiB is four default
    # receives: past one burst, short of any bulk transfer.  0 probes from
    # the first byte.
    probe_after_bytes: int = 1 * MiB

    # How long ``auto`` keeps its decision before probing again.  With 4 MiB
    # probes, 256 MiB sends 1.6% of the bytes through the losing mode (1-2
    # us/MB at the gap measured between the modes here) while
    # following a peer that changes behaviour within ~0.1 s at loopback
    # speeds.  Not varied by the benchmark.
    reprobe_bytes: int = 256 * MiB

    # ``auto`` stops mapping when less than this fraction of probed bytes
    # could be mapped.  Measured: a plain send() peer over loopback maps
    # 0.0%, a MSG_ZEROCOPY peer 93.8%; any threshold between separates them.
    min_mapped_fraction: float = 0.5

    # -- sending ---------------------------------------------------------
    #
    # Writes made while a read event is handled (every data_received call
    # of one wake-up) leave together in one send() when it ends, instead of
    # one send() and one segment each: the answers to pipelined requests
    # cost the client one wake-up.  False sends each write at once, as
    # asyncio's transports do.
    batch_writes: bool = True

    #
    # ``ZCTransport.write()`` sends an immutable buffer (``bytes``, or a
    # read-only view aiozc handed out) with ``MSG_ZEROCOPY``: the kernel
    # sends from the buffer's own pages and the transport holds the buffer
    # until the kernel's completion notification releases it.  ``auto``
    # does so from ``send_zerocopy_threshold`` bytes up, and falls back to
    # plain sends once the kernel reports it copied anyway; ``always`` sends
    # every immutable buffer that way and never falls back (the peer of a
    # test that wants mappable pages over loopback); ``never`` sends every
    # write plainly, as asyncio does.  Mutable buffers (bytearray, writable
    # views) are always copied: the application may change them as soon as
    # write() returns.
    send_zerocopy: ZerocopyPolicy = "auto"

    # Smallest write ``auto`` sends with MSG_ZEROCOPY.  Measured with
    # ``python -m benchmarks.send_threshold`` (docs/send_threshold.md) on a
    # path where nothing copies a zerocopy send (UDP into a veth whose peer
    # is down), sender CPU per send: plain 2.0 us + 0.064 us/KiB; zerocopy
    # through aiozc's ZeroCopySendTracker, reaped after every send,
    # 4.4 us + 0.009 us/KiB.  They cross at 44.5 KiB, and every further
    # microsecond per send moves the crossing by 18 KiB.  A transport that
    # gets one write per event-loop iteration also pays one wake-up per
    # completion: 1.2 us for the engine's receive call that finds nothing
    # (stdlib loop), which puts the crossing at ~66 KiB, hence 64 KiB.  On
    # uvloop the re-arm after each wake-up adds 4.5 us more (~150 KiB for
    # one write per iteration), but the kernel coalesces the completions of
    # consecutive sends, and reaped 16 sends at a time the crossing falls
    # to 11 KiB, the ~10 KB the kernel documentation gives.
    send_zerocopy_threshold: int = 64 * KiB

    # ``auto`` falls back to plain sends after this many consecutive sends
    # whose completion said the kernel copied them (any completion that did
    # not copy resets the count).  On loopback and veth every completion is
    # copied (docs/send_threshold.md, part 2: 100% of them), and each copied
    # send costs +7 to +80 us of sender CPU over a plain one at 64 KiB to
    # 1 MiB, so 8 of them cost under 1 ms per connection.  What makes a path
    # copy (local delivery, a device without scatter-gather, a packet tap)
    # lasts, so waiting for more gains little; 8 rather than 1 keeps one
    # odd completion from deciding for the connection's lifetime.
    send_zerocopy_copied_limit: int = 8

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
        if self.probe_after_bytes < 0:
            raise ValueError("probe_after_bytes must not be negative (0: probe at once)")
        if not 0.0 <= self.min_mapped_fraction <= 1.0:
            raise ValueError("min_mapped_fraction must be between 0 and 1")
        if self.send_zerocopy not in ("auto", "always", "never"):
            raise ValueError(
                "send_zerocopy must be 'auto', 'always' or 'never', "
                f"not {self.send_zerocopy!r}"
            )
        if self.send_zerocopy_threshold < 0:
            raise ValueError("send_zerocopy_threshold must not be negative")
        if self.send_zerocopy_copied_limit < 1:
            raise ValueError("send_zerocopy_copied_limit must be at least 1")
