# The compiled hot path of aiozc (aiozc/_pool.pyx, _policy.pyx, _engine.pyx,
# _buffer.pyx, _poller.pyx).  Everything else about the package lives in
# pyproject.toml; setuptools needs this file only to know about the Cython
# extensions.
#
# With Cython importable (a git checkout: pyproject's build requirements
# bring it), the .pyx sources are compiled to C here.  Without it (an install
# from the sdist with --no-build-isolation into an environment that has no
# Cython), the extensions are built from the generated aiozc/*.c that the
# sdist ships.
import sys
from pathlib import Path

from setuptools import Extension, setup

MODULES = ["_pool", "_policy", "_engine", "_buffer", "_poller"]

COMPILER_DIRECTIVES = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}

try:
    from Cython.Build import cythonize
except ImportError:
    cythonize = None


def extensions() -> list[Extension]:
    if cythonize is not None:
        return cythonize(
            [Extension(f"aiozc.{name}", [f"aiozc/{name}.pyx"]) for name in MODULES],
            compiler_directives=COMPILER_DIRECTIVES,
        )
    here = Path(__file__).resolve().parent
    missing = [f"aiozc/{name}.c" for name in MODULES if not (here / "aiozc" / f"{name}.c").is_file()]
    if missing:
        raise SystemExit(
            "aiozc: Cython is not installed and the generated C is missing "
            f"({', '.join(missing)}). Install Cython>=3.0.10 to compile the .pyx "
            "sources (a git checkout), or build from the sdist, which ships the C."
        )
    cython_sources = [*(here / "aiozc").glob("*.pyx"), *(here / "aiozc").glob("*.pxd")]
    newest = max(p.stat().st_mtime for p in cython_sources)
    stale = [f"aiozc/{name}.c" for name in MODULES
             if (here / "aiozc" / f"{name}.c").stat().st_mtime < newest]
    if stale:
        print(f"aiozc: warning: Cython is not installed; building from {', '.join(stale)}, "
              "which are older than the .pyx/.pxd sources", file=sys.stderr)
    return [Extension(f"aiozc.{name}", [f"aiozc/{name}.c"]) for name in MODULES]


setup(ext_modules=extensions())
