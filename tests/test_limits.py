"""pool.set_limit(size), pool.track() and pool.live() (mempool.tracking)."""

import pytest

import mempool
from mempool import OutOfSpace


def test_limit_exact_and_failed_call_changes_nothing():
    with mempool.Pool(1 << 16) as p:
        p.set_limit(1000)
        assert p.limit == 1000
        a = p.alloc(600)
        before = p.stats()
        with pytest.raises(OutOfSpace, match="limit is 1000 bytes"):
            p.alloc(401)
        assert p.stats() == before
        p.check()
        b = p.alloc(400)
        assert p.used == 1000
        with pytest.raises(OutOfSpace, match="limit is 1000"):
            p.alloc(1)
        p.set_limit(None)
        assert p.limit is None
        c = p.alloc(1)
        for x in (a, b, c):
            x.free()
        p.check()


def test_limit_holds_for_named_arrays_of_a_private_pool():
    # pool.named allocates through the pool's table as it is now: a limit set after
    # the directory was made applies to it (it took the unwrapped table once)
    with mempool.Pool("64KiB") as p:
        p.named["a"] = b"x" * 100
        p.set_limit(4096)
        with pytest.raises(OutOfSpace, match="limit is 4096"):
            p.named["big"] = b"y" * 10000
        assert "big" not in p.named and p.used <= 4096
        p.named["b"] = b"z" * 1000
        assert bytes(p.named["b"]) == b"z" * 1000
        p.check()


def test_limit_below_used_is_allowed_and_frees_work():
    with mempool.Pool(1 << 16) as p:
        a = p.alloc(500)
        p.set_limit(100)
        with pytest.raises(OutOfSpace, match="limit is 100 bytes"):
            p.alloc(1)
        a.free()
        p.alloc(100).free()
        p.check()


def test_limit_rounding_strategy_undone():
    with mempool.Pool(1 << 20, "buddy", min_block=4096) as p:
        p.set_limit(6000)
        a = p.alloc(100)  # takes a 4096-byte block
        before = p.stats()
        with pytest.raises(OutOfSpace, match="cannot allocate 100 bytes"):
            p.alloc(100)  # 8192 > 6000 once rounded (the message names the request)
        assert p.stats() == before
        p.check()
        a.free()


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1 << 17, ValueError), (1.5, TypeError),
                                      (True, TypeError), ("lots", ValueError)])
def test_bad_limits(bad, exc):
    with mempool.Pool(1 << 16) as p:
        with pytest.raises(exc, match="limit"):
            p.set_limit(bad)
        assert p.limit is None


def test_a_limit_is_any_integer():
    # (sizes took NumPy's integers; set_limit refused np.int64(100) with TypeError)
    import numpy as np

    class N:
        def __index__(self):
            return 300

    for pool in (mempool.Pool(1 << 16), mempool.RegionPool()):
        for good, want in ((np.int64(100), 100), (np.uint16(200), 200), (N(), 300)):
            pool.set_limit(good)
            assert pool.limit == want and type(pool.limit) is int
        with pytest.raises(ValueError, match="limit must be >= 0"):
            pool.set_limit(np.int64(-1))
        assert pool.limit == 300
        pool.close()


def test_shared_pool_limit(name):
    # (a journaled pool: under MP_DEBUG every commit replays the call on the shadow
    # copy and asserts the same answers; before, the shadow ignored the limit)
    s = mempool.SharedPool.create(name, 1 << 20)
    try:
        s.set_limit(8192)
        with pytest.raises(OutOfSpace, match="limit is 8192"):
            s.alloc(9000)
        b = s.alloc(8000)
        assert s.used >= 8000
        with pytest.raises(OutOfSpace, match="limit is 8192"):
            s.realloc(b, 9000)
        b.free()
        s.check()
        assert s.used == 0
    finally:
        s.close()
        s.unlink()


def test_file_pool_limit_survives_reopen_unchanged(tmp_path):
    path = tmp_path / "p.pool"
    p = mempool.Pool.create(path, 1 << 20, "bestfit")
    p.set_limit(4096)
    with pytest.raises(OutOfSpace, match="limit is 4096"):
        p.alloc(5000)
    a = p.alloc(4000)
    with pytest.raises(OutOfSpace, match="limit is 4096"):
        p.alloc(200)
    off = a.offset
    p.check()
    a.free()
    p.close()
    q = mempool.Pool.open(path)  # the limit is the process's, not the file's
    assert q.limit is None and q.used == 0
    assert q.alloc(5000).offset == off
    q.check()
    q.close()


def test_region_pool_limit():
    r = mempool.RegionPool(region_size="64KiB")
    r.set_limit(100_000)
    a = r.alloc(60_000)
    b = r.alloc(30_000)
    with pytest.raises(OutOfSpace, match="limit is 100000"):
        r.alloc(20_000)
    a.free(), b.free()
    r.close()


def test_track_live_names_the_line():
    with mempool.Pool(1 << 16) as p:
        with pytest.raises(ValueError, match="track"):
            p.live()
        p.track()
        a = p.alloc(50); line_a = test_track_live_names_the_line.__code__.co_firstlineno + 5  # noqa: E702
        arr = p.zeros(10)
        live = p.live()
        assert [(b.offset, b.size) for b in live] == [(a.offset, 50), (live[1].offset, 80)]
        assert live[0].where[-1] == (__file__, line_a, "test_track_live_names_the_line")
        assert live[1].where[-1][1] == line_a + 1
        assert live[0].age >= 0
        a.free()
        assert [b.size for b in p.live()] == [80]
        del arr
        assert p.live() == []
        p.track(False)
        assert not p.tracking
        with pytest.raises(TypeError):
            p.track(1)


def test_live_while_other_threads_allocate():
    # live() walked the tracking notes while another thread's alloc added to them:
    # RuntimeError (dictionary changed size) or KeyError in ~15 % of the calls
    import sys
    import threading
    pool = mempool.Pool("16MiB")
    pool.track()
    stop, errors, counts = threading.Event(), [], []

    def allocate():
        blocks = []
        while not stop.is_set():
            blocks.append(pool.alloc(64))
            if len(blocks) > 1000:
                for b in blocks[:500]:
                    b.free()
                del blocks[:500]
        for b in blocks:
            b.free()

    def look():
        for _ in range(100):
            try:
                counts.append(len(pool.live()))
            except Exception as e:
                errors.append(repr(e))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        ts = [threading.Thread(target=allocate) for _ in range(2)]
        ls = [threading.Thread(target=look) for _ in range(2)]
        for t in ts + ls:
            t.start()
        for t in ls:
            t.join()
        stop.set()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == [] and len(counts) == 200 and max(counts) > 0
    assert pool.live() == [] and len(pool) == 0
    pool.close()
