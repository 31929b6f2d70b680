"""What is in force in this thread or asyncio task: the current pool
(``mempool.current()``) and the NumPy handler that ``pool.activate(numpy=True)`` and
``trace.record()`` install, as one stack of entries per context (contextvars).

Entries may be left in another order than they were entered (an ``ExitStack``,
interleaved generators): leaving one takes it out of the middle, and the NumPy handler
it replaced passes to the next entry above it that installed one, which restores it
when it ends.  So leaving them all, in any order, restores the pool and the handler of
before the first.  (One object entered twice at once is ambiguous: its innermost entry
is the one left.)
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from . import _mempool

__all__ = ["CURRENT", "NONE", "enter", "leave"]

#: The current pool (``mempool.current()``): the pool of the innermost entry that has
#: one, None outside every activation.
CURRENT: ContextVar[Any] = ContextVar("mempool.current", default=None)

#: No handler was installed / no pool is set by an entry.
NONE = object()

#: (owner, the NumPy handler its entry replaced or NONE, its pool or NONE), innermost last
_STACK: ContextVar[tuple[tuple[Any, Any, Any], ...]] = ContextVar("mempool.active", default=())


def enter(owner: Any, prev: Any, pool: Any) -> None:
    """Record an entry of ``owner``: ``prev`` is the handler it replaced (it installed its
    own already) or NONE, ``pool`` the pool it makes current or NONE."""
    _STACK.set((*_STACK.get(), (owner, prev, pool)))
    if pool is not NONE:
        CURRENT.set(pool)


def leave(owner: Any) -> None:
    """End ``owner``'s innermost entry in this context (RuntimeError when it has none)."""
    stack = list(_STACK.get())
    k = max((i for i, e in enumerate(stack) if e[0] is owner), default=-1)
    if k < 0:
        raise RuntimeError(f"{type(owner).__name__} was not entered in this thread or task")
    _, prev, _ = stack.pop(k)
    if prev is not NONE:
        above = next((j for j in range(k, len(stack)) if stack[j][1] is not NONE), None)
        if above is None:
            _mempool.set_numpy_handler(prev)
        else:  # it restores what this one replaced, when it ends
            stack[above] = (stack[above][0], prev, stack[above][2])
    _STACK.set(tuple(stack))
    CURRENT.set(next((e[2] for e in reversed(stack) if e[2] is not NONE), None))
