"""What is in force in this thread or asyncio task: the current pool
(``mempool.current()``) and the NumPy handler that ``pool.activate(numpy=True)`` and
``trace.record()`` install, as one stack of entries per context (contextvars).

Entries may be left in another order than they were entered (an ``ExitStack``,
interleaved generators): leaving one takes it out of the middle, and the NumPy handler
it replaced passes to the next entry above it that installed one, which restores it
when it ends.  So leaving them all, in any order, restores the pool and the handler of
before the first.  An entry whose handler wraps the one below it (``trace.record()``:
it records what that handler does) wraps anew what is below it now, and that passes on
up the same way.  (One object entered twice at once is ambiguous: its innermost entry
is the one left.)
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import Any

from . import _mempool

# (in a forked child CPython 3.11 makes anew the key under which each thread keeps its
# own state: the handler's hot paths find it again, or take the general way)
os.register_at_fork(after_in_child=_mempool.handler_after_fork)

__all__ = ["CURRENT", "NONE", "enter", "leave"]

#: The current pool (``mempool.current()``): the pool of the innermost entry that has
#: one, None outside every activation.
CURRENT: ContextVar[Any] = ContextVar("mempool.current", default=None)

#: No handler was installed / no pool is set by an entry.
NONE = object()

#: (owner, the NumPy handler its entry replaced or NONE, its pool or NONE, and for an
#: entry whose handler wraps the one it replaced the function that wraps one, else None),
#: innermost last
_STACK: ContextVar[tuple[tuple[Any, Any, Any, Any], ...]] = ContextVar("mempool.active",
                                                                       default=())


def enter(owner: Any, prev: Any, pool: Any, wrap: Any = None) -> None:
    """Record an entry of ``owner``: ``prev`` is the handler it replaced (it installed its
    own already) or NONE, ``pool`` the pool it makes current or NONE; ``wrap(h)``, when
    given, is what the entry's handler would be over handler ``h`` (it installed
    ``wrap(prev)``)."""
    _STACK.set((*_STACK.get(), (owner, prev, pool, wrap)))
    if pool is not NONE:
        CURRENT.set(pool)


def leave(owner: Any) -> None:
    """End ``owner``'s innermost entry in this context (RuntimeError when it has none)."""
    stack = list(_STACK.get())
    k = max((i for i, e in enumerate(stack) if e[0] is owner), default=-1)
    if k < 0:
        raise RuntimeError(f"{type(owner).__name__} was not entered in this thread or task")
    _, prev, _, _ = stack.pop(k)
    if prev is not NONE:
        # the handler in force below each entry above, up to one whose handler does not
        # depend on it; the last is installed when no entry above has a handler
        below = prev
        for j in range(k, len(stack)):
            o, p, pool, wrap = stack[j]
            if p is NONE:
                continue
            stack[j] = (o, below, pool, wrap)  # it restores that, when it ends
            if wrap is None:
                break
            below = wrap(below)  # (a recording's: now over what is below it)
        else:
            _mempool.set_numpy_handler(below)
    _STACK.set(tuple(stack))
    CURRENT.set(next((e[2] for e in reversed(stack) if e[2] is not NONE), None))
