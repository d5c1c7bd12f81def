# cython: language_level=3, freethreading_compatible=False
"""How a connection receives: by mapping pages or by copying (:class:`Policy`).

``ZCConfig.zerocopy`` picks the policy: ``'never'`` copies, ``'always'``
maps whenever the kernel can, and ``'auto'`` (the default) measures both on
the connection and keeps the cheaper.  The engine (``aiozc/_engine.pyx``)
reads :attr:`Policy.mode` before each receive, times the probe's rounds, and
reports what each round received through :meth:`Policy.probe_sample` or
:meth:`Policy.steady_sample`; the policy decides.  The reason and the
number of switches end up in ``ZCStats``.
"""

from libc.errno cimport ENODEV, ENOPROTOOPT, EOPNOTSUPP
from libc.stdint cimport int64_t, uint64_t

import os as _os

# 'auto' maps only when mapping measured at least this much cheaper than
# copying.  The mapping probe charges each mapped page its first read (see
# _zc_round in _engine.pyx), but some of mapping's cost still falls outside
# the clock: the assembly of frames that straddle the smaller mapped views
# (28 KiB on loopback against 256 KiB copies) in a stream reader.  In
# benchmarks/frames.py, with neither the touch nor the margin, 1 run in 8
# picked mapping on a machine where it costs 1.5x per frame; where mapping
# really pays (the kernel's tcp_mmap reports 2.5x less CPU on bare metal), a
# 15% margin changes nothing.
cdef double ZC_MARGIN = 0.15


cdef dict _warmup_reasons = {}


cdef str _warmup_reason(object nbytes):
    # One string for every connection (a server has thousands).
    reason = _warmup_reasons.get(nbytes)
    if reason is None:
        reason = _warmup_reasons[nbytes] = (
            f"auto: copies the first {nbytes} bytes, then measures whether mapping pays")
    return reason


cdef class Policy:
    """The mode of one connection, and the accounting behind 'auto'.

    ``Policy(config)`` reads ``zerocopy``, ``probe_bytes``,
    ``reprobe_bytes`` and ``min_mapped_fraction`` from a ``ZCConfig``.
    """

    def __cinit__(self, config):
        self.probe_bytes = config.probe_bytes
        self.reprobe_bytes = config.reprobe_bytes
        self.min_mapped_fraction = config.min_mapped_fraction
        policy = config.zerocopy
        if policy == "never":
            self.kind = POLICY_NEVER
            self.mode = MODE_COPY
            self.reason = "zerocopy='never' in ZCConfig"
        elif policy == "always":
            self.kind = POLICY_ALWAYS
            self.mode = MODE_ZC
        else:
            self.kind = POLICY_AUTO
            if config.probe_after_bytes > 0:
                # Copy, untimed, until probe_after_bytes have arrived; then
                # probe as a reprobe would (steady_sample counts them down).
                self.mode = MODE_COPY
                self.settled_mode = MODE_COPY
                self.phase = PH_STEADY
                self.until_reprobe = <int64_t>config.probe_after_bytes
                self.reason = _warmup_reason(config.probe_after_bytes)
            else:
                self.mode = MODE_ZC
                self.settled_mode = MODE_ZC
                self.phase = PH_PROBE

    # -- choosing a mode -----------------------------------------------------
    #
    # 'auto' measures instead of guessing.  A probe receives probe_bytes by
    # mapping and probe_bytes by copying, interleaved in slices of
    # probe_bytes/8 (map, copy, map, copy, ...), timing each round with the
    # thread's CPU clock, and then keeps the cheaper mode for reprobe_bytes.
    # Interleaving matters: the first megabytes of a connection (slow start,
    # a receive buffer still growing, cold caches) cost several times the
    # steady state, and a probe that ran one mode before the other charged
    # that to whichever came first.  Mapping must win by ZC_MARGIN, and in
    # two probes in a row (the first decision thus takes 4 * probe_bytes
    # when mapping wins, 2 * probe_bytes when copying does).  A peer
    # whose pages the kernel cannot map settles the question at once (no
    # page mapped in probe_bytes/16), and a steady mapping mode whose mapped
    # share falls below min_mapped_fraction over any probe_bytes stretch
    # switches to copying.
    #
    # A round's time runs from before the receive (and any zap) to after the
    # sink has handled its views, and a mapping round also reads one byte
    # per cache line of what it mapped: on the project's machines most of
    # mapping's extra cost is that first touch of freshly mapped pages (TLB
    # and cache misses, +155-200 us/MB against +74-130 for bytes the copy
    # just wrote; docs/tuning.md), which a stream reader pays after the
    # clock has stopped.  A new copy slab is faulted in off the clock.
    #
    # The clock is read only while probing: in steady state the mode costs
    # nothing but two additions per round.

    cdef void probe_sample(self, uint64_t mapped, uint64_t got, int64_t ns) noexcept:
        cdef double zc_cost, copy_cost, frac
        if self.mode == MODE_ZC:
            self.zc_bytes += got
            self.zc_mapped += mapped
            self.zc_ns += ns
            if self.zc_mapped == 0 and self.zc_bytes >= self.probe_bytes // 16:
                # Not one page mapped: a peer whose data the kernel cannot
                # map (plain send() on loopback).  No need to probe on.
                self.settle(MODE_COPY, "auto: none of the peer's bytes could be mapped")
                return
        else:
            self.copy_bytes += got
            self.copy_ns += ns
        self.slice_bytes += got
        if self.zc_bytes >= self.probe_bytes and self.copy_bytes >= self.probe_bytes:
            frac = <double>self.zc_mapped / <double>self.zc_bytes
            if frac < self.min_mapped_fraction:
                self.settle(MODE_COPY,
                             f"auto: only {frac:.0%} of the peer's bytes could be mapped")
                return
            zc_cost = <double>self.zc_ns / <double>self.zc_bytes
            copy_cost = <double>self.copy_ns / <double>self.copy_bytes
            if zc_cost < copy_cost * (1.0 - ZC_MARGIN):
                # Mapping must win two probes in a row: one noisy probe that
                # picks it wrongly costs 1.5-2x per byte for reprobe_bytes,
                # one probe more where it really wins costs probe_bytes.
                self.zc_wins += 1
                if self.zc_wins >= 2:
                    self.settle(MODE_ZC, None)
                else:
                    self.reset_probe()
                    self.mode = MODE_ZC
            else:
                self.zc_wins = 0
                self.settle(MODE_COPY, (
                    f"auto: mapping measured no cheaper than copying by the "
                    f"{ZC_MARGIN:.0%} margin (copy {copy_cost * 1e3:.0f} vs map "
                    f"{zc_cost * 1e3:.0f} us/MB of receiver CPU)"))
        elif self.slice_bytes >= self.probe_bytes // 8:
            self.slice_bytes = 0
            if self.mode == MODE_ZC and self.copy_bytes < self.probe_bytes:
                self.mode = MODE_COPY
            elif self.mode == MODE_COPY and self.zc_bytes < self.probe_bytes:
                self.mode = MODE_ZC

    # The probe cannot see what the application does with the views after
    # the clock stopped, and one thing it does costs mapping dearly: a
    # frame reader whose frames span several receives joins them.  Copied
    # bytes arrive in one buffer per frame (Receiver.gather) or in views
    # that continue each other in a slab, and are cut without a copy; mapped
    # pages come in runs of whole pages, the unaligned rest of each
    # segment through the copy buffer, and a frame made of both is copied
    # to be assembled: the copy that mapping was to save, plus mapping's
    # own cost.  With 1 MiB frames from a MSG_ZEROCOPY peer over loopback
    # the probe measured the two modes within 20% of each other (noise
    # picked mapping in 6 of 16 runs of benchmarks/'s floor), and the runs
    # that mapped cost 1.4-2.1x those that copied.  So the steady mapping
    # state watches for it: when the reader assembled by copying half of
    # what was mapped over a probe_bytes stretch, the connection copies
    # (until the next probe).  Where mapped runs join without a copy (page-
    # aligned segments, a header-split NIC), nothing is assembled and
    # nothing changes.  Only the steady state counts: the probe's slices
    # alternate modes every probe_bytes/8, so its big frames always mix
    # both and are assembled whichever mode would win.

    cdef void note_assembled(self, uint64_t nbytes) noexcept:
        if self.phase == PH_STEADY and self.mode == MODE_ZC:
            self.assembled += nbytes

    cdef void steady_sample(self, uint64_t mapped, uint64_t got) noexcept:
        if self.phase != PH_STEADY:
            return
        self.until_reprobe -= <int64_t>got
        if self.mode == MODE_ZC:
            self.zc_bytes += got
            self.zc_mapped += mapped
            if self.zc_bytes >= self.probe_bytes:
                if <double>self.zc_mapped < self.min_mapped_fraction * <double>self.zc_bytes:
                    self.settle(MODE_COPY, "auto: the peer's bytes stopped being mappable")
                    return
                if self.kind == POLICY_AUTO and 2 * self.assembled >= self.zc_mapped:
                    self.settle(MODE_COPY, (
                        "auto: the application copies the mapped bytes again to assemble "
                        "frames that span several receives; receiving each frame whole "
                        "by copying is cheaper"))
                    return
                self.reset_probe()
        if self.until_reprobe <= 0:
            self.phase = PH_PROBE
            self.mode = MODE_ZC
            self.reset_probe()

    cdef void settle(self, int mode, object reason) noexcept:
        if mode != self.settled_mode:
            self.settled_mode = mode
            self.mode_switches += 1
        self.mode = mode
        self.reason = reason
        self.phase = PH_STEADY
        self.until_reprobe = <int64_t>self.reprobe_bytes
        self.reset_probe()

    cdef void reset_probe(self) noexcept:
        self.zc_bytes = self.zc_mapped = self.copy_bytes = self.slice_bytes = 0
        self.assembled = 0
        self.zc_ns = self.copy_ns = 0

    cdef void copy_for_good(self, int err, str what):
        self.kind = POLICY_NEVER
        self.phase = PH_STEADY
        if self.mode != MODE_COPY:
            self.mode = MODE_COPY
            self.mode_switches += 1
        if err == ENODEV or err == ENOPROTOOPT or err == EOPNOTSUPP:
            why = "the socket does not support TCP receive zerocopy (not TCP, or the kernel lacks it)"
        else:
            why = "the kernel refused it"
        self.reason = f"{what} failed with {_os.strerror(err)}: {why}"
