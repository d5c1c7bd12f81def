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

cimport cython
from libc.errno cimport ENODEV, ENOPROTOOPT, EOPNOTSUPP
from libc.stdint cimport int64_t, uint64_t

from aiozc._kernel cimport aiozc_coarse_ns

import os as _os
import weakref as _weakref

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


# -- what the connections of one loop learned by probing ------------------------
#
# Whether mapping pays is a property of the machine (what a TLB miss and the
# first touch of a freshly mapped page cost against a copy, the kernel) and
# of the application's reader, and those are the same for every connection
# of a server; whether pages map at all depends on each peer.  Connections
# that each probed on their own cost a server dearly: with 1,000 MSG_ZEROCOPY
# clients sending 1.5 MiB each, 31% of the bytes came in by mapping, in the
# probes' mapping slices, at 1.25x asyncio's CPU per MB where mapping loses
# (benchmarks/connections.py, phase 2).  So the connections of one event
# loop share what their probes measured.  After SHARED_STREAK probes in a
# row found mapping no cheaper than copying, a connection whose probe is due
# (the first one, after probe_after_bytes, or a reprobe) copies on for
# reprobe_bytes without probing, except one in PROBE_ONE_IN, which probes as
# before and keeps the verdict honest: a probe that finds mapping cheaper
# ends the streak, and every connection probes again.  A probe that found
# nothing (or too little) mappable says something about its peer, not the
# machine, and counts for nothing.
#
# Probes also take turns.  Connections that start together (a server's
# clients connecting at once, streaming round-robin) reach probe_after_bytes
# together, and all would probe before any verdict is in: so at most
# MAX_PROBING connections of a loop probe at once, and one whose probe is due
# while every slot is taken copies on and asks again after probe_bytes / 8.
# A slot is given back when its probe settles and when its connection
# closes.  An open connection that stopped sending halfway through its probe
# must not stop the loop learning, and one that merely waits between bursts
# must not lose its turn (the anyio stream says "idle" at every wait on an
# empty queue): so a slot whose holder made no probe round for STALE_NS may
# be taken by a connection that asks for one.  The holder learns it at its
# next round (the slot's generation moved), keeps what it measured, copies,
# and asks again after probe_bytes / 8; its probe goes on where it stopped.
#
# MAX_PROBING (_policy.pxd) is 2: two verdicts can come in at once, and the
# streak needs three.
#
# 0.2 s: a connection that receives at all makes a round every few ms (a
# round per receive); 0.2 s without one is a pause in the peer's sending.
cdef long long STALE_NS = 200000000
# 3: one probe can be noise (the margin and the two-wins rule guard the
# other direction, mapping); three in a row that agree are the machine.
cdef int SHARED_STREAK = 3
# 16: a server where mapping loses pays one probe in 16 (a mapping slice of
# probe_bytes / 2 at 1.5-2x the copy's cost: about 3% of the first 4 MiB of
# each connection, averaged); where a change makes mapping win, the 16th
# connection finds it.
cdef int PROBE_ONE_IN = 16

cdef str _WAITING_REASON = (
    "auto: copies while other connections of this event loop measure whether "
    "mapping pays")

cdef str _SHARED_REASON = (
    f"auto: {SHARED_STREAK} probes in a row on this event loop (by this connection or "
    f"others) measured mapping no cheaper than copying, so its next probe was skipped "
    f"(one in {PROBE_ONE_IN} still runs); it copies until the one after")


cdef class ProbeHistory:
    """What the 'auto' probes of one event loop's connections measured.

    Shared by the connections of a loop (:func:`history_for`): once
    ``SHARED_STREAK`` probes in a row found mapping no cheaper than copying,
    connections skip their probes, all but one in ``PROBE_ONE_IN``.
    """

    @property
    def streak(self):
        """Probes in a row that found mapping no cheaper than copying."""
        return self.streak

    @property
    def probes_skipped(self):
        """Probes not run because of the streak."""
        return self.skipped

    @property
    def probing(self):
        """Connections probing now (at most ``MAX_PROBING``)."""
        return self.probing

    def record(self, bint mapping_won):
        """Count one probe's verdict, as the engine does."""
        if mapping_won:
            self.map_won()
        else:
            self.copy_won()

    cdef bint skip_probe(self) noexcept:
        if self.streak < SHARED_STREAK:
            return False
        self.decisions += 1
        if self.decisions % PROBE_ONE_IN == 0:
            return False
        self.skipped += 1
        return True

    cdef int take_slot(self, unsigned int *gen) noexcept:
        """A free probing slot, or a stale one taken from its holder; -1 if none."""
        cdef long long now = aiozc_coarse_ns()
        cdef int i
        cdef int stale = -1
        for i in range(MAX_PROBING):
            if not self.held[i]:
                self.held[i] = True
                self.probing += 1
                self.seen[i] = now
                gen[0] = self.gen[i]
                return i
            if now - self.seen[i] >= STALE_NS:
                stale = i
        if stale >= 0:
            self.gen[stale] += 1  # its holder finds out at its next round
            self.seen[stale] = now
            gen[0] = self.gen[stale]
            return stale
        return -1

    cdef void give_slot(self, int slot, unsigned int gen) noexcept:
        if self.gen[slot] == gen:  # (not if it was taken from us)
            self.held[slot] = False
            self.probing -= 1

    cdef void copy_won(self) noexcept:
        self.streak += 1

    cdef void map_won(self) noexcept:
        self.streak = 0
        self.decisions = 0


_histories = _weakref.WeakKeyDictionary()


def history_for(key):
    """The probe history of an event loop (or of a trio run, keyed by its token)."""
    history = _histories.get(key)
    if history is None:
        history = _histories[key] = ProbeHistory()
    return history


cdef dict _warmup_reasons = {}


cdef str _warmup_reason(object nbytes):
    # One string for every connection (a server has thousands).
    reason = _warmup_reasons.get(nbytes)
    if reason is None:
        reason = _warmup_reasons[nbytes] = (
            f"auto: copies the first {nbytes} bytes, then measures whether mapping pays")
    return reason


@cython.no_gc_clear  # __dealloc__ gives its probing slot back to the history
cdef class Policy:
    """The mode of one connection, and the accounting behind 'auto'.

    ``Policy(config, history)`` reads ``zerocopy``, ``probe_bytes``,
    ``reprobe_bytes`` and ``min_mapped_fraction`` from a ``ZCConfig``;
    ``history`` (a :class:`ProbeHistory`, or None) is what the other
    connections of the loop measured.
    """

    def __cinit__(self, config, ProbeHistory history=None):
        self.history = history
        self.slot = -1
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
                # Probe from the first byte, if the loop lets it (start_probe).
                self.mode = MODE_COPY
                self.settled_mode = MODE_COPY
                self.phase = PH_STEADY
                self.start_probe()
                if self.phase == PH_PROBE:
                    # It starts mapping, as if settled on it (a probe that
                    # picks copying is one switch, as for a reprobe).
                    self.settled_mode = MODE_ZC

    def __dealloc__(self):
        self.release_slot()

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
        if self.slot >= 0 and not self.keep_slot():
            # Its slot was taken while it sent nothing (see STALE_NS): this
            # round is not counted, and the probe waits for a slot.
            self.paused_mode = self.mode
            self.probe_paused = True
            self.slot = -1
            self.wait_for_slot()
            return
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
                    if self.history is not None:
                        self.history.map_won()
                    self.settle(MODE_ZC, None)
                else:
                    self.reset_probe()
                    self.mode = MODE_ZC
            else:
                self.zc_wins = 0
                if self.history is not None:
                    self.history.copy_won()
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
            self.start_probe()

    cdef void start_probe(self) noexcept:
        cdef ProbeHistory history = self.history
        cdef unsigned int gen = 0
        cdef int slot
        if history is not None:
            # (Only a connection that copies takes the loop's word for it:
            # one whose own probe picked mapping measures again.  A probe
            # paused halfway goes on: it is no new decision.)
            if (not self.probe_paused and self.settled_mode == MODE_COPY
                    and history.streak >= SHARED_STREAK and history.probing < MAX_PROBING
                    and history.skip_probe()):
                # (settle() sets the next probe reprobe_bytes ahead.)
                self.settle(MODE_COPY, _SHARED_REASON)
                return
            slot = history.take_slot(&gen)
            if slot < 0:
                self.wait_for_slot()
                return
            self.slot = slot
            self.slot_gen = gen
        self.phase = PH_PROBE
        if self.probe_paused:
            # Where it stopped: same slice, same mode, what it measured kept.
            self.probe_paused = False
            self.mode = self.paused_mode
            return
        self.mode = MODE_ZC
        self.reset_probe()

    cdef bint keep_slot(self) noexcept:
        """Still this connection's slot (and noted as active), or taken."""
        cdef ProbeHistory history = self.history
        if history.gen[self.slot] != self.slot_gen:
            return False
        history.seen[self.slot] = aiozc_coarse_ns()
        return True

    cdef void wait_for_slot(self) noexcept:
        # Copying, the mode that costs least where mapping does not pay
        # (and little more where it does), until the next ask.  The settled
        # mode stays: one that had settled on mapping must measure again.
        # A paused probe keeps what it measured.
        self.mode = MODE_COPY
        self.phase = PH_STEADY
        self.until_reprobe = <int64_t>(self.probe_bytes // 8)
        self.reason = _WAITING_REASON
        if not self.probe_paused:
            self.reset_probe()

    cdef void release_slot(self) noexcept:
        if self.slot >= 0 and self.history is not None:
            self.history.give_slot(self.slot, self.slot_gen)
            self.slot = -1

    cdef void settle(self, int mode, object reason) noexcept:
        self.release_slot()
        self.probe_paused = False
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
        self.release_slot()
        self.probe_paused = False
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
