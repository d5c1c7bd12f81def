"""The package is mypy-clean in strict mode, and its public names are documented."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import aiozc

PACKAGE = Path(aiozc.__file__).parent


@pytest.mark.typing
def test_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(PACKAGE)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_py_typed_is_shipped() -> None:
    assert (PACKAGE / "py.typed").is_file()


# Type aliases (ZerocopyPolicy, ...) cannot carry docstrings; they are
# documented where ZCConfig uses them.
DOCUMENTABLE = [
    n for n in aiozc.__all__
    if inspect.isclass(getattr(aiozc, n)) or inspect.isroutine(getattr(aiozc, n))
]


@pytest.mark.parametrize("name", DOCUMENTABLE)
def test_public_names_have_docstrings(name: str) -> None:
    obj = getattr(aiozc, name)
    assert inspect.getdoc(obj), f"aiozc.{name} has no docstring"
    if inspect.isclass(obj):
        for attr, member in vars(obj).items():
            if attr.startswith("_") or not callable(member):
                continue
            assert inspect.getdoc(member), f"aiozc.{name}.{attr} has no docstring"
