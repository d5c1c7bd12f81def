# cython: language_level=3
"""memmem() over any buffer: separator search for framing, without a copy.

``memoryview`` has no ``find``; copying each received view to ``bytes`` to
search it would undo the zerocopy receive.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

cdef extern from "<string.h>":
    # GNU extension; Python.h defines _GNU_SOURCE on Linux.
    void *memmem(const void *haystack, size_t hlen, const void *needle, size_t nlen) nogil


def find(object data, bytes sep, Py_ssize_t start=0):
    """Offset of the first ``sep`` in ``data`` at or after ``start``, or -1."""
    cdef Py_buffer buf
    cdef const char *hit
    cdef Py_ssize_t nlen = PyBytes_GET_SIZE(sep)
    if start < 0:
        start = 0
    PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
    try:
        if start > buf.len or nlen > buf.len - start:
            return -1
        hit = <const char *>memmem(<const char *>buf.buf + start, buf.len - start,
                                   PyBytes_AS_STRING(sep), nlen)
        if hit == NULL:
            return -1
        return hit - <const char *>buf.buf
    finally:
        PyBuffer_Release(&buf)
