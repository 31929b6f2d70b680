"""RegionPool: regions mapped on demand, empty ones given back beyond `retain`."""

import gc
from pathlib import Path

import numpy as np
import pytest

import mempool
from mempool import RegionPool
from mempool.regions import RegionStats

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
    assert ei.value.size == 60 * KIB  # the request, as Pool reports it
    assert (ei.value.available, ei.value.largest_free) == (8 * KIB, 4 * KIB)
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


# ---- a refused request changes nothing ----------------------------------------------------
def test_failed_allocs_map_nothing_new():
    # slab items of 64 bytes: a fresh region refuses 100 bytes, and used to stay mapped
    # (one more region per failed call, retain ignored, no bound without max_size)
    for max_size in ("8MiB", None):
        r = RegionPool("slab", region_size="1MiB", max_size=max_size, item_size=64)
        assert r.stats().regions == 0
        for _ in range(10):
            with pytest.raises(mempool.OutOfSpace, match="100 bytes"):
                r.alloc(100)
            assert r.regions == [] and r.stats() == RegionStats(0, 0, 0, 0, 0, 0, 0, 0)
        keep = r.alloc(64)  # and the pool still works
        before, regions = r.stats(), r.regions
        for _ in range(10):
            with pytest.raises(mempool.OutOfSpace):
                r.alloc(100)
            with pytest.raises(mempool.OutOfSpace):
                r.empty(1000, "u1")
        assert r.stats() == before and r.regions == regions
        r.free(keep)
        r.close()


def test_buddy_retain_zero_refusing_a_large_request_keeps_no_region():
    r = RegionPool("buddy", region_size="64KiB", max_size="256KiB", retain=0)
    with pytest.raises(mempool.OutOfSpace, match="max_size"):
        r.alloc(300_000)  # its own region: 512 KiB (a Buddy's blocks are powers of two)
    assert r.regions == [] and r.stats().bytes_mapped == 0
    b = r.alloc(1000)
    assert r.stats().regions == 1
    r.free(b)
    assert r.stats().regions == 0


def _overcommit_always() -> bool:
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1"
    except OSError:
        return False


@pytest.mark.parametrize("size", [2**40, 2**60, 2**63, 2**64, 2**70])
def test_a_region_the_system_cannot_map_is_out_of_space(size):
    if size == 2**40 and _overcommit_always():
        pytest.skip("overcommit_memory=1 maps 1 TiB")
    r = RegionPool(region_size="64KiB")
    keep = r.alloc(1000)
    before, regions = r.stats(), r.regions
    with pytest.raises(mempool.OutOfSpace) as ei:
        r.alloc(size)  # was OSError ENOMEM, or OverflowError past 2**63
    assert isinstance(ei.value, MemoryError)
    assert ei.value.size == size
    assert ei.value.available == sum(x.available for x in regions)
    assert ei.value.largest_free == max(x.largest_free for x in regions)
    assert r.stats() == before and r.regions == regions
    if size < 2**63:  # (a longer dimension is no array shape: Pool.empty refuses it too)
        with pytest.raises(mempool.OutOfSpace):
            r.empty(size, "u1")
        assert r.stats() == before
    r.free(keep)
    r.close()


def test_strategy_limits_on_a_big_region_are_out_of_space_bad_options_stay(monkeypatch):
    import mempool.regions as regions

    real = regions.Pool

    def pool(size, strategy, **options):  # a strategy whose state cannot cover 1 MiB
        if size > 1 << 20:
            raise ValueError(f"capacity {size} is too large for this strategy")
        return real(size, strategy, **options)

    monkeypatch.setattr(regions, "Pool", pool)
    r = RegionPool(region_size="64KiB")
    with pytest.raises(mempool.OutOfSpace, match="too large for this strategy"):
        r.alloc(2 << 20)
    assert r.stats().regions == 0
    assert r.alloc(1000).size == 1000
    monkeypatch.undo()
    bad = RegionPool("slab", region_size="64KiB", item_size=0)
    for size in (10, 2 << 20):  # a normal region refuses the options too: ValueError
        with pytest.raises(ValueError, match="item_size") as ei:
            bad.alloc(size)
        assert not isinstance(ei.value, mempool.OutOfSpace)
    assert bad.stats().regions == 0


def test_bad_arguments_change_nothing():
    r = RegionPool(region_size="64KiB")
    b = r.alloc(10)
    before = r.stats()
    for args, exc in [((0,), ValueError), ((-1,), ValueError), ((-(2**70),), ValueError),
                      ((1.5,), TypeError), ((False,), ValueError), ((2**70, 3), ValueError)]:
        with pytest.raises(exc):
            r.alloc(*args)
    assert r.stats() == before
    r.free(b)


def test_realloc_into_another_region_keeps_the_alignment():
    r = RegionPool(region_size="64KiB", retain=4)
    b = r.alloc(100, align=4096)
    first = b.pool
    filler = r.alloc(64 * KIB - 112)  # right behind b: region 0 is full
    assert filler.pool is first and r.stats().regions == 1
    moved = r.realloc(b, 3000)  # no room behind b: it moves into a new region
    assert moved.pool is not first and moved.align == 4096
    assert moved.offset % 4096 == 0 and moved.address % 4096 == 0
    del filler
    r.close()


def test_align_beyond_a_page_is_refused_before_mapping():
    r = RegionPool(region_size="64KiB")
    before = r.stats()
    with pytest.raises(ValueError, match="above the alignment of the regions' memory"):
        r.alloc(100, align=2 << 20)
    assert r.stats() == before
    b = r.alloc(100, align=4096)
    assert b.address % 4096 == 0
    del b
    r.close()


def test_alloc_tries_the_regions_without_exceptions(oos_made):
    # each region that cannot take a request says so with None (try_alloc), not with an
    # OutOfSpace made and caught; only a refusal of the whole pool raises
    made = oos_made
    r = RegionPool(region_size="64KiB", max_size="192KiB")
    full = [r.alloc(60 * KIB) for _ in range(3)]  # three regions, none with 8 KiB free
    assert r.stats().regions == 3 and made == []
    small = r.alloc(4 * KIB, 4096)  # the first region's tail takes it
    assert small.pool is full[0].pool and small.offset == 60 * KIB and made == []
    with pytest.raises(mempool.OutOfSpace, match="max_size"):
        r.alloc(8 * KIB)  # no region fits, and a fourth would pass max_size
    assert len(made) == 1 and r.stats().regions == 3
    for b in (*full, small):
        r.free(b)
    r.close()


# ---- named arrays: each name in one region's own directory ----------------------------
def test_named_round_trip_copy_and_adopt():
    r = RegionPool(region_size="64KiB", retain=0)
    r.named["w"] = np.arange(12.0).reshape(3, 4)          # copied into a region
    a = r.zeros((4, 4), ">i4")                             # adopted: same bytes
    a[:] = 7
    addr = a.ctypes.data
    r.named["a"] = a
    del a
    gc.collect()
    assert sorted(r.named) == ["a", "w"] and len(r.named) == 2 and "w" in r.named
    got = r.named["a"]
    assert got.ctypes.data == addr and got.dtype == np.dtype(">i4") and int(got.sum()) == 112
    assert r.named["w"][2, 3] == 11.0
    del got
    r.check()
    r.close()


def test_named_big_value_gets_a_region_and_del_gives_it_back():
    r = RegionPool(region_size="64KiB", retain=0)
    r.named["small"] = np.arange(10)
    assert r.stats().regions == 1
    r.named["big"] = np.ones(50_000)                        # 400 KB: a region of its own
    assert r.stats().regions == 2
    v = r.named["big"]
    before = r.stats()
    with pytest.raises(BufferError):
        del r.named["big"]                                   # a view is alive
    assert r.stats() == before and "big" in r.named
    del v
    del r.named["big"]
    assert r.stats().regions == 1 and "big" not in r.named   # unmapped (retain=0)
    del r.named["small"]
    assert r.stats().regions == 0 and len(r) == 0
    r.close()


def test_named_replace_moves_between_regions_and_never_loses_the_old_on_error():
    r = RegionPool(region_size="64KiB", retain=0)
    r.named["x"] = np.arange(4)
    first = r.regions[0]
    blk = r.alloc(50 * KIB)                                  # fills most of region 1
    r.named["x"] = np.zeros(3000)                             # 24 KB: moves to a new region
    assert len(r.regions) == 2 and r.named["x"].size == 3000
    assert "x" not in first.named                             # the old one is gone
    v = r.named["x"]
    with pytest.raises(BufferError):
        r.named["x"] = np.arange(2)                           # the old one has a view
    assert r.named["x"].size == 3000 and list(r.named) == ["x"]
    del v
    r.free(blk)
    r.check()
    r.close()


def test_named_bad_input_and_closed():
    r = RegionPool()
    with pytest.raises(TypeError):
        r.named[3] = np.arange(2)
    with pytest.raises(ValueError):
        r.named[""] = np.arange(2)
    with pytest.raises(KeyError):
        r.named["nope"]
    with pytest.raises(KeyError):
        del r.named["nope"]
    with pytest.raises(TypeError):
        r.named["o"] = np.array([object()])
    assert len(r.named) == 0 and r.stats().regions == 0
    r.close()
    with pytest.raises(mempool.PoolClosed):
        r.named


def test_a_named_array_moving_region_with_a_live_view_changes_nothing():
    # the new value adopted in another region, then the old one's delete refused: the
    # rollback could not take the adopted one back, which stayed there unreachable
    rp = RegionPool(region_size="1MiB")
    rp.named["x"] = np.arange(10.0)
    v = rp.named["x"]
    big = rp.zeros(200_000)                  # 1.6 MB: a region of its own
    used = [r.used for r in rp.regions]
    with pytest.raises(BufferError, match="cannot replace the array named 'x': 1 view"):
        rp.named["x"] = big                  # adopt: another region
    with pytest.raises(BufferError, match="cannot replace"):
        rp.named["x"] = np.ones(300_000)     # a copy too large for the old one's region
    assert [list(r.named) for r in rp.regions] == [["x"], []]
    assert [r.used for r in rp.regions] == used and rp.named["x"].tolist() == list(range(10))
    del v
    rp.named["x"] = big                      # now it moves
    assert [list(r.named) for r in rp.regions] == [[], ["x"]] and rp.named["x"].shape == (200_000,)
    del big
    del rp.named["x"]
    assert len(rp.named) == 0 and sum(r.used for r in rp.regions) == 0
    rp.check()
    rp.close()


@pytest.mark.parametrize("region_size, asked", [("64KiB", 100_000), ("100KiB", 70_000),
                                                ("96KiB", 90_000)])
def test_a_buddy_region_for_a_large_request_is_a_power_of_two(region_size, asked):
    # a Buddy's largest block in a region is the power of two below its size: a request
    # above it gets a power-of-two region of its own (100,000 bytes in 64 KiB regions and
    # 70,000 in 100 KiB ones were refused)
    r = RegionPool("buddy", region_size=region_size)
    b = r.alloc(asked)
    assert b.size >= asked and b.pool.capacity == 1 << (asked - 1).bit_length()
    memoryview(b)[:] = b"\x01" * b.size
    r.free(b)
    r.check()
    r.close()


def test_retained_empty_regions_give_way_under_max_size():
    # an empty region kept for reuse (retain) counted against max_size and refused a
    # request the limit allows (the error itself said 2 MiB were available)
    r = RegionPool("tlsf", region_size="1MiB", max_size="2MiB", retain=1)
    a = r.alloc(100)
    r.free(a)
    assert r.stats().empty_regions == 1
    st = r.stats()
    with pytest.raises(mempool.OutOfSpace, match="max_size"):
        r.alloc(3 << 20)                     # refused: the retained region stays
    assert r.stats() == st
    b = r.alloc(1536 << 10)
    assert b.size == 1536 << 10 and r.stats().bytes_mapped <= 2 << 20
    assert r.stats().peak_mapped <= 2 << 20 and r.stats().regions == 1
    r.free(b)
    r.close()


def test_a_request_refused_in_its_new_region_leaves_the_pool_usable():
    # the region mapped for it is taken out by identity (the list may have changed
    # meanwhile): a closed region left in the list made every later call PoolClosed
    r = RegionPool("slab", region_size="64KiB", max_size="128KiB", retain=1)
    r.free(r.alloc(16))
    st = r.stats()
    with pytest.raises(mempool.OutOfSpace):
        r.alloc(65537)                       # larger than a Slab item
    assert r.stats() == st and not any(g.closed for g in r.regions)
    assert r.alloc(16).size == 16
    r.check()
    r.close()


def test_sizes_and_alignments_are_any_integer_as_for_a_pool():
    class N:
        def __index__(self):
            return 100
    r = RegionPool()
    assert r.alloc(100, np.int64(64)).address % 64 == 0
    assert r.alloc(N()).size == 100 and r.alloc(np.uint16(7)).size == 7
    assert r.realloc(r.alloc(10), N()).size == 100
    p = mempool.Pool(4096)
    assert r.alloc(True).size == p.alloc(True).size == 1  # bool is an int, in both
    p.close()
    for bad in (1.5, "3", None):
        with pytest.raises(TypeError, match="size must be an integer"):
            r.alloc(bad)
    with pytest.raises(TypeError, match="align must be an integer"):
        r.alloc(8, 2.0)
    r.close()


def test_a_realloc_that_moves_is_limited_by_its_growth_only():
    # as in a Pool: the old block still counts until it is freed, so only the growth is
    # asked of the limit (a move into another region asked for the whole new size on
    # top: 60,000 in use and 50,000 more refused under a limit of 70,000)
    r = RegionPool(region_size="64KiB")
    r.set_limit(70_000)
    x, y = r.alloc(40_000), r.alloc(20_000)
    x2 = r.realloc(x, 50_000)                # into another region: 60,000 + 10,000
    assert x2.size == 50_000 and x2.pool is not y.pool
    assert sum(g.used for g in r.regions) == 70_000
    with pytest.raises(mempool.OutOfSpace, match="limit"):
        r.realloc(y, 20_001)
    r.close()


def test_retain_is_any_integer_and_a_region_pool_is_not_copied():
    import copy
    import pickle
    r = RegionPool(retain=np.int64(2))  # (refused: sizes took NumPy's integers, retain not)
    assert r.retain == 2 and type(r.retain) is int
    for bad in (-1, 1.0, True, "2"):
        with pytest.raises(ValueError, match="retain must be an integer >= 0"):
            RegionPool(retain=bad)
    # a copy shared the original's list of regions (its mappings); a pickle of one with
    # no regions made a second pool over nothing; with regions it failed deep inside
    for empty in (True, False):
        if not empty:
            b = r.alloc(100)
        for how in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="cannot pickle 'RegionPool' object"):
                how(r)
    b.free()
    r.close()


def test_threads_at_once_see_only_errors_of_their_own():
    # a RegionPool is Python: two threads allocating and freeing got PoolClosed (a
    # region swept under the other's attempt), ValueError from two sweeps removing one
    # region, TypeError from a limit set to None between its check and its use, and a
    # Block of a region another thread swept lost its range
    import collections
    import sys
    import threading
    seen: collections.Counter[str] = collections.Counter()
    rp = RegionPool("tlsf", region_size="64KiB", retain=0)
    held = rp.alloc(100)
    memoryview(held)[:] = b"h" * 100
    stop = threading.Event()

    def work():
        for _ in range(8000):
            try:
                b = rp.alloc(64)
                memoryview(b)[:1] = b"x"
                rp.free(b)
            except Exception as e:  # (any: each is a failure of the pool)
                seen[f"{type(e).__name__}: {e}"] += 1

    def toggle():
        while not stop.is_set():
            rp.set_limit(1 << 20)
            rp.set_limit(None)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        ts = [threading.Thread(target=work) for _ in range(2)] + [threading.Thread(target=toggle)]
        for t in ts:
            t.start()
        for t in ts[:2]:
            t.join()
        stop.set()
        ts[2].join()
    finally:
        sys.setswitchinterval(old)
    assert not seen, dict(seen)
    assert held.live and bytes(held) == b"h" * 100 and len(rp) == 1
    rp.check()
    held.free()
    rp.close()


def test_a_child_forked_while_another_thread_holds_the_lock_can_use_its_copy():
    # (the lock of a RegionPool: a child forked while a thread of the parent held it
    # would wait for it for ever; the child gets a fresh one)
    import os
    import signal
    import threading
    rp = RegionPool()
    held, go = threading.Event(), threading.Event()

    def hold():
        with rp._lock:
            held.set()
            go.wait()

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # (not pytest-timeout's handler)
        signal.alarm(10)  # a wait for ever ends the child with SIGALRM
        b = rp.alloc(100)
        memoryview(b)[:] = b"c" * 100
        rp.free(b)
        os._exit(0 if len(rp) == 0 else 3)
    go.set()
    t.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    rp.close()
