"""The bad-input matrix: every strategy of mempool.STRATEGIES, every method of the
strategy interface (and each strategy's own methods), every kind of wrong argument.

Each case asserts the exact exception type, a message that names the argument and the
rule, and that the strategy is exactly as it was: the same stats(), memory map and
snapshot() bytes, and check() passing (helpers.unchanged).  Where strategies differ
on purpose, the KINDS table says how, row by row; a case the library gets wrong is
marked xfail(strict=True) with the reason (cases(xfail=...)), so that it shows up when
fixed (none today: the Heap's spare page, the last one, was fixed).

A new strategy fails test_every_strategy_has_a_row until it has a row in KINDS."""

from __future__ import annotations

import pickle
import resource
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from helpers import unchanged

import mempool
from mempool import TLSF, BestFit, Bitmap, Buddy, Bump, Heap, Slab


class Boom(Exception):
    """What a RaisingIndex raises: it must come out of the call unchanged."""


class RaisingIndex:
    """An integer-like object whose __index__ raises."""

    def __index__(self) -> int:
        raise Boom("__index__ failed")

    def __repr__(self) -> str:
        return "RaisingIndex()"


class IndexNotInt:
    """An object whose __index__ returns something else than an int."""

    def __index__(self):
        return "8"

    def __repr__(self) -> str:
        return "IndexNotInt()"


# ---- the instances ----------------------------------------------------------------------
@dataclass
class Made:
    """A small strategy with live ranges: `first` at offset 0 (a single range, the
    realloc target), `last` the most recent one, and `hole` the start of a range that
    was freed between them (for Bump a dead range under the top)."""

    s: mempool.Strategy
    first: int
    last: int
    hole: int


def _ranges(s: mempool.Strategy, a: int, b: int, hole: int, last: int) -> tuple[int, int, int]:
    """The common layout: sizes a and b (b aligned), a hole of `hole` bytes, a last range."""
    first = s.alloc(a)
    s.alloc(b, align=64 if s.capacity <= 4096 else 256)
    h = s.alloc(hole)
    end = s.alloc(last)
    s.free(h)
    return first, end, h


def _slab(s: Slab) -> tuple[int, int, int]:
    first = s.alloc(30)
    s.alloc_array(4)
    s.alloc_array(40)  # whole pages
    h = s.alloc(32)
    end = s.alloc(8)
    s.free(h)
    return first, end, h


def _heap(s: Heap) -> tuple[int, int, int]:
    first = s.alloc(20)  # a class item
    s.alloc(600)  # fragments
    s.alloc(3000)  # TLSF
    s.alloc(50, align=64)
    h = s.alloc(100)
    end = s.alloc(8)
    s.free(h)
    return first, end, h


ONE_RANGE_STRATEGY_ROWS = [  # TLSF, BestFit, Bump, Heap: TYPE(capacity, *, max_blocks=None)
    ((100,), {"max_blocks": 0}, ValueError, "max_blocks must be >= 1, got 0"),
    ((100,), {"max_blocks": -1}, ValueError, "max_blocks must be >= 1, got -1"),
    ((100,), {"max_blocks": 2**32}, ValueError, r"max_blocks must be < 2\*\*32 - 1, got 4294967296"),
    ((100,), {"max_blocks": 1.5}, TypeError, "max_blocks must be an integer, not float"),
    ((100,), {"max_blocks": RaisingIndex()}, Boom, "__index__ failed"),
    ((100, 10), {}, TypeError, r"takes 1 positional argument \(2 given\)"),
]


# TLSF, BestFit and Bump have always worded a keyword that repeats a positional so
UNEXPECTED_CAPACITY = "got an unexpected keyword argument 'capacity'"


@dataclass(frozen=True)
class Kind:
    """One strategy's row: how to make a small instance and lay ranges out in it, and
    where it differs on purpose from the rest (its messages, its undo, its own
    constructor arguments and methods)."""

    make: Callable[[], mempool.Strategy]
    #: live ranges, a freed one between them: returns (first, last, hole) for Made
    layout: Callable[[mempool.Strategy], tuple[int, int, int]]
    #: OutOfSpace message for capacity + 1 bytes (more than alloc ever serves)
    too_big: str
    #: OutOfSpace message for 2**64 bytes (beyond any capacity)
    huge: str = "larger than the capacity"
    #: OutOfSpace message for largest_free + 1 bytes
    nofit: str = "no free range fits"
    #: TypeError message for the capacity given twice (by position and by keyword)
    capacity_twice: str = "got multiple values for argument 'capacity'"
    #: a failed alloc_many that took some ranges first gives them back byte for byte;
    #: False: it gives them back by freeing them (the same stats, memory map and later
    #: behaviour, other bytes: free lists and node tables in another order)
    batch_undo_exact: bool = True
    #: sizes to allocate, free and free again (one per sub-allocator)
    double_free_sizes: tuple[int, ...] = (1, 100)
    #: constructor rows of its own: (args, kwargs, exception, message)
    constructor: list = field(default_factory=list)
    #: its own methods that take a size, an align, an offset: name -> call(made, value)
    size_methods: dict = field(default_factory=dict)
    align_methods: dict = field(default_factory=dict)
    offset_methods: dict = field(default_factory=dict)
    #: the rest of its own methods and properties, called with good arguments
    #: (they must raise PoolClosed once the state is gone)
    other_calls: dict = field(default_factory=dict)


KINDS: dict[str, Kind] = {
    "tlsf": Kind(
        make=lambda: TLSF(4096), layout=lambda s: _ranges(s, 100, 50, 40, 8),
        too_big="cannot allocate 4097 bytes: no free range fits", batch_undo_exact=False,
        capacity_twice=UNEXPECTED_CAPACITY, constructor=ONE_RANGE_STRATEGY_ROWS),
    "bestfit": Kind(
        make=lambda: BestFit(4096), layout=lambda s: _ranges(s, 100, 50, 40, 8),
        too_big="cannot allocate 4097 bytes: no free range fits", batch_undo_exact=False,
        capacity_twice=UNEXPECTED_CAPACITY, constructor=ONE_RANGE_STRATEGY_ROWS),
    "buddy": Kind(
        make=lambda: Buddy(1 << 16, min_block=64), layout=lambda s: _ranges(s, 100, 50, 40, 8),
        # the class sizes round up; a size above max_block is no class at all
        too_big=r"cannot allocate 65537 bytes: larger than the largest block class "
                r"\(max_block = 65536 bytes\)",
        batch_undo_exact=False,
        constructor=[
            ((4095,), {}, ValueError, r"capacity 4095 is smaller than one block \(min_block = 4096\)"),
            ((100,), {"min_block": 128}, ValueError, "smaller than one block"),
            ((4096,), {"min_block": 0}, ValueError, "min_block must be a power of two >= 1, got 0"),
            ((4096,), {"min_block": 3}, ValueError, "min_block must be a power of two"),
            ((4096,), {"min_block": -4}, ValueError, "min_block must be a power of two >= 1, got -4"),
            ((4096,), {"min_block": "4"}, TypeError, "min_block must be an integer, not str"),
            ((4096,), {"min_block": None}, TypeError, "min_block must be an integer, not NoneType"),
            ((4096,), {"min_block": RaisingIndex()}, Boom, "__index__ failed"),
            ((4096,), {"fanout": 1}, ValueError, "fanout must be a power of two >= 2, got 1"),
            ((4096,), {"fanout": 3}, ValueError, "fanout must be a power of two >= 2"),
            ((4096,), {"fanout": 0}, ValueError, "fanout must be a power of two >= 2, got 0"),
            ((4096,), {"fanout": 2.0}, TypeError, "fanout must be an integer, not float"),
            ((4096,), {"fanout": RaisingIndex()}, Boom, "__index__ failed"),
            ((1 << 20,), {"max_block": 3 * 4096}, ValueError, "max_block must be a class size"),
            ((1 << 20,), {"max_block": 2048}, ValueError, "max_block must be a class size"),
            ((1 << 20,), {"fanout": 4, "max_block": 8192}, ValueError,
             r"max_block must be a class size, min_block \* fanout\*\*k \(4096 \* 4\*\*k\)"),
            ((1 << 20,), {"max_block": -1}, ValueError, "max_block must be a class size"),
            ((1 << 20,), {"max_block": "x"}, TypeError, "max_block must be an integer, not str"),
            ((1 << 20,), {"max_block": 1 << 21}, ValueError,
             "max_block 2097152 is larger than the capacity 1048576"),
            ((2**63,), {"min_block": 1}, ValueError, r"capacity // min_block must be <= 2\*\*36"),
            ((1 << 20, 4096), {}, TypeError, r"takes at most 1 positional argument \(2 given\)"),
        ],
        size_methods={"class_of": lambda m, v: m.s.class_of(v)},
        other_calls={"class_size(0)": lambda s: s.class_size(0), "class_of(1)": lambda s: s.class_of(1),
                     "num_classes": lambda s: s.num_classes, "min_block": lambda s: s.min_block,
                     "max_block": lambda s: s.max_block, "fanout": lambda s: s.fanout}),
    "bitmap": Kind(
        make=lambda: Bitmap(4096, 16), layout=lambda s: _ranges(s, 100, 50, 40, 8),
        too_big=r"cannot allocate 4097 bytes: larger than the capacity \(256 blocks of 16 bytes\)",
        constructor=[
            ((100, 0), {}, ValueError, "block_size must be >= 1, got 0"),
            ((100, -8), {}, ValueError, "block_size must be >= 1, got -8"),
            ((100, 8.0), {}, TypeError, "block_size must be an integer, not float"),
            ((100, 2**64), {}, ValueError, r"block_size must be < 2\*\*64"),
            ((100, RaisingIndex()), {}, Boom, "__index__ failed"),
            ((100, 101), {}, ValueError, r"capacity 100 is smaller than one block \(block_size = 101\)"),
            ((15,), {}, ValueError, r"smaller than one block \(block_size = 16\)"),
            ((2**63, 1), {}, ValueError, r"capacity // block_size must be <= 2\*\*40 blocks"),
            ((100, 8), {"first_fit": "yes"}, TypeError, "first_fit must be a bool, not str"),
            ((100, 8), {"first_fit": None}, TypeError, "first_fit must be a bool, not NoneType"),
            ((100, 8), {"first_fit": 1.0}, TypeError, "first_fit must be a bool, not float"),
            ((100, 8, True), {}, TypeError, r"takes at most 2 positional arguments \(3 given\)"),
        ],
        other_calls={"blocks": lambda s: s.blocks, "block_size": lambda s: s.block_size,
                     "first_fit": lambda s: s.first_fit}),
    "slab": Kind(
        make=lambda: Slab(1 << 16, 32, page_size=1024), layout=_slab,
        # one item is all alloc serves
        too_big="cannot allocate 65537 bytes: larger than the item size 32",
        huge="cannot allocate 18446744073709551616 bytes: larger than the item size 32",
        nofit="cannot allocate 33 bytes: larger than the item size 32",
        double_free_sizes=(1, 32),
        constructor=[
            ((1 << 20, 0), {}, ValueError, "item_size must be >= 1, got 0"),
            ((1 << 20, -4), {}, ValueError, "item_size must be >= 1, got -4"),
            ((1 << 20, "64"), {}, TypeError, "item_size must be an integer, not str"),
            ((1 << 20, RaisingIndex()), {}, Boom, "__index__ failed"),
            ((1 << 31, 1 << 30), {"page_size": 1 << 30}, ValueError, r"item_size must be < 2\*\*30"),
            ((1 << 20, 64), {"page_size": 0}, ValueError, "page_size must be >= 1, got 0"),
            ((1 << 20, 64), {"page_size": None}, TypeError, "page_size must be an integer, not NoneType"),
            ((1 << 20, 64), {"page_size": 2**64}, ValueError, r"page_size must be < 2\*\*64"),
            ((1 << 20, 64), {"page_size": 100}, ValueError, "multiple of the item alignment 64"),
            ((1 << 20, 24), {"page_size": 1004}, ValueError, "multiple of the item alignment 8"),
            ((1 << 20, 48), {"page_size": 32}, ValueError, "too small for one item of 48"),
            ((1 << 20, 100), {"page_size": 96}, ValueError,
             r"too small for one item of 100 bytes \(stride 104\)"),
            ((4096, 64), {}, ValueError, r"capacity 4096 is smaller than one page \(page_size 65536\)"),
            ((1 << 20, 64, 4096), {}, TypeError, r"takes at most 2 positional arguments \(3 given\)"),
            ((1 << 20, 64), {"item_size": 64}, TypeError, "multiple values for argument 'item_size'"),
        ],
        size_methods={"alloc_array": lambda m, v: m.s.alloc_array(v)},
        offset_methods={"free_array": lambda m, v: m.s.free_array(v, 1)},
        other_calls={"alloc_array(1)": lambda s: s.alloc_array(1),
                     "free_array(0, 1)": lambda s: s.free_array(0, 1),
                     **{p: (lambda s, p=p: getattr(s, p)) for p in (
                         "item_size", "item_align", "item_stride", "page_size", "items_per_page",
                         "pages", "free_pages", "free_items")}}),
    "bump": Kind(
        make=lambda: Bump(4096), layout=lambda s: _ranges(s, 100, 50, 40, 8),
        too_big="cannot allocate 4097 bytes: no free range fits",
        capacity_twice=UNEXPECTED_CAPACITY, constructor=ONE_RANGE_STRATEGY_ROWS,
        other_calls={"mark()": lambda s: s.mark(), "rewind(0)": lambda s: s.rewind(0),
                     "top": lambda s: s.top, "depth": lambda s: s.depth,
                     "max_blocks": lambda s: s.max_blocks}),
    "heap": Kind(
        make=lambda: Heap(1 << 16), layout=_heap,
        too_big="cannot allocate 65537 bytes: no free range fits",
        batch_undo_exact=False,
        double_free_sizes=(16, 512, 9000),  # a class item, fragments, a TLSF range
        constructor=[
            *ONE_RANGE_STRATEGY_ROWS,
            ((100,), {"page_size": 0}, ValueError, "page_size must be >= 1, got 0"),
            ((100,), {"page_size": 3000}, ValueError,
             "page_size must be a power of two from 4096 to 65536, got 3000"),
            ((100,), {"page_size": 2048}, ValueError, "from 4096 to 65536"),
            ((100,), {"page_size": 1 << 17}, ValueError, "from 4096 to 65536"),
            ((100,), {"page_size": 2**64}, ValueError, "from 4096 to 65536"),
            ((100,), {"page_size": -4096}, ValueError, "page_size must be >= 1, got -4096"),
            ((100,), {"page_size": 4096.0}, TypeError, "page_size must be an integer, not float"),
            ((100,), {"page_size": RaisingIndex()}, Boom, "__index__ failed"),
            ((2**60,), {"page_size": 4096}, ValueError, "too large for page_size 4096"),
        ],
        size_methods={"size_class": lambda m, v: m.s.size_class(v)},
        align_methods={"size_class": lambda m, v: m.s.size_class(8, v)},
        offset_methods={"served_by": lambda m, v: m.s.served_by(v)},
        other_calls={"size_class(8)": lambda s: s.size_class(8), "served_by(0)": lambda s: s.served_by(0),
                     "page_size": lambda s: s.page_size}),
}

def cases(rows, *, per_kind=None, xfail=None):
    """pytest params (kind, values...) for every strategy: `rows` for all of them, then
    per_kind(kind)'s own; a row is (id, values...).  xfail maps a kind, or a (kind, id),
    to the reason it fails today."""
    xfail = xfail or {}
    out = []
    for k in KINDS:
        for row in [*rows, *(per_kind(k) if per_kind else [])]:
            rid, *vals = row
            why = xfail.get((k, rid), xfail.get(k))
            marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            out.append(pytest.param(k, *vals, id=f"{k}-{rid}", marks=marks))
    return out


per_strategy = pytest.mark.parametrize("kind", list(KINDS))


@pytest.fixture
def made(kind) -> Made:
    s = KINDS[kind].make()
    first, last, hole = KINDS[kind].layout(s)
    assert first == 0 and s.size_of(first) and s.size_of(last)
    return Made(s, first, last, hole)


def test_every_strategy_has_a_row():
    assert list(KINDS) == list(mempool.STRATEGIES)
    for k, kind in KINDS.items():
        assert type(kind.make()) is mempool.STRATEGIES[k]


def _msg(template: str, name: str) -> str:
    return template.replace("NAME", name.replace("[", r"\[").replace("]", r"\]"))


# ---- sizes --------------------------------------------------------------------------------
SIZE_ERRORS = [
    ("0", 0, ValueError, "NAME must be >= 1, got 0"),
    ("-1", -1, ValueError, "NAME must be >= 1, got -1"),
    ("-2**70", -(2**70), ValueError, "NAME must be >= 1, got -1180591620717411303424"),
    ("False", False, ValueError, "NAME must be >= 1, got 0"),  # bool is an int: False is 0
    ("float", 1.0, TypeError, "NAME must be an integer, not float"),
    ("str", "8", TypeError, "NAME must be an integer, not str"),
    ("None", None, TypeError, "NAME must be an integer, not NoneType"),
    ("bytes", b"8", TypeError, "NAME must be an integer, not bytes"),
    ("list", [8], TypeError, "NAME must be an integer, not list"),
    ("np.float64", np.float64(8), TypeError, "NAME must be an integer, not numpy.float64"),
    ("raising-__index__", RaisingIndex(), Boom, "__index__ failed"),
    ("__index__-not-int", IndexNotInt(), TypeError, "__index__ returned non-int"),
]

SIZE_METHODS = {  # name -> (call(made, size), the argument's name in the message)
    "alloc": (lambda m, v: m.s.alloc(v), "size"),
    "alloc-keyword": (lambda m, v: m.s.alloc(size=v, align=8), "size"),
    "realloc": (lambda m, v: m.s.realloc(m.first, v), "size"),
    "realloc-last": (lambda m, v: m.s.realloc(m.last, v, align=8), "size"),
    "alloc_many": (lambda m, v: m.s.alloc_many([v]), "sizes[0]"),
    "alloc_many-second": (lambda m, v: m.s.alloc_many([8, v]), "sizes[1]"),
}


def _size_methods(kind):
    own = {n: (fn, "n" if n == "alloc_array" else "size") for n, fn in KINDS[kind].size_methods.items()}
    return {**SIZE_METHODS, **own}


@pytest.mark.parametrize("kind, value, exc, template", cases(SIZE_ERRORS))
def test_bad_size(made, kind, value, exc, template):
    for name, (call, arg) in _size_methods(kind).items():
        unchanged(made.s, lambda: call(made, value), exc, _msg(template, arg), what=f"{name}({value!r})")


SIZES_THAT_DO_NOT_FIT = [  # id, size(made), message (kind -> regex)
    ("capacity+1", lambda m: m.s.capacity + 1, lambda k: KINDS[k].too_big),
    ("largest_free+1", lambda m: m.s.largest_free + 1, lambda k: KINDS[k].nofit),
    ("2**64-1", lambda m: 2**64 - 1, lambda k: "cannot allocate 18446744073709551615 bytes"),
    ("2**64", lambda m: 2**64, lambda k: KINDS[k].huge),
    ("2**200", lambda m: 2**200, lambda k: f"cannot allocate {2**200} bytes"),
]


def _calls_that_do_not_fit(m: Made, n: int) -> list[tuple[str, Callable[[], object]]]:
    """alloc(n), alloc_many([n]), and realloc of the first and last ranges to n when not
    even an in-place growth reaches it."""
    s = m.s
    out = [(f"alloc({n})", lambda: s.alloc(n)), (f"alloc_many([{n}])", lambda: s.alloc_many([n]))]
    if n > s.largest_free + s.size_of(m.last):
        out += [(f"realloc({o}, {n})", lambda o=o: s.realloc(o, n)) for o in (m.first, m.last)]
    return out


@pytest.mark.parametrize("kind, size, message", cases(SIZES_THAT_DO_NOT_FIT))
def test_size_that_does_not_fit(made, kind, size, message):
    # the exception and what it carries; nothing visible changes (the bytes: below)
    s, n = made.s, size(made)
    e = unchanged(s, lambda: s.alloc(n), mempool.OutOfSpace, message(kind), snapshot=False,
                  what=f"alloc({n})")
    assert isinstance(e, MemoryError) and isinstance(e, mempool.MempoolError)
    assert (e.size, e.available, e.largest_free) == (n, s.available, s.largest_free)
    f = pickle.loads(pickle.dumps(e))
    assert (type(f), f.size, f.available, f.largest_free, str(f)) == (
        type(e), e.size, e.available, e.largest_free, str(e))
    batch = min(n, 2**64 - 1)  # a batch holds uint64 sizes: larger ones are read as 2**64 - 1
    for what, call in _calls_that_do_not_fit(made, n)[1:]:
        match = f"cannot allocate {batch} bytes" if what.startswith("alloc_many") else message(kind)
        unchanged(s, call, mempool.OutOfSpace, match, snapshot=False, what=what)


@per_strategy
def test_align_that_no_free_offset_meets(made, kind):
    # offset 0 is the only multiple of 2**63 below the capacity, and it is taken
    s = made.s
    why = "no free range fits"
    if kind == "slab":
        why = "align 9223372036854775808 is above the item alignment 32"
    unchanged(s, lambda: s.alloc(8, 2**63), mempool.OutOfSpace, f"cannot allocate 8 bytes: {why}",
              snapshot=False)
    unchanged(s, lambda: s.alloc_many([8], align=2**63), mempool.OutOfSpace, "cannot allocate 8 bytes",
              snapshot=False)


@per_strategy
def test_a_failed_allocation_changes_no_byte(made, kind):
    # every call of the two tests above, again: the same snapshot() bytes, and the same
    # answers to the calls that follow
    s = made.s
    calls = [("alloc(8, 2**63)", lambda: s.alloc(8, 2**63)),
             ("alloc_many([8], align=2**63)", lambda: s.alloc_many([8], align=2**63))]
    for _, size, _ in SIZES_THAT_DO_NOT_FIT:
        calls += _calls_that_do_not_fit(made, size(made))
    for what, call in calls:
        unchanged(s, call, mempool.OutOfSpace, "cannot allocate", behaviour=True, what=what)


@per_strategy
def test_a_full_strategy_refuses_and_changes_nothing(made, kind):
    s = made.s
    for _ in range(s.capacity + 1):
        try:
            s.alloc(1)
        except mempool.OutOfSpace:
            break
    grow = s.size_of(made.first) + 1
    for what, call in [("alloc(1)", lambda: s.alloc(1)), ("alloc_many([1])", lambda: s.alloc_many([1])),
                       (f"realloc(first, {grow})", lambda: s.realloc(made.first, grow))]:
        unchanged(s, call, mempool.OutOfSpace, "cannot allocate", behaviour=True, what=what)


# ---- align -----------------------------------------------------------------------------
ALIGN_ERRORS = [
    ("0", 0, ValueError, "align must be a positive power of two, got 0"),
    ("3", 3, ValueError, "align must be a positive power of two, got 3"),
    ("6", 6, ValueError, "align must be a positive power of two, got 6"),
    ("-8", -8, ValueError, "align must be a positive power of two, got -8"),
    ("-2**70", -(2**70), ValueError, "align must be a positive power of two, got -1180591620717411303424"),
    ("2**64", 2**64, ValueError, "align must be a positive power of two, got 18446744073709551616"),
    ("2**65", 2**65, ValueError, "align must be a positive power of two"),
    ("False", False, ValueError, "align must be a positive power of two, got False"),
    ("float", 8.0, TypeError, "align must be an integer, not float"),
    ("str", "8", TypeError, "align must be an integer, not str"),
    ("None", None, TypeError, "align must be an integer, not NoneType"),
    ("np.float64", np.float64(8), TypeError, "align must be an integer, not numpy.float64"),
    ("raising-__index__", RaisingIndex(), Boom, "__index__ failed"),
]

ALIGN_METHODS = {
    "alloc": lambda m, v: m.s.alloc(8, v),
    "alloc-keyword": lambda m, v: m.s.alloc(8, align=v),
    "realloc": lambda m, v: m.s.realloc(m.first, 8, v),
    "realloc-grow": lambda m, v: m.s.realloc(m.last, 24, align=v),
    "alloc_many": lambda m, v: m.s.alloc_many([8], align=v),
    "alloc_many-empty": lambda m, v: m.s.alloc_many([], v),
}


@pytest.mark.parametrize("kind, value, exc, match", cases(ALIGN_ERRORS))
def test_bad_align(made, kind, value, exc, match):
    for name, call in {**ALIGN_METHODS, **KINDS[kind].align_methods}.items():
        unchanged(made.s, lambda: call(made, value), exc, match, what=f"{name}(align={value!r})")


# ---- offsets -----------------------------------------------------------------------------
_INSIDE = (1, 8, 15, 16, 32, 63, 64, 127, 128, 255, 256, 512, 1024)  # block, item, page steps


def _inside(m: Made, allocated: bool) -> list[int]:
    """Offsets inside the live (or free) segments that start no live range: the second
    byte, the last, the middle, and the block, item, fragment and page boundaries
    within (a Bitmap block, a Slab array's items and pages, a Heap fragment run)."""
    live = {o for o, _, a in m.s.segments() if a}
    return sorted({o + d for o, n, a in m.s.segments() if a == allocated
                   for d in (*_INSIDE, n // 2 - 1, n // 2, n - 1) if 0 < d < n} - live)


NOT_LIVE = [  # id, offsets(made)
    ("inside-a-range", lambda m: _inside(m, True)),
    ("freed-range", lambda m: [m.hole]),
    ("free-gap", lambda m: [o for o, _, a in m.s.segments() if not a]),
    ("inside-a-free-gap", lambda m: _inside(m, False)),
    ("capacity", lambda m: [m.s.capacity, m.s.capacity + 1]),
    ("10**9", lambda m: [10**9]),
    ("2**63", lambda m: [2**63]),
    ("2**64-1", lambda m: [2**64 - 1]),
    ("2**64", lambda m: [2**64]),
    ("2**80", lambda m: [2**80]),
]

OFFSET_METHODS = {  # name -> (call(made, offset), message: "offset" names the argument)
    "free": (lambda m, v: m.s.free(v), "offset"),
    "size_of": (lambda m, v: m.s.size_of(v), "offset"),
    "realloc": (lambda m, v: m.s.realloc(v, 8), "offset"),
    "realloc-keyword": (lambda m, v: m.s.realloc(offset=v, size=8, align=8), "offset"),
    "free_many": (lambda m, v: m.s.free_many([v]), "offsets[0]"),
    "free_many-second": (lambda m, v: m.s.free_many([m.first, v]), "offsets[1]"),
}


def _not_live(arg: str, off: int) -> str:
    """The NotAllocated message for `off` passed as `arg` (a batch names the item, and
    the value when it is a uint64)."""
    if arg == "offset":
        return f"offset {off} is not the start of a live range"
    return _msg(f"NAME( = {off})? is not the start of a live range", arg)


def _offset_methods(kind):
    return {**OFFSET_METHODS, **{n: (fn, "offset") for n, fn in KINDS[kind].offset_methods.items()}}


@pytest.mark.parametrize("kind, offsets", cases(NOT_LIVE))
def test_offset_that_starts_no_live_range(made, kind, offsets):
    offs = offsets(made)
    assert offs
    for off in offs:
        for name, (call, arg) in _offset_methods(kind).items():
            unchanged(made.s, lambda: call(made, off), mempool.NotAllocated, _not_live(arg, off),
                      what=f"{name}({off})")
    assert issubclass(mempool.NotAllocated, ValueError)


OFFSET_ERRORS = [
    ("-1", -1, ValueError, "NAME must be >= 0, got -1"),
    ("-2**70", -(2**70), ValueError, "NAME must be >= 0, got -1180591620717411303424"),
    ("float", 0.0, TypeError, "NAME must be an integer, not float"),
    ("str", "0", TypeError, "NAME must be an integer, not str"),
    ("None", None, TypeError, "NAME must be an integer, not NoneType"),
    ("bytes", b"0", TypeError, "NAME must be an integer, not bytes"),
    ("list", [0], TypeError, "NAME must be an integer, not list"),
    ("np.float64", np.float64(0), TypeError, "NAME must be an integer, not numpy.float64"),
    ("raising-__index__", RaisingIndex(), Boom, "__index__ failed"),
    ("__index__-not-int", IndexNotInt(), TypeError, "__index__ returned non-int"),
]


@pytest.mark.parametrize("kind, value, exc, template", cases(OFFSET_ERRORS))
def test_bad_offset(made, kind, value, exc, template):
    for name, (call, arg) in _offset_methods(kind).items():
        unchanged(made.s, lambda: call(made, value), exc, _msg(template, arg), what=f"{name}({value!r})")


@pytest.mark.parametrize("kind, size", [
    pytest.param(k, n, id=f"{k}-{n}") for k in KINDS for n in KINDS[k].double_free_sizes])
def test_double_free(made, kind, size):
    s = made.s
    off = s.alloc(size)
    s.free(off)
    for name, (call, arg) in _offset_methods(kind).items():
        unchanged(s, lambda: call(made, off), mempool.NotAllocated, _not_live(arg, off),
                  what=f"{name}({off})")
    # a range freed below live ones (Bump: dead, not popped yet)
    a = s.alloc(size)
    s.alloc(size)
    s.free(a)
    unchanged(s, lambda: s.free(a), mempool.NotAllocated, f"offset {a} is not the start of a live range")


# ---- how many arguments, and their names ---------------------------------------------------
ARGUMENTS = [
    ("alloc()", lambda m: m.s.alloc(), r"alloc\(\) missing required argument 'size'"),
    ("alloc(align=8)", lambda m: m.s.alloc(align=8), r"alloc\(\) missing required argument 'size'"),
    ("alloc(1, 2, 3)", lambda m: m.s.alloc(1, 2, 3), r"alloc\(\) takes at most 2 arguments \(3 given\)"),
    ("alloc(alignment=)", lambda m: m.s.alloc(8, alignment=8),
     r"alloc\(\) got an unexpected keyword argument 'alignment'"),
    ("alloc(8, 8, align=)", lambda m: m.s.alloc(8, 8, align=8),
     r"alloc\(\) got multiple values for argument 'align'"),
    ("free()", lambda m: m.s.free(), r"free\(\) takes exactly one argument \(0 given\)"),
    ("free(0, 1)", lambda m: m.s.free(m.first, 1), r"free\(\) takes exactly one argument \(2 given\)"),
    ("free(offset=)", lambda m: m.s.free(offset=m.first), "takes no keyword arguments"),
    ("size_of()", lambda m: m.s.size_of(), r"size_of\(\) takes exactly one argument \(0 given\)"),
    ("size_of(0, 1)", lambda m: m.s.size_of(m.first, 1), r"size_of\(\) takes exactly one argument"),
    ("realloc()", lambda m: m.s.realloc(), r"realloc\(\) missing required argument 'offset'"),
    ("realloc(0)", lambda m: m.s.realloc(m.first), r"realloc\(\) missing required argument 'size'"),
    ("realloc(0, 8, 1, 1)", lambda m: m.s.realloc(m.first, 8, 1, 1),
     r"realloc\(\) takes at most 3 arguments \(4 given\)"),
    ("realloc(aling=)", lambda m: m.s.realloc(m.first, 8, aling=1),
     r"realloc\(\) got an unexpected keyword argument 'aling'"),
    ("realloc(0, size=, offset=)", lambda m: m.s.realloc(m.first, size=8, offset=0),
     r"realloc\(\) got multiple values for argument 'offset'"),
    ("alloc_many()", lambda m: m.s.alloc_many(), r"alloc_many\(\) missing required argument 'sizes'"),
    ("alloc_many([8], 1, 1)", lambda m: m.s.alloc_many([8], 1, 1),
     r"alloc_many\(\) takes at most 2 arguments \(3 given\)"),
    ("alloc_many(size=)", lambda m: m.s.alloc_many(size=[8]),
     r"alloc_many\(\) got an unexpected keyword argument 'size'"),
    ("free_many()", lambda m: m.s.free_many(), r"free_many\(\) takes exactly one argument \(0 given\)"),
    ("free_many([0], [0])", lambda m: m.s.free_many([m.first], [m.first]),
     r"free_many\(\) takes exactly one argument \(2 given\)"),
    *[(f"{n}(1)", lambda m, n=n: getattr(m.s, n)(1), "takes no arguments")
      for n in ("stats", "segments", "check", "reset", "snapshot")],
    ("restore()", lambda m: type(m.s).restore(), "takes exactly one argument"),
    ("restore(a, b)", lambda m: type(m.s).restore(m.s.snapshot(), b""), "takes exactly one argument"),
]

OWN_ARGUMENTS = {
    "buddy": [
        ("class_of()", lambda m: m.s.class_of(), r"class_of\(\) takes exactly one argument \(0 given\)"),
        ("class_size(0, 1)", lambda m: m.s.class_size(0, 1), r"class_size\(\) takes exactly one argument"),
    ],
    "slab": [
        ("alloc_array()", lambda m: m.s.alloc_array(), r"alloc_array\(\) takes exactly one argument"),
        ("free_array(32)", lambda m: m.s.free_array(32), r"free_array\(\) takes exactly 2 arguments"),
    ],
    "bump": [
        ("rewind()", lambda m: m.s.rewind(), r"rewind\(\) takes exactly one argument \(0 given\)"),
        ("mark(1)", lambda m: m.s.mark(1), "takes no arguments"),
    ],
    "heap": [
        ("served_by()", lambda m: m.s.served_by(), r"served_by\(\) takes exactly one argument"),
        ("size_class()", lambda m: m.s.size_class(), r"size_class\(\) missing required argument 'size'"),
        ("size_class(8, 8, 8)", lambda m: m.s.size_class(8, 8, 8), "takes at most 2 arguments"),
    ],
}


@per_strategy
def test_argument_count_and_names(made, kind):
    for what, call, match in [*ARGUMENTS, *OWN_ARGUMENTS.get(kind, [])]:
        unchanged(made.s, lambda: call(made), TypeError, match, what=what)


@per_strategy
def test_arguments_by_keyword_and_numpy_integers_are_accepted(made, kind):
    s = made.s
    off = s.alloc(size=np.int32(8), align=np.uint64(8))
    assert off % 8 == 0 and s.size_of(np.int64(off)) >= 8
    assert s.realloc(offset=np.int64(off), size=np.uint8(8), align=True) == off
    s.free(np.uint32(off))
    off = s.alloc(True)  # bool is an int: True is 1
    assert s.size_of(off) >= 1
    s.free_many(np.array([off], np.uint32))
    assert len(s.alloc_many([])) == 0 and s.free_many([]) is None
    s.check()


# ---- batches -------------------------------------------------------------------------------
BAD_SIZES = [  # id, sizes, exception, message
    ("floats", [1.9, 2.5], TypeError, r"sizes\[0\] must be an integer, not float"),
    ("str-item", [8, "5"], TypeError, r"sizes\[1\] must be an integer, not str"),
    ("str", "58", TypeError, r"sizes\[0\] must be an integer, not str"),
    ("zero-last", [8, 1, 0], ValueError, r"sizes\[2\] must be >= 1, got 0"),
    ("raising-item", [8, RaisingIndex()], Boom, "__index__ failed"),
    ("float-array", np.array([1.0, 2.0]), TypeError, "sizes must hold integers, not items of format 'd'"),
    ("bool-array", np.array([True, True]), TypeError, r"sizes must hold integers, not items of format '\?'"),
    ("object-array", np.array([8, 8], dtype=object), TypeError, "not items of format 'O'"),
    # (integers of the other byte order are read as such: test_strategies)
    ("uint16-zero", np.array([8, 0], np.uint16), ValueError, r"sizes\[1\] must be >= 1, got 0"),
    ("int8-negative", np.array([8, -3], np.int8), ValueError, r"sizes\[1\] must be >= 1, got -3"),
    ("bytes-with-zero", b"\x08\x00", ValueError, r"sizes\[1\] must be >= 1, got 0"),
    ("int", 5, TypeError, "sizes must be a sequence of integers"),
    ("None", None, TypeError, "sizes must be a sequence of integers"),
    ("object", object(), TypeError, "sizes must be a sequence of integers"),
]


@pytest.mark.parametrize("kind, sizes, exc, match", cases(BAD_SIZES))
def test_bad_batch_sizes(made, kind, sizes, exc, match):
    unchanged(made.s, lambda: made.s.alloc_many(sizes), exc, match)


BAD_OFFSETS = [  # id, offsets(made), exception, message
    ("float", lambda m: [0.0], TypeError, r"offsets\[0\] must be an integer, not float"),
    ("float-array", lambda m: np.array([0.0]), TypeError,
     "offsets must hold integers, not items of format 'd'"),
    ("negative", lambda m: [m.first, -1], ValueError, r"offsets\[1\] must be >= 0, got -1"),
    ("int32-negative", lambda m: np.array([-1], np.int32), ValueError, r"offsets\[0\] must be >= 0, got -1"),
    ("2**64", lambda m: [2**64], mempool.NotAllocated, r"offsets\[0\] is not the start of a live range"),
    ("then-2**70", lambda m: [m.first, 2**70], mempool.NotAllocated, r"offsets\[1\] is not the start"),
    ("then-freed", lambda m: [m.last, m.first, m.hole], mempool.NotAllocated,
     r"offsets\[2\] = \d+ is not the start of a live range"),
    ("twice", lambda m: [m.first, m.first], mempool.NotAllocated, "offset 0 is named twice"),
    ("twice-apart", lambda m: [m.first, m.last, m.first], mempool.NotAllocated, "offset 0 is named twice"),
    ("twice-array", lambda m: np.array([m.last, m.last]), mempool.NotAllocated, "is named twice"),
    ("raising-item", lambda m: [m.first, RaisingIndex()], Boom, "__index__ failed"),
    ("int", lambda m: 5, TypeError, "offsets must be a sequence of integers"),
    ("None", lambda m: None, TypeError, "offsets must be a sequence of integers"),
]


@pytest.mark.parametrize("kind, offsets, exc, match", cases(BAD_OFFSETS))
def test_bad_batch_offsets(made, kind, offsets, exc, match):
    # every offset is checked before any is freed: the failure changes no byte
    unchanged(made.s, lambda: made.s.free_many(offsets(made)), exc, match)


FAILED_BATCHES = [  # id, sizes(made): the first ones fit, a later one does not
    ("8-8-then-too-big", lambda m: [8, 8, m.s.capacity + 1]),
    ("8-then-huge", lambda m: np.array([8, 2**64 - 1], np.uint64)),
    ("one-byte-until-full", lambda m: [1] * (m.s.capacity + 1)),
    ("mixed-then-too-big", lambda m: [100, 3000, 20, 600, 24, m.s.capacity + 1]),
    ("new-pages-then-too-big", lambda m: [16, 32, 48, 600, m.s.capacity + 1]),
]


@pytest.mark.parametrize("kind, sizes", cases(FAILED_BATCHES))
def test_failed_batch_gives_back_what_it_took(made, kind, sizes):
    # all or nothing: the same stats, memory map and check()
    unchanged(made.s, lambda: made.s.alloc_many(sizes(made)), mempool.OutOfSpace, "cannot allocate",
              snapshot=False)


@pytest.mark.parametrize("kind, sizes", cases(FAILED_BATCHES))
def test_failed_batch_changes_no_byte(made, kind, sizes):
    # byte for byte where KINDS says so, else the same behaviour from here on
    # (same_behaviour on copies from before and after)
    exact = KINDS[kind].batch_undo_exact
    unchanged(made.s, lambda: made.s.alloc_many(sizes(made)), mempool.OutOfSpace, "cannot allocate",
              snapshot=exact, behaviour=True)


# ---- restore ---------------------------------------------------------------------------------
def _field(data: bytes, offset: int, fmt: str, value) -> bytes:
    """data with the head field at `offset` (struct format fmt) set to value."""
    b = bytearray(data)
    struct.pack_into("<" + fmt, b, offset, value(struct.unpack_from("<" + fmt, b, offset)[0]))
    return bytes(b)


HEAD = 128  # mp_head_t: magic u32, kind u16, version u16, state_size, capacity, used,
#             requested, live, peak_used, high_water, cursor, param[6] (u64 each)


def _size(g):
    # head.state_size: a snapshot leaves the nodes never handed out out, so it can be
    # shorter than the state it restores to
    return int.from_bytes(g[8:16], "little")


CRAFTED = [  # id, bad(good snapshot, made), message (or message(good))
    ("empty", lambda g, m: b"", "state of 0 bytes is shorter than its head"),
    ("part-of-the-head", lambda g, m: g[:64], "state of 64 bytes is shorter than its head"),
    ("truncated-by-1", lambda g, m: g[:-1], lambda g: f"state says {_size(g)} bytes, got {len(g) - 1}"),
    ("truncated-by-8", lambda g, m: g[:-8], "state says"),
    ("half", lambda g, m: g[: len(g) // 2], "state says"),
    ("extended", lambda g, m: g + bytes(8), lambda g: f"state says {_size(g)} bytes, got {len(g) + 8}"),
    ("random", lambda g, m: np.random.default_rng(9).bytes(len(g)), "bad state magic"),
    ("zeros", lambda g, m: bytes(len(g)), "bad state magic 0x00000000"),
    ("bad-magic", lambda g, m: _field(g, 0, "I", lambda v: v ^ 1), "bad state magic"),
    ("unknown-kind", lambda g, m: _field(g, 4, "H", lambda v: 99), "state is a unknown state"),
    ("bad-version", lambda g, m: _field(g, 6, "H", lambda v: v + 1), "state format version 2"),
    ("state_size-says-more", lambda g, m: _field(g, 8, "Q", lambda v: v + 8), "state says"),
    ("body-zeros", lambda g, m: g[:HEAD] + bytes(len(g) - HEAD), "cannot restore"),
    ("body-ones", lambda g, m: g[:HEAD] + b"\xff" * (len(g) - HEAD), "cannot restore"),
    ("body-random", lambda g, m: g[:HEAD] + np.random.default_rng(9).bytes(len(g) - HEAD),
     "cannot restore"),
    ("capacity-0", lambda g, m: _field(g, 16, "Q", lambda v: 0), "cannot restore"),
    ("capacity+1", lambda g, m: _field(g, 16, "Q", lambda v: v + 1), "cannot restore"),
    ("used+1", lambda g, m: _field(g, 24, "Q", lambda v: v + 1), "cannot restore"),
    ("requested-0", lambda g, m: _field(g, 32, "Q", lambda v: 0), "cannot restore"),
    ("live+1", lambda g, m: _field(g, 40, "Q", lambda v: v + 1), "cannot restore"),
    ("peak_used-below-used", lambda g, m: _field(g, 48, "Q", lambda v: 0), "peak_used 0 outside"),
    # (no byte was ever in use above high_water: 2**63 was taken, check() clean)
    ("peak_used-above-high_water", lambda g, m: _field(g, 48, "Q", lambda v: 2**63),
     "peak_used 9223372036854775808 outside"),
    ("high_water-below-a-live-range", lambda g, m: _field(g, 56, "Q", lambda v: 0), "cannot restore"),
]


@pytest.mark.parametrize("kind, bad, match", cases(CRAFTED))
def test_restore_refuses_crafted_bytes(made, kind, bad, match):
    s, cls = made.s, type(made.s)
    good = s.snapshot()
    data = bad(good, made)
    if callable(match):
        match = match(good)
    unchanged(s, lambda: cls.restore(data), mempool.CorruptionError, match)
    unchanged(s, lambda: cls.restore(bytearray(data)), mempool.CorruptionError, match)
    assert cls.restore(good).snapshot() == good  # the good bytes still restore


def _claims_nodes(cls, good: bytes, n: int) -> bytes:
    """A snapshot whose own node count says n (TLSF/BestFit: the rset's max_blocks after
    the head; Bump: its stack's), the head's size made to match, the hole with it."""
    b = bytearray(good)
    at = 120  # right after mp_head_t
    if cls is mempool.Bump:  # its header: capacity, max_blocks, depth; 24-byte entries
        _, mb, top = struct.unpack_from("<QQQ", b, at)
        node = 24
        struct.pack_into("<Q", b, at + 8, n)
    else:  # mp_rset_t: max_blocks, top (u32 each)
        mb, top = struct.unpack_from("<II", b, at)
        node = (_size(good) - len(good)) // (mb - top)
        struct.pack_into("<I", b, at, n)
    assert _size(good) - len(good) == (mb - top) * node  # (the hole the snapshot left)
    struct.pack_into("<Q", b, 8, len(b) + (n - top) * node)
    return bytes(b)


@pytest.mark.parametrize("cls", [mempool.TLSF, mempool.BestFit, mempool.Bump])
def test_a_snapshot_claiming_a_huge_state_is_refused_before_it_is_allocated(cls):
    # a snapshot leaves out the nodes never handed out (a hole restore fills): a node
    # count and a head size saying gigabytes, the head's parameters saying otherwise,
    # allocated and zeroed them before the check found out
    s = cls(1 << 16)
    s.alloc(100)
    good = s.snapshot()
    assert _size(good) > len(good)  # (a hole)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for n in (50_000_000, 2**32 - 2):
        data = _claims_nodes(cls, good, n)
        with pytest.raises(mempool.CorruptionError,
                           match=f"state says {_size(data)} bytes, its parameters need "
                                 f"{_size(good)}"):
            cls.restore(data)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 64 << 10  # KiB
    assert cls.restore(good).snapshot() == good


@pytest.mark.parametrize("cls", [mempool.Bitmap, mempool.Slab, mempool.Heap])
def test_a_state_too_large_for_memory_says_what_did_not_fit(cls):
    # (a bare MemoryError() with no message for a 1 TiB Bitmap, Slab or Heap)
    with pytest.raises(MemoryError, match=f"cannot allocate the {cls.__name__.lower()} state "
                                          r"of \d+ bytes \(its metadata for this capacity\)"):
        cls(1 << 42)


def test_a_heap_snapshot_whose_tlsf_sits_at_its_end_is_not_read_past():
    # the Heap's TLSF offset set to the snapshot's last word: the hole search read the
    # TLSF's head past the end of the bytes (a guard page after them: SIGSEGV)
    import ctypes
    import mmap
    h = mempool.Heap(1 << 16)
    h.alloc(100)
    snap = bytearray(h.snapshot())
    struct.pack_into("<Q", snap, 120 + 56, len(snap) & ~7)  # heap_ctl.tlsf_off
    page = mmap.PAGESIZE
    npages = -(-len(snap) // page) + 1
    mm = mmap.mmap(-1, npages * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(base + (npages - 1) * page, page, 0) == 0  # PROT_NONE after it
    start = (npages - 1) * page - len(snap)
    mm[start:start + len(snap)] = snap
    view = memoryview(mm)[start:start + len(snap)]
    with pytest.raises(mempool.CorruptionError, match="cannot restore"):
        mempool.Heap.restore(view)
    view.release()
    assert libc.mprotect(base + (npages - 1) * page, page, 3) == 0
    mm.close()


@per_strategy
def test_restore_refuses_another_strategys_state(made, kind):
    for other in KINDS:
        if other != kind:
            data = KINDS[other].make().snapshot()
            unchanged(made.s, lambda: type(made.s).restore(data), mempool.CorruptionError,
                      f"cannot restore: state is a {other} state, not {kind}", what=other)


RESTORE_TYPES = [
    ("str", lambda g: "state", TypeError, "a bytes-like object is required, not 'str'"),
    ("None", lambda g: None, TypeError, "a bytes-like object is required, not 'NoneType'"),
    ("int", lambda g: len(g), TypeError, "a bytes-like object is required, not 'int'"),
    ("list", lambda g: list(g[:16]), TypeError, "a bytes-like object is required, not 'list'"),
    # CPython's buffer protocol refuses a strided view with BufferError, as hashlib does
    ("strided-view", lambda g: memoryview(g * 2)[::2], BufferError, "not C-contiguous"),
]


@pytest.mark.parametrize("kind, data, exc, match", cases(RESTORE_TYPES))
def test_restore_refuses_what_is_not_a_buffer(made, kind, data, exc, match):
    unchanged(made.s, lambda: type(made.s).restore(data(made.s.snapshot())), exc, match)


@per_strategy
def test_restore_takes_any_contiguous_buffer(made, kind):
    s, cls = made.s, type(made.s)
    good = s.snapshot()
    for data in (good, bytearray(good), memoryview(good), np.frombuffer(good, np.uint8)):
        r = cls.restore(data)
        assert type(r) is cls and r.snapshot() == good and r.stats() == s.stats()


# ---- constructors -------------------------------------------------------------------------------
CONSTRUCTOR = [  # (label, args, kwargs, exception, message) for every strategy: capacity first
    ("capacity-0", (0,), {}, ValueError, "capacity must be >= 1, got 0"),
    ("capacity--1", (-1,), {}, ValueError, "capacity must be >= 1, got -1"),
    ("capacity-False", (False,), {}, ValueError, "capacity must be >= 1, got 0"),
    ("capacity-float", (1.5,), {}, TypeError, "capacity must be an integer, not float"),
    ("capacity-str", ("1MiB",), {}, TypeError, "capacity must be an integer, not str"),
    ("capacity-None", (None,), {}, TypeError, "capacity must be an integer, not NoneType"),
    ("capacity-bytes", (b"1",), {}, TypeError, "capacity must be an integer, not bytes"),
    ("capacity-np.float64", (np.float64(4096),), {}, TypeError,
     "capacity must be an integer, not numpy.float64"),
    ("capacity-2**64", (2**64,), {}, ValueError, r"capacity must be < 2\*\*64, got 18446744073709551616"),
    ("capacity-raising-__index__", (RaisingIndex(),), {}, Boom, "__index__ failed"),
    ("no-capacity", (), {}, TypeError, "missing required argument 'capacity'"),
    ("unknown-keyword", (1 << 16,), {"blocks": 3}, TypeError, "unexpected keyword argument 'blocks'"),
]


@per_strategy
def test_bad_constructor_arguments(kind):
    cls = mempool.STRATEGIES[kind]
    rows = [row[1:] for row in CONSTRUCTOR] + KINDS[kind].constructor
    rows.append(((1 << 16,), {"capacity": 1 << 16}, TypeError, KINDS[kind].capacity_twice))
    for args, kwargs, exc, match in rows:
        try:
            with pytest.raises(exc, match=match):
                cls(*args, **kwargs)
        except (AssertionError, pytest.fail.Exception) as e:
            raise AssertionError(f"{kind}(*{args!r}, **{kwargs!r}): {e}") from e


def test_the_base_type_cannot_be_made():
    with pytest.raises(TypeError):
        mempool.Strategy()


# ---- strategy-specific arguments -----------------------------------------------------------
def _slab_big_array(m: Made) -> int:
    """The offset of the 40-item array (two pages) of the slab layout."""
    return next(o for o, n, a in m.s.segments() if a and n == 40 * 32)


OWN_BAD = {  # kind -> [(id, call(made), exception, message)]
    "buddy": [
        ("class_of-beyond-max_block", lambda m: m.s.class_of(2**64), ValueError,
         r"size 18446744073709551616 is larger than the largest class \(class 10, max_block = 65536\)"),
        ("class_size--1", lambda m: m.s.class_size(-1), ValueError,
         r"class -1 out of range: this Buddy has classes 0\.\.10"),
        ("class_size-num_classes", lambda m: m.s.class_size(m.s.num_classes), ValueError, "out of range"),
        ("class_size-2**64", lambda m: m.s.class_size(2**64), ValueError, "out of range"),
        ("class_size-float", lambda m: m.s.class_size(1.0), TypeError, "k must be an integer, not float"),
        ("class_size-None", lambda m: m.s.class_size(None), TypeError, "k must be an integer, not NoneType"),
        ("class_size-raising-__index__", lambda m: m.s.class_size(RaisingIndex()), Boom, "__index__ failed"),
    ],
    "slab": [
        ("alloc-align-above-the-items", lambda m: m.s.alloc(8, 64), mempool.OutOfSpace,
         "cannot allocate 8 bytes: align 64 is above the item alignment 32"),
        ("realloc-beyond-the-item", lambda m: m.s.realloc(m.first, 33), mempool.OutOfSpace,
         "larger than the item size 32"),
        ("realloc-of-an-array", lambda m: m.s.realloc(32, 8), ValueError,
         r"realloc\(32\): the range is an array; arrays keep their length"),
        ("alloc_array-more-than-fit", lambda m: m.s.alloc_array(10**9), mempool.OutOfSpace,
         "more items than the 2048 an array can hold"),
        ("alloc_array-2**64", lambda m: m.s.alloc_array(2**64), mempool.OutOfSpace, "more items than"),
        ("free_array-n-0", lambda m: m.s.free_array(32, 0), ValueError, "n must be >= 1, got 0"),
        ("free_array-n-str", lambda m: m.s.free_array(32, "4"), TypeError, "n must be an integer, not str"),
        ("free_array-n-raising", lambda m: m.s.free_array(32, RaisingIndex()), Boom, "__index__ failed"),
        ("free_array-wrong-n", lambda m: m.s.free_array(32, 3), ValueError,
         r"free_array\(32, 3\): the range there has 4 items"),
        ("free_array-n-2**64", lambda m: m.s.free_array(32, 2**64), ValueError, "has 4 items"),
        ("free_array-of-one-item", lambda m: m.s.free_array(m.first, 2), ValueError, "has 1 items"),
        ("free-inner-item-of-an-array", lambda m: m.s.free(64), mempool.NotAllocated,
         "offset 64 is not the start of a live range"),
        ("free-second-page-of-an-array", lambda m: m.s.free(_slab_big_array(m) + 1024),
         mempool.NotAllocated, "is not the start of a live range"),
    ],
    "bump": [
        ("rewind--1", lambda m: m.s.rewind(-1), ValueError, r"rewind\(-1\): not a valid mark"),
        ("rewind-2**40+7", lambda m: m.s.rewind(2**40 + 7), ValueError, "stale"),
        ("rewind-2**200", lambda m: m.s.rewind(2**200), ValueError, "not a valid mark"),
        ("rewind-True", lambda m: m.s.rewind(True), ValueError, "not a valid mark"),
        ("rewind-above-the-top", lambda m: m.s.rewind(m.s.mark() + 1), ValueError, "not a valid mark"),
        ("rewind-float", lambda m: m.s.rewind(1.5), TypeError,
         r"mark must be an integer \(from mark\(\)\), not float"),
        ("rewind-str", lambda m: m.s.rewind("0"), TypeError, "mark must be an integer"),
        ("rewind-None", lambda m: m.s.rewind(None), TypeError,
         r"mark must be an integer \(from mark\(\)\), not NoneType"),
        ("rewind-np.float64", lambda m: m.s.rewind(np.float64(0)), TypeError, "not numpy.float64"),
        ("rewind-raising-__index__", lambda m: m.s.rewind(RaisingIndex()), Boom, "__index__ failed"),
    ],
}


@pytest.mark.parametrize("kind, call, exc, match", cases([], per_kind=lambda k: OWN_BAD.get(k, [])))
def test_bad_arguments_to_a_strategys_own_methods(made, kind, call, exc, match):
    unchanged(made.s, lambda: call(made), exc, match)


def test_heap_size_class_is_never_below_the_size():
    h = Heap(1 << 16)
    for size in (2**64 - 1, 2**64, 2**100):
        try:
            c = h.size_class(size)
        except (ValueError, mempool.OutOfSpace):
            continue  # refusing is a fine answer too
        assert c >= size, f"size_class({size}) = {c}"


# ---- after the state is gone ----------------------------------------------------------------
INTERFACE = {
    "alloc(8)": lambda s: s.alloc(8), "free(0)": lambda s: s.free(0),
    "realloc(0, 8)": lambda s: s.realloc(0, 8), "size_of(0)": lambda s: s.size_of(0),
    "alloc_many([8])": lambda s: s.alloc_many([8]), "alloc_many([])": lambda s: s.alloc_many([]),
    "free_many([0])": lambda s: s.free_many([0]), "free_many([])": lambda s: s.free_many([]),
    "stats()": lambda s: s.stats(), "segments()": lambda s: s.segments(), "check()": lambda s: s.check(),
    "reset()": lambda s: s.reset(), "snapshot()": lambda s: s.snapshot(), "len()": len,
    "pickle": pickle.dumps,
    **{p: (lambda s, p=p: getattr(s, p)) for p in (
        "capacity", "used", "available", "largest_free", "peak_used", "high_water")},
}


@per_strategy
def test_use_after_the_state_is_gone(made, kind):
    # what Pool.close() does to its strategy: the state's memory is no longer there
    s = made.s
    size = s.state_size
    s._detach()
    for name, call in {**INTERFACE, **KINDS[kind].other_calls}.items():
        with pytest.raises(mempool.PoolClosed, match="the pool behind this strategy is closed"):
            call(s)
            pytest.fail(f"{name} worked on a strategy whose state is gone")
    assert repr(s) == f"<mempool.{type(s).__name__} closed>"
    assert s.strategy == kind and s.state_size == size
    s._detach()  # again: a no-op
    # bad arguments are still bad arguments
    with pytest.raises(TypeError, match="size must be an integer"):
        s.alloc("8")


# ---- edge values that are good ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                                   np.int64, np.uint64])
def test_batch_takes_any_integer_array(dtype):
    s = TLSF(4096)
    offs = s.alloc_many(np.array([16, 32, 48], dtype))
    assert offs.tolist() == [0, 16, 48] and offs.dtype == np.int64
    s.free_many(offs.astype(dtype))
    assert len(s) == 0
    offs = s.alloc_many(np.array([[8, 8], [8, 8]], dtype)[:, 0])  # not contiguous: by item
    assert offs.tolist() == [0, 8]
    s.check()


def test_capacity_of_one_byte():
    for cls in (TLSF, BestFit):
        s = cls(1)
        assert s.alloc(1) == 0
        with pytest.raises(mempool.OutOfSpace):
            s.alloc(1)
        s.free(0)
        s.check()
