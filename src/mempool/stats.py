"""Stats: the counters of a strategy or pool, as a frozen dataclass.

This module imports nothing from mempool (the C binding builds Stats objects).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Stats"]


@dataclass(frozen=True)
class Stats:
    """Counters of one strategy, all in bytes except where said.

    Attributes
    ----------
    capacity : int
        Bytes managed.
    used : int
        Sum of ``size_of`` over the live ranges (rounding included).
    available : int
        Bytes not handed out.
    largest_free : int
        The largest request ``alloc(size)`` serves now.
    live : int
        Number of live ranges.
    free_ranges : int
        Number of free ranges (or free blocks, for the class-based strategies).
    peak_used : int
        The highest ``used`` seen.
    high_water : int
        The highest end offset ever handed out.
    fragmentation : float
        ``1 - largest_free / available`` (0 when nothing is available).
    internal_fragmentation : int
        Bytes handed out beyond what was asked for (0 for the exact strategies).
    metadata : int
        Bytes of the strategy's state block (its tables: what managing the capacity
        costs).  A private pool's state grows when more blocks are live than it was
        sized for; file and shared pools keep a second (shadow) copy of it and a redo log
        as large.
    """

    capacity: int
    used: int
    available: int
    largest_free: int
    live: int
    free_ranges: int
    peak_used: int
    high_water: int
    fragmentation: float
    internal_fragmentation: int = 0
    metadata: int = 0
