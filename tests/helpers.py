"""Checks the strategy tests share: a failed call changes nothing, corrupted
snapshots are refused or work, the memory map tiles the span."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import mempool


def unchanged(s, fn, exc, match=None, *, snapshot=True):
    """fn() must raise exc (its message matching `match`) and leave the strategy s as
    it was: the same stats() and segments(), with snapshot=True the same snapshot()
    bytes too, and check() passing."""
    before, segs = s.stats(), s.segments()
    snap = s.snapshot() if snapshot else None
    with pytest.raises(exc, match=match):
        fn()
    assert s.stats() == before and s.segments() == segs
    if snapshot:
        assert s.snapshot() == snap
    s.check()


def corrupted_restores(cls, good: bytes, seed: int, use: Callable[[mempool.Strategy], object],
                       tries: int = 400) -> int:
    """Restore `tries` copies of the snapshot `good`, each with one to three random bytes
    overwritten (numpy default_rng(seed)).  Each must raise CorruptionError or give a
    strategy that use(strategy) exercises (it asserts what "works" means).  Returns how
    many were refused."""
    rng = np.random.default_rng(seed)
    refused = 0
    for _ in range(tries):
        bad = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(len(bad)))] = int(rng.integers(256))
        try:
            r = cls.restore(bytes(bad))
        except mempool.CorruptionError:
            refused += 1
            continue
        use(r)
    return refused


def check_alloc_free(r) -> None:
    """A restored strategy works: check() passes; alloc(1), unless it is full, and
    freeing that range succeed."""
    r.check()
    try:
        r.free(r.alloc(1))
    except mempool.OutOfSpace:
        pass


def check_alloc_check(r) -> None:
    """A restored strategy works: check() passes, alloc(1) succeeds, check() passes."""
    r.check()
    r.alloc(1)
    r.check()


def assert_tiles(segments, end: int, min_size: int = 1) -> None:
    """segments() covers [0, end) in address order, no gap or overlap, every
    segment at least min_size bytes with a bool `allocated`."""
    pos = 0
    for off, size, allocated in segments:
        assert off == pos and size >= min_size and isinstance(allocated, bool)
        pos = off + size
    assert pos == end
