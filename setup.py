# The compiled hot path of aiozc (aiozc/_receiver.pyx, _buffer.pyx, _search.pyx).  Everything else about
# the package lives in pyproject.toml; setuptools needs this file only to know
# about the Cython extension.
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension("aiozc._receiver", ["aiozc/_receiver.pyx"]),
            Extension("aiozc._buffer", ["aiozc/_buffer.pyx"]),
            Extension("aiozc._search", ["aiozc/_search.pyx"]),
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
