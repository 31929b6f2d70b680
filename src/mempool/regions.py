"""RegionPool: a pool that grows by mapping regions and gives empty ones back
(tanya's MmapPool, without its defects) (layer 4).

Each region is a :class:`~mempool.Pool` over its own anonymous mapping (a page
multiple, at least 64 KiB) with its own strategy.  A request goes to the first
region where it fits, else a new region is mapped; a request larger than the
region size gets a region of its own.  A region whose ranges are all free is
unmapped, except that ``retain`` empty regions are kept so that a lone block
allocated and freed in a loop does not map and unmap every time (the seed did).
``max_size`` caps the bytes mapped: beyond it, OutOfSpace.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._mempool import Block
from ._units import parse_size
from .errors import NotAllocated, OutOfSpace, PoolClosed
from .pool import Pool
from .strategies import strategy_type

__all__ = ["RegionPool", "RegionStats"]

MIN_REGION = 64 << 10
PAGE = mmap.PAGESIZE


def _round_up(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


@dataclass(frozen=True)
class RegionStats:
    """Counters of a RegionPool, in bytes except where said."""

    regions: int  #: regions mapped now
    empty_regions: int  #: of which hold no live range (kept by ``retain``)
    bytes_mapped: int  #: sum of the regions' sizes
    bytes_used: int  #: sum of the live ranges' sizes (strategy rounding included)
    live: int  #: live ranges
    peak_mapped: int  #: the highest bytes_mapped seen
    maps: int  #: regions mapped so far
    unmaps: int  #: regions unmapped so far


class RegionPool:
    """A growable pool of regions; see the module docstring.

    Parameters
    ----------
    strategy : str
        The strategy of every region (``"tlsf"`` default).
    region_size : int or str
        Bytes of a normal region; rounded up to a page multiple, at least 64 KiB.
    max_size : int or str, optional
        The most bytes mapped at once; None for no limit.
    retain : int
        How many empty regions to keep mapped (default 1).
    **options
        Passed to each region's strategy.
    """

    def __init__(self, strategy: str = "tlsf", *, region_size: int | str = "1MiB",
                 max_size: int | str | None = None, retain: int = 1, **options: Any) -> None:
        strategy_type(strategy)
        self.strategy = strategy
        self.region_size = max(_round_up(parse_size(region_size, "region_size"), PAGE), MIN_REGION)
        self.max_size = parse_size(max_size, "max_size") if max_size is not None else None
        if isinstance(retain, bool) or not isinstance(retain, int) or retain < 0:
            raise ValueError(f"retain must be an integer >= 0, got {retain!r}")
        self.retain = retain
        self._options = options
        self._regions: list[Pool] = []
        self._closed = False
        self._peak = 0
        self._maps = 0
        self._unmaps = 0

    # ---- regions ----------------------------------------------------------------------
    @property
    def regions(self) -> list[Pool]:
        """The regions mapped now, oldest first."""
        return list(self._regions)

    def _mapped(self) -> int:
        return sum(r.capacity for r in self._regions)

    def _map(self, size: int) -> Pool:
        if self.max_size is not None and self._mapped() + size > self.max_size:
            avail = self.max_size - self._mapped()
            largest = max((r.largest_free for r in self._regions), default=0)
            raise OutOfSpace(
                f"cannot map a region of {size} bytes: {self._mapped()} of max_size "
                f"{self.max_size} are mapped", size, avail + sum(r.available for r in self._regions),
                max(largest, avail))
        region = Pool(size, self.strategy, **self._options)
        self._regions.append(region)
        self._maps += 1
        self._peak = max(self._peak, self._mapped())
        return region

    def _sweep(self, keep: int | None = None) -> None:
        """Unmap empty regions beyond ``retain`` (or ``keep``), largest first."""
        keep = self.retain if keep is None else keep
        empty = [r for r in self._regions if len(r) == 0 and r.exports == 0]
        empty.sort(key=lambda r: -r.capacity)
        for r in empty[: max(len(empty) - keep, 0)]:
            self._regions.remove(r)
            r.close()
            self._unmaps += 1

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed("the region pool is closed")

    def _own(self, block: Any) -> Pool:
        if not isinstance(block, Block):
            raise TypeError(f"expected a mempool.Block, not {type(block).__name__}")
        pool = block.pool
        if not any(pool is r for r in self._regions):
            raise NotAllocated("the block belongs to another pool")
        return pool

    # ---- allocation ----------------------------------------------------------------------
    def _region_for(self, size: int, align: int) -> list[Pool]:
        """The regions to try, in order; a request larger than a region gets its own
        (a retained one that is large enough, else a new one)."""
        need = size + (align if align > PAGE else 0)
        if need > self.region_size:
            big = [r for r in self._regions if r.capacity >= need]
            return big or [self._map(_round_up(need, PAGE))]
        return self._regions

    def alloc(self, size: int, align: int = 16) -> Block:
        """A Block of ``size`` bytes from the first region where it fits, mapping a new
        region when none does.  OutOfSpace beyond ``max_size``."""
        self._check_open()
        if isinstance(size, bool) or not hasattr(type(size), "__index__") or isinstance(size, float):
            raise TypeError(f"size must be an integer, not {type(size).__name__}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not isinstance(align, int) or align < 1 or align & (align - 1):
            raise ValueError(f"align must be a positive power of two, got {align!r}")
        for region in self._region_for(int(size), int(align)):
            try:
                return region.alloc(size, align)
            except OutOfSpace:
                continue
        need = size + (align if align > PAGE else 0)
        return self._map(max(self.region_size, _round_up(need, PAGE))).alloc(size, align)

    def free(self, block: Block) -> None:
        """Give a block back; its region is unmapped when it empties (beyond ``retain``)."""
        self._check_open()
        self._own(block).free(block)
        self._sweep()

    def realloc(self, block: Block, size: int) -> Block:
        """Resize, in place where the region allows, else into another region (bytes
        copied, the old block freed: the Block returned is then a new one)."""
        self._check_open()
        region = self._own(block)
        try:
            return region.realloc(block, size)
        except OutOfSpace:
            pass
        new = self.alloc(size)
        n = min(size, block.size)
        memoryview(new)[:n] = memoryview(block)[:n]
        region.free(block)
        self._sweep()
        return new

    def empty(self, shape: Any, dtype: Any = "float64") -> np.ndarray:
        """As :meth:`Pool.empty`, from the first region with room."""
        self._check_open()
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        need = max(nbytes, 1) + 64
        for region in self._region_for(need, 64):
            try:
                return region.empty(shape, dtype)
            except OutOfSpace:
                continue
        return self._map(max(self.region_size, _round_up(need, PAGE))).empty(shape, dtype)

    def zeros(self, shape: Any, dtype: Any = "float64") -> np.ndarray:
        out = self.empty(shape, dtype)
        out[...] = 0
        return out

    def array(self, obj: Any, dtype: Any = None) -> np.ndarray:
        src = np.asarray(obj, dtype=dtype)
        out = self.empty(src.shape, src.dtype)
        np.copyto(out, src)
        return out

    # ---- introspection ---------------------------------------------------------------------
    def stats(self) -> RegionStats:
        self._check_open()
        self._sweep()
        return RegionStats(
            regions=len(self._regions),
            empty_regions=sum(1 for r in self._regions if len(r) == 0),
            bytes_mapped=self._mapped(),
            bytes_used=sum(r.used for r in self._regions),
            live=sum(len(r) for r in self._regions),
            peak_mapped=self._peak, maps=self._maps, unmaps=self._unmaps,
        )

    def check(self) -> None:
        self._check_open()
        for r in self._regions:
            r.check()

    def __len__(self) -> int:
        return sum(len(r) for r in self._regions)

    def close(self) -> None:
        """Unmap every region.  BufferError while a view or array of one is alive."""
        if self._closed:
            return
        busy = [r for r in self._regions if r.exports]
        if busy:
            raise BufferError(f"cannot close: {sum(r.exports for r in busy)} view(s) or "
                              "array(s) of the regions are alive")
        for r in self._regions:
            r.close()
        self._regions.clear()
        self._closed = True

    def __enter__(self) -> RegionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return "<RegionPool closed>"
        return (f"<RegionPool {self.strategy} regions={len(self._regions)} "
                f"mapped={self._mapped()} live={len(self)}>")
