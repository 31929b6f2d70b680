"""mempool: memory pools and sub-allocators for Python, with a C core.

Strategies manage offsets in [0, capacity) and keep their whole state in one
relocatable block (see DESIGN.md).  The strategy types:

- :class:`TLSF` -- O(1) two-level segregated fit, exact sizes.
- :class:`BestFit` -- exact best fit in O(log n).
- :class:`Buddy` -- power-of-two size classes, split and merged as buddies.
- :class:`Bitmap` -- fixed blocks in a bitmap, next fit or first fit.
"""

from __future__ import annotations

from .errors import CorruptionError, MempoolError, NotAllocated, OutOfSpace, PoolClosed
from .stats import Stats
from ._mempool import BestFit, Bitmap, Buddy, Strategy, TLSF
from .strategies import STRATEGIES
from . import trace

__all__ = [
    "BestFit",
    "Bitmap",
    "Buddy",
    "CorruptionError",
    "MempoolError",
    "NotAllocated",
    "OutOfSpace",
    "PoolClosed",
    "Stats",
    "Strategy",
    "TLSF",
    "STRATEGIES",
    "trace",
]

__version__ = "0.1.0"
