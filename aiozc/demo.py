"""A demonstration of aiozc: receive large transfers, show what they cost.

Run it with ``python -m aiozc.demo`` (or the ``aiozc-demo`` console script).
It makes one run per event loop (the stdlib selector loop, and uvloop when
installed) and ``zerocopy`` policy (``'always'``, ``'auto'``): four runs by
default.  Each run starts an aiozc server on 127.0.0.1 whose
:class:`~aiozc.ZCProtocol` runs ``zlib.crc32`` over every byte it receives,
and a separate sender process that connects and sends ``--size`` MiB (1 GiB
by default, so 4 GiB in all) with :class:`~aiozc.testing.ZeroCopySender`
(``MSG_ZEROCOPY``, the kind of peer whose pages the kernel can map over
loopback).  After each run it prints the bytes received, the throughput,
the share of bytes that arrived in mapped pages, the receiver's CPU time per
MB (the sender, being another process, is excluded) and whether the CRC32 of
what arrived matches the sender's; then a summary of every run.

While a run receives, a progress bar is drawn with the ``rich`` library
(in the ``demo`` extra: ``pip install 'aiozc[demo]'``) when it is installed
and standard output is a terminal.  Otherwise (a file or a pipe, no rich,
or ``--no-progress``) nothing is drawn: each run prints its lines when it
ends, with no carriage returns.

The exit status is 0 when every run completed and every checksum matched.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import resource
import socket
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO, cast

from . import ZCConfig, ZCProtocol, ZCStats, create_server, run
from ._config import ZerocopyPolicy
from .testing import ZeroCopySender

__all__ = ["main"]

MiB = 1024 * 1024
_MB = 1_000_000  # throughput and CPU cost are given per decimal megabyte

_LOOP_NAMES = ("asyncio", "uvloop")
_POLICIES: tuple[ZerocopyPolicy, ...] = ("always", "auto")

# The sender's data: a few random 1 MiB buffers sent round-robin, so making
# data costs nothing during the transfer.  They are immutable ``bytes``, as
# MSG_ZEROCOPY needs (the kernel reads them after sendmsg() returned).
_CHUNK = 1 * MiB
_BUFFERS = 8

_PROGRESS_INTERVAL = 0.1  # seconds between progress-bar redraws
# How long the receiver waits for the sender to connect, and for the whole
# transfer, before giving up.
_CONNECT_TIMEOUT = 30.0
_TRANSFER_TIMEOUT = 600.0


class DemoError(Exception):
    """A run that could not complete (sender failed, timeout, bad checksum)."""


# -- the sender process --------------------------------------------------------


def _sender_main(port: int, size: int, report: multiprocessing.connection.Connection) -> None:
    """Entry point of the sender process: send ``size`` bytes to 127.0.0.1:port.

    Sends one dict back through ``report``: the CRC32 and counters on
    success, or ``{"error": ...}``.
    """
    try:
        report.send(_send(port, size))
    except BaseException as exc:  # report every failure, then exit non-zero
        try:
            report.send({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            raise SystemExit(1) from None
    finally:
        report.close()


def _send(port: int, size: int) -> dict[str, Any]:
    buffers = [os.urandom(_CHUNK) for _ in range(_BUFFERS)]
    note = None
    with socket.create_connection(("127.0.0.1", port), timeout=_CONNECT_TIMEOUT) as sock:
        sock.settimeout(None)
        try:
            sender = ZeroCopySender(sock)
        except OSError as exc:
            # A kernel without SO_ZEROCOPY: send with plain sendmsg instead.
            note = f"MSG_ZEROCOPY unavailable ({exc.strerror}); sent with plain send()"
            sender = ZeroCopySender(sock, zerocopy=False)
        crc = 0
        left = size
        i = 0
        start = time.perf_counter()
        while left > 0:
            chunk = buffers[i % _BUFFERS]
            i += 1
            if left < len(chunk):
                chunk = chunk[:left]
            crc = zlib.crc32(chunk, crc)
            sender.send(chunk)
            left -= len(chunk)
        sender.flush()
        elapsed = time.perf_counter() - start
        sock.shutdown(socket.SHUT_WR)
    return {
        "crc32": crc,
        "bytes_sent": sender.bytes_sent,
        "seconds": elapsed,
        "completions": sender.completions,
        "copied_completions": sender.copied_completions,
        "note": note,
    }


# -- the receiver ----------------------------------------------------------------


def _cpu_now() -> float:
    """User+system CPU seconds of this process (the receiver only)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Checksummer(ZCProtocol):
    """Touches every received byte (CRC32), then releases the view at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.crc = 0
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.t_start = 0.0
        self.cpu_start = 0.0
        self.t_end = 0.0
        self.cpu_end = 0.0
        self.stats: ZCStats | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the clocks: the sender streams as soon as it is connected."""
        self.transport = cast(asyncio.Transport, transport)
        self.cpu_start = _cpu_now()
        self.t_start = time.perf_counter()
        if not self.connected.done():
            self.connected.set_result(None)

    # (ignore, where ZCProtocol is typed as an asyncio.Protocol, which declares
    # bytes: a ZCProtocol gets memoryviews)
    def data_received(self, data: memoryview) -> None:
        """Fold the view into the running CRC32 and release it."""
        self.crc = zlib.crc32(data, self.crc)
        self.received += len(data)
        data.release()

    def eof_received(self) -> bool | None:
        """Stop the clocks and snapshot the transport's statistics."""
        self.t_end = time.perf_counter()
        self.cpu_end = _cpu_now()
        self._snapshot()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        """Finish the run (with the error, if the connection broke)."""
        if not self.t_end:
            self.t_end = time.perf_counter()
            self.cpu_end = _cpu_now()
        if self.stats is None:
            self._snapshot()
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)

    def _snapshot(self) -> None:
        transport = self.transport
        stats = getattr(transport, "stats", None) if transport is not None else None
        if isinstance(stats, ZCStats):
            self.stats = stats


class _Progress:
    """A rich progress bar for one run, redrawn from a loop timer.

    It reads the protocol's byte counter ~10 times a second and redraws
    from the event loop (no refresh thread), so it costs the receive path
    nothing per view; the redraws are part of the receiver CPU measured.
    Made only when rich is installed and stdout is a terminal
    (:func:`_rich_console`); the bar is erased when the run ends, and the
    run's lines are printed in its place.
    """

    def __init__(self, console: Any, label: str, total: int) -> None:
        from rich.progress import (  # type: ignore[import-not-found, unused-ignore]
            BarColumn,
            DownloadColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=20), TaskProgressColumn(),
            DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeElapsedColumn(),
            console=console, auto_refresh=False, transient=True)
        self._label = label
        self._total = total
        self._task: Any = None
        self._handle: asyncio.TimerHandle | None = None
        self._proto: _Checksummer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop, proto: _Checksummer) -> None:
        """Draw now, then every ``_PROGRESS_INTERVAL`` seconds until stop()."""
        self._loop = loop
        self._proto = proto
        self._progress.start()
        self._task = self._progress.add_task(self._label, total=self._total)
        self._tick()

    def stop(self) -> None:
        """Stop redrawing and erase the bar."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._progress.stop()

    def _tick(self) -> None:
        assert self._proto is not None and self._loop is not None
        self._progress.update(self._task, completed=self._proto.received)
        self._progress.refresh()
        self._handle = self._loop.call_later(_PROGRESS_INTERVAL, self._tick)


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # no isatty(), or a closed stream
        return False


def _rich_console(out: TextIO) -> Any:
    """A rich Console on ``out`` if rich is installed and ``out`` is a
    terminal, else None (plain lines)."""
    if not _isatty(out):
        return None
    try:
        from rich.console import Console  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    console = Console(file=out)
    return console if console.is_terminal and not console.is_dumb_terminal else None


@dataclass(frozen=True)
class RunResult:
    """The outcome of one transfer."""

    loop: str
    policy: ZerocopyPolicy
    size: int
    seconds: float
    cpu_seconds: float
    stats: ZCStats | None
    crc_ok: bool
    sender: dict[str, Any]
    error: str | None = None

    @property
    def mb_per_s(self) -> float:
        """Throughput in decimal megabytes per second."""
        return self.size / self.seconds / _MB if self.seconds > 0 else 0.0

    @property
    def gbit_per_s(self) -> float:
        """Throughput in gigabits per second."""
        return self.size * 8 / self.seconds / 1e9 if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_mb(self) -> float:
        """Receiver CPU (user+sys) in microseconds per decimal megabyte."""
        return self.cpu_seconds * 1e6 / (self.size / _MB) if self.size else 0.0


async def _receive(loop_name: str, policy: ZerocopyPolicy, size: int,
                   bar: _Progress | None) -> RunResult:
    loop = asyncio.get_running_loop()
    holder: list[_Checksummer] = []

    def factory() -> _Checksummer:
        proto = _Checksummer(loop)
        holder.append(proto)
        return proto

    server = await create_server(factory, "127.0.0.1", 0, config=ZCConfig(zerocopy=policy))
    port: int = server.sockets[0].getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_sender_main, args=(port, size, child_end),
                       name=f"aiozc-demo-sender-{loop_name}-{policy}", daemon=True)
    proc.start()
    child_end.close()
    try:
        # Wait for the connection, watching for a sender that died first.
        deadline = loop.time() + _CONNECT_TIMEOUT
        while not holder or not holder[0].connected.done():
            if proc.exitcode is not None:
                raise DemoError(_sender_failure(parent_end, proc.exitcode))
            if loop.time() > deadline:
                raise DemoError(f"the sender did not connect within {_CONNECT_TIMEOUT:.0f} s")
            await asyncio.sleep(0.05)
        server.close()  # one connection is all this run needs
        proto = holder[0]
        if bar is not None:
            bar.start(loop, proto)
        try:
            await asyncio.wait_for(asyncio.shield(proto.done), _TRANSFER_TIMEOUT)
        except TimeoutError:
            raise DemoError(f"transfer not finished after {_TRANSFER_TIMEOUT:.0f} s "
                            f"({proto.received} of {size} bytes received)") from None
        finally:
            if bar is not None:
                bar.stop()
    finally:
        server.close()
    # The sender reports once it has closed its end; wait for it off the loop.
    report = await loop.run_in_executor(None, _sender_report, parent_end, proc)
    if "error" in report:
        raise DemoError(f"sender failed: {report['error']}")
    crc_ok = report["crc32"] == proto.crc and proto.received == size
    return RunResult(
        loop=loop_name, policy=policy, size=proto.received,
        seconds=proto.t_end - proto.t_start, cpu_seconds=proto.cpu_end - proto.cpu_start,
        stats=proto.stats, crc_ok=crc_ok,
        sender={**report, "receiver_crc32": proto.crc, "expected_size": size})


def _sender_report(conn: multiprocessing.connection.Connection,
                   proc: multiprocessing.process.BaseProcess) -> dict[str, Any]:
    try:
        if not conn.poll(_CONNECT_TIMEOUT):
            return {"error": "no report from the sender process"}
        report: dict[str, Any] = conn.recv()
        return report
    except EOFError:
        return {"error": f"sender process exited with status {proc.exitcode} without a report"}
    finally:
        conn.close()
        proc.join(_CONNECT_TIMEOUT)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _sender_failure(conn: multiprocessing.connection.Connection, exitcode: int) -> str:
    try:
        if conn.poll(0):
            report = conn.recv()
            if isinstance(report, dict) and "error" in report:
                return f"sender failed: {report['error']}"
    except (EOFError, OSError):
        pass
    return f"sender process exited with status {exitcode} before connecting"


# -- the report -----------------------------------------------------------------


def _size_label(n: int) -> str:
    """``n`` bytes exactly, with the binary unit when it is a whole number of
    GiB or MiB: '1 GiB (1,073,741,824 bytes)', '1,000 bytes'."""
    for unit, name in ((1024 * MiB, "GiB"), (MiB, "MiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit:,} {name} ({n:,} bytes)"
    return f"{n:,} bytes"


_LOOP_LABEL = {"asyncio": "asyncio loop", "uvloop": "uvloop"}


def _run_label(loop_name: str, policy: str) -> str:
    return f"{_LOOP_LABEL.get(loop_name, loop_name)}, zerocopy={policy!r}"


def _print_run(r: RunResult, index: str, out: TextIO) -> None:
    s = r.stats
    snd = r.sender
    expected = snd["expected_size"]
    got = (f"{r.size:,} bytes received" if r.size == expected
           else f"{r.size:,} of {expected:,} bytes received")
    print(f"{index} {_run_label(r.loop, r.policy)}: {got} in {r.seconds:.2f} s, crc32 "
          + ("verified" if r.crc_ok else "MISMATCH"), file=out)
    mode = s.mode if s is not None else "?"
    print(f"  final mode       : {mode}"
          + (f" (switched {s.mode_switches}x)" if s is not None and s.mode_switches else ""),
          file=out)
    print(f"  throughput       : {r.mb_per_s:,.0f} MB/s = {r.gbit_per_s:.2f} Gbit/s",
          file=out)
    if s is not None:
        print(f"  bytes mapped     : {s.mapped_fraction:.1%} ({s.bytes_mapped:,} mapped, "
              f"{s.bytes_copied:,} copied)", file=out)
    print(f"  receiver CPU     : {r.cpu_us_per_mb:.0f} us/MB "
          f"({r.cpu_seconds:.2f} s user+sys, {r.cpu_seconds / r.seconds:.0%} of one core)"
          if r.seconds > 0 else "  receiver CPU     : ?", file=out)
    if s is not None:
        print(f"  receive calls    : {s.receive_calls:,}"
              + (f" ({r.size / s.receive_calls / 1024:.0f} KiB per call on average)"
                 if s.receive_calls else ""), file=out)
    if s is not None and s.fallback_reason:
        print(f"  fallback reason  : {s.fallback_reason}", file=out)
    if snd.get("note"):
        print(f"  sender           : {snd['note']}", file=out)
    elif snd.get("completions"):
        print(f"  sender           : MSG_ZEROCOPY, {snd['completions']:,} completions "
              f"({snd['copied_completions']:,} flagged 'copied': loopback copies at delivery, "
              "into pages the receiver can map)", file=out)
    if r.crc_ok:
        print(f"  verified         : crc32 matches ({snd['crc32']:#010x}) over all "
              f"{r.size:,} bytes", file=out)
    else:
        print(f"  VERIFICATION FAILED: sender crc32 {snd['crc32']:#010x} over "
              f"{snd['bytes_sent']:,} bytes, receiver crc32 {snd['receiver_crc32']:#010x} "
              f"over {r.size:,} bytes (expected {expected:,})", file=out)
    out.flush()


def _print_summary(results: list[RunResult], failures: list[tuple[str, str, str]],
                   crc_us_per_mb: float, out: TextIO) -> None:
    header = (f"{'loop':<8} {'policy':<7} {'mode':<9} {'MB/s':>7} {'Gbit/s':>7} "
              f"{'mapped':>7} {'us/MB':>6} {'calls':>7}  {'crc32':<5} fallback")
    print("\nSummary", file=out)
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in results:
        s = r.stats
        print(f"{r.loop:<8} {r.policy:<7} {s.mode if s else '?':<9} {r.mb_per_s:>7,.0f} "
              f"{r.gbit_per_s:>7.2f} {f'{s.mapped_fraction:.1%}' if s else '?':>7} "
              f"{r.cpu_us_per_mb:>6.0f} {f'{s.receive_calls:,}' if s else '?':>7}  "
              f"{'ok' if r.crc_ok else 'BAD':<5} {(s.fallback_reason or '-') if s else '?'}",
              file=out)
    for loop_name, policy, why in failures:
        print(f"{loop_name:<8} {policy:<7} FAILED: {why}", file=out)
    print(file=out)
    print("What the numbers mean:", file=out)
    print("  'mapped' is the share of bytes the kernel mapped into the process "
          "(TCP_ZEROCOPY_RECEIVE) instead of copying;\n"
          "  'us/MB' is the receiver's own CPU (user+sys, sender excluded) per MB "
          "(10^6 bytes), "
          f"including ~{crc_us_per_mb:.0f} us/MB for the demo's crc32 over every byte.", file=out)
    print("  Mapping only pays where it is cheaper than copying: on the project's VMs it is "
          "not (~332 vs ~215 us/MB,\n"
          "  docs/kernel.md), so zerocopy='auto' measures both and may settle on copy "
          "(see its fallback reason); on bare metal it maps.", file=out)
    out.flush()


def _crc_cost_us_per_mb() -> float:
    """CPU cost of zlib.crc32 here, to tell it apart from the receive cost."""
    data = os.urandom(4 * MiB)
    rounds = 16
    start = time.thread_time()
    crc = 0
    for _ in range(rounds):
        crc = zlib.crc32(data, crc)
    spent = time.thread_time() - start
    return spent * 1e6 / (rounds * len(data) / _MB)


# -- the command line -------------------------------------------------------------


def _csv(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(choices)}; got {text!r}")
        return list(dict.fromkeys(items))
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiozc-demo",
        description=("Receive a MSG_ZEROCOPY transfer over loopback with aiozc, once per "
                     "event loop and zerocopy policy (4 runs of 1 GiB by default), check "
                     "the crc32 of every byte, and report throughput, mapped bytes and "
                     "receiver CPU cost."))
    parser.add_argument("--size", type=_positive_int, default=1024, metavar="MiB",
                        help="MiB to send per run (default: 1024)")
    parser.add_argument("--loops", type=_csv(_LOOP_NAMES), default=list(_LOOP_NAMES),
                        metavar="LIST", help="event loops to run on (default: asyncio,uvloop)")
    parser.add_argument("--modes", type=_csv(_POLICIES), default=list(_POLICIES),
                        metavar="LIST", help="zerocopy policies to run (default: always,auto)")
    parser.add_argument("--no-progress", action="store_true",
                        help="do not draw a progress bar (drawn only with rich "
                             "installed and stdout a terminal)")
    return parser


def _have_uvloop() -> str | None:
    """None if uvloop can be imported, else why not."""
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit status (0: every run verified).

    ``argv`` defaults to ``sys.argv[1:]``; see ``--help`` for the options.
    """
    args = _parser().parse_args(argv)
    out = sys.stdout
    if not sys.platform.startswith("linux"):
        print("aiozc-demo: TCP receive zerocopy is Linux-only", file=sys.stderr)
        return 2
    size: int = args.size * MiB
    policies: list[Literal["always", "auto"]] = args.modes
    skipped: list[str] = []
    loops: list[str] = []
    for loop_name in args.loops:
        missing = _have_uvloop() if loop_name == "uvloop" else None
        if missing is None:
            loops.append(loop_name)
        else:
            skipped.append(f"uvloop is not importable ({missing}): its runs are skipped; "
                           "pip install 'aiozc[demo]'")
    plan = [(loop_name, policy) for loop_name in loops for policy in policies]
    console = None if args.no_progress else _rich_console(out)
    if console is not None:
        progress = "a bar (rich) while each run receives, then the run's figures"
    elif args.no_progress:
        progress = "no bar (--no-progress): each run's figures when it ends"
    elif _isatty(out):
        progress = ("no bar (rich is not installed: pip install 'aiozc[demo]'): "
                    "each run's figures when it ends")
    else:
        progress = "no bar (stdout is not a terminal): each run's figures when it ends"
    _print_plan(plan, size, skipped, progress, out)
    if not plan:
        print("\nFAILED: nothing to run", file=sys.stderr)
        return 1
    results: list[RunResult] = []
    failures: list[tuple[str, str, str]] = []
    for i, (loop_name, policy) in enumerate(plan, 1):
        index = f"[{i}/{len(plan)}]"
        print(file=out)
        out.flush()
        bar = (_Progress(console, f"{index} {loop_name}/{policy}", size)
               if console is not None else None)
        try:
            result = run(_receive(loop_name, policy, size, bar),
                         use_uvloop=loop_name == "uvloop")
        except (DemoError, OSError) as exc:
            print(f"{index} {_run_label(loop_name, policy)}: FAILED: {exc}", file=out)
            failures.append((loop_name, policy, str(exc)))
            continue
        _print_run(result, index, out)
        results.append(result)
    _print_summary(results, failures, _crc_cost_us_per_mb(), out)
    bad = [r for r in results if not r.crc_ok]
    if failures or bad or not results:
        print(f"\nFAILED: {len(failures)} of {len(plan)} run(s) did not complete, "
              f"{len(bad)} checksum mismatch(es)", file=sys.stderr)
        return 1
    total = sum(r.size for r in results)
    print(f"\nAll {len(results)} runs verified: {total:,} bytes received in all, and each "
          "run's crc32 matches its sender's.", file=out)
    return 0


def _print_plan(plan: Sequence[tuple[str, str]], size: int, skipped: list[str],
                progress: str, out: TextIO) -> None:
    """The opening text: what the demo is about to do, exactly."""
    n = len(plan)
    print(f"aiozc demo: {n} runs over 127.0.0.1, each moving {_size_label(size)}, "
          f"{_size_label(n * size)} in all." if n > 1 else
          f"aiozc demo: {n} run{'' if n else 's'} over 127.0.0.1"
          + (f", moving {_size_label(size)}." if n else "."), file=out)
    for i, (loop_name, policy) in enumerate(plan, 1):
        lead = "  runs     : " if i == 1 else " " * 13
        print(f"{lead}[{i}/{n}] {_run_label(loop_name, policy)}", file=out)
    if not plan:
        print("  runs     : none", file=out)
    for why in skipped:
        print(f"  skipped  : {why}", file=out)
    print("  sender   : a separate process per run, sending with MSG_ZEROCOPY "
          "(aiozc.testing.ZeroCopySender):\n"
          "             pages the kernel can map over loopback (plain send() where the "
          "kernel refuses it)", file=out)
    print("  receiver : an aiozc server (ZCProtocol) in this process; it runs crc32 over "
          "every byte received,\n"
          "             checked against the sender's crc32 at the end of each run", file=out)
    print(f"  machine  : {os.cpu_count()} CPUs, Linux {os.uname().release}, "
          f"Python {sys.version.split()[0]}", file=out)
    print(f"  progress : {progress}", file=out)
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
