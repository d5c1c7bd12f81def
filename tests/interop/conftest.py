"""Fixtures of the interoperability suite: third-party programs over loopback.

aiozc reads from (and is written to by) programs it did not write: nginx
serving a file with sendfile(), redis-server answering pipelined GETs, and
socat sending a file or a slowly fed pipe.  Each program is started by the
suite itself, from its own temporary directory (configuration, logs, pid
file, data), listening on 127.0.0.1 only, and stopped at the end, even
after a failure.  Where a program is not installed its tests are skipped
with the package to install.

* ``big_file`` (session): a file of pseudo-random bytes from a fixed seed,
  with its size and sha256.
* ``nginx`` (session): an nginx of its own serving ``big_file``.
* ``redis`` (session): a redis-server of its own (no persistence).
* ``socat``: the path of the socat binary.
* ``policy`` / ``config``: every test runs with ``ZCConfig(zerocopy="always")``
  and with the default (``"auto"``).
* ``anyio_backend``: asyncio, uvloop and trio, as tests/test_anyio.py.

The event loops come from tests/conftest.py (``run``: the stdlib loop and
uvloop).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aiozc import ZCConfig, ZCStats

KiB = 1 << 10
MiB = 1 << 20
HOST = "127.0.0.1"

#: Not a multiple of the page size, so the last page is partial.
BIG_FILE_SIZE = 64 * MiB + 4099
BIG_FILE_SEED = 20240611

#: How long a daemon may take to answer its first probe.
START_TIMEOUT = 15.0


# -- binaries --------------------------------------------------------------------


def find_binary(name: str, package: str) -> str:
    """The program's path, or skip: ``<name> not installed: apt-get install <package>``.

    Daemons live in sbin, which a non-root PATH may not list.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if path is None:
        pytest.skip(f"{name} not installed: apt-get install {package}")
    return path


@pytest.fixture
def socat() -> str:
    return find_binary("socat", "socat")


# -- loops, backends and configurations ------------------------------------------------


CONFIGS = {
    "always": ZCConfig(zerocopy="always"),
    "auto": ZCConfig(),
}


@pytest.fixture(params=list(CONFIGS))
def policy(request: pytest.FixtureRequest) -> str:
    """``always`` maps whatever the kernel can; ``auto`` is the default."""
    return str(request.param)


@pytest.fixture
def config(policy: str) -> ZCConfig:
    return CONFIGS[policy]


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """anyio tests run on the stdlib asyncio loop, on uvloop and on trio."""
    return request.param


def check_stats(stats: ZCStats | None, policy: str, total: int) -> None:
    """What the statistics must say after ``total`` bytes were read and released.

    Nothing here depends on whether the peer's pages could be mapped: nginx's
    sendfile(), redis and socat are plain senders, and over loopback the
    kernel may well copy all of it.
    """
    assert stats is not None
    assert stats.bytes_received == total, stats
    assert stats.bytes_mapped + stats.bytes_copied == total, stats
    assert stats.views_outstanding == 0, stats
    if policy == "always":
        # 'always' never gives up mapping because of what the peer sends;
        # only a kernel that refuses the feature makes it copy.
        if stats.mode == "copy":
            assert "failed with" in str(stats.fallback_reason), stats
        elif stats.bytes_mapped:
            assert stats.fallback_reason is None, stats
        else:
            # These servers send with plain send(): nothing maps over
            # loopback, and the stats say so.
            assert str(stats.fallback_reason).startswith("nothing has been mapped"), stats


# -- data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BigFile:
    path: Path
    size: int
    sha256: str

    def slice_sha256(self, start: int, stop: int) -> str:
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(stop - start)
        assert len(data) == stop - start
        return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigFile]:
    directory = tmp_path_factory.mktemp("interop-data")
    data = random.Random(BIG_FILE_SEED).randbytes(BIG_FILE_SIZE)
    path = directory / "big.bin"
    path.write_bytes(data)
    try:
        yield BigFile(path, len(data), hashlib.sha256(data).hexdigest())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- daemons ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGKILL it if pytest dies before stopping it."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Daemon:
    """A server process of the suite's own, stopped by its pid."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    logs: tuple[Path, ...]

    def log_tail(self, limit: int = 4000) -> str:
        parts = []
        for log in self.logs:
            with contextlib.suppress(OSError):
                parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-limit:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_daemon(
    name: str,
    argv_for_port: Callable[[int], list[str]],
    probe: Callable[[int], bool],
    workdir: Path,
    logs: tuple[Path, ...] = (),
) -> Daemon:
    """Start ``argv_for_port(port)`` on a free port; wait until ``probe(port)``.

    A port taken by someone else between choosing and binding makes the
    daemon exit: it is retried on another port, three times at most.
    """
    failures = []
    for _attempt in range(3):
        port = free_port()
        out = workdir / f"{name}.out"
        with open(out, "wb") as out_file:
            proc = subprocess.Popen(
                argv_for_port(port),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in pytest does not reach it
                preexec_fn=_die_with_parent,
            )
        daemon = Daemon(name, proc, port, (out, *logs))
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if probe(port):
                        return daemon
                except OSError:
                    pass
                time.sleep(0.05)
        except BaseException:
            daemon.stop()
            raise
        daemon.stop()
        failures.append(f"exit status {proc.returncode} on port {port}:\n{daemon.log_tail()}")
    pytest.fail(f"{name} did not start:\n" + "\n".join(failures))


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# -- nginx -----------------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/body;
{temp_paths}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 10s;
    server {{
        listen {host}:{port};
        root {root}/www;
        location / {{
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Nginx:
    port: int
    file: BigFile
    #: The file's URL path.
    path: str


def _nginx_temp_paths(binary: str, root: Path) -> str:
    """The temp path directives for the modules this nginx was built with
    (by default they point into /var/lib/nginx, which nginx creates at start)."""
    build = subprocess.run(
        [binary, "-V"], capture_output=True, text=True, timeout=10
    ).stderr
    lines = []
    for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in build:
            lines.append(f"    {module}_temp_path {root}/tmp/{module};")
    return "\n".join(lines)


def _http_probe(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=2) as s:
        s.settimeout(2)
        s.sendall(b"GET /ping.txt HTTP/1.0\r\nHost: localhost\r\n\r\n")
        reply = recv_all(s)
    return reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\npong\n")


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory, big_file: BigFile) -> Iterator[Nginx]:
    """An nginx of the suite's own: one process (``master_process off``,
    ``daemon off``), everything under a temporary directory, serving
    ``big_file`` with ``sendfile on``."""
    binary = find_binary("nginx", "nginx-light")
    root = tmp_path_factory.mktemp("nginx")
    try:
        www = root / "www"
        www.mkdir()
        (root / "tmp").mkdir()
        try:
            os.link(big_file.path, www / big_file.path.name)
        except OSError:
            shutil.copyfile(big_file.path, www / big_file.path.name)
        (www / "ping.txt").write_text("pong\n")
        temp_paths = _nginx_temp_paths(binary, root)
        conf = root / "nginx.conf"

        def argv(port: int) -> list[str]:
            conf.write_text(
                NGINX_CONF.format(root=root, host=HOST, port=port, temp_paths=temp_paths)
            )
            # -e: the error log before the configuration is read (nginx >= 1.19.5).
            return [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]

        daemon = start_daemon(
            "nginx", argv, _http_probe, root, (root / "error.log",)
        )
        try:
            yield Nginx(daemon.port, big_file, "/" + big_file.path.name)
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- redis -----------------------------------------------------------------------------


def resp_command(*args: bytes) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts += [b"$%d\r\n" % len(arg), arg, b"\r\n"]
    return b"".join(parts)


class BlockingRedis:
    """A minimal blocking RESP client (plain sockets): the reference side."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> BlockingRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, *args: bytes) -> bytes | None:
        self.sock.sendall(resp_command(*args))
        return self.reply()

    def reply(self) -> bytes | None:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"redis closed mid-reply: {line!r}")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(f"redis error: {rest.decode(errors='replace')}")
        if kind == b":":
            return rest
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            body = self.file.read(n + 2)
            assert len(body) == n + 2 and body.endswith(b"\r\n"), "short bulk reply"
            return body[:n]
        raise RuntimeError(f"unexpected reply {line!r}")


def _redis_probe(port: int) -> bool:
    with BlockingRedis(port) as client:
        return client.call(b"PING") == b"PONG"


@dataclass(frozen=True)
class Redis:
    port: int


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """A redis-server of the suite's own: no persistence, 127.0.0.1 only."""
    binary = find_binary("redis-server", "redis-server")
    root = tmp_path_factory.mktemp("redis")
    log = root / "redis.log"
    try:
        def argv(port: int) -> list[str]:
            return [
                binary,
                "--port", str(port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(root),
                "--logfile", str(log),
                "--pidfile", str(root / "redis.pid"),
            ]

        daemon = start_daemon("redis-server", argv, _redis_probe, root, (log,))
        try:
            yield Redis(daemon.port)
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
