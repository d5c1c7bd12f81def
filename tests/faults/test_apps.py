"""Hostile applications: views held forever, released in random order or
from other threads, touched after the connection, the peer and the loop are
gone, sliced and kept across thousands of receives.

Each case runs one scenario of ``_scenarios.py`` in a child process, on the
stdlib loop and on uvloop, over every link: if aiozc ever unmapped or
recycled memory under a live view, the child would die of SIGBUS (or read
changed bytes, which the scenario checks), and the case fails with the
signal's name instead of killing the test run.  The child also checks that
it ends with as many fds and socket mappings as it started with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ._harness import LOOPBACK
from .conftest import describe_exit, run_isolated

SCENARIOS = [
    "hold_forever",
    "hold_forever_pause",
    "random_release",
    "release_after_close",
    "slices_across_receives",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_application(isolated: Callable[..., dict[str, Any]], loop_name: str,
                     scenario: str) -> None:
    result = isolated(scenario, loop_name)
    assert result["tally"]["leak_checks"] >= 1


def test_the_harness_sees_a_sigbus() -> None:
    """The isolation can fail: a child that touches an unmapped page of a
    socket window (what aiozc must never let a view do) is reported as
    killed by SIGBUS."""
    args = ["--loop", "asyncio", "--link", LOOPBACK.to_json()]
    out = run_isolated("selftest_sigbus", args, timeout=60)
    assert describe_exit(out.returncode) == "killed by SIGBUS", (out.returncode, out.stderr)
    assert "touching" in out.stdout and not out.result
