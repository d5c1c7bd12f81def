"""Receiver CPU per 32 KiB frame: aiozc's framed readers against the peers.

A sender process streams length-prefixed frames (4-byte big-endian length,
then the payload) over loopback; the receiver, in this process, reads each
frame with one reader API and CRC32s every payload byte.  The figure is the
receiver's CPU time (user + sys, ``getrusage``) per frame, over the whole
transfer; the sender runs in another process and is not counted.

Runs are interleaved (every receiver once, then again, ...) and the tables
give medians with the min-max spread.  ``--quick`` is a smoke run for CI.

    python -m benchmarks.frames [--quick] [--frames N] [--repeats N] [--peer zc|plain]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import resource
import socket
import statistics
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiozc
from aiozc.sender import ZeroCopySender

FRAME = 32 * 1024
HEADER = 4


# -- receivers: each returns (frames read, crc of everything) -----------------

async def _asyncio_streams(port: int, frames: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    crc = 0
    for _ in range(frames):
        size = int.from_bytes(await reader.readexactly(HEADER), "big")
        crc = zlib.crc32(await reader.readexactly(size), crc)
    writer.close()
    return crc


async def _aiozc_views(port: int, frames: int) -> int:
    reader, writer = await aiozc.open_connection("127.0.0.1", port)
    crc = 0
    for _ in range(frames):
        header = await reader.readexactly_view(HEADER)
        size = int.from_bytes(header, "big")
        header.release()
        with await reader.readexactly_view(size) as view:
            crc = zlib.crc32(view, crc)
    writer.close()
    return crc


async def _aiozc_bytes(port: int, frames: int) -> int:
    reader, writer = await aiozc.open_connection("127.0.0.1", port)
    crc = 0
    for _ in range(frames):
        size = int.from_bytes(await reader.readexactly(HEADER), "big")
        crc = zlib.crc32(await reader.readexactly(size), crc)
    writer.close()
    return crc


async def _anyio_buffered(port: int, frames: int) -> int:
    import anyio
    from anyio.streams.buffered import BufferedByteReceiveStream

    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        buffered = BufferedByteReceiveStream(stream)
        crc = 0
        for _ in range(frames):
            size = int.from_bytes(await buffered.receive_exactly(HEADER), "big")
            crc = zlib.crc32(await buffered.receive_exactly(size), crc)
    return crc


async def _aiozc_anyio(port: int, frames: int) -> int:
    from aiozc.anyio import connect_tcp

    async with await connect_tcp("127.0.0.1", port) as stream:
        crc = 0
        for _ in range(frames):
            header = await stream.receive_exactly_view(HEADER)
            size = int.from_bytes(header, "big")
            header.release()
            with await stream.receive_exactly_view(size) as view:
                crc = zlib.crc32(view, crc)
    return crc


@dataclass(frozen=True)
class Receiver:
    name: str
    runtime: str  # asyncio | uvloop | anyio-asyncio | anyio-uvloop | anyio-trio
    read: Callable[[int, int], Awaitable[int]]


RECEIVERS = [
    Receiver("asyncio StreamReader.readexactly", "asyncio", _asyncio_streams),
    Receiver("aiozc readexactly (bytes)", "asyncio", _aiozc_bytes),
    Receiver("aiozc readexactly_view", "asyncio", _aiozc_views),
    Receiver("asyncio StreamReader.readexactly", "uvloop", _asyncio_streams),
    Receiver("aiozc readexactly (bytes)", "uvloop", _aiozc_bytes),
    Receiver("aiozc readexactly_view", "uvloop", _aiozc_views),
    Receiver("anyio BufferedByteReceiveStream", "anyio-asyncio", _anyio_buffered),
    Receiver("aiozc.anyio receive_exactly_view", "anyio-asyncio", _aiozc_anyio),
    Receiver("anyio BufferedByteReceiveStream", "anyio-trio", _anyio_buffered),
    Receiver("aiozc.anyio receive_exactly_view", "anyio-trio", _aiozc_anyio),
]


def _run_receiver(rx: Receiver, port: int, frames: int) -> int:
    coro_fn = rx.read
    if rx.runtime.startswith("anyio"):
        import anyio

        backend = "trio" if rx.runtime == "anyio-trio" else "asyncio"
        options: dict[str, Any] = {}
        if rx.runtime == "anyio-uvloop":
            options = {"use_uvloop": True}
        return int(anyio.run(coro_fn, port, frames, backend=backend, backend_options=options))
    return int(aiozc.run(coro_fn(port, frames), use_uvloop=rx.runtime == "uvloop"))  # type: ignore[arg-type]


def measure(rx: Receiver, frames: int, zerocopy_peer: bool) -> float:
    """Receiver CPU microseconds per frame for one transfer."""
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_serve_frames, args=(theirs, frames, FRAME, zerocopy_peer))
    proc.start()
    if not ours.poll(30):
        proc.kill()
        raise RuntimeError("sender did not start")
    port = ours.recv()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    _run_receiver(rx, port, frames)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    proc.join(60)
    if proc.exitcode != 0:
        raise RuntimeError(f"sender failed for {rx.name} ({rx.runtime})")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return cpu * 1e6 / frames


def _serve_frames(pipe: Any, frames: int, frame_size: int, zerocopy: bool) -> None:
    """Sender process: listen, then stream ``frames`` frames to whoever connects."""
    _pin(1)
    listener = socket.create_server(("127.0.0.1", 0))
    pipe.send(listener.getsockname()[1])
    conn, _ = listener.accept()
    listener.close()
    # ~1 MiB of frames per send, from 4 pre-generated blobs, so the sender
    # spends its time in the kernel rather than making data.
    chunk_frames = max(1, (1 << 20) // (frame_size + HEADER))
    blobs = [(frame_size.to_bytes(HEADER, "big") + os.urandom(frame_size)) * chunk_frames
             for _ in range(4)]
    sender = ZeroCopySender(conn, zerocopy=zerocopy)
    sent = i = 0
    while sent < frames:
        n = min(chunk_frames, frames - sent)
        blob = blobs[i % 4]
        sender.send(blob if n == chunk_frames else blob[: n * (frame_size + HEADER)])
        sent += n
        i += 1
    sender.flush()
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(60)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass
    conn.close()


def _pin(cpu: int) -> None:
    # Receiver on CPU 0, sender on CPU 1: unpinned, the loopback delivery
    # work lands on whichever CPU is free and the receiver's figure swings
    # by 2x from run to run (docs/tuning.md saw the same).
    try:
        if os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
            os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the frame benchmark and print a markdown report."""
    _pin(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (CI)")
    parser.add_argument("--frames", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer", choices=["zc", "plain"], default="zc")
    parser.add_argument("--output", help="also write the report to this file")
    args = parser.parse_args(argv)
    frames, repeats = (256, 1) if args.quick else (args.frames, args.repeats)
    try:
        import anyio  # noqa: F401
        import aiozc.anyio  # noqa: F401
        receivers = RECEIVERS
    except ImportError:
        receivers = [r for r in RECEIVERS if not r.runtime.startswith("anyio")]
    results: dict[tuple[str, str], list[float]] = {(r.name, r.runtime): [] for r in receivers}
    start = time.monotonic()
    total = repeats * len(receivers)
    done = 0
    for rep in range(repeats):
        order = receivers if rep % 2 == 0 else list(reversed(receivers))
        for rx in order:
            results[(rx.name, rx.runtime)].append(measure(rx, frames, args.peer == "zc"))
            done += 1
            print(f"\r{done}/{total} runs", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    def med(key: tuple[str, str]) -> float:
        return statistics.median(results[key])

    lines = [
        f"# Receiver CPU per {FRAME // 1024} KiB frame",
        "",
        f"{frames} frames per run, {repeats} interleaved runs, "
        f"{'MSG_ZEROCOPY' if args.peer == 'zc' else 'plain send()'} sender in another process; "
        "the receiver CRC32s every payload byte. aiozc with the default ZCConfig (zerocopy='auto').",
        f"Linux {platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.monotonic() - start:.0f} s.",
        "",
        "| runtime | receiver | µs per frame (median [min–max]) | vs the runtime's stdlib reader |",
        "|---|---|---|---|",
    ]
    baselines = {"asyncio": "asyncio StreamReader.readexactly",
                 "uvloop": "asyncio StreamReader.readexactly",
                 "anyio-asyncio": "anyio BufferedByteReceiveStream",
                 "anyio-trio": "anyio BufferedByteReceiveStream"}
    for rx in receivers:
        key = (rx.name, rx.runtime)
        values = results[key]
        base = med((baselines[rx.runtime], rx.runtime))
        lines.append(f"| {rx.runtime} | {rx.name} | {med(key):.1f} [{min(values):.1f}–"
                     f"{max(values):.1f}] | {med(key) / base:.2f}x |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        with open(args.output, "w") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
