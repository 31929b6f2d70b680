"""mempool: memory pools and sub-allocators for Python, with a C core.

Strategies manage offsets in [0, capacity) and keep their whole state in one
relocatable block (see DESIGN.md).  The strategy types:

- :class:`TLSF` -- O(1) two-level segregated fit, exact sizes.
- :class:`BestFit` -- exact best fit in O(log n).
- :class:`Buddy` -- power-of-two size classes, split and merged as buddies.
- :class:`Bitmap` -- fixed blocks in a bitmap, next fit or first fit.
- :class:`Slab` -- equal items carved page by page, freed items reused first.
- :class:`Bump` -- bump pointer with marks and rewind.
- :class:`Heap` -- slab classes, page fragments and TLSF in one span (general purpose).

Pools (:class:`Pool`, :class:`RegionPool`, :class:`SharedPool`) put a strategy over
real bytes from a source (:class:`AnonymousMemory`, :class:`FileMemory`,
:class:`SharedMemory`, :class:`BufferMemory`, :class:`External`) and hand out
:class:`Block` objects and NumPy arrays.
"""

# (no `from __future__ import annotations` here: it would leave a public
# `mempool.annotations`; this module has no annotations to postpone)
from . import _mempool, trace
from .context import current, numpy_pool
from ._mempool import *  # noqa: F403  (Block, Strategy and every strategy type)
from .errors import CorruptionError, MempoolError, NotAllocated, OutOfSpace, PoolClosed
from .pool import Pool
from .regions import RegionPool, RegionStats
from .shared import SharedArray, SharedPool, SharedStats
from .sources import (
    AnonymousMemory,
    BufferMemory,
    External,
    FileMemory,
    NumaPolicy,
    SharedMemory,
)
from .stats import Stats
from .strategies import STRATEGIES

__all__ = [
    "STRATEGIES",
    "AnonymousMemory",
    "BufferMemory",
    "CorruptionError",
    "External",
    "FileMemory",
    "MempoolError",
    "NotAllocated",
    "NumaPolicy",
    "OutOfSpace",
    "Pool",
    "PoolClosed",
    "RegionPool",
    "RegionStats",
    "SharedArray",
    "SharedMemory",
    "SharedPool",
    "SharedStats",
    "Stats",
    "current",
    "numpy_pool",
    "trace",
]
__all__ += _mempool.__all__

if not _mempool.JOURNAL_BUILD:  # (setup.py's MEMPOOL_NO_JOURNAL=1: bench/journal_nojournal.sh)
    import warnings as _warnings

    _warnings.warn("this mempool was built with MEMPOOL_NO_JOURNAL=1, the journal compiled "
                   "out: file and shared pools are not crash consistent (a build for "
                   "measuring the journal's cost only)", RuntimeWarning, stacklevel=2)

__version__ = "0.1.0"
