"""The exception tree of mempool (DESIGN.md, "Errors").

::

    MempoolError(Exception)
    ├── OutOfSpace(MempoolError, MemoryError)   nothing free fits, size > capacity, or state is full
    ├── NotAllocated(MempoolError, ValueError)  offset/block not live: unknown, interior, freed already
    ├── CorruptionError(MempoolError)           check() failed, or a segment/file is invalid
    └── PoolClosed(MempoolError, ValueError)    use after close()

    UnnamedArrayWarning(UserWarning)            a persistent pool's unnamed array was collected

This module imports nothing from mempool: every layer, the C binding included,
raises these types.
"""

from __future__ import annotations

__all__ = [
    "CorruptionError", "MempoolError", "NotAllocated", "OutOfSpace", "PoolClosed",
    "UnnamedArrayWarning",
]


class MempoolError(Exception):
    """Base of every error mempool raises on its own account."""


class OutOfSpace(MempoolError, MemoryError):
    """Nothing free fits the request, the size exceeds the capacity, or the state is full.

    Attributes
    ----------
    size : int
        The request in bytes.
    available : int
        Bytes free when the request failed.
    largest_free : int
        The largest request that would have succeeded, in bytes.
    """

    def __init__(self, message: str, size: int = 0, available: int = 0, largest_free: int = 0):
        super().__init__(message)
        self.size = size
        self.available = available
        self.largest_free = largest_free

    def __reduce__(self) -> tuple[type[OutOfSpace], tuple[str, int, int, int]]:
        return (type(self), (str(self), self.size, self.available, self.largest_free))


class NotAllocated(MempoolError, ValueError):
    """The offset or block is not live: unknown, inside a range, or freed already."""


class CorruptionError(MempoolError):
    """check() found a broken invariant, or a state, segment or file is not valid."""


class PoolClosed(MempoolError, ValueError):
    """The pool (or its memory) was closed."""


class UnnamedArrayWarning(UserWarning):
    """An array of a persistent (file) pool was collected without a name, and its
    range freed with it: its data is gone from the file.  Given once per pool, the
    first time it happens; name the array (``pool.named[...] = arr``) or keep a
    Block (``pool.alloc``) to keep the data.  Silence it with
    ``warnings.filterwarnings("ignore", category=UnnamedArrayWarning)`` where
    temporaries in a file pool are meant."""
