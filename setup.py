# The compiled hot path of aiozc (aiozc/_pool.pyx, _policy.pyx, _engine.pyx,
# _buffer.pyx).  Everything else about the package lives in
# pyproject.toml; setuptools needs this file only to know about the Cython
# extensions.
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension("aiozc._pool", ["aiozc/_pool.pyx"]),
            Extension("aiozc._policy", ["aiozc/_policy.pyx"]),
            Extension("aiozc._engine", ["aiozc/_engine.pyx"]),
            Extension("aiozc._buffer", ["aiozc/_buffer.pyx"]),
        ],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )
)
