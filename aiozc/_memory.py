"""Memory across connections: the loop-wide bound and its figures.

Each connection bounds the memory its views pin (``ZCConfig.max_pinned_bytes``);
a server with thousands of connections also wants a bound on the sum.  Every
connection of one event loop (asyncio or uvloop; for ``aiozc.anyio`` on
trio, one trio run) shares one :class:`~aiozc._pool.Budget`:
:func:`set_memory_limit` sets its bound, :func:`memory_stats` reports it,
together with the process's shared copy-slab stores (idle connections hold
no slab: see ``_pool.pyx``).  Past the loop's bound a connection does what
its own ``on_exhausted`` says (copy into heap buffers of exactly the bytes
received, or pause until a view is released anywhere in the loop), and
nothing is lost.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import MethodType
from typing import Any, final

from ._pool import Budget, slab_stores, trim_slab_stores

__all__ = [
    "ZCMemoryStats", "budget_for", "keep_trimming", "memory_stats", "release_callback",
    "running_budget", "running_loop_key", "set_memory_limit",
]

#: The loop-wide bound when none was set: none (each connection's own bound
#: still holds).  A server that lets applications hold views should set one.
UNBOUNDED = (1 << 63) - 1

_budgets: weakref.WeakKeyDictionary[object, Budget] = weakref.WeakKeyDictionary()


def budget_for(key: object) -> Budget:
    """The budget of an event loop (or of a trio run, keyed by its token)."""
    budget = _budgets.get(key)
    if budget is None:
        budget = _budgets[key] = Budget(UNBOUNDED)
    return budget


# -- giving free slabs back while the process is quiet -------------------------
#
# The slab stores (_pool.pyx) trim themselves as slabs are given back, but a
# process that went quiet gives nothing back any more, and its free slabs must
# still go cold (pages dropped after 0.2 s) and be unmapped as demand decays
# (halving each second).  So whoever runs connections keeps a timer going
# while the stores hold more than their floor: keep_trimming() starts one on
# the running asyncio loop (call_later) or trio run (a system task), every
# TRIM_EVERY seconds until there is nothing left to trim.  The asyncio
# transports call it from their idle sweeper, aiozc.anyio streams when they
# go idle or close.  Not a thread: a thread beside a busy server cost it
# 1-2% CPU per byte (benchmarks.ab, bulk cells), and its stack and malloc
# arena grow the process's address space by 70 MiB.
TRIM_EVERY = 0.25

# Event loops (asyncio) and trio runs (their tokens) with a timer going.
_trimming: weakref.WeakSet[object] = weakref.WeakSet()


def keep_trimming() -> None:
    """Trim the slab stores every TRIM_EVERY seconds on the running loop (or
    trio run) while they hold more than their floor; cheap when a timer is
    already going."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        if loop not in _trimming and trim_slab_stores():
            _trimming.add(loop)
            loop.call_later(TRIM_EVERY, _trim_later, weakref.ref(loop))
        return
    try:
        import trio.lowlevel
    except ImportError:
        return
    try:
        token = trio.lowlevel.current_trio_token()
    except RuntimeError:
        return
    if token not in _trimming and trim_slab_stores():
        _trimming.add(token)
        trio.lowlevel.spawn_system_task(_trim_on_trio, token)


def release_callback(method: Callable[[], object]) -> Callable[[], None]:
    """The engine's ``on_release`` for the bound ``method``: it calls it
    while the method's object lives, and holds that object only weakly.

    Weakly, because the engine's pool keeps the callback, every view's
    exporter keeps the pool, and exporters are not tracked by the garbage
    collector (_pool.pyx, Chunk): a callback that led back to the views'
    owner (a transport, an anyio stream) would make a cycle that is never
    collected.  A partial over a weak reference is about 260 bytes
    (tracemalloc), where a WeakMethod and a closure took 600: the transport
    makes one for each connection that starves.
    """
    assert isinstance(method, MethodType), method
    return functools.partial(_call_if_alive, weakref.ref(method.__self__), method.__func__)


def _call_if_alive(ref: weakref.ref[Any], func: Callable[[Any], object]) -> None:
    owner = ref()
    if owner is not None:
        func(owner)


def _trim_later(loop_ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
    loop = loop_ref()
    if loop is None:
        return
    if not loop.is_closed() and trim_slab_stores():
        loop.call_later(TRIM_EVERY, _trim_later, loop_ref)
    else:
        _trimming.discard(loop)


async def _trim_on_trio(token: object) -> None:
    import trio

    try:
        while True:
            await trio.sleep(TRIM_EVERY)
            if not trim_slab_stores():
                return
    finally:
        _trimming.discard(token)


def running_loop_key() -> object:
    """What identifies the running asyncio loop or trio run (the key of its
    shared state)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    try:
        import trio.lowlevel

        return trio.lowlevel.current_trio_token()
    except (ImportError, RuntimeError):
        raise RuntimeError(
            "no event loop is running: pass loop=, or call this from a coroutine"
        ) from None


def running_budget() -> Budget:
    """The budget of whatever runs the current task (asyncio loop or trio run)."""
    return budget_for(running_loop_key())


def set_memory_limit(
    max_pinned_bytes: int | None, *, loop: asyncio.AbstractEventLoop | None = None
) -> None:
    """Bound the memory views may pin over every connection of a loop.

    ``loop`` defaults to the running loop (or the running trio run, for
    ``aiozc.anyio``).  ``None`` removes the bound.  Lowering it below what
    is pinned now takes effect as views are released; raising it wakes
    connections paused on it.
    """
    if max_pinned_bytes is not None and max_pinned_bytes < 0:
        raise ValueError("max_pinned_bytes must not be negative (None: no bound)")
    budget = budget_for(loop if loop is not None else running_loop_key())
    budget.max_pinned_bytes = UNBOUNDED if max_pinned_bytes is None else max_pinned_bytes


@final
@dataclass(frozen=True, slots=True)
class ZCMemoryStats:
    """A snapshot of the memory aiozc holds for one loop, and for the process."""

    #: Memory (mapped pages, pooled buffers) pinned by views now, over every
    #: connection of the loop.
    bytes_pinned: int
    #: The most ever pinned at once on the loop.
    peak_bytes_pinned: int
    #: The loop-wide bound (``set_memory_limit``); None if there is none.
    max_pinned_bytes: int | None
    #: Views handed out and not yet released, over the loop's connections.
    views_outstanding: int
    #: Receives that found the loop-wide bound reached (then copied or paused).
    exhausted_receives: int
    #: Copy slabs in use by connections, over the whole process.
    slabs_in_use: int
    #: Copy slabs kept free for the next taker (trimmed to recent demand).
    slabs_free: int
    #: Bytes of copy slabs mapped (in use and free), over the process.
    slab_bytes: int
    #: Copy slabs given back to the operating system so far.
    slabs_returned: int


def memory_stats(*, loop: asyncio.AbstractEventLoop | None = None) -> ZCMemoryStats:
    """The memory figures of a loop (default: the running one) and the process."""
    budget = budget_for(loop if loop is not None else running_loop_key())
    in_use = free = mapped = returned = 0
    for size, (used, idle, maps, unmapped) in slab_stores().items():
        in_use += used
        free += idle
        mapped += maps * size
        returned += unmapped
    bound = budget.max_pinned_bytes
    return ZCMemoryStats(
        bytes_pinned=budget.bytes_pinned,
        peak_bytes_pinned=budget.peak_bytes_pinned,
        max_pinned_bytes=None if bound == UNBOUNDED else bound,
        views_outstanding=budget.views_outstanding,
        exhausted_receives=budget.exhausted_receives,
        slabs_in_use=in_use,
        slabs_free=free,
        slab_bytes=mapped,
        slabs_returned=returned,
    )
