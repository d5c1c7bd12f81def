"""The documentation site builds cleanly, documents the public API, and its
examples run and type-check.

* ``python -m mkdocs build --strict`` (mkdocs.yml: every warning, a broken
  link or anchor included, aborts the build) succeeds from the repository
  root;
* the built API page has an entry for every name in ``__all__`` of
  ``aiozc``, ``aiozc.anyio`` and ``aiozc.testing``, and names every field
  of ``ZCConfig``, ``ZCStats`` and ``ZCMemoryStats`` (their descriptions
  are hand-written tables there, which must not fall behind the code);
* the programs of the user pages (each code block preceded by
  ``<!-- file: NAME -->``) are copied out, run (on the stdlib loop,
  uvloop and trio where they take ``--uvloop`` / ``--trio``; their test
  files with pytest), and pass ``mypy --strict``.

Marker ``docs``; the mypy check is also marked ``typing``.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import aiozc
import aiozc.anyio
import aiozc.testing

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# The pages whose programs are copied out and run.
EXAMPLE_PAGES = ["quickstart.md", "views.md"]
FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\n```python\n(.*?)\n```", re.DOTALL)


@dataclasses.dataclass
class Build:
    returncode: int
    output: str
    site: Path


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    site = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, check=False, capture_output=True, text=True, timeout=120,
    )
    return Build(result.returncode, result.stdout + result.stderr, site)


def test_site_builds_with_warnings_as_errors(build: Build) -> None:
    assert build.returncode == 0, build.output
    assert "WARNING" not in build.output, build.output
    assert (build.site / "index.html").is_file()
    for page in ["quickstart", "views", "troubleshooting", "api", "kernel", "design"]:
        assert (build.site / page / "index.html").is_file(), page


def _api_page(build: Build) -> str:
    assert build.returncode == 0, build.output
    return (build.site / "api" / "index.html").read_text(encoding="utf-8")


PUBLIC = (
    [f"aiozc.{name}" for name in aiozc.__all__]
    + [f"aiozc.anyio.{name}" for name in aiozc.anyio.__all__]
    + [f"aiozc.testing.{name}" for name in aiozc.testing.__all__]
)


@pytest.mark.parametrize("name", PUBLIC)
def test_api_page_documents_public_name(build: Build, name: str) -> None:
    # mkdocstrings gives each documented object an anchor named by its path.
    assert f'id="{name}"' in _api_page(build), f"{name} is missing from docs/api.md"


def test_api_page_shows_the_core_api(build: Build) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", " ", _api_page(build)))
    for needle in ["ZCProtocol", "data_received", "ZCTransport", "create_server",
                   "create_connection", "ZCConfig", "ZCStats", "fallback_reason",
                   "set_memory_limit", "readexactly_view", "receive_exactly_view",
                   "ZeroCopySender"]:
        assert needle in text, needle
    # The docstrings' Sphinx roles are rendered as code (docs/_hooks.py),
    # not as literal ":class:" text.
    assert not re.search(r":(class|func|meth|exc|attr|mod):", text), \
        re.search(r".{40}:(class|func|meth|exc|attr|mod):.{40}", text)


@pytest.mark.parametrize("cls", [aiozc.ZCConfig, aiozc.ZCStats, aiozc.ZCMemoryStats],
                         ids=lambda c: c.__name__)
def test_api_page_describes_every_field(build: Build, cls: type) -> None:
    # The hand-written table under the heading "<Class> fields".
    page = _api_page(build)
    anchor = f'id="{cls.__name__.lower()}-fields"'
    assert anchor in page, f"docs/api.md has no section {cls.__name__} fields"
    section = re.split(r"<h[1-3][ >]", page.split(anchor, 1)[1], maxsplit=1)[0]
    missing = [f.name for f in dataclasses.fields(cls)
               if f"<td><code>{f.name}</code>" not in section]
    assert not missing, f"{cls.__name__} fields not described in docs/api.md: {missing}"


# -- the examples ----------------------------------------------------------------


def _example_files() -> dict[str, str]:
    files: dict[str, str] = {}
    for page in EXAMPLE_PAGES:
        for name, code in FILE_BLOCK.findall((DOCS / page).read_text(encoding="utf-8")):
            assert name not in files, f"two examples named {name}"
            files[name] = code + "\n"
    return files


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("examples")
    files = _example_files()
    assert {"checksum.py", "test_checksum.py", "crc_streams.py", "crc_anyio.py"} <= set(files)
    for name, code in files.items():
        (where / name).write_text(code, encoding="utf-8")
    return where


def _runs(examples: Path) -> Iterator[list[str]]:
    """Each program, once per loop or backend it offers and this machine has."""
    for path in sorted(examples.glob("*.py")):
        if path.name.startswith("test_") or path.name == "conftest.py":
            continue
        code = path.read_text(encoding="utf-8")
        if '__name__ == "__main__"' not in code:
            continue
        yield [path.name]
        if "--uvloop" in code and importlib.util.find_spec("uvloop"):
            yield [path.name, "--uvloop"]
        if "--trio" in code and importlib.util.find_spec("trio"):
            yield [path.name, "--trio"]


def test_examples_run(examples: Path) -> None:
    failures = []
    for argv in _runs(examples):
        result = subprocess.run([sys.executable, *argv], cwd=examples,
                                check=False, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            failures.append(f"$ python {' '.join(argv)}\n{result.stdout}{result.stderr}")
    assert not failures, "\n".join(failures)


def test_example_tests_pass(examples: Path) -> None:
    tests = sorted(p.name for p in examples.glob("test_*.py"))
    assert tests
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=examples, check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout


@pytest.mark.typing
def test_examples_typecheck(examples: Path) -> None:
    # MYPYPATH: the checkout's aiozc, whatever kind of install this is (an
    # editable install's import hook is invisible to mypy).
    env = dict(os.environ, MYPYPATH=str(ROOT))
    names = sorted(p.name for p in examples.glob("*.py"))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--cache-dir", os.devnull, *names],
        cwd=examples, env=env, check=False, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
