"""block_at on private, file and region pools: every Block of a range holds a reference.

The range goes back only when its last Block is released (free(), `with`, collection
where the pool frees on collection); until then it is never handed out again, and a
Block never outlives its range.  (Shared pools count their handles in the registry:
tests/test_shared.py.)  Real pools, real bytes, every strategy."""

import gc
import itertools
import warnings

import numpy as np
import pytest

import mempool
from mempool import External, NotAllocated, Pool, PoolClosed, RegionPool

STRATEGIES = list(mempool.STRATEGIES)
CAP = 64 * 1024
SIZE = 48  # fits every strategy's default (a Slab's 64-byte items included)


@pytest.fixture(params=["private", "file"])
def kind(request):
    return request.param


@pytest.fixture
def make_pool(kind, tmp_path):
    """make(strategy) -> a private Pool or a new persistent one, closed after the test."""
    made = []

    def make(strategy):
        if kind == "private":
            p = Pool(CAP, strategy)
        else:
            p = Pool.create(tmp_path / f"{strategy}-{len(made)}.mp", CAP, strategy)
        made.append(p)
        return p

    yield make
    gc.collect()
    for p in made:
        if not p.closed:
            p.close()


def fill(block, byte):
    memoryview(block)[:] = bytes([byte]) * block.size


def exhaust(pool, size=SIZE):
    """Allocate `size` until nothing fits, each new block filled with 0xEE: every range
    the pool can still hand out, now taken."""
    got = []
    while (x := pool.try_alloc(size)) is not None:
        if pool.address is not None:  # (External memory: offsets only)
            fill(x, 0xEE)
        got.append(x)
    return got


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_freeing_one_handle_keeps_the_range_for_the_other(make_pool, strategy):
    p = make_pool(strategy)
    p.alloc(SIZE)  # something before it: the range is not at offset 0
    a = p.alloc(SIZE)
    fill(a, 0xA5)
    off, rounded = a.offset, p._strategy.size_of(a.offset)
    used, live = p.used, len(p)

    t = p.block_at(off)
    assert (t.offset, t.size, t.align, t.pool) == (off, a.size, a.align, p)
    assert bytes(t) == b"\xa5" * SIZE and t.address == a.address
    assert (p.used, len(p)) == (used, live)  # a second handle, not a second range

    a.free()
    assert not a.live and t.live
    assert (p.used, len(p)) == (used, live)
    assert bytes(t) == b"\xa5" * SIZE
    p.check()

    others = exhaust(p)  # the range is not handed out again while t lives
    assert off not in {x.offset for x in others}
    assert bytes(t) == b"\xa5" * SIZE
    for x in others:
        x.free()
    assert (p.used, len(p)) == (used, live)

    with pytest.raises(NotAllocated):  # the first handle is freed, as any freed block
        a.free()
    with pytest.raises(NotAllocated):
        p.free(a)
    assert (p.used, len(p)) == (used, live)

    t.free()  # the last handle: now the range goes
    assert not t.live
    assert (p.used, len(p)) == (used - rounded, live - 1)
    p.check()
    with pytest.raises(NotAllocated):
        t.free()
    with pytest.raises(NotAllocated):
        p.block_at(off)
    with pytest.raises(NotAllocated):
        memoryview(t)
    assert (p.used, len(p)) == (used - rounded, live - 1)


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_any_release_order_frees_at_the_last(make_pool, order):
    p = make_pool("tlsf")
    first = p.alloc(SIZE)
    fill(first, 7)
    handles = [first] + [p.block_at(first.offset) for _ in range(3)]
    used = p.used
    ways = itertools.cycle(["free", "pool.free", "with"])
    for k, i in enumerate(order):
        h = handles[i]
        way = next(ways)
        if way == "free":
            h.free()
        elif way == "pool.free":
            p.free(h)
        else:
            with h:
                pass
        assert not h.live
        rest = [handles[j] for j in order[k + 1:]]
        if rest:
            assert (p.used, len(p)) == (used, 1)
            assert all(r.live and bytes(r) == b"\x07" * SIZE for r in rest)
        else:
            assert (p.used, len(p)) == (0, 0)
        p.check()


def test_collection_releases_a_reference_in_private_pools():
    p = Pool(CAP)
    a = p.alloc(SIZE)
    fill(a, 3)
    off = a.offset
    t = p.block_at(off)
    u = p.block_at(off)
    del a
    gc.collect()
    assert len(p) == 1 and bytes(t) == bytes(u) == b"\x03" * SIZE
    others = exhaust(p)  # (held: private pools free what is collected)
    assert off not in {x.offset for x in others}
    del u
    gc.collect()
    assert len(p) == 1 + len(others) and t.live and bytes(t) == b"\x03" * SIZE
    del t  # the last one: the range goes back
    gc.collect()
    assert len(p) == len(others)
    with pytest.raises(NotAllocated):
        p.block_at(off)
    p.check()
    p.close()


def test_a_block_at_of_a_range_without_a_block_owns_it():
    # a range with no Block (made through the strategy itself): the first block_at is
    # its only reference, so it frees the range like any other Block of the pool
    p = Pool(CAP)
    off = p._strategy.alloc(100)
    t = p.block_at(off)
    assert (t.offset, t.size, t.align) == (off, p._strategy.size_of(off), 1)
    u = p.block_at(off)
    assert (u.size, u.align) == (t.size, t.align)
    t.free()
    assert len(p) == 1 and u.live
    del u
    gc.collect()
    assert len(p) == 0
    p.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_realloc_refuses_while_another_handle_lives(make_pool, strategy):
    p = make_pool(strategy)
    a = p.alloc(SIZE)
    fill(a, 9)
    t = p.block_at(a.offset)
    before = (p.stats(), p.segments())
    for blk in (a, t):
        with pytest.raises(BufferError, match="1 other handle"):
            p.realloc(blk, SIZE // 2)
    u = p.block_at(a.offset)
    with pytest.raises(BufferError, match="2 other handle"):
        p.realloc(t, SIZE // 2)
    assert (p.stats(), p.segments()) == before
    assert (a.offset, a.size, t.offset, t.size) == (u.offset, SIZE, u.offset, SIZE)
    a.free()
    u.free()
    t = p.realloc(t, SIZE // 2)  # alone now: it resizes, bytes kept
    assert t.live and t.size == SIZE // 2 and bytes(t) == b"\x09" * (SIZE // 2)
    p.check()
    t.free()
    assert len(p) == 0


def test_a_view_of_one_handle_keeps_the_range_while_another_frees(make_pool):
    p = make_pool("tlsf")
    a = p.alloc(SIZE)
    t = p.block_at(a.offset)
    m = memoryview(t)
    a.free()  # a has no view: it goes, the range stays for t and its view
    assert not a.live and len(p) == 1
    m[:3] = b"abc"
    assert bytes(t)[:3] == b"abc"
    with pytest.raises(BufferError, match="view"):
        t.free()
    with pytest.raises(BufferError):
        p.close()
    assert len(p) == 1 and t.live
    m.release()
    t.free()
    assert len(p) == 0 and p.exports == 0

    b = p.alloc(SIZE)  # a view of the freeing handle itself still refuses, as before
    u = p.block_at(b.offset)
    with memoryview(b):
        with pytest.raises(BufferError, match="view"):
            b.free()
        assert b.live and u.live
    b.free()
    u.free()
    assert len(p) == 0


def test_arrays_and_block_at(make_pool):
    p = make_pool("tlsf")
    arr = p.zeros(6, "int64")
    arr[:] = range(6)
    blk = arr.base
    t = p.block_at(blk.offset)
    assert t.size == 48 and t.align == blk.align
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (file pools: not UnnamedArrayWarning, t keeps it)
        del arr, blk
        gc.collect()  # the array went: t keeps the range
    assert len(p) == 1 and bytes(t)[8:16] == (1).to_bytes(8, "little")
    t.free()
    assert len(p) == 0

    arr = p.zeros(6, "int64")
    t = p.block_at(arr.base.offset)
    t.free()  # the array keeps it
    arr[:] = 5
    assert len(p) == 1 and arr.sum() == 30
    assert arr.base.offset not in {x.offset for x in exhaust(p)}
    assert arr.sum() == 30
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        del arr
        gc.collect()
    # the array was the range's last holder: in a file pool that is said, once
    said = [x for x in w if issubclass(x.category, mempool.errors.UnnamedArrayWarning)]
    assert len(said) == (1 if getattr(p, "path", None) else 0)
    p.check()


def test_close_kills_every_handle(make_pool):
    p = make_pool("bestfit")
    a = p.alloc(SIZE)
    t = p.block_at(a.offset)
    u = p.block_at(a.offset)
    p.close()
    for h in (a, t, u):
        assert not h.live and "closed" in repr(h)
        with pytest.raises(PoolClosed):
            h.free()
        with pytest.raises(PoolClosed):
            memoryview(h)
    with pytest.raises(PoolClosed):
        p.block_at(a.offset)
    with pytest.raises(PoolClosed):
        p.realloc(t, 8)
    del a, t, u
    gc.collect()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_file_pool_reopened(tmp_path, strategy):
    path = tmp_path / "f.mp"
    with Pool.create(path, CAP, strategy) as p:
        offs = []
        for k in range(3):
            b = p.alloc(SIZE)
            fill(b, k + 1)
            offs.append(b.offset)
        used = p.used
    with Pool.open(path) as p:
        t = p.block_at(offs[1])  # the range's only Block: it owns it
        assert (t.size, t.align) == (p._strategy.size_of(offs[1]), 1)
        u = p.block_at(offs[1])  # a twin of it
        assert (u.size, u.align) == (t.size, t.align)
        t.free()
        assert (len(p), p.used) == (3, used) and bytes(u)[:SIZE] == b"\x02" * SIZE
        assert offs[1] not in {x.offset for x in exhaust(p)}
        assert bytes(u)[:SIZE] == b"\x02" * SIZE
        p.check()
    gc.collect()
    with Pool.open(path) as p:  # what the exhausting allocated persists; offs[1] too
        assert bytes(p.block_at(offs[1]))[:SIZE] == b"\x02" * SIZE
        v = p.block_at(offs[1])
        w = p.block_at(offs[1])
        del v  # collection frees nothing in a file pool, and leaves w the range's
        gc.collect()
        n = len(p)
        w.free()  # the last Block alive: the range goes
        assert len(p) == n - 1
        with pytest.raises(NotAllocated):
            p.block_at(offs[1])
        p.check()
    with Pool.open(path) as p:
        with pytest.raises(NotAllocated):
            p.block_at(offs[1])
        assert bytes(p.block_at(offs[0]))[:SIZE] == b"\x01" * SIZE


def test_file_pool_blocks_of_this_run_have_twins(tmp_path):
    with Pool.create(tmp_path / "g.mp", CAP) as p:
        a = p.alloc(SIZE)
        t = p.block_at(a.offset)
        assert (t.size, t.align) == (SIZE, a.align)
        del a  # collected: persistent pools free nothing then, and t is the only one
        gc.collect()
        assert len(p) == 1 and t.live
        t.free()
        assert len(p) == 0


def test_external_pool_twins():
    p = Pool(CAP, source=External(CAP))
    a = p.alloc(100)
    t = p.block_at(a.offset)
    a.free()
    others = exhaust(p, 100)
    assert len(p) == 1 + len(others) and t.offset not in {x.offset for x in others}
    t.free()
    assert len(p) == len(others)
    p.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_region_pool(strategy):
    r = RegionPool(strategy, region_size=CAP, retain=0)
    keep = r.alloc(SIZE)
    a = r.alloc(SIZE)
    fill(a, 0x5A)
    region, off = a.pool, a.offset
    t = region.block_at(off)  # through the owning region's pool
    assert r._own(t) is region and (t.offset, t.size) == (off, SIZE)
    before = r.stats()
    with pytest.raises(BufferError, match="other handle"):
        r.realloc(t, 4 * CAP)  # (would move to another region)
    with pytest.raises(BufferError, match="other handle"):
        r.realloc(a, SIZE // 2)
    assert r.stats() == before

    r.free(a)
    assert r.stats() == before and bytes(t) == b"\x5a" * SIZE
    others = exhaust(region)
    assert off not in {x.offset for x in others}
    assert bytes(t) == b"\x5a" * SIZE
    r.check()
    with pytest.raises(NotAllocated):
        r.free(a)
    r.free(t)  # the last handle: the range goes
    assert len(r) == 1 + len(others) and r.stats().regions == 1
    with pytest.raises(NotAllocated):
        region.block_at(off)
    r.check()
    for x in [keep, *others]:
        r.free(x)
    assert r.stats().regions == 0
    r.close()


def test_region_given_back_only_after_the_last_handle():
    r = RegionPool("tlsf", region_size=CAP, retain=0)
    a = r.alloc(SIZE)
    fill(a, 1)
    t = a.pool.block_at(a.offset)
    r.free(a)
    assert r.stats().regions == 1 and t.live and bytes(t) == b"\x01" * SIZE
    r.free(t)
    assert r.stats().regions == 0 and r.stats().unmaps == 1

    a = r.alloc(SIZE)
    t = a.pool.block_at(a.offset)
    t.free()  # straight through the Block: the next sweep finds the region in use
    assert r.stats().regions == 1 and r.stats().live == 1 and a.live
    moved = r.realloc(a, 2 * CAP)  # alone now: moves to a region of its own
    assert moved is not a and not a.live and moved.size == 2 * CAP
    assert r.stats().regions == 1
    r.free(moved)
    assert r.stats().regions == 0
    r.close()


def test_an_offset_whose_index_frees_the_range(make_pool):
    # block_at reads the offset (user code) before it looks for the range's Blocks
    p = make_pool("tlsf")
    a = p.alloc(SIZE)

    class Sly:
        def __index__(self):
            a.free()
            return a.offset

    with pytest.raises(NotAllocated):
        p.block_at(Sly())
    assert len(p) == 0 and not a.live
    b = p.alloc(SIZE)
    t = p.block_at(b.offset)

    class Sly2:
        def __index__(self):
            b.free()  # t keeps the range: the new Block joins t
            return b.offset

    u = p.block_at(Sly2())
    assert len(p) == 1 and u.live and t.live and not b.live
    t.free()
    assert len(p) == 1
    u.free()
    assert len(p) == 0
    p.check()


def test_block_at_of_an_array_numpy_made_in_a_private_pool():
    # the handler's arrays have no Block: block_at's Block and the array each hold a
    # reference (before, the Block owned the range alone: after the array died the
    # next array got the same range, and freeing the Block freed it under that one)
    np = pytest.importorskip("numpy")
    p = Pool("8MiB")
    act = p.activate(numpy=True)
    with act:
        a = np.full(100, 1.0)
    off = a.ctypes.data - p.address
    blk = p.block_at(off)
    assert blk.size >= 800 and p.used == 800
    with pytest.raises(BufferError, match="other handle"):
        p.realloc(blk, 4096)                      # the array's reference counts
    del a                                         # the Block keeps the range
    assert p.used == 800 and bytes(blk)[:8] == np.float64(1.0).tobytes()
    with act:
        b = np.full(100, 2.0)
    assert b.ctypes.data - p.address != off       # never handed out twice
    p.free(blk)                                   # the last reference
    assert p.used == 800 and (b == 2.0).all()
    # the other order: the Block goes first, the array keeps the range
    blk = p.block_at(b.ctypes.data - p.address)
    twin = p.block_at(b.ctypes.data - p.address)
    del blk, twin
    assert p.used == 800 and (b == 2.0).all()
    # a resize moves the array's data: the Block keeps the old range and its bytes
    blk = p.block_at(b.ctypes.data - p.address)
    with act:
        b.resize(10_000, refcheck=False)
    assert p.used == 800 + 80_000 and bytes(blk)[:8] == np.float64(2.0).tobytes()
    del b
    assert p.used == 800
    del blk
    assert p.used == 0 and p.exports == 0
    p.check()
    p.close()


def test_block_at_of_an_array_numpy_made_in_a_file_pool(tmp_path):
    # a file pool lists its arrays' ranges (a range without a Block may be an earlier
    # run's there, which block_at's Block owns): the array's range is shared
    np = pytest.importorskip("numpy")
    path = tmp_path / "np.mp"
    with Pool.create(path, "1MiB") as p:
        with p.activate(numpy=True):
            a = np.full(100, 3.0)
        off = a.ctypes.data - p.address
        blk = p.block_at(off)
        p.free(blk)                               # the array keeps its range
        assert p.used == 800 and (a == 3.0).all()
        blk = p.block_at(off)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mempool.errors.UnnamedArrayWarning)
            del a                                 # the Block keeps it now
        assert p.used == 800 and bytes(blk)[:8] == np.float64(3.0).tobytes()
        keep = p.alloc(16)                        # a Block of this run, left for the next
        p.free(blk)
        assert p.used == 16
        p.check()
    with Pool.open(path) as p:                    # an earlier run's range: block_at owns it
        b = p.block_at(keep.offset)
        p.free(b)
        assert p.used == 0
        p.check()


@pytest.mark.parametrize("kind", ["private", "private+numpy", "file", "shared"])
def test_the_named_directorys_own_ranges_are_not_blocks(tmp_path, name, kind):
    # a record and the table of pool.named: block_at refuses them (a Block of one could
    # free it or write over it: the directory, and a file with it, was lost); the name's
    # data range stays block_at's like any other
    if kind == "file":
        p = Pool.create(tmp_path / "d.mp", CAP)
    elif kind == "shared":
        p = mempool.SharedPool.create(name, CAP)
    else:
        p = Pool(CAP)
    try:
        if kind == "private+numpy":  # a pool NumPy took from: Block-less ranges are arrays'
            with p.activate(numpy=True):
                t = np.ones(4)
            del t
        p.named["w"] = np.arange(10.0)
        data = p.named["w"].ctypes.data - p.address
        meta = [off for off, size, allocated in p.segments() if allocated and off != data]
        assert len(meta) == 2  # the record and the table
        used, live = p.used, len(p)
        for off in meta:
            with pytest.raises(NotAllocated, match="directory of named arrays"):
                p.block_at(off)
        assert (p.used, len(p)) == (used, live)
        d = p.block_at(data)
        d.free()
        for i in range(40):  # the table grows and moves: nothing pins the old one
            p.named[f"k{i}"] = np.full(1, float(i))
        assert p.named["w"].tolist() == list(range(10)) and len(p.named) == 41
        p.check()
    finally:
        p.close()
        if kind == "shared":
            p.unlink()
    if kind == "file":
        with Pool.open(tmp_path / "d.mp") as q:
            q.check()
            assert q.named["k39"].tolist() == [39.0]
