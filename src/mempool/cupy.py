"""GPU memory through CuPy: one device allocation carved by a strategy (layer 5).

``DevicePool(capacity, strategy="tlsf", *, device=None)`` makes one ``cudaMalloc`` of
``capacity`` bytes on one GPU and hands out pieces of it with any of mempool's
strategies, over offsets (the strategy never touches device memory).  Its
:meth:`DevicePool.malloc` is what ``cupy.cuda.set_allocator`` takes::

    pool = DevicePool("8GiB")
    cupy.cuda.set_allocator(pool.malloc)

Each ``malloc(nbytes)`` returns a ``cupy.cuda.MemoryPointer`` over a
``cupy.cuda.UnownedMemory`` whose owner is a small object that gives the range back to
the strategy when CuPy drops the last reference to it (the array dies); the owner keeps
the pool, so the device allocation outlives every array made from it.

CuPy is imported only when a DevicePool is made: ``import mempool.cupy`` works without
it, and ``DevicePool(...)`` raises ImportError naming the package to install.
"""

from __future__ import annotations

import threading
from typing import Any

from ._units import parse_size
from .errors import PoolClosed
from .stats import Stats
from .strategies import make

__all__ = ["DevicePool"]

#: CuPy's own pool rounds every request to 512 bytes; so do we by default, which keeps
#: every pointer aligned for any CUDA type and for cuBLAS / cuDNN.
DEFAULT_ALIGN = 512


def _cupy() -> Any:
    try:
        import cupy  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as e:  # (CuPy is not a dependency of mempool)
        raise ImportError("mempool.cupy needs CuPy: pip install cupy-cuda12x (or the "
                          "package for your CUDA version)") from e
    return cupy


class _Range:
    """The owner of one range: gives it back when CuPy lets go of its memory."""

    __slots__ = ("offset", "pool")

    def __init__(self, pool: DevicePool, offset: int) -> None:
        self.pool = pool
        self.offset = offset

    def __del__(self) -> None:
        self.pool._give_back(self.offset)


class DevicePool:
    """One device allocation of ``capacity`` bytes (an int or a string such as
    ``"8GiB"``) on ``device`` (a CUDA device id; None: the current device), carved by
    ``strategy`` (a name of :data:`mempool.STRATEGIES` or a strategy type, made with
    ``**options``).  ``align``: every range starts at a multiple of it (default 512,
    as CuPy's own pool).

    Checks its arguments first (ValueError / TypeError), then raises ImportError
    without CuPy, ``cupy.cuda.memory.OutOfMemoryError`` when the
    device has not ``capacity`` bytes free.
    """

    def __init__(self, capacity: int | str, strategy: Any = "tlsf", *,
                 device: int | None = None, align: int = DEFAULT_ALIGN,
                 **options: Any) -> None:
        cap = parse_size(capacity, "capacity")
        if cap < 1:
            raise ValueError(f"capacity must be at least 1 byte, not {cap}")
        if not isinstance(align, int) or isinstance(align, bool) or align < 1 or \
                align & (align - 1):
            raise ValueError(f"align must be a power of two, not {align!r}")
        if device is not None and (not isinstance(device, int) or isinstance(device, bool)):
            raise TypeError(f"device must be an int or None, not {type(device).__name__}")
        self._strategy = make(strategy, cap, **options)  # before the device memory
        cupy = _cupy()
        dev = cupy.cuda.Device(device)
        with dev:
            self._mem = cupy.cuda.Memory(cap)  # one cudaMalloc
        self._cupy = cupy
        self.device: int = dev.id
        self.capacity: int = cap
        self.align: int = align
        self._base: int = int(self._mem.ptr)
        self._live = 0
        self._closed = False
        self._lock = threading.Lock()  # CuPy may allocate from several threads

    # ---- what cupy.cuda.set_allocator takes -------------------------------------------
    def malloc(self, nbytes: int) -> Any:
        """A ``cupy.cuda.MemoryPointer`` to ``nbytes`` bytes of this pool (0 is served
        as 1).  OutOfSpace (a MemoryError) when nothing fits; PoolClosed after close();
        ValueError when called for another device than the pool's."""
        if self._closed:
            raise PoolClosed("the device pool is closed")
        cupy = self._cupy
        cur = cupy.cuda.runtime.getDevice()
        if cur != self.device:
            raise ValueError(f"this DevicePool is on device {self.device}, CuPy asked on "
                             f"device {cur}: make one pool per device")
        n = max(int(nbytes), 1)
        with self._lock:
            off = self._strategy.alloc(n, align=self.align)
            self._live += 1
        # (if either call raises, the _Range is dropped and gives the range back)
        mem = cupy.cuda.UnownedMemory(self._base + off, n, _Range(self, off), self.device)
        return cupy.cuda.MemoryPointer(mem, 0)

    def _give_back(self, offset: int) -> None:
        with self._lock:
            self._strategy.free(offset)
            self._live -= 1

    # ---- looking -----------------------------------------------------------------------
    def stats(self) -> Stats:
        """The strategy's figures over the device allocation (bytes)."""
        return self._strategy.stats()

    def segments(self) -> list[tuple[int, int, bool]]:
        """(offset, size, used) of every range, free ones too, in address order."""
        return self._strategy.segments()

    def used_bytes(self) -> int:
        """Bytes held by live arrays (as ``cupy.cuda.MemoryPool.used_bytes``)."""
        return int(self._strategy.stats().used)

    def total_bytes(self) -> int:
        """Bytes taken from the device (as ``cupy.cuda.MemoryPool.total_bytes``): the
        one allocation, whatever is used."""
        return self.capacity if not self._closed else 0

    def free_all_blocks(self) -> None:
        """Nothing to do (as ``cupy.cuda.MemoryPool.free_all_blocks``): the pool keeps
        no cache of freed blocks; the device allocation goes with :meth:`close`."""

    def __len__(self) -> int:
        return self._live

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Give the device allocation back.  BufferError while an array of the pool is
        alive (the pool is unchanged); a second close does nothing."""
        if self._closed:
            return
        if self._live:
            raise BufferError(f"cannot close the device pool: {self._live} array(s) of it "
                              "are alive")
        self._closed = True
        self._mem = None

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"used={self.used_bytes()} live={self._live}"
        return f"<DevicePool device={self.device} capacity={self.capacity} {state}>"
