"""Sizes as users write them: ints, or strings such as "64MiB", "1.5 GiB", "512KB".

Binary suffixes (KiB, MiB, GiB, TiB, and K/M/G/T) are powers of 1024; decimal ones
(KB, MB, GB, TB) are powers of 1000.  This module imports nothing from mempool.
"""

from __future__ import annotations

import operator
import re
from typing import Any

__all__ = ["parse_size", "round_up"]

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def as_integer(value: Any, *, bool_ok: bool) -> int | None:
    """``value`` as an int when it is an integer (anything with ``__index__``: NumPy's
    integers too; a bool only with ``bool_ok``), else None (a float never)."""
    if isinstance(value, float) or (isinstance(value, bool) and not bool_ok) \
            or not hasattr(type(value), "__index__"):
        return None
    return operator.index(value)


def parse_size(value: int | str, name: str = "size") -> int:
    """Bytes from an int (or anything with ``__index__``) or a size string.

    Raises TypeError for other types and ValueError for malformed strings or
    values below 1.
    """
    if isinstance(value, str):
        m = _RE.match(value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{name} must be an integer or a size such as '64MiB', got {value!r}")
        # exact integer arithmetic: a float would round 9007199254740993 to ...992 and
        # "1.0000000000000001KiB" to 1024
        whole, _, frac = m.group(1).partition(".")
        try:
            scaled = int(whole + frac) * _UNITS[m.group(2).lower()]
        except ValueError:  # more digits than int() converts (sys.set_int_max_str_digits)
            raise ValueError(f"{name} {value!r} has too many digits") from None
        unit: int = 10 ** len(frac)
        n, rest = divmod(scaled, unit)
        if rest:
            raise ValueError(f"{name} {value!r} is not a whole number of bytes")
    else:
        i = as_integer(value, bool_ok=True)
        if i is None:
            raise TypeError(f"{name} must be an integer or a size string, not {type(value).__name__}")
        n = i
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return n


def round_up(n: int, unit: int) -> int:
    """``n`` rounded up to a multiple of ``unit`` (both >= 1): a page, a huge page."""
    return (n + unit - 1) // unit * unit
