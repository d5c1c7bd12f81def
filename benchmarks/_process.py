"""The benchmarks' helper processes: where they run, how they start and stop.

Every benchmark measures a receiver (or sender) in its own process against a
peer in another: :func:`pin_cpus` picks one CPU for each, :func:`pin` puts a
process on its CPU, :func:`spawn` starts a helper with a pipe to it, and
:func:`stop` ends it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess


def pin(cpu: int | None) -> None:
    """Pin this process to ``cpu`` (no-op for None or a one-CPU machine).

    Receiver on CPU 0, sender on CPU 1: unpinned, the loopback delivery work
    lands on whichever CPU is free and the receiver's figure swings by 2x
    from run to run (docs/tuning.md saw the same).
    """
    if cpu is None:
        return
    # Unconditionally: a peer process inherits the receiver's pinning (one
    # CPU, not its own), so "already restricted" says nothing here.  An
    # earlier version skipped the call in that case, and every peer shared
    # CPU 0 with the receiver it was measured against.
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


def pin_cpus() -> tuple[int | None, int | None]:
    """(receiver CPU, sender CPU): the first two CPUs we may run on, or
    (None, None) with fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def spawn(target: Callable[..., object], *args: object) -> tuple[Connection, BaseProcess]:
    """Start ``target(pipe, *args)`` in a daemon process of the 'spawn'
    context (a fresh interpreter: nothing of the parent's state, threads or
    pinning carried over by fork); return the parent's end of the pipe and
    the process.  The child's end is closed here, so a child that dies makes
    the parent's ``recv()`` raise EOFError instead of waiting forever."""
    ctx = multiprocessing.get_context("spawn")
    pipe, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    child.close()
    return pipe, proc


def stop(pipe: Connection, proc: BaseProcess, wait: float = 10.0) -> None:
    """Ask a helper to exit (``None`` on its pipe), give it ``wait`` seconds,
    then terminate it."""
    try:
        pipe.send(None)
    except OSError:
        pass
    proc.join(wait)
    if proc.is_alive():
        proc.terminate()
        proc.join()
