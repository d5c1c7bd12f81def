"""The distributions: what ``python -m build`` makes, and that it installs.

From a copy of the source tree (the working tree is left as it is), the
sdist and the wheel are built the way a release is (``python -m build``:
the sdist, then the wheel from that sdist), and checked:

* ``twine check --strict`` passes on both;
* the sdist is the whole project a user can build, test and read: the
  package with its .pyx/.pxd/.pyi sources and the generated C, every file of
  tests/ (conftest.py, support.py, faults/, interop/), examples/, docs/ and
  the benchmarks the tests run, README.md and LICENSE, and no build debris;
  the test suite collected from the unpacked sdist is the repository's;
* the wheel carries the compiled modules, py.typed and the stubs, and
  neither the generated C nor the Cython sources;
* the sdist installs with ``pip install --no-build-isolation`` into a fresh
  venv that has setuptools but no Cython (setup.py builds from the shipped
  C), and that installation imports and moves data over loopback.

The build runs without isolation when this interpreter has what
pyproject's [build-system] asks for (setuptools >= 77 and Cython), else
isolated, which needs the package index; the fresh venv needs the index for
its setuptools either way.  Without a C compiler or the index the tests skip,
saying why.  ``-m "not packaging"`` leaves them out; ``tox -e packaging`` runs
them alone.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
NAME, VERSION = "aiozc", "0.1.0"
MODULES = ["_pool", "_policy", "_engine", "_buffer", "_poller"]  # the Cython extensions
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")

# Top-level entries of the source tree that are not the project: left out of
# the copy that is built.
NOT_SOURCE = {".git", ".venv", ".tox", "build", "dist", "site", "PKG-INFO"}
# Debris that must never be in a distribution (the copy keeps what the
# working tree has of it, so its absence from the sdist is tested).
DEBRIS_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".hypothesis", ".ruff_cache"}
DEBRIS_SUFFIXES = (".pyc", ".pyo", ".so", ".o")
# Directories of the repository the sdist ships whole (less debris, and the
# raw JSON of benchmarks/results, which MANIFEST.in keeps in the repository).
SHIPPED_DIRS = ["tests", "examples", "docs", "benchmarks"]

BUILD_TIMEOUT = 600
INSTALL_TIMEOUT = 300


def _env() -> dict[str, str]:
    """This process's environment, without what would point a child Python
    at this checkout or this venv instead of the one under test."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(args: list[str], *, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _output(proc: subprocess.CompletedProcess[str], tail: int = 8000) -> str:
    return (f"$ {shlex.join(str(a) for a in proc.args)}\n--- exit {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-tail:]}\n--- stderr\n{proc.stderr[-tail:]}")


def _check(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, _output(proc)
    return proc


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _compiler_or_skip() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("aiozc builds on Linux only")
    cc = sysconfig.get_config_var("CC") or "cc"
    compiler = shlex.split(os.environ.get("CC", cc))[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler!r} is not on PATH): the extensions cannot be built")


def _ignore_not_source(directory: str, names: list[str]) -> set[str]:
    if Path(directory).resolve() != ROOT:
        return set()
    return {n for n in names if n in NOT_SOURCE or n.endswith(".egg-info") or n.startswith(".venv")}


def _is_debris(path: PurePosixPath) -> bool:
    return bool(DEBRIS_DIRS.intersection(path.parts)) or path.name.endswith(DEBRIS_SUFFIXES)


def _repo_files(top: str) -> set[str]:
    """Files of the repository under ``top`` that the sdist must carry."""
    found = set()
    for path in (ROOT / top).rglob("*"):
        rel = PurePosixPath(path.relative_to(ROOT).as_posix())
        if not path.is_file() or _is_debris(rel):
            continue
        if rel.parts[:2] == ("benchmarks", "results") and rel.suffix == ".json":
            continue
        found.add(str(rel))
    return found


@dataclass
class FreshVenv:
    """A venv made here: pip and setuptools >= 77, no Cython, no aiozc."""

    path: Path

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """The venv the sdist is installed into.

    Its setuptools comes from the package index (a venv's bundled one, if
    any, is older than the 77 that an SPDX ``license`` needs); an index that
    cannot be reached skips the tests that need it.
    """
    _compiler_or_skip()
    path = tmp_path_factory.mktemp("fresh") / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    fresh = FreshVenv(path)
    proc = _run([fresh.python, "-m", "pip", "install", "--quiet", "setuptools>=77"],
                timeout=INSTALL_TIMEOUT)
    if proc.returncode != 0:
        pytest.skip("could not install setuptools>=77 from the package index into a fresh "
                    f"venv (is the index reachable?):\n{_output(proc, 2000)}")
    return fresh


@dataclass
class Dists:
    sdist: Path
    wheel: Path
    build_log: str

    def sdist_names(self) -> set[str]:
        """The sdist's members, relative to its top directory (aiozc-0.1.0/)."""
        with tarfile.open(self.sdist) as tar:
            members = tar.getmembers()
        top = f"{NAME}-{VERSION}"
        names = set()
        for m in members:
            parts = PurePosixPath(m.name).parts
            assert parts[0] == top, f"{m.name} is outside the sdist's {top}/"
            if m.isfile():
                names.add(str(PurePosixPath(*parts[1:])))
        return names

    def wheel_names(self) -> set[str]:
        with zipfile.ZipFile(self.wheel) as zf:
            return set(zf.namelist())

    def wheel_metadata(self) -> str:
        with zipfile.ZipFile(self.wheel) as zf:
            return zf.read(f"{NAME}-{VERSION}.dist-info/METADATA").decode()


@pytest.fixture(scope="module")
def dists(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """``python -m build`` of a copy of the source tree: sdist, then the wheel from it."""
    _compiler_or_skip()
    base = tmp_path_factory.mktemp("build")
    src, out = base / "src", base / "dist"
    shutil.copytree(ROOT, src, ignore=_ignore_not_source, symlinks=True)
    setuptools, cython = _installed("setuptools"), _installed("Cython")
    offline = (setuptools is not None and _version_tuple(setuptools) >= (77,)
               and cython is not None and _version_tuple(cython) >= (3, 0, 10))
    args = [sys.executable, "-m", "build", "--outdir", str(out)]
    if offline:
        args.append("--no-isolation")
    else:
        # Isolated: the build requirements come from the index.  The fresh
        # venv's setuptools does too, so its fixture says whether the index
        # can be reached (and skips if not) before this build depends on it.
        request.getfixturevalue("fresh_venv")
    proc = _check(_run([*args, str(src)], timeout=BUILD_TIMEOUT))
    sdists = sorted(out.glob("*.tar.gz"))
    wheels = sorted(out.glob("*.whl"))
    assert [p.name for p in sdists] == [f"{NAME}-{VERSION}.tar.gz"], _output(proc)
    assert len(wheels) == 1, _output(proc)
    return Dists(sdists[0], wheels[0], proc.stdout + proc.stderr)


def test_twine_check_strict(dists: Dists) -> None:
    _check(_run([sys.executable, "-m", "twine", "check", "--strict",
                 str(dists.sdist), str(dists.wheel)], timeout=120))


def test_no_license_deprecation_warning(dists: Dists) -> None:
    """setuptools' warning about a TOML-table ``license`` (the SPDX form is used)."""
    flagged = [line for line in dists.build_log.splitlines()
               if "license" in line.lower() and "deprecat" in line.lower()]
    assert not flagged, "\n".join(flagged)


def test_metadata(dists: Dists) -> None:
    meta = dists.wheel_metadata()
    assert "License-Expression: MIT" in meta.splitlines()
    assert "License-File: LICENSE" in meta.splitlines()
    classifiers = {line.split(": ", 1)[1] for line in meta.splitlines()
                   if line.startswith("Classifier: ")}
    for wanted in ["Development Status :: 3 - Alpha",
                   "Programming Language :: Python :: 3.11",
                   "Programming Language :: Python :: 3.12",
                   "Programming Language :: Python :: 3.13",
                   "Operating System :: POSIX :: Linux",
                   "Typing :: Typed"]:
        assert wanted in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)


def test_sdist_is_complete(dists: Dists) -> None:
    names = dists.sdist_names()
    required = {
        "README.md", "LICENSE", "pyproject.toml", "setup.py", "MANIFEST.in", "PKG-INFO",
        "tests/conftest.py", "tests/support.py", "tests/faults/__init__.py",
        "tests/faults/conftest.py", "aiozc/py.typed",
    }
    for module in MODULES:
        required |= {f"aiozc/{module}.pyx", f"aiozc/{module}.c"}
    required |= {p.relative_to(ROOT).as_posix() for pattern in ("*.pxd", "*.pyi", "*.py")
                 for p in (ROOT / "aiozc").rglob(pattern)
                 if not _is_debris(PurePosixPath(p.relative_to(ROOT).as_posix()))}
    problems = []
    if required - names:
        problems.append(f"missing from the sdist: {sorted(required - names)}")
    for top in SHIPPED_DIRS:
        expected = _repo_files(top)
        if not expected:
            problems.append(f"{top}/ has no files in the repository")
        elif expected - names:
            problems.append(f"files of {top}/ missing from the sdist: {sorted(expected - names)}")
    debris = sorted(n for n in names if _is_debris(PurePosixPath(n)))
    if debris:
        problems.append(f"build debris in the sdist: {debris}")
    assert not problems, "\n".join(problems)


def _collected(cwd: Path) -> list[str]:
    """The test ids ``pytest --collect-only`` finds in ``cwd``, with this
    interpreter and its installed aiozc (-P: the directory's own aiozc/,
    uncompiled in an sdist, is not importable)."""
    proc = _check(_run([sys.executable, "-P", "-m", "pytest", "--collect-only", "-q",
                        "-p", "no:cacheprovider"], timeout=300, cwd=cwd))
    return sorted(line for line in proc.stdout.splitlines() if "::" in line)


def test_sdist_test_suite_collects(dists: Dists, tmp_path: Path) -> None:
    """The sdist's tests are the repository's: all of them collect, none fails to import."""
    with tarfile.open(dists.sdist) as tar:
        if hasattr(tarfile, "data_filter"):  # 3.11.4 and later
            tar.extractall(tmp_path, filter="data")
        else:
            tar.extractall(tmp_path)
    in_sdist = _collected(tmp_path / f"{NAME}-{VERSION}")
    assert in_sdist, "no tests collected from the sdist"
    in_repo = _collected(ROOT)
    assert in_sdist == in_repo, (
        f"only in the repository: {sorted(set(in_repo) - set(in_sdist))[:20]}\n"
        f"only in the sdist: {sorted(set(in_sdist) - set(in_repo))[:20]}")


def test_wheel_contents(dists: Dists) -> None:
    names = dists.wheel_names()
    for module in MODULES:
        assert f"aiozc/{module}{EXT_SUFFIX}" in names, f"aiozc/{module}{EXT_SUFFIX} not in the wheel"
    assert "aiozc/py.typed" in names
    stubs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "aiozc").glob("*.pyi")}
    assert stubs and not stubs - names, f"stubs missing from the wheel: {sorted(stubs - names)}"
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "aiozc").rglob("*.py")
               if not _is_debris(PurePosixPath(p.relative_to(ROOT).as_posix()))}
    assert not sources - names, f"modules missing from the wheel: {sorted(sources - names)}"
    assert f"{NAME}-{VERSION}.dist-info/licenses/LICENSE" in names
    unwanted = sorted(n for n in names if n.endswith((".c", ".pyx", ".pxd")))
    assert not unwanted, f"sources the wheel does not need: {unwanted}"
    assert not any(n.startswith(("tests/", "examples/", "docs/", "benchmarks/")) for n in names)


# Run in the fresh venv, from a directory outside any checkout and with -I,
# so that only the installed aiozc can be imported: the compiled modules
# load, and a server reads 1 MiB over loopback through them.
SMOKE = r'''
import asyncio, os, sys
import aiozc, aiozc._buffer, aiozc._engine, aiozc._policy, aiozc._pool
for mod in (aiozc, aiozc._buffer, aiozc._engine, aiozc._policy, aiozc._pool):
    assert mod.__file__.startswith(sys.prefix + os.sep), (mod.__name__, mod.__file__)
PAYLOAD = os.urandom(1 << 20)

async def main():
    got = asyncio.get_running_loop().create_future()

    async def handle(reader, writer):
        with await reader.readexactly_view(len(PAYLOAD)) as view:
            got.set_result(bytes(view))
        writer.close()

    server = await aiozc.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PAYLOAD)
        await writer.drain()
        data = await asyncio.wait_for(got, 30)
        writer.close()
        await writer.wait_closed()
    assert data == PAYLOAD, "the bytes received are not the bytes sent"

asyncio.run(main())
print("aiozc", aiozc.__version__, "from", aiozc._engine.__file__)
'''


def test_sdist_installs_without_cython(dists: Dists, fresh_venv: FreshVenv,
                                       tmp_path: Path) -> None:
    # The premise: no Cython in the fresh venv, so setup.py must take the C.
    probe = _run([fresh_venv.python, "-I", "-c", "import Cython"], timeout=60, cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'Cython'" in probe.stderr, _output(probe)
    _check(_run([fresh_venv.python, "-m", "pip", "install", "--no-build-isolation",
                 "--no-deps", "--no-cache-dir", str(dists.sdist)],
                timeout=INSTALL_TIMEOUT, cwd=tmp_path))
    smoke = _check(_run([fresh_venv.python, "-I", "-c", SMOKE], timeout=120, cwd=tmp_path))
    assert f"aiozc {VERSION} from {fresh_venv.path}" in smoke.stdout, _output(smoke)

