"""The bad-input matrix: every wrong argument gets a clear exception and leaves the
strategy exactly as it was (stats, memory map and check())."""

from functools import partial

import helpers
import numpy as np
import pytest

import mempool
from mempool import TLSF, BestFit


@pytest.fixture(params=[TLSF, BestFit], ids=lambda c: c.__name__)
def s(request):
    s = request.param(4096)
    s.alloc(100)
    s.alloc(50, align=64)
    return s


unchanged = partial(helpers.unchanged, snapshot=False)  # stats() and the memory map


@pytest.mark.parametrize(
    "size, exc, match",
    [
        (0, ValueError, "size must be >= 1, got 0"),
        (-1, ValueError, "size must be >= 1, got -1"),
        (-(2**70), ValueError, "size must be >= 1"),
        (1.0, TypeError, "size must be an integer, not float"),
        ("8", TypeError, "size must be an integer, not str"),
        (None, TypeError, "size must be an integer, not NoneType"),
        (b"8", TypeError, "size must be an integer"),
        (np.float64(8), TypeError, "size must be an integer"),
        (5000, mempool.OutOfSpace, "cannot allocate 5000 bytes"),
        (2**64, mempool.OutOfSpace, "larger than the capacity"),
        (2**200, mempool.OutOfSpace, "cannot allocate"),
    ],
)
def test_bad_sizes(s, size, exc, match):
    unchanged(s, lambda: s.alloc(size), exc, match)


@pytest.mark.parametrize("align", [0, 3, 6, -8, 2**64, 2**65])
def test_bad_align(s, align):
    unchanged(s, lambda: s.alloc(8, align), ValueError, "align must be a positive power of two")
    unchanged(s, lambda: s.alloc(8, align=align), ValueError, "align")


@pytest.mark.parametrize("align", [8.0, "8", None])
def test_align_type(s, align):
    unchanged(s, lambda: s.alloc(8, align), TypeError, "align must be an integer")


def test_numpy_integers_are_accepted(s):
    off = s.alloc(np.int32(10), align=np.uint64(16))
    assert off % 16 == 0 and s.size_of(np.int64(off)) == 10
    s.free(np.uint32(off))
    assert s.alloc(True) >= 0  # bool is an int


def test_out_of_space_carries_numbers(s):
    with pytest.raises(mempool.OutOfSpace) as ei:
        s.alloc(4000)
    e = ei.value
    assert isinstance(e, MemoryError) and isinstance(e, mempool.MempoolError)
    assert e.size == 4000 and e.available == s.available and e.largest_free == s.largest_free
    import pickle

    f = pickle.loads(pickle.dumps(e))
    assert (f.size, f.available, f.largest_free, str(f)) == (e.size, e.available,
                                                              e.largest_free, str(e))


@pytest.mark.parametrize("offset", [1, 99, 101, 150, 4095, 4096, 10**6, 2**64, 2**80])
def test_free_unknown_or_interior_offset(s, offset):
    unchanged(s, lambda: s.free(offset), mempool.NotAllocated, "not the start of a live range")
    unchanged(s, lambda: s.size_of(offset), mempool.NotAllocated)
    unchanged(s, lambda: s.realloc(offset, 10), mempool.NotAllocated)


def test_negative_offset(s):
    unchanged(s, lambda: s.free(-1), ValueError, "offset must be >= 0")
    unchanged(s, lambda: s.realloc(-5, 10), ValueError, "offset must be >= 0")
    unchanged(s, lambda: s.size_of(-1), ValueError)


def test_offset_types(s):
    unchanged(s, lambda: s.free(0.0), TypeError, "offset must be an integer")
    unchanged(s, lambda: s.free("0"), TypeError)
    unchanged(s, lambda: s.free(None), TypeError)


def test_double_free(s):
    off = s.alloc(10)
    s.free(off)
    unchanged(s, lambda: s.free(off), mempool.NotAllocated)
    assert issubclass(mempool.NotAllocated, ValueError)


def test_realloc_bad_size(s):
    unchanged(s, lambda: s.realloc(0, 0), ValueError, "size must be >= 1")
    unchanged(s, lambda: s.realloc(0, -3), ValueError, "size must be >= 1")
    unchanged(s, lambda: s.realloc(0, 1.5), TypeError)
    unchanged(s, lambda: s.realloc(0, 10**9), mempool.OutOfSpace)
    unchanged(s, lambda: s.realloc(0, 2**64), mempool.OutOfSpace)
    unchanged(s, lambda: s.realloc(0, 200, align=3), ValueError, "align")


def test_argument_count_and_names(s):
    unchanged(s, lambda: s.alloc(), TypeError, "missing required argument 'size'")
    unchanged(s, lambda: s.alloc(1, 2, 3), TypeError, "at most 2 arguments")
    unchanged(s, lambda: s.alloc(8, alignment=8), TypeError, "unexpected keyword argument")
    unchanged(s, lambda: s.alloc(8, 8, align=8), TypeError, "multiple values")
    unchanged(s, lambda: s.free(), TypeError, "exactly one argument")
    unchanged(s, lambda: s.free(0, 1), TypeError, "exactly one argument")
    assert s.alloc(size=8, align=8) % 8 == 0


def test_batch_bad_input(s):
    unchanged(s, lambda: s.alloc_many([1, 0, 3]), ValueError, r"sizes\[1\] must be >= 1")
    unchanged(s, lambda: s.alloc_many([1, -4]), ValueError, r"sizes\[1\]")
    unchanged(s, lambda: s.alloc_many(["a"]), TypeError, r"sizes\[0\] must be an integer, not str")
    unchanged(s, lambda: s.alloc_many([1], align=3), ValueError, "align")
    unchanged(s, lambda: s.free_many([12345]), mempool.NotAllocated)
    assert len(s.alloc_many([])) == 0


@pytest.mark.parametrize(
    "sizes, exc, match",
    [
        ([1.9, 2.5], TypeError, r"sizes\[0\] must be an integer, not float"),
        ([8, "5"], TypeError, r"sizes\[1\] must be an integer, not str"),
        ("58", TypeError, r"sizes\[0\] must be an integer, not str"),
        (np.array([1.0, 2.0]), TypeError, "sizes must hold integers, not items of format 'd'"),
        (np.array([True, True]), TypeError, "format '\\?'"),
        (np.array([8, 0], np.uint16), ValueError, r"sizes\[1\] must be >= 1, got 0"),
        (np.array([8, -3], np.int8), ValueError, r"sizes\[1\] must be >= 1, got -3"),
        (5, TypeError, "sizes must be a sequence of integers"),
        (None, TypeError, "sizes must be a sequence of integers"),
        ([8, 2**64], mempool.OutOfSpace, "cannot allocate"),
        (np.array([8, 2**64 - 1], np.uint64), mempool.OutOfSpace, "cannot allocate"),
    ],
)
def test_batch_sizes_are_integers(s, sizes, exc, match):
    # the scalar rules, item by item: no silent float or string conversion
    unchanged(s, lambda: s.alloc_many(sizes), exc, match)


@pytest.mark.parametrize(
    "offsets, exc, match",
    [
        ([0.0], TypeError, r"offsets\[0\] must be an integer, not float"),
        (np.array([0.0]), TypeError, "offsets must hold integers"),
        ([-1], ValueError, r"offsets\[0\] must be >= 0, got -1"),
        (np.array([-1], np.int32), ValueError, r"offsets\[0\] must be >= 0, got -1"),
        ([2**64], mempool.NotAllocated, r"offsets\[0\] is not the start of a live range"),
        ([0, 2**70], mempool.NotAllocated, r"offsets\[1\]"),
        ([0, 0], mempool.NotAllocated, "named twice"),
    ],
)
def test_batch_offsets_are_integers(s, offsets, exc, match):
    unchanged(s, lambda: s.free_many(offsets), exc, match)


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


@pytest.mark.parametrize("cls", [TLSF, BestFit])
def test_bad_constructor_arguments(cls):
    for cap, exc in [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("1MiB", TypeError),
                     (2**64, ValueError)]:
        with pytest.raises(exc, match="capacity"):
            cls(cap)
    with pytest.raises(ValueError, match="max_blocks"):
        cls(100, max_blocks=0)
    with pytest.raises(ValueError, match="max_blocks"):
        cls(100, max_blocks=2**32)
    with pytest.raises(TypeError, match="unexpected keyword"):
        cls(100, blocks=3)
    with pytest.raises(TypeError):
        cls()
    with pytest.raises(TypeError):
        mempool.Strategy()


def test_capacity_of_one_byte():
    for cls in (TLSF, BestFit):
        s = cls(1)
        assert s.alloc(1) == 0
        with pytest.raises(mempool.OutOfSpace):
            s.alloc(1)
        s.free(0)
        s.check()
