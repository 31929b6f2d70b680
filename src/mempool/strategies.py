"""The strategy registry: every strategy type by the name Pool and the bench use.

Strategies are C types (layer 2); this module only names them.
"""

from __future__ import annotations

from typing import Any

from . import _mempool
from ._mempool import TLSF, BestFit, Strategy

__all__ = ["RANGE_STRATEGIES", "STRATEGIES", "make", "make_fixed", "strategy_type"]

#: name -> type, in the order the bench lists them (the C core's one list,
#: MP_STRATEGIES in _core/mempool.h).
STRATEGIES: dict[str, type[Strategy]] = dict(_mempool.STRATEGIES)

#: the exact strategies, whose node budget is max_blocks.
RANGE_STRATEGIES: frozenset[type[Strategy]] = frozenset({TLSF, BestFit})


def strategy_type(name: str | type[Strategy]) -> type[Strategy]:
    """The strategy type for a name (case-insensitive) or a type.

    Raises ValueError for an unknown name, TypeError for anything else.
    """
    if isinstance(name, type) and issubclass(name, Strategy):
        return name
    if not isinstance(name, str):
        raise TypeError(f"strategy must be a name or a strategy type, not {type(name).__name__}")
    try:
        return STRATEGIES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}") from None


def make(name: str | type[Strategy], capacity: int, **options: Any) -> Strategy:
    """A new strategy of the given name over ``capacity`` bytes."""
    return strategy_type(name)(capacity, **options)


#: the strategies whose state is sized by a node budget (max_blocks) and grows.
BUDGETED: frozenset[str] = frozenset({"tlsf", "bestfit", "bump", "heap"})


def make_fixed(name: str | type[Strategy], capacity: int, **options: Any) -> Strategy:
    """A strategy for a state that cannot grow (file and shared pools): as :func:`make`,
    with the larger default budget ``_mempool.fixed_max_blocks(capacity)`` (at least
    1024 blocks; the Heap's: a range per page and 1024 more) where no ``max_blocks`` is
    given."""
    t = strategy_type(name)
    if "max_blocks" not in options and t.__name__.lower() in BUDGETED:
        n = _mempool.fixed_max_blocks(capacity)
        if t.__name__ == "Heap":  # its TLSF holds every page of the classes as a range
            pages = -(-capacity // int(options.get("page_size") or 4096))
            n = min(max(n, pages + 1024), 1 << 20, capacity)
        options["max_blocks"] = n
    return t(capacity, **options)
