"""RegionPool: regions mapped on demand, empty ones given back beyond `retain`."""

import gc

import numpy as np
import pytest

import mempool
from mempool import RegionPool

KIB = 1024


def test_first_region_that_fits_then_new_regions():
    r = RegionPool(region_size="64KiB")
    a = r.alloc(40 * KIB)
    b = r.alloc(20 * KIB)  # fits the first region
    c = r.alloc(40 * KIB)  # does not: a second region
    assert a.pool is b.pool and c.pool is not a.pool
    st = r.stats()
    assert (st.regions, st.bytes_mapped, st.live, st.maps) == (2, 128 * KIB, 3, 2)
    assert st.bytes_used == 100 * KIB
    r.check()
    for x in (a, b, c):
        r.free(x)
    r.close()


def test_large_request_gets_its_own_region_and_reuses_it():
    r = RegionPool(region_size="64KiB")
    small = r.alloc(100)
    big = r.alloc(1 << 20)
    assert big.pool.capacity >= 1 << 20 and big.pool is not small.pool
    r.free(big)  # retained (retain=1), not unmapped
    assert r.stats().regions == 2
    again = r.alloc(1 << 20)
    assert r.stats().maps == 2  # the retained region served it: no map/unmap churn
    r.free(again)
    r.free(small)
    st = r.stats()
    assert st.regions == 1 and st.empty_regions == 1 and st.unmaps == 1
    r.close()


def test_lone_block_loop_does_not_churn():
    r = RegionPool(region_size="64KiB")
    for _ in range(100):
        b = r.alloc(1000)
        r.free(b)
    st = r.stats()
    assert st.maps == 1 and st.unmaps == 0 and st.regions == 1


def test_retain_zero_unmaps_at_once():
    r = RegionPool(region_size="64KiB", retain=0)
    b = r.alloc(1000)
    r.free(b)
    st = r.stats()
    assert st.regions == 0 and st.unmaps == 1 and st.bytes_mapped == 0


def test_max_size_caps_the_mapped_bytes():
    r = RegionPool(region_size="64KiB", max_size="128KiB")
    keep = [r.alloc(60 * KIB), r.alloc(60 * KIB)]
    with pytest.raises(mempool.OutOfSpace) as ei:
        r.alloc(60 * KIB)
    assert ei.value.size == 64 * KIB or ei.value.size == 60 * KIB
    assert r.stats().regions == 2
    r.free(keep.pop())
    assert r.alloc(60 * KIB).size == 60 * KIB


def test_realloc_in_place_and_across_regions_keeps_bytes():
    r = RegionPool(region_size="64KiB")
    a = r.alloc(1000)
    memoryview(a)[:] = bytes(range(256)) * 3 + bytes(232)
    assert r.realloc(a, 2000) is a  # in place (the region is free after it)
    blocker = r.alloc(60 * KIB)  # noqa: F841  fills the rest of region 1
    moved = r.realloc(a, 30 * KIB)
    assert moved is not a and moved.pool is not a.pool and not a.live
    assert bytes(moved)[:768] == bytes(range(256)) * 3
    r.check()


def test_arrays_from_regions():
    r = RegionPool(region_size="64KiB")
    x = r.zeros((100, 10), "f8")
    y = r.array(np.arange(10))
    z = r.empty(1 << 17, "u1")  # bigger than a region
    assert x.sum() == 0 and y.tolist() == list(range(10)) and z.nbytes == 1 << 17
    with pytest.raises(BufferError):
        r.close()
    del x, y, z
    gc.collect()
    r.close()
    assert repr(r) == "<RegionPool closed>"
    with pytest.raises(mempool.PoolClosed):
        r.alloc(1)


def test_region_size_rounding():
    assert RegionPool(region_size=1000).region_size == 64 * KIB
    assert RegionPool(region_size=100 * KIB).region_size == 100 * KIB
    assert RegionPool(region_size=100 * KIB + 1).region_size == 104 * KIB


def test_bad_input():
    r = RegionPool(region_size="64KiB")
    b = r.alloc(10)
    before = r.stats()
    for args, exc in [((0,), ValueError), ((-1,), ValueError), ((1.5,), TypeError),
                      (("1",), TypeError), ((10, 3), ValueError)]:
        with pytest.raises(exc):
            r.alloc(*args)
    other = mempool.Pool(4096)
    ob = other.alloc(10)
    with pytest.raises(mempool.NotAllocated, match="another pool"):
        r.free(ob)
    with pytest.raises(TypeError):
        r.free(42)
    r.free(b)
    with pytest.raises(mempool.NotAllocated):
        r.free(b)
    assert r.stats().live == before.live - 1
    with pytest.raises(ValueError):
        RegionPool("nosuch")
    with pytest.raises(ValueError):
        RegionPool(region_size=0)
    with pytest.raises(ValueError):
        RegionPool(retain=-1)
    with pytest.raises(ValueError):
        RegionPool(max_size="lots")
