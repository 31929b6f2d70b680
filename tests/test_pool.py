"""Pool and Block over real memory: real mappings, real NumPy arrays, real
BufferErrors, and the bad-input matrix."""

import gc
import itertools
import os
import pickle
import weakref

import numpy as np
import pytest

import mempool
from mempool import AnonymousMemory, BufferMemory, External, Pool


@pytest.fixture
def pool():
    p = Pool("1MiB")
    yield p
    gc.collect()
    if not p.closed:
        p.close()


def test_alloc_gives_aligned_blocks_with_bytes(pool):
    a = pool.alloc(100)
    b = pool.alloc(10, align=4096)
    assert (a.offset, a.size, b.offset % 4096, b.size) == (0, 100, 0, 10)
    assert a.address == pool.address and b.address == pool.address + b.offset
    assert a.pool is pool and len(pool) == 2
    memoryview(a)[:5] = b"hello"
    assert bytes(a)[:5] == b"hello" and len(bytes(a)) == 100
    arr = np.asarray(b)
    assert arr.dtype == np.uint8 and arr.shape == (10,)
    arr[:] = 7
    del arr
    assert bytes(b) == b"\x07" * 10
    pool.check()


def test_default_alignment_is_16(pool):
    offs = [pool.alloc(n).offset for n in (1, 3, 17, 5)]
    assert all(o % 16 == 0 for o in offs)


def test_views_are_zero_copy(pool):
    b = pool.alloc(64)
    m1, m2 = memoryview(b), memoryview(b)
    m1[0] = 42
    assert m2[0] == 42 and b.exports == 2 and pool.exports == 2
    a = np.asarray(b)
    assert a.ctypes.data == b.address
    m1.release()
    m2.release()
    del a
    assert b.exports == 0 and pool.exports == 0


def test_free_with_live_view_raises_buffer_error(pool):
    b = pool.alloc(64)
    m = memoryview(b)
    with pytest.raises(BufferError, match="view"):
        b.free()
    with pytest.raises(BufferError):
        pool.free(b)
    assert b.live and len(pool) == 1
    m.release()
    b.free()
    assert not b.live and len(pool) == 0


def test_freed_block_is_dead(pool):
    b = pool.alloc(64)
    b.free()
    with pytest.raises(mempool.NotAllocated, match="freed"):
        memoryview(b)
    with pytest.raises(mempool.NotAllocated):
        b.address
    with pytest.raises(mempool.NotAllocated):
        b.free()
    with pytest.raises(mempool.NotAllocated):
        pool.free(b)
    with pytest.raises(mempool.NotAllocated):
        pool.realloc(b, 10)
    assert "freed" in repr(b)


def test_block_context_manager_frees(pool):
    with pool.alloc(64) as b:
        memoryview(b)[0] = 1
    assert not b.live and len(pool) == 0


def test_block_collected_gives_range_back(pool):
    b = pool.alloc(1000)
    assert pool.used == 1000
    del b
    assert pool.used == 0 and len(pool) == 0


def test_block_keeps_pool_alive():
    p = Pool(1 << 16)
    ref = weakref.ref(p)
    b = p.alloc(10)
    memoryview(b)[:2] = b"ok"
    del p
    gc.collect()
    assert ref() is not None and bytes(b)[:2] == b"ok"
    del b
    gc.collect()
    assert ref() is None


def test_array_keeps_pool_alive_and_frees_on_collect():
    p = Pool(1 << 16)
    ref = weakref.ref(p)
    a = p.zeros(100, "int32")
    del p
    gc.collect()
    assert ref() is not None
    a[:] = 5
    assert a.sum() == 500
    pool = ref()
    assert len(pool) == 1
    del a
    gc.collect()
    assert len(pool) == 0
    del pool
    gc.collect()
    assert ref() is None


def test_close_with_views_or_arrays_raises_and_stays_open(pool):
    b = pool.alloc(16)
    m = memoryview(b)
    with pytest.raises(BufferError, match="alive"):
        pool.close()
    assert not pool.closed and pool.stats().live == 1
    m[0] = 7  # the memory is still mapped and usable through the view
    assert bytes(m[:1]) == b"\x07" and pool.block_at(b.offset).offset == b.offset
    m.release()
    a = pool.empty(10)
    with pytest.raises(BufferError):
        pool.close()
    v = a[2:5]
    del a
    with pytest.raises(BufferError):  # a view of the array keeps the memory
        pool.close()
    del v
    gc.collect()
    pool.close()
    assert pool.closed


def test_use_after_close(pool):
    b = pool.alloc(16)
    pool.close()
    for fn in (lambda: pool.alloc(1), lambda: pool.free(b), lambda: pool.empty(3),
               lambda: pool.stats(), lambda: pool.check(), lambda: len(pool),
               lambda: b.address, lambda: memoryview(b), lambda: b.free(),
               lambda: pool.block_at(0), lambda: pool._strategy.alloc(1)):
        with pytest.raises(mempool.PoolClosed):
            fn()
    assert not b.live and "closed" in repr(b) and repr(pool) == "<Pool closed>"
    pool.close()  # twice is fine


def test_realloc_keeps_bytes_in_place_and_moved(pool):
    a = pool.alloc(100)
    neighbour = pool.alloc(100)  # noqa: F841 (held: growing a must move it)
    memoryview(a)[:] = bytes(range(100))
    same = pool.realloc(a, 50)
    assert same is a and a.offset == 0 and bytes(a) == bytes(range(50))
    moved = pool.realloc(a, 300)
    assert moved is a and a.offset != 0 and a.size == 300
    assert bytes(a)[:50] == bytes(range(50))
    pool.check()


def test_realloc_with_view_refused(pool):
    a = pool.alloc(100)
    m = memoryview(a)
    with pytest.raises(BufferError):
        pool.realloc(a, 200)
    m.release()
    assert pool.realloc(a, 200).size == 200


def test_failed_alloc_and_realloc_change_nothing(pool):
    a = pool.alloc(1000)
    before = pool.stats()
    with pytest.raises(mempool.OutOfSpace):
        pool.alloc(2 << 20)
    with pytest.raises(mempool.OutOfSpace):
        pool.realloc(a, 2 << 20)
    assert pool.stats() == before and a.size == 1000 and a.offset == 0


def test_empty_zeros_array_like_numpy(pool):
    e = pool.empty((3, 4), dtype="float32")
    assert e.shape == (3, 4) and e.dtype == np.float32 and e.flags.c_contiguous
    assert e.flags.writeable and e.ctypes.data % 64 == 0
    z = pool.zeros(5, np.int64)
    assert z.tolist() == [0] * 5
    d = pool.empty(7)
    assert d.dtype == np.float64
    src = np.arange(12, dtype=np.int16).reshape(3, 4)
    c = pool.array(src)
    assert np.array_equal(c, src) and c.dtype == np.int16
    assert c.ctypes.data != src.ctypes.data
    lst = pool.array([[1.5, 2.5]])
    assert lst.shape == (1, 2) and lst.dtype == np.float64
    s = pool.empty(())
    assert s.shape == () and pool.empty(0).shape == (0,)
    rec = pool.zeros(3, dtype=[("x", "i4"), ("y", "f8")])
    assert rec["y"].sum() == 0
    assert len(pool) == 7  # the empty(0) temporary is gone already


def test_zeros_clears_reused_memory(pool):
    a = pool.empty(100, "u1")
    a[:] = 255
    del a
    z = pool.zeros(100, "u1")
    assert z.max() == 0


def test_arrays_do_not_overlap(pool):
    arrs = [pool.empty(100, "u1") for _ in range(20)]
    for k, a in enumerate(arrs):
        a[:] = k
    assert all((a == k).all() for k, a in enumerate(arrs))
    spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrs)
    assert all(x[1] <= y[0] for x, y in itertools.pairwise(spans))


def test_array_bad_input(pool):
    with pytest.raises(ValueError, match="object"):
        pool.empty(3, dtype=object)
    with pytest.raises(ValueError, match="negative"):
        pool.empty(-1)
    with pytest.raises(TypeError):
        pool.empty(3, dtype="nonsense-dtype")
    with pytest.raises(TypeError):
        pool.empty("abc")
    with pytest.raises(mempool.OutOfSpace):
        pool.empty((1 << 20, 2))
    with pytest.raises(ValueError, match="too big"):
        pool.empty((1 << 40, 1 << 40))
    assert len(pool) == 0 and pool.exports == 0


def test_array_base_block_cannot_be_freed_while_array_lives(pool):
    a = pool.empty(8)
    blk = a.base
    assert isinstance(blk, mempool.Block)
    with pytest.raises(BufferError):
        blk.free()
    del blk
    del a
    assert len(pool) == 0


def test_block_of_another_pool_and_wrong_types(pool):
    other = Pool(1 << 16)
    b = other.alloc(10)
    with pytest.raises(mempool.NotAllocated, match="another pool"):
        pool.free(b)
    with pytest.raises(mempool.NotAllocated, match="another pool"):
        pool.realloc(b, 20)
    with pytest.raises(TypeError, match="Block"):
        pool.free(0)
    with pytest.raises(TypeError):
        pool.free(None)
    assert b.live and len(other) == 1


@pytest.mark.parametrize(
    "args, exc",
    [((0,), ValueError), ((-5,), ValueError), ((1.5,), TypeError), (("8",), TypeError),
     ((2 << 20,), mempool.OutOfSpace), ((2**70,), mempool.OutOfSpace),
     ((8, 3), ValueError), ((8, 0), ValueError)],
)
def test_alloc_bad_input_leaves_pool_intact(pool, args, exc):
    pool.alloc(10)
    before = pool.stats()
    with pytest.raises(exc):
        pool.alloc(*args)
    assert pool.stats() == before
    pool.check()


@pytest.mark.parametrize(
    "capacity, strategy, exc",
    [(0, "tlsf", ValueError), (-1, "tlsf", ValueError), ("lots", "tlsf", ValueError),
     (1.5, "tlsf", TypeError), (4096, "nosuch", ValueError), (4096, 3, TypeError),
     ("0MiB", "tlsf", ValueError)],
)
def test_pool_bad_constructor(capacity, strategy, exc):
    with pytest.raises(exc):
        Pool(capacity, strategy)


def test_sizes_as_strings_and_strategies():
    for cap, n in (("64KiB", 65536), ("1MiB", 1 << 20), ("2 MB", 2_000_000), (4096, 4096)):
        with Pool(cap) as p:
            assert p.capacity == n
    with Pool("64KiB", "bestfit", max_blocks=16) as p:
        assert p.strategy == "bestfit"
        assert p.stats().capacity == 65536


def test_buffer_memory_without_copy():
    backing = bytearray(4096)
    src = BufferMemory(backing)
    p = Pool(4096, source=src)
    b = p.alloc(4)
    memoryview(b)[:] = b"abcd"
    assert backing[b.offset:b.offset + 4] == b"abcd"
    del b
    p.close()
    assert not src.closed  # the caller's source stays the caller's
    src.close()
    arr = np.zeros(1000, np.float64)
    with Pool(8000, source=BufferMemory(arr)) as q:
        x = q.zeros(10, "f8")
        x[:] = 3.0
        assert arr.sum() == 30.0
        del x


def test_buffer_memory_bad_objects():
    with pytest.raises(TypeError):
        BufferMemory(42)
    with pytest.raises(ValueError, match="writable"):
        BufferMemory(b"readonly")
    with pytest.raises(ValueError, match="contiguous"):
        BufferMemory(np.zeros((10, 10))[:, ::2])
    with pytest.raises(ValueError):
        BufferMemory(bytearray())
    with pytest.raises(ValueError, match="fewer than capacity"):
        Pool(100, source=BufferMemory(bytearray(50)))


def test_source_cannot_close_under_a_pool():
    src = AnonymousMemory(1 << 16)
    p = Pool(1 << 16, source=src)
    with pytest.raises(BufferError):
        src.close()
    p.close()
    src.close()
    with pytest.raises(mempool.PoolClosed):
        Pool(1 << 16, source=src)


def test_external_source_offsets_only():
    gpu = External("30GB")
    p = Pool(gpu.size, source=gpu)
    b = p.alloc(10**9, align=1 << 20)
    assert b.offset == 0 and b.size == 10**9
    with pytest.raises(TypeError, match="External"):
        memoryview(b)
    with pytest.raises(TypeError):
        b.address
    with pytest.raises(TypeError, match="External"):
        p.empty(10)
    assert p.address is None
    b.free()
    p.close()


def test_pool_pickles_refused_but_strategy_stats_work(pool):
    with pytest.raises(TypeError):
        pickle.dumps(pool)
    with pytest.raises(TypeError):
        pickle.dumps(pool.alloc(10))


def test_default_align_fits_the_strategy():
    # a Slab of 40-byte items aligns them to 8: alloc(40) works without align=
    with Pool("1MiB", "slab", item_size=40) as p:
        keep = [p.alloc(40), p.alloc(8)]  # blocks given back when collected: kept
        assert [b.offset for b in keep] == [0, 40]
        with pytest.raises(mempool.OutOfSpace):
            p.alloc(40, align=16)
        assert p.stats().live == 2
        del keep
    with Pool("1MiB", "slab", item_size=64) as p:  # item alignment 64: the default 16 holds
        keep = [p.alloc(64), p.alloc(1)]
        assert [b.offset for b in keep] == [0, 64]
        del keep
    with Pool("1MiB") as p:
        keep = [p.alloc(1), p.alloc(1)]
        assert [b.offset for b in keep] == [0, 16]
        del keep
    r = mempool.RegionPool("slab", item_size=40)
    keep = [r.alloc(40), r.alloc(40)]
    assert [b.offset for b in keep] == [0, 40]
    del keep
    r.close()


def _aligned_slice(align_mod: int, want: int, n: int) -> np.ndarray:
    """A uint8 view of n bytes whose address is `want` modulo align_mod."""
    backing = np.zeros(n + 2 * align_mod, np.uint8)
    start = (want - backing.ctypes.data) % align_mod
    return backing[start:start + n]


def test_alignment_is_of_addresses_not_only_offsets():
    with Pool("64KiB") as p:  # an mmap: page-aligned, so up to 4096 holds
        b = p.alloc(100, align=4096)
        assert b.address % 4096 == 0 and b.align == 4096
        before = p.stats()
        with pytest.raises(ValueError, match="align 32768 is above the alignment of the pool's"):
            p.alloc(100, align=32768)
        assert p.stats() == before
        del b
    buf = _aligned_slice(64, 16, 8192)  # 16-aligned, not 32
    with Pool(8192, source=BufferMemory(buf)) as q:
        keep = [q.alloc(8), q.alloc(8)]
        assert [k.address % 16 for k in keep] == [0, 0]
        with pytest.raises(ValueError, match="align 64 is above"):
            q.alloc(8, align=64)
        x = q.empty(10, "f8")  # 16 is all the memory offers: enough for float64
        assert x.ctypes.data % 16 == 0 and x.flags.aligned
        del keep, x
    with pytest.raises(ValueError, match="aligned to 1 bytes only"):
        Pool(4096, source=BufferMemory(_aligned_slice(64, 1, 4096)))


def test_forked_child_cannot_use_a_pool_over_shared_memory(tmp_path):
    from mempool.sources import SharedMemory

    name = f"mptest-fork-{os.getpid()}"
    src = SharedMemory(name, 65536, create=True)
    try:
        with Pool(65536, source=src) as p:
            b = p.alloc(64)
            pid = os.fork()
            if pid == 0:  # the child: every call refuses; collecting b frees nothing
                code = 0
                try:
                    p.alloc(8)
                    code = 1
                except mempool.PoolClosed:
                    pass
                try:
                    b.free()
                    code = 2
                except mempool.PoolClosed:
                    pass
                del b
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert p.stats().live == 1 and b.live  # the parent's state is untouched
            p.check()
            del b
    finally:
        src.close()
        src.unlink()


# ---- try_alloc: alloc without an exception for "nothing fits" ------------------------
def test_try_alloc_gives_the_blocks_alloc_gives():
    requests = [((100,), {}), ((100, 64), {}), ((1,), {}), ((4096, 4096), {}),
                ((), {"size": 3000, "align": 256})]
    tried, allocated = Pool(1 << 16), Pool(1 << 16)
    got = [tried.try_alloc(*a, **k) for a, k in requests]
    want = [allocated.alloc(*a, **k) for a, k in requests]
    assert [(b.offset, b.size, b.align) for b in got] == [
        (0, 100, 16), (128, 100, 64), (112, 1, 16), (4096, 4096, 4096), (256, 3000, 256)]
    assert [(b.offset, b.size, b.align) for b in got] == [(b.offset, b.size, b.align) for b in want]
    assert tried.segments() == allocated.segments()
    memoryview(got[0])[:3] = b"abc"
    assert bytes(got[0])[:3] == b"abc"
    got[1].free()
    del got  # collected: the ranges go back, as alloc's blocks do
    assert len(tried) == 0
    tried.check()


def test_try_alloc_returns_none_and_changes_nothing_when_nothing_fits():
    p = Pool(1 << 16)
    full = p.try_alloc(1 << 16)
    assert full.offset == 0 and full.size == 1 << 16
    before = (p.stats(), p.segments())
    for args in [(1,), (1 << 16,), (1 << 17,), (2**64 - 1,), (2**64,), (2**70,), (16, 4096)]:
        assert p.try_alloc(*args) is None, args
    assert (p.stats(), p.segments()) == before
    p.check()
    full.free()
    assert p.try_alloc(1 << 17) is None  # beyond the capacity: no fit either
    # a state whose range table is full (max_blocks): nothing fits, as alloc says
    q = Pool(1 << 16, max_blocks=3, grow=False)
    blocks = [q.try_alloc(16), q.try_alloc(16)]
    before = (q.stats(), q.segments())
    assert q.try_alloc(16) is None
    with pytest.raises(mempool.OutOfSpace, match="max_blocks"):
        q.alloc(16)
    assert (q.stats(), q.segments()) == before and len(blocks) == 2
    q.check()


def test_try_alloc_makes_no_exception(oos_made):
    made = oos_made
    p = Pool(4096)
    assert p.try_alloc(8192) is None and p.try_alloc(2**70) is None
    keep = p.alloc(4096)
    assert p.try_alloc(1) is None
    assert made == []
    with pytest.raises(mempool.OutOfSpace):
        p.alloc(1)
    assert len(made) == 1  # (the count sees alloc's)
    del keep


@pytest.mark.parametrize(
    "args, kwargs",
    [((0,), {}), ((-5,), {}), ((1.5,), {}), (("8",), {}), ((None,), {}),
     ((8, 3), {}), ((8, 0), {}), ((8, -2), {}), ((8, 1.0), {}), ((8, 8192), {}),
     ((8, 2**64), {}), ((), {}), ((1, 2, 3), {}), ((8,), {"size": 8}), ((8,), {"bogus": 1}),
     ((), {"align": 16})],
)
def test_try_alloc_bad_arguments_raise_as_alloc(args, kwargs):
    p = Pool("1MiB")
    p.alloc(10)
    before = (p.stats(), p.segments())
    try:
        p.alloc(*args, **kwargs)
    except Exception as e:  # whatever alloc raises, try_alloc raises
        want = e
    else:
        pytest.fail(f"alloc{args} did not raise")
    with pytest.raises(type(want)) as got:
        p.try_alloc(*args, **kwargs)
    assert type(got.value) is type(want)
    assert str(got.value) == str(want).replace("alloc()", "try_alloc()")
    assert (p.stats(), p.segments()) == before
    p.close()
    with pytest.raises(mempool.PoolClosed):
        p.try_alloc(8)
