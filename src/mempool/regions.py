"""RegionPool: a pool that grows by mapping regions and gives empty ones back
(tanya's MmapPool, without its defects) (layer 4).

Each region is a :class:`~mempool.Pool` over its own anonymous mapping (a page
multiple, at least 64 KiB) with its own strategy.  A request goes to the first
region where it fits, else a new region is mapped; a request larger than the
region size gets a region of its own.  A region whose ranges are all free is
unmapped, except that ``retain`` empty regions are kept so that a lone block
allocated and freed in a loop does not map and unmap every time (the seed did).
``max_size`` caps the bytes mapped: beyond it, OutOfSpace.  A failed request changes
nothing: a region mapped for it is unmapped before OutOfSpace goes out, and a region
the system cannot map (ENOMEM, absurd sizes) is OutOfSpace too.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import threading
import weakref
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np

from ._mempool import Block
from ._units import as_integer, parse_size
from ._units import round_up as _round_up
from .errors import NotAllocated, OutOfSpace, PoolClosed
from .named import _pool_block, check_name
from .pool import Activation, Pool
from .strategies import make, strategy_type
from .tracking import LiveBlock, check_limit
from .tracking import live as _live
from .tracking import track as _track

__all__ = ["RegionNamedArrays", "RegionPool", "RegionStats"]

MIN_REGION = 64 << 10
PAGE = mmap.PAGESIZE
T = TypeVar("T")


def _none_if_full(attempt: Callable[[Pool], T]) -> Callable[[Pool], T | None]:
    """``attempt``, with "nothing fits" (OutOfSpace) as None (for calls that have no
    try_ form)."""

    def quiet(region: Pool) -> T | None:
        try:
            return attempt(region)
        except OutOfSpace:
            return None

    return quiet


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """The method under its pool's lock (``self._lock``, or the named arrays' pool's):
    a RegionPool is Python, and threads changed its list of regions, its sweeps and
    its limit at once (a region another thread had just allocated in was unmapped
    under its Block; PoolClosed, ValueError and TypeError from an open pool)."""
    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(F, locked)


#: every RegionPool of this process: a child forked while another thread held one's
#: lock would wait for it for ever (its regions are the child's own copy)
_ALL: weakref.WeakSet[RegionPool] = weakref.WeakSet()


def _fresh_locks_in_child() -> None:
    for pool in list(_ALL):
        pool._lock = threading.RLock()


os.register_at_fork(after_in_child=_fresh_locks_in_child)


def _integer(value: Any, what: str) -> int:
    """An int from anything with __index__ (NumPy's integers, and bool: True is 1), as
    Pool takes it; TypeError for float and the rest."""
    n = as_integer(value, bool_ok=True)
    if n is None:
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
    return n


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
        self._named: RegionNamedArrays | None = None
        kind = strategy_type(strategy)  # (ValueError for an unknown name, first)
        self.strategy = strategy
        self.region_size = max(_round_up(parse_size(region_size, "region_size"), PAGE), MIN_REGION)
        # a Buddy's blocks are powers of two: the largest a region holds is the one below
        # its size, and a region of its own for a larger request is a power of two
        self._buddy = kind.__name__ == "Buddy"
        self._largest = (1 << (self.region_size.bit_length() - 1) if self._buddy
                         else self.region_size)
        self.max_size = parse_size(max_size, "max_size") if max_size is not None else None
        kept = as_integer(retain, bool_ok=False)  # (NumPy's integers too)
        if kept is None or kept < 0:
            raise ValueError(f"retain must be an integer >= 0, got {retain!r}")
        self.retain = kept
        self._options = options
        self._regions: list[Pool] = []
        self._lock = threading.RLock()  # (reentrant: a finalizer may call back in)
        _ALL.add(self)
        self._closed = False
        self._limit: int | None = None
        self._track = False
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

    def _out_of_space(self, request: int, why: str) -> OutOfSpace:
        """OutOfSpace for ``request`` bytes, with what the regions (and the room left
        under ``max_size``) hold free."""
        avail = sum(r.available for r in self._regions)
        largest = max((r.largest_free for r in self._regions), default=0)
        if self.max_size is not None:
            room = max(self.max_size - self._mapped(), 0)
            avail += room
            largest = max(largest, room)
        return OutOfSpace(f"cannot allocate {request} bytes: {why} ({avail} bytes available, "
                          f"largest free range {largest})", request, avail, largest)

    def _map(self, size: int, request: int) -> Pool:
        """A new region of ``size`` bytes for a request of ``request`` bytes; OutOfSpace
        beyond ``max_size`` or when the system or the strategy cannot have a region
        that large."""
        # (empty regions kept for reuse give way to a new one: counted out here, unmapped
        # once the request has its range, so that a refused one changes nothing)
        spare = sum(r.capacity for r in self._regions if len(r) == 0 and r.exports == 0)
        if self.max_size is not None and self._mapped() - spare + size > self.max_size:
            raise self._out_of_space(request, f"a region of {size} bytes would pass max_size "
                                              f"{self.max_size} ({self._mapped()} mapped)")
        try:
            region = Pool(size, self.strategy, **self._options)
        except (MemoryError, OverflowError) as e:  # mmap or the state: far too large
            raise self._out_of_space(request, f"a region of {size} bytes cannot be made "
                                              f"({str(e) or type(e).__name__})") from None
        except OSError as e:
            if e.errno != errno.ENOMEM:
                raise
            raise self._out_of_space(request, f"a region of {size} bytes cannot be mapped "
                                              f"({e.strerror})") from None
        except ValueError as e:
            # the strategy's limits on a region sized by the request (capacity // block
            # count, ...) are OutOfSpace; bad options, which refuse a normal region
            # too, stay ValueError
            if size <= self.region_size:
                raise
            try:
                make(self.strategy, self.region_size, **self._options)
            except Exception:
                raise e from None
            raise self._out_of_space(request, f"a region of {size} bytes is beyond the "
                                              f"strategy ({e})") from None
        if self._track:
            _track(region, True)
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
        for region in self._regions:
            if block.pool is region:
                return region
        raise NotAllocated("the block belongs to another pool")

    # ---- allocation ----------------------------------------------------------------------
    def _regions_for(self, size: int) -> tuple[list[Pool], int]:
        """The regions a request of ``size`` bytes may go to, in order, and the size of
        the region to map for it when none takes it.  A request larger than a region
        gets its own (a retained one that is large enough, else a new one)."""
        # (align <= PAGE: a fresh region of `size` bytes holds the range aligned)
        if size > self._largest:
            fresh = _round_up(size, PAGE)
            if self._buddy:
                fresh = 1 << (fresh - 1).bit_length()
            return [r for r in self._regions if r.capacity >= size], fresh
        return list(self._regions), self.region_size

    def _place(self, size: int, attempt: Callable[[Pool], T | None],
               fresh_attempt: Callable[[Pool], T], counted: int | None = None) -> T:
        """``attempt(region)`` in the first region where it fits (None where it does
        not), else ``fresh_attempt`` in a region mapped for it (:meth:`_in_new_region`),
        which raises OutOfSpace saying why when even that refuses.  ``counted``: the
        limit was asked already (else it is asked for ``size``)."""
        if counted is None:
            self._within_limit(size)
        tries, fresh = self._regions_for(size)
        for region in tries:
            got = attempt(region)
            if got is not None:
                return got
        return self._in_new_region(fresh, size, fresh_attempt)

    def _in_new_region(self, fresh: int, size: int, attempt: Callable[[Pool], T]) -> T:
        """``attempt(region)`` in a new region of ``fresh`` bytes, for a request of
        ``size`` bytes.  A failed call changes nothing: the region it mapped is
        unmapped, and the counters (maps, peak) put back, before the error goes out."""
        maps, peak = self._maps, self._peak
        region = self._map(fresh, size)
        try:
            got = attempt(region)
        except BaseException:
            # an empty region of this size refuses it: keeping the region (retain
            # notwithstanding) would only grow the mapping with every failed call
            self._regions.remove(region)
            region.close()
            self._maps, self._peak = maps, peak
            raise
        if self.max_size is not None and self._mapped() > self.max_size:
            self._sweep(keep=0)  # the empty regions it was mapped in the room of
            self._peak = max(peak, self._mapped())
        return got

    @_locked
    def alloc(self, size: int, align: int | None = None) -> Block:
        """A Block of ``size`` bytes from the first region where it fits, mapping a new
        region when none does.  OutOfSpace beyond ``max_size``, or when no region that
        could hold it can be mapped; a refused request leaves no region behind.
        ``align`` defaults to the regions' (16, or a Slab's item alignment if less)."""
        self._check_open()
        return self._alloc(size, align, None)

    def _alloc(self, size: Any, align: Any, counted: int | None) -> Block:
        """alloc(); ``counted``: bytes of the request the limit has been asked for already
        (a realloc that moves: the old block still counts until it is freed)."""
        size = _integer(size, "size")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        args: tuple[int, ...] = (size,)
        if align is not None:
            align = _integer(align, "align")
            if align < 1 or align & (align - 1):
                raise ValueError(f"align must be a positive power of two, got {align!r}")
            if align > PAGE:  # regions are mappings: their addresses are page-aligned only
                raise ValueError(f"align {align} is above the alignment of the regions' "
                                 f"memory ({PAGE}): the address would not be aligned")
            args = (size, align)
        # no exception per region that cannot take it (try_alloc: None)
        return self._place(size, lambda region: region.try_alloc(*args),
                           lambda region: region.alloc(*args), counted)

    @_locked
    def free(self, block: Block) -> None:
        """Give a block back; its region is unmapped when it empties (beyond ``retain``)."""
        self._check_open()
        self._own(block).free(block)
        self._sweep()

    @_locked
    def realloc(self, block: Block, size: int) -> Block:
        """Resize, in place where the region allows, else into another region (bytes
        copied, the old block freed: the Block returned is then a new one)."""
        self._check_open()
        region = self._own(block)
        size = _integer(size, "size")
        if size > block.size:
            self._within_limit(size - block.size)
        try:
            return region.realloc(block, size)
        except OutOfSpace:
            pass
        # the alignment it was made with, as Pool keeps; the limit was asked for the growth
        new = self._alloc(size, block.align, size)
        n = min(size, block.size)
        memoryview(new)[:n] = memoryview(block)[:n]
        region.free(block)
        self._sweep()
        return new

    @_locked
    def empty(self, shape: Any, dtype: Any = "float64") -> np.ndarray:
        """As :meth:`Pool.empty`, from the first region with room."""
        self._check_open()
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        def make(region: Pool) -> np.ndarray:
            return region.empty(shape, dtype)

        return self._place(max(nbytes, 1) + 64, _none_if_full(make), make)

    def zeros(self, shape: Any, dtype: Any = "float64") -> np.ndarray:
        out = self.empty(shape, dtype)
        out[...] = 0
        return out

    def array(self, obj: Any, dtype: Any = None) -> np.ndarray:
        src = np.asarray(obj, dtype=dtype)
        out = self.empty(src.shape, src.dtype)
        np.copyto(out, src)
        return out

    # ---- limits and leak tracking -------------------------------------------------------------
    def _within_limit(self, size: int) -> None:
        if self._limit is not None:
            used = sum(r.used for r in self._regions)
            if used > self._limit or size > self._limit - used:
                raise self._out_of_space(size, f"the pool's limit is {self._limit} bytes "
                                               f"(set_limit) and {used} are in use")

    @_locked
    def set_limit(self, size: int | str | None) -> None:
        """Let the regions together hand out at most ``size`` bytes (the sum of their
        ``used``; a request is checked at its size, so a strategy's rounding can pass
        the limit by a little); None removes it.  OutOfSpace names the limit.  A limit
        below what is in use is allowed (allocations fail until frees bring ``used``
        under it).  ValueError below 0 or above ``max_size``; TypeError for a non-int."""
        self._check_open()
        self._limit = check_limit(size, self.max_size if self.max_size is not None else 1 << 62)

    @property
    def limit(self) -> int | None:
        """The byte limit set by :meth:`set_limit`, or None."""
        return self._limit

    @_locked
    def track(self, enabled: bool = True) -> None:
        """As :meth:`Pool.track`, for every region, those mapped later included."""
        self._check_open()
        _track(self, enabled)  # (the type check; the regions hold what is recorded)
        _track(self, False)
        self._track = enabled
        for r in self._regions:
            _track(r, enabled)

    @_locked
    def live(self) -> list[LiveBlock]:
        """As :meth:`Pool.live`, over every region (``LiveBlock.pool`` is the region)."""
        self._check_open()
        if not self._track:
            raise ValueError("the pool does not track its allocations: call pool.track() first")
        out = [b for r in self._regions for b in _live(r)]
        out.sort(key=lambda b: -b.age)
        return out

    # ---- introspection ---------------------------------------------------------------------
    @property
    def named(self) -> RegionNamedArrays:
        """The pool's named arrays (the mapping of :attr:`Pool.named`): each name lives
        in the directory of one region, the one its array was adopted from or the
        first with room (a region is mapped for it when none has).  A region that holds
        a name is never unmapped; the names go with :meth:`close`, as the data."""
        self._check_open()
        if self._named is None:
            self._named = RegionNamedArrays(self)
        return self._named

    def activate(self, numpy: bool = False, *, fallback: bool = True) -> Activation:
        """A context manager that makes this pool ``mempool.current()`` in this thread
        or asyncio task (see :meth:`Pool.activate`).  ``numpy=True`` is for a Pool or a
        SharedPool: a NumPy allocation must find its region again from its address
        alone, in C."""
        if self._closed:
            raise PoolClosed("the region pool is closed")
        if numpy:
            raise TypeError("activate(numpy=True) takes a Pool or a SharedPool, not a "
                            "RegionPool: NumPy's allocations go to one span (make one, e.g. "
                            "mempool.numpy_pool())")
        return Activation(self, False, fallback)

    @_locked
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

    @_locked
    def check(self) -> None:
        self._check_open()
        for r in self._regions:
            r.check()

    @_locked
    def __len__(self) -> int:
        return sum(len(r) for r in self._regions)

    def __reduce__(self) -> Any:
        # (as a Pool: its regions are this process's mappings.  A copy shared the list
        # of regions with the original, and a pickle of one with no regions made a pool
        # no one could close twice over)
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    @_locked
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


#: bytes a name costs a region beside its data: its record (64 + 16 per dimension +
#: name and dtype) and a share of the table, rounded generously
_NAME_SLACK = 4096


class RegionNamedArrays(MutableMapping[str, Any]):
    """``RegionPool.named``: :class:`mempool.named.NamedArrays` over regions.  Each name
    is filed in one region's own directory (``region.named``), with that mapping's
    values, errors and BufferError rules; this object remembers which region."""

    __slots__ = ("_pool", "_where")

    def __init__(self, pool: RegionPool) -> None:
        self._pool = pool
        self._where: dict[str, Pool] = {}

    @property
    def _lock(self) -> threading.RLock:
        return self._pool._lock

    def _home(self, value: Any) -> Pool | None:
        """The region a value lives in (adopted there), or None (copied in)."""
        for region in self._pool._regions:
            if isinstance(value, Block):
                if value.pool is region and value.live:
                    return region
            elif isinstance(value, np.ndarray) and _pool_block(value, region) is not None:
                return region
        return None

    @_locked
    def __getitem__(self, name: str) -> Any:
        check_name(name)
        self._pool._check_open()
        region = self._where.get(name)
        if region is None:
            raise KeyError(name)
        return region.named[name]

    @_locked
    def __setitem__(self, name: str, value: Any) -> None:
        check_name(name)
        pool = self._pool
        pool._check_open()
        old = self._where.get(name)
        home = self._home(value)
        if home is None and old is not None:
            home = old  # a copy replaces the old one in place where it fits
        if home is not None:
            if home is not old:
                self._movable(name, old)
            try:
                home.named[name] = value
            except OutOfSpace:
                if home is not old or self._home(value) is not None:
                    raise
                home = None  # the old one's region is full: another region
        if home is None:
            self._movable(name, old)
            nbytes = value.nbytes if isinstance(value, np.ndarray) else len(memoryview(value).cast("B"))

            def attempt(region: Pool) -> Pool | None:
                if region is old:
                    return None
                try:
                    region.named[name] = value
                except OutOfSpace:
                    return None
                return region

            def fresh(region: Pool) -> Pool:
                region.named[name] = value
                return region

            home = pool._place(int(nbytes) + _NAME_SLACK, attempt, fresh)
        if old is not None and old is not home:
            try:
                del old.named[name]
            except BaseException:
                del home.named[name]  # (no view of the new one exists yet)
                raise
        self._where[name] = home
        if old is not None and old is not home:
            pool._sweep()

    @staticmethod
    def _movable(name: str, old: Pool | None) -> None:
        """Before the new value goes to another region than the old one's: the old one
        must be deletable after it (no view alive), checked first, since an adopted new
        value cannot be taken back (its own array is a view of it) and was left orphaned
        in its region, unreachable and never freed."""
        if old is not None and (n := old._named_views(name)):
            raise BufferError(f"cannot replace the array named {name!r}: {n} view(s) of it "
                              "are alive")

    @_locked
    def __delitem__(self, name: str) -> None:
        check_name(name)
        self._pool._check_open()
        region = self._where.get(name)
        if region is None:
            raise KeyError(name)
        del region.named[name]  # BufferError while a view is alive: nothing changed
        del self._where[name]
        self._pool._sweep()

    @_locked
    def __contains__(self, name: object) -> bool:
        check_name(name)
        return name in self._where

    @_locked
    def __iter__(self) -> Iterator[str]:
        return iter(list(self._where))

    @_locked
    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return f"<named arrays of {self._pool!r}: {len(self)} names>"
