"""Shared fixtures: every test runs once per event loop, over real sockets.

``run`` runs a coroutine on a fresh stdlib selector loop and on a fresh
uvloop loop (the test is parametrized, as uvloop's own suite runs one mixin
per loop).  The peers are real: a thread that sends with MSG_ZEROCOPY (pages
the kernel can map) or with plain sendmsg (pages it cannot).

Only fixtures live here; the helpers tests import (``Peer``, ``payload``,
``count_fds``, ``run_module``, ...) are in tests/support.py.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from support import LOOPS, Run


@pytest.fixture(params=list(LOOPS))
def loop_name(request: pytest.FixtureRequest) -> str:
    """The kind of event loop the test runs on."""
    return str(request.param)


@pytest.fixture
def run(loop_name: str) -> Iterator[Run]:
    """Run a coroutine on a fresh loop of each kind, failing after 60 s."""
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        yield lambda coro: runner.run(asyncio.wait_for(coro, 60))
    gc.collect()
