"""The current pool, and NumPy's own allocations in a pool (layer 5).

``pool.activate(numpy=False)`` (layer 4, :class:`mempool.pool.Activation`) makes a
pool the current one for this thread or asyncio task (a contextvar); :func:`current`
reads it.  With ``numpy=True`` NumPy's data allocations in that context come from
the pool through a NEP 49 handler written in C (``_native/handler.c``).
:func:`numpy_pool` is the one-liner: a pool over anonymous memory, huge pages or a
NUMA node, activated for NumPy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._active import CURRENT
from .pool import Pool
from .sources import AnonymousMemory, NumaPolicy

__all__ = ["current", "numpy_pool"]


def current() -> Any:
    """The pool activated in this thread or asyncio task (``pool.activate()``), or None."""
    return CURRENT.get()


@contextmanager
def numpy_pool(capacity: int | str, strategy: str = "tlsf", *, hugepages: bool = False,
               numa: int | NumaPolicy | None = None, fallback: bool = True,
               **options: Any) -> Iterator[Pool]:
    """Route this context's NumPy allocations into a new pool of ``capacity`` bytes.

    ``hugepages=True`` maps it with transparent huge pages (``AnonymousMemory(...,
    hugepages="transparent")``), ``numa=N`` binds it to NUMA node N (or takes a
    :class:`~mempool.NumaPolicy`).  Arrays that outlive the ``with`` keep the pool alive
    and go back into it when they die; the pool is closed on exit when none is left
    (else it stays open, its memory mapped, until the last of them is gone and the pool
    is collected).  ``fallback``: requests the pool
    cannot serve go to malloc (True) or raise MemoryError.
    """
    if not isinstance(hugepages, bool):  # ("explicit" gave transparent huge pages)
        raise TypeError(f"hugepages must be True or False (transparent huge pages), not "
                        f"{hugepages!r}; AnonymousMemory(..., hugepages=...) takes the rest")
    src_opts: dict[str, Any] = {}
    if hugepages:
        src_opts["hugepages"] = "transparent"
    if numa is not None:
        src_opts["numa"] = numa if isinstance(numa, NumaPolicy) else NumaPolicy("bind", (numa,))
    source = AnonymousMemory(capacity, **src_opts)
    pool = Pool(capacity, strategy, source=source, **options)
    try:
        with pool.activate(numpy=True, fallback=fallback):
            yield pool
    finally:
        try:
            pool.close()
            source.close()
        except BufferError:
            pass  # arrays made inside are alive: they keep pool and memory until they go
