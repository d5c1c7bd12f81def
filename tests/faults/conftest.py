"""Fixtures of the fault suite: namespaces and veth links, isolation, tallies.

* ``netns_links`` (session): two network namespaces, each joined to the root
  namespace by a veth pair (MTU 1500 and 4148), made with ``ip`` at the
  start of the session and deleted at its end, even after a failure (and
  at the next session, if this one was killed).  Where they cannot be made
  (not root, no ``ip``, no namespace support) the veth cases are skipped
  with the reason, and only the loopback link (MTU 65536) runs.
* ``link``: parametrizes a test over the three links.
* ``no_leaks`` (autouse): the test must leave as many open fds and socket
  mappings as it found.
* ``tally``: what each test verified; totals are printed at the end of the
  session (and written as JSON to ``$AIOZC_FAULTS_REPORT`` if set).
* ``isolated``: runs a scenario of ``_scenarios.py`` in a child process, so
  that a crash (SIGBUS, SIGSEGV) fails the test instead of killing pytest.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ._harness import (
    LOOPBACK,
    VETH_MTUS,
    Link,
    PeerThread,
    count_fds,
    count_socket_maps,
)

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
LINK_NAMES = [*VETH_MTUS, LOOPBACK.name]


# -- namespaces --------------------------------------------------------------------


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def _delete_namespaces(names: list[str]) -> None:
    for name in names:
        # Deleting the namespace destroys the veth pair with it.
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _stale_namespaces() -> list[str]:
    """Namespaces left by a session that died (its pid is gone)."""
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    stale = []
    for line in proc.stdout.splitlines():
        m = re.match(r"(aiozc-f(\d+)-\d+)", line)
        if m and not Path(f"/proc/{m.group(2)}").exists():
            stale.append(m.group(1))
    return stale


def _used_subnets() -> set[int]:
    proc = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=30)
    used = set()
    for m in re.finditer(r"inet (10\.77\.(\d+)\.\d+)", proc.stdout):
        used.add(int(m.group(2)))
    return used


def _check_link(link: Link) -> None:
    """One TCP connection across the link, or RuntimeError."""
    import socket

    peer = PeerThread(link, lambda conn: conn.sendall(b"ok")).start()
    with socket.create_connection((link.remote, peer.port), timeout=5) as sock:
        sock.settimeout(5)
        assert sock.recv(2) == b"ok"
    peer.join(10)


def _make_links() -> tuple[dict[str, Link], list[str]]:
    """Create the veth links; returns them and the namespaces to delete."""
    _delete_namespaces(_stale_namespaces())
    pid = os.getpid()
    free = [n for n in range(1, 255) if n not in _used_subnets()]
    links: dict[str, Link] = {}
    made: list[str] = []
    try:
        for i, (name, mtu) in enumerate(VETH_MTUS.items()):
            ns = f"aiozc-f{pid}-{i}"
            root_dev, ns_dev = f"zf{pid}r{i}", f"zf{pid}n{i}"
            subnet = free[i]
            local, remote = f"10.77.{subnet}.1", f"10.77.{subnet}.2"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", root_dev, "type", "veth", "peer", "name", ns_dev)
            try:
                _ip("link", "set", ns_dev, "netns", ns)
            except RuntimeError:
                _ip("link", "del", root_dev)
                raise
            for where, dev, addr in ((), root_dev, local), (("-n", ns), ns_dev, remote):
                # One packet per skb: no segmentation offload, so the MTU
                # is what travels (see _harness).
                _ip(*where, "link", "set", dev, "mtu", str(mtu), "gso_max_segs", "1")
                _ip(*where, "addr", "add", f"{addr}/24", "dev", dev)
                _ip(*where, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            link = Link(name, mtu, ns, local, remote, root_dev, ns_dev)
            _check_link(link)
            links[name] = link
    except BaseException:
        _delete_namespaces(made)
        raise
    return links, made


@dataclasses.dataclass
class NetnsLinks:
    links: dict[str, Link]
    skip_reason: str | None


@pytest.fixture(scope="session")
def netns_links() -> Iterator[NetnsLinks]:
    """The veth links, or why they could not be made."""
    reason = None
    if not sys.platform.startswith("linux"):
        reason = "network namespaces are Linux-only"
    elif shutil.which("ip") is None:
        reason = "iproute2's `ip` command is not installed (apt-get install iproute2)"
    elif os.geteuid() != 0:
        reason = "creating network namespaces and veth pairs needs root (CAP_NET_ADMIN)"
    if reason is not None:
        yield NetnsLinks({}, reason)
        return
    try:
        links, made = _make_links()
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        yield NetnsLinks({}, f"could not create network namespaces / veth pairs: {exc}")
        return
    atexit.register(_delete_namespaces, made)
    # A session ended by SIGTERM (a CI timeout) deletes them too; one that
    # was SIGKILLed leaves them to the next session (_stale_namespaces).
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        _delete_namespaces(made)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield NetnsLinks(links, None)
    finally:
        _delete_namespaces(made)
        atexit.unregister(_delete_namespaces)
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def get_link(netns_links: NetnsLinks, name: str) -> Link:
    if name == LOOPBACK.name:
        return LOOPBACK
    if netns_links.skip_reason is not None:
        pytest.skip(f"{name}: {netns_links.skip_reason}")
    return netns_links.links[name]


@pytest.fixture(params=LINK_NAMES)
def link(request: pytest.FixtureRequest, netns_links: NetnsLinks) -> Link:
    """Each test runs over veth MTU 1500, veth MTU 4148 and loopback MTU 65536."""
    return get_link(netns_links, str(request.param))


@pytest.fixture(params=list(VETH_MTUS))
def veth_link(request: pytest.FixtureRequest, netns_links: NetnsLinks) -> Link:
    """The veth links only (for cases that cut the link)."""
    return get_link(netns_links, str(request.param))


@pytest.fixture
def all_links(netns_links: NetnsLinks) -> list[Link]:
    """Every link this machine has (the veth ones only where namespaces work)."""
    return [*netns_links.links.values(), LOOPBACK]


# -- tallies -----------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """What one test verified (added to the session's totals if it passes)."""

    connections: int = 0
    bytes_verified: int = 0
    faults: int = 0  # fault events injected (resets, kills, stalls, ...)
    leak_checks: int = 0  # made inside child processes (``isolated``)

    def add(self, other: Tally | dict[str, int]) -> None:
        items = dataclasses.asdict(other) if isinstance(other, Tally) else other
        for key, value in items.items():
            setattr(self, key, getattr(self, key) + int(value))

    def verified(self, nbytes: int, connections: int = 1, faults: int = 0) -> None:
        self.bytes_verified += nbytes
        self.connections += connections
        self.faults += faults


_TALLY_KEY = pytest.StashKey[Tally]()
_SESSION: dict[str, Any] = {
    "passed": 0, "failed": 0, "skipped": 0, "leaks": 0, "leak_checks": 0, "total": Tally(),
    "skips": set(), "modules": {},
}


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Tally:
    t: Tally = request.node.stash.setdefault(_TALLY_KEY, Tally())
    return t


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if Path(str(item.fspath)).parent != Path(__file__).parent:
        return
    if report.when == "call" and report.passed:
        _SESSION["passed"] += 1
        t = item.stash.get(_TALLY_KEY, Tally())
        _SESSION["total"].add(t)
        module = _SESSION["modules"].setdefault(Path(str(item.fspath)).stem, Tally())
        module.add(t)
    elif report.failed:
        _SESSION["failed"] += 1
    elif report.skipped:
        _SESSION["skipped"] += 1
        if isinstance(report.longrepr, tuple):
            _SESSION["skips"].add(str(report.longrepr[2]))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not (_SESSION["passed"] or _SESSION["failed"]):
        return
    total: Tally = _SESSION["total"]
    summary = {
        "cases_passed": _SESSION["passed"],
        "cases_failed": _SESSION["failed"],
        "cases_skipped": _SESSION["skipped"],
        "connections": total.connections,
        "bytes_verified": total.bytes_verified,
        "faults_injected": total.faults,
        "leak_checks": _SESSION["leak_checks"] + total.leak_checks,
        "leaks_found": _SESSION["leaks"],
        "long": os.environ.get("AIOZC_FAULTS_LONG", "") not in ("", "0"),
        "skip_reasons": sorted(_SESSION["skips"]),
        "by_module": {name: dataclasses.asdict(t) for name, t in sorted(_SESSION["modules"].items())},
    }
    tr = terminalreporter
    tr.section("aiozc fault suite")
    tr.write_line(
        f"{summary['cases_passed']} cases passed, {summary['cases_failed']} failed, "
        f"{summary['cases_skipped']} skipped; {total.connections} connections, "
        f"{total.faults} faults injected, {total.bytes_verified:,} bytes verified "
        f"byte-exact; {summary['leak_checks']} leak checks, leaks found: {_SESSION['leaks']}")
    for name, t in sorted(_SESSION["modules"].items()):
        tr.write_line(f"  {name}: {t.connections} connections, {t.faults} faults, "
                      f"{t.bytes_verified:,} bytes verified")
    for reason in summary["skip_reasons"]:
        tr.write_line(f"skipped: {reason}")
    path = os.environ.get("AIOZC_FAULTS_REPORT")
    if path:
        Path(path).write_text(json.dumps(summary, indent=2) + "\n")


# -- leaks -------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _process_wide_fds() -> None:
    """Open the fds libraries open once per process before counting any.

    libuv keeps a pipe for signals from its first loop on (uvloop), and a
    loop's default executor starts threads; neither is a per-connection leak.
    """
    import asyncio

    import uvloop

    async def touch() -> None:
        await asyncio.get_running_loop().run_in_executor(None, int)

    for factory in (asyncio.SelectorEventLoop, uvloop.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(touch())


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every fd and socket mapping the test made is gone when it ends."""
    gc.collect()
    fds, windows = count_fds(), count_socket_maps()
    yield
    gc.collect()
    after = count_fds(), count_socket_maps()
    _SESSION["leak_checks"] += 1
    # (Fewer is not this test's leak: an earlier failure's, cleaned up late.)
    if after[0] > fds or after[1] > windows:
        _SESSION["leaks"] += 1
        pytest.fail(f"leak: (fds, socket mappings) were {(fds, windows)}, now {after}")


# -- isolation ---------------------------------------------------------------------


@dataclasses.dataclass
class Isolated:
    """A scenario's result: what its child process printed as JSON."""

    returncode: int
    result: dict[str, Any]
    stdout: str
    stderr: str


def run_isolated(name: str, args: list[str], timeout: float = 120) -> Isolated:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env.setdefault("PYTHONFAULTHANDLER", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "faults._scenarios", name, *args],
        cwd=TESTS, env=env, capture_output=True, text=True, timeout=timeout,
    )
    result: dict[str, Any] = {}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    return Isolated(proc.returncode, result, proc.stdout, proc.stderr)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


@pytest.fixture
def isolated(all_links: list[Link], tally: Tally) -> Callable[..., dict[str, Any]]:
    """Run scenario ``name`` on loop ``loop`` over every link in a child process.

    The child must exit normally: a crash (SIGBUS from touching an unmapped
    page, SIGSEGV) is a failure.  Returns the scenario's JSON result, whose
    tallies are added to the test's.
    """

    def call(name: str, loop: str, *extra: str, timeout: float = 120) -> dict[str, Any]:
        args = ["--loop", loop, *extra]
        for link in all_links:
            args += ["--link", link.to_json()]
        try:
            out = run_isolated(name, args, timeout)
        finally:
            for link in all_links:  # a child that died with a link cut
                if link.netns is not None:
                    subprocess.run(["ip", "-n", link.netns, "link", "set", str(link.ns_dev), "up"],
                                   capture_output=True, timeout=10)
        assert out.returncode == 0, (
            f"scenario {name} on {loop}: {describe_exit(out.returncode)}\n"
            f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-6000:]}")
        result = out.result
        assert result.get("ok"), f"no result from {name}: {out.stdout[-2000:]}"
        tally.add(result.get("tally", {}))
        return result

    return call

