"""Limits and leak tracking for every pool kind (layer 4): ``pool.set_limit(size)``,
``pool.track(enabled=True)``, ``pool.live()``.

The limit lives in C (``_native/recorder.c``): the pool's strategy is switched to an
operation table that refuses an allocation (``OutOfSpace`` naming the limit) when
``used`` would pass it.  A pool without a limit keeps the real table and pays
nothing.

Tracking: while any pool tracks, the C side calls :func:`_note` for every Block a pool
makes (``alloc``, ``try_alloc``, ``empty``, ``zeros``, ``array``, ``realloc``); it keeps
the time and the Python stack of the pools that track, and :func:`live` joins them with
the pool's live Blocks.  No pool tracking: one flag test per Block, nothing else.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any

from . import _mempool
from ._units import as_integer, parse_size

__all__ = ["Frame", "LiveBlock"]

#: (file, line, function), outermost call first, as ``traceback.extract_stack``
Frame = tuple[str, int, str]

_PKG = os.path.dirname(os.path.abspath(__file__))
_MAX_FRAMES = 64

# pool -> {offset: (monotonic time, size, frames)}
_TRACKED: weakref.WeakKeyDictionary[Any, dict[int, tuple[float, int, tuple[Frame, ...]]]] = (
    weakref.WeakKeyDictionary())


@dataclass(frozen=True)
class LiveBlock:
    """A live block of a tracking pool (``pool.live()``).

    Attributes
    ----------
    offset : int
        Offset in its pool (a RegionPool: in its region, see ``pool``).
    size : int
        Bytes asked for.
    age : float
        Seconds since it was allocated.
    where : tuple of (file, line, function)
        The Python stack that allocated it, outermost call first, mempool's own frames
        left out: ``where[-1]`` is the line that called ``alloc`` / ``empty`` / ...
    pool : object
        The pool (a RegionPool's region) that holds it.
    """

    offset: int
    size: int
    age: float
    where: tuple[Frame, ...]
    pool: Any

    @property
    def address(self) -> int | None:
        """Its address in this process (None for a pool over External memory)."""
        base = self.pool.address
        return None if base is None else base + self.offset


def _note(pool: Any, offset: int, size: int) -> None:
    d = _TRACKED.get(pool)
    if d is None:
        return
    frames: list[Frame] = []
    f: Any = sys._getframe(1)
    while f is not None and len(frames) < _MAX_FRAMES:
        code = f.f_code
        frames.append((code.co_filename, f.f_lineno, code.co_name))
        f = f.f_back
    # mempool's own frames (Pool.array, RegionPool.alloc, ...) are not where it was made
    k = 0
    while k < len(frames) - 1 and os.path.dirname(os.path.abspath(frames[k][0])) == _PKG:
        k += 1
    d[offset] = (time.monotonic(), size, tuple(reversed(frames[k:])))


def track(pool: Any, enabled: bool) -> None:
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, not {type(enabled).__name__}")
    if enabled:
        _TRACKED.setdefault(pool, {})
    else:
        _TRACKED.pop(pool, None)
    _mempool._track_hook(_note, len(_TRACKED) > 0)


def tracking(pool: Any) -> bool:
    return pool in _TRACKED


def live(pool: Any) -> list[LiveBlock]:
    """The live Blocks of ``pool`` made while it tracked, oldest first."""
    d = _TRACKED.get(pool)
    if d is None:
        raise ValueError("the pool does not track its allocations: call pool.track() first")
    now = time.monotonic()
    # (another thread's alloc notes into d meanwhile: the notes are read as one copy
    # taken before the live Blocks, so a note whose Block is not among them was freed;
    # a Block noted after the copy is left for the next call, and a note made anew at
    # the same offset meanwhile is kept; two calls may forget one offset at once)
    notes = dict(d)
    blocks = dict(_mempool._live_blocks(pool))
    for off in [o for o in notes if o not in blocks]:  # freed since: forgotten
        if d.get(off) is notes[off]:
            d.pop(off, None)
    out = [LiveBlock(off, blocks[off], now - t, where, pool)
           for off, (t, _size, where) in notes.items() if off in blocks]
    out.sort(key=lambda b: -b.age)
    return out


def check_limit(size: Any, capacity: int) -> int | None:
    """set_limit's argument: None, or bytes in [0, capacity] (an int or "64MiB")."""
    if size is None:
        return None
    # (any integer: NumPy's too, as sizes are)
    n = parse_size(size, "limit") if isinstance(size, str) else as_integer(size, bool_ok=False)
    if n is None:
        raise TypeError(f"limit must be an int, a size string or None, not {type(size).__name__}")
    size = n
    if size < 0:
        raise ValueError(f"limit must be >= 0, got {size}")
    if size > capacity:
        raise ValueError(f"limit {size} is above the pool's capacity {capacity}")
    return int(size)
