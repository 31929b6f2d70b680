"""mempool.dask on a real LocalCluster (worker processes, spawn and fork): one host
pool for both workers, handles between them, bytes to a worker without the plugin,
ranges freed when keys are released, a killed worker reclaimed, no segment left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from distributed.protocol import deserialize, serialize, serialize_bytelist  # noqa: E402

import mempool  # noqa: E402
import mempool.dask as md  # noqa: E402
from mempool import SharedPool  # noqa: E402
from mempool.shared import SharedArray, _block_of  # noqa: E402

SHM = Path("/dev/shm")

# every test of this module runs in one process (pytest-xdist's loadgroup; .ci/run's
# shards keep a group together too): a plugin's setup and cleanup_leaked sweep every
# members file of the host, and would clean what a test running beside it writes
pytestmark = pytest.mark.xdist_group("dask")


def _wait_for(pred, timeout=15.0, what="condition"):
    end = time.monotonic() + timeout
    while True:
        try:
            v = pred()
        except OSError:  # a worker that just died is still listed: ask again
            v = None
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# the task functions: module level in an importable module (see dask_tasks)
from dask_tasks import (  # noqa: E402
    add_plugin,
    describe,
    hold_leak,
    make,
    pool_name,
    pool_used,
    remove_plugin,
)


# ---- the cluster ---------------------------------------------------------------------
@pytest.fixture(scope="module", params=["spawn", "fork"])
def cluster(request):
    """A LocalCluster of 2 worker processes with the plugin; after it closes, neither
    the segment nor its members file is left in /dev/shm."""
    with dask.config.set({"distributed.worker.multiprocessing-method": request.param,
                          "distributed.scheduler.work-stealing": False}):
        cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=":0", worker_dashboard_address=":0")
        client = Client(cl)
        client.register_plugin(md.SharedPoolPlugin("32MiB", reclaim_interval=0.2))
        names = set(client.run(pool_name).values())
        assert len(names) == 1  # one pool for the host
        (name,) = names
        assert (SHM / name).exists() and (SHM / f"{name}.members").exists()
        try:
            yield client, name
        finally:
            client.close()
            cl.close()
    assert not (SHM / name).exists()
    assert not (SHM / f"{name}.members").exists()


def _workers(client):
    # the workers the scheduler can reach now: client.scheduler_info() is a copy the
    # client refreshes every few seconds, so just after a restart it can name a dead one
    return sorted(client.run(os.getpid))


def _all_used(client):
    return client.run(pool_used)


def test_same_host_transfer_is_a_view_of_the_pool(cluster):
    client, _ = cluster
    a, b = _workers(client)
    n = 100_000
    f = client.submit(make, n, 3.0, workers=[a], pure=False)
    on_b = client.submit(describe, f, workers=[b], pure=False).result()
    on_a = client.submit(describe, f, workers=[a], pure=False).result()
    expect = float(np.arange(3.0, 3.0 + n).sum())
    assert on_a[0] == on_b[0] == "SharedArray"
    assert on_a[2] and on_b[2]  # both in their worker's host pool
    assert on_a[1] == on_b[1]  # the same block: only a handle travelled
    assert on_a[3] == on_b[3] == expect
    assert on_a[4] != on_b[4]  # two processes
    # the client is not a member: it gets the bytes, as a plain ndarray
    got = f.result()
    assert type(got) is np.ndarray
    np.testing.assert_array_equal(got, np.arange(3.0, 3.0 + n))
    del f
    _wait_for(lambda: set(_all_used(client).values()) == {0}, what="used back to 0")


def test_release_frees_ranges_on_every_worker(cluster):
    client, name = cluster
    a, b = _workers(client)
    fs = [client.submit(make, 5000 + i, float(i), workers=[a], pure=False) for i in range(6)]
    rs = [client.submit(describe, f, workers=[b], pure=False) for f in fs]
    for i, r in enumerate(rs):
        kind, _, in_pool, total, _ = r.result()
        assert (kind, in_pool, total) == ("SharedArray", True,
                                          float(np.arange(float(i), i + 5000.0 + i).sum()))
    used = _all_used(client)
    assert set(used.values()) == {sum((5000 + i) * 8 for i in range(6))}  # one pool
    del fs, rs, r
    _wait_for(lambda: set(_all_used(client).values()) == {0}, what="used back to 0")
    pool = SharedPool.attach(name)
    try:
        pool.check()
        assert pool.shared_stats().leases == 0
        assert len(pool) == 0
    finally:
        pool.close()


def test_worker_without_the_plugin_receives_bytes(cluster):
    client, _ = cluster
    a, b = _workers(client)
    client.run(remove_plugin, workers=[b])  # b stands in for a worker of another host
    try:
        with pytest.raises(RuntimeError, match="no host pool"):
            client.submit(pool_used, workers=[b], pure=False).result()
        n = 50_000
        f = client.submit(make, n, 1.0, workers=[a], pure=False)
        kind, where, in_pool, total, _ = client.submit(describe, f, workers=[b],
                                                       pure=False).result()
        assert (kind, where, in_pool) == ("ndarray", None, False)
        assert total == float(np.arange(1.0, 1.0 + n).sum())
        # and a plain array from b arrives at a as bytes too
        g = client.submit(np.arange, 10.0, workers=[b], pure=False)
        assert client.submit(describe, g, workers=[a], pure=False).result()[:4] == \
            ("ndarray", None, False, 45.0)
        del f, g
    finally:
        client.run(add_plugin, md.SharedPoolPlugin("32MiB", reclaim_interval=0.2),
                   workers=[b])
    # b is a member again: handles once more
    f = client.submit(make, 1000, workers=[a], pure=False)
    assert client.submit(describe, f, workers=[b], pure=False).result()[:3] == \
        ("SharedArray", client.submit(describe, f, workers=[a], pure=False).result()[1],
         True)
    del f
    _wait_for(lambda: set(_all_used(client).values()) == {0}, what="used back to 0")


def test_killed_worker_is_reclaimed_and_the_cluster_carries_on(cluster):
    client, name = cluster
    a, b = _workers(client)
    pids = client.run(os.getpid)
    used = client.run(hold_leak, 200_000, workers=[a])[a]
    assert used == 1_600_000
    os.kill(pids[a], signal.SIGKILL)
    # the nanny starts a new worker; b's check reclaims what the dead one held
    _wait_for(lambda: len(now := client.run(os.getpid)) == 2 and pids[a] not in now.values(),
              30, "a new worker")
    _wait_for(lambda: set(_all_used(client).values()) == {0}, 15, "the dead worker reclaimed")
    members = (SHM / f"{name}.members").read_text().split()
    assert str(pids[a]) not in members
    assert sorted(int(p) for p in members[3:]) == sorted(client.run(os.getpid).values())
    a, b = _workers(client)
    f = client.submit(make, 1000, 2.0, workers=[a], pure=False)
    kind, _, in_pool, total, _ = client.submit(describe, f, workers=[b], pure=False).result()
    assert (kind, in_pool, total) == ("SharedArray", True, float(np.arange(2.0, 1002.0).sum()))
    del f
    _wait_for(lambda: set(_all_used(client).values()) == {0}, what="used back to 0")


# ---- serialization without a cluster ----------------------------------------------------
@pytest.fixture
def pool(name):
    p = SharedPool.create(name, "1MiB")
    yield p
    p.close()


def test_handle_only_to_a_recipient_with_the_same_segment(pool):
    a = pool.empty(1000)
    a[:] = np.arange(1000.0)
    token = md._token(pool)
    header, frames = serialize(a, context={"recipient": {md.HANDSHAKE_KEY: token}})
    assert header["sub-header"] == {"mempool-handle": True}
    assert sum(len(memoryview(f).cast("B")) for f in frames) < 400  # a handle, not 8000 B
    b = deserialize(header, frames)
    assert type(b) is SharedArray and _block_of(b).offset == _block_of(a).offset
    np.testing.assert_array_equal(b, np.arange(1000.0))
    for context in (None, {}, {"recipient": {}},
                    {"recipient": {md.HANDSHAKE_KEY: token + "0"}},
                    {"recipient": {md.HANDSHAKE_KEY: None}}, {"recipient": "x"}):
        header, frames = serialize(a, context=context)
        assert "mempool-handle" not in header["sub-header"]
        c = deserialize(header, frames)
        assert type(c) is np.ndarray
        np.testing.assert_array_equal(c, a)
    # spilling to disk (no recipient) writes the bytes
    frames = serialize_bytelist(a)
    assert sum(len(memoryview(f).cast("B")) for f in frames) > 8000
    del b
    pool.check()
    assert pool.shared_stats().leases == 0


def test_views_travel_as_views(pool):
    a = pool.empty((40, 50))
    a[:] = np.arange(2000.0).reshape(40, 50)
    v = a[3:30:2, ::3].T
    header, frames = serialize(v, context={"recipient": {md.HANDSHAKE_KEY: md._token(pool)}})
    w = deserialize(header, frames)
    assert w.strides == v.strides and w.__array_interface__["data"][0] == \
        v.__array_interface__["data"][0]
    header, frames = serialize(v, context=None)
    np.testing.assert_array_equal(deserialize(header, frames), v)


def test_a_full_lease_table_sends_the_bytes(name):
    # more pool arrays in flight than max_leases: the serializer raised OutOfSpace and
    # Dask's transfer hung (the receiver's task stayed in processing); now the bytes go
    pool = SharedPool.create(name, "1MiB", max_leases=2)
    token = md._token(pool)
    ctx = {"recipient": {md.HANDSHAKE_KEY: token}}
    arrays = [pool.zeros(4) for k in range(3)]
    for k, a in enumerate(arrays):
        a[:] = k
    sent = [serialize(a, context=ctx) for a in arrays]
    assert [h["sub-header"].get("mempool-handle", False) for h, _ in sent] == [True, True, False]
    got = [deserialize(h, f) for h, f in sent]
    assert [type(g) for g in got] == [SharedArray, SharedArray, np.ndarray]
    for k, g in enumerate(got):
        np.testing.assert_array_equal(g, k)
    del arrays, sent, got, a, g
    assert pool.shared_stats().leases == 0
    q = SharedPool.attach(name)
    pool.close()  # (gives back the process's cache of small ranges)
    assert q.used == 0
    q.close()
    q.unlink()


def test_a_read_only_view_arrives_read_only(pool):
    # the handle carried no flag: the receiver could write what the sender had marked
    # read-only (the same memory); Dask's bytes path kept it
    import pickle
    a = pool.zeros(4)
    ro = a.view()
    ro.flags.writeable = False
    for b in (pickle.loads(pickle.dumps(ro)),
              deserialize(*serialize(ro, context={"recipient": {md.HANDSHAKE_KEY:
                                                                md._token(pool)}}))):
        assert type(b) is SharedArray and not b.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            b[0] = 5
    assert pickle.loads(pickle.dumps(a)).flags.writeable
    assert a[0] == 0


def test_workers_leaving_at_once_unlink_the_segment(name):
    # before: a leaving worker decided "not last" while the other still mapped the
    # segment and closed after; the other, deciding in between, saw it mapped too:
    # nobody unlinked (seen in CI under ASan).  Here one close waits until the other
    # worker has left, the interleaving that lost the segment.
    import multiprocessing as mp

    from dask_tasks import join_then_leave
    # spawn, not fork: the module's fork-method cluster is still up here (its IO loop
    # thread runs in this process), and a child forked while that thread is inside ASan's
    # allocator (GCC 12's libasan has no fork handler for it) hangs at its first malloc
    ctx = mp.get_context("spawn")
    joined, in_close, left = ctx.Barrier(2), ctx.Event(), ctx.Event()
    slow, quick = (ctx.Process(target=join_then_leave, args=(name, joined, in_close, left, s))
                   for s in (True, False))
    try:
        for p in (slow, quick):
            p.start()
        for p in (slow, quick):
            p.join(60)
        assert (slow.exitcode, quick.exitcode) == (0, 0)
        assert not (SHM / name).exists() and not (SHM / f"{name}.members").exists()
    finally:
        (SHM / f"{name}.members").unlink(missing_ok=True)  # (the fixture takes the rest)


def test_cleanup_removes_a_dead_hosts_pool(name):
    SharedPool.create(name, "64KiB").close()  # made, then its only user closed it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    members = SHM / f"{name}.members"
    members.write_text(f"{md.MEMBERS_MAGIC} owned\n{int(dead.stdout)}\n")
    other = SHM / f"{name}-foreign.members"
    other.write_text("not ours\n")
    try:
        assert name in md.cleanup_leaked()
        assert not (SHM / name).exists() and not members.exists()
        assert other.exists()  # not a members file of ours: left alone
    finally:
        other.unlink()


def test_cleanup_keeps_a_pool_in_use(name):
    pool = SharedPool.create(name, "64KiB")
    members = SHM / f"{name}.members"
    members.write_text(f"{md.MEMBERS_MAGIC} owned\n{os.getpid()}\n")
    try:
        assert name not in md.cleanup_leaked()
        assert (SHM / name).exists() and members.exists()
    finally:
        pool.close()
        members.unlink()


def test_cluster_close_leaves_no_segment_and_a_dead_cluster_is_cleaned():
    """Two clusters in a row: the first unlinks its pool at close; a pool left by a
    cluster whose workers were all killed is unlinked by the next one."""
    cfg = {"distributed.worker.multiprocessing-method": "spawn"}
    with dask.config.set(cfg), LocalCluster(n_workers=2, threads_per_worker=1,
                                            dashboard_address=":0") as cl, Client(cl) as c:
        c.register_plugin(md.SharedPoolPlugin("8MiB", name=f"mptest-dask-{os.getpid()}"))
        name = next(iter(c.run(pool_name).values()))
        f = c.submit(make, 1000, workers=[_workers(c)[0]], pure=False)
        assert c.submit(describe, f, workers=[_workers(c)[1]], pure=False).result()[2]
        pids = list(c.run(os.getpid).values())
    assert not (SHM / name).exists() and not (SHM / f"{name}.members").exists()
    # a host whose workers all died: the segment and members file stay behind ...
    SharedPool.create(name, "64KiB").close()
    (SHM / f"{name}.members").write_text(f"{md.MEMBERS_MAGIC} owned\n"
                                         + "".join(f"{p}\n" for p in pids))
    stale = SharedPool.attach(name)
    stale_id = stale.segment_id
    stale.close()
    # ... until the next cluster on this host starts the plugin
    with dask.config.set(cfg), LocalCluster(n_workers=1, threads_per_worker=1,
                                            dashboard_address=":0") as cl, Client(cl) as c:
        c.register_plugin(md.SharedPoolPlugin("8MiB", name=name))
        new = SharedPool.attach(name)
        assert new.segment_id != stale_id and new.capacity == 8 << 20
        new.close()
    assert not (SHM / name).exists()


# ---- bad input -------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"capacity": 0}, ValueError, "capacity"),
    ({"capacity": -5}, ValueError, "capacity"),
    ({"capacity": "lots"}, ValueError, "capacity"),
    ({"capacity": 1.5}, TypeError, "capacity"),
    ({"capacity": "1MiB", "name": "a/b"}, ValueError, "name"),
    ({"capacity": "1MiB", "name": ""}, ValueError, "name"),
    ({"capacity": "1MiB", "name": 7}, TypeError, "name"),
    ({"capacity": "1MiB", "reclaim_interval": 0}, ValueError, "reclaim_interval"),
    ({"capacity": "1MiB", "reclaim_interval": True}, ValueError, "reclaim_interval"),
])
def test_bad_plugin_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        md.SharedPoolPlugin(**kwargs)


def test_outside_a_worker():
    for call in (md.host_pool, lambda: md.empty(3), lambda: md.zeros(3),
                 lambda: md.array([1, 2])):
        with pytest.raises(RuntimeError, match="no host pool in this process"):
            call()


def test_importing_mempool_does_not_import_distributed():
    code = "import sys, mempool; assert 'distributed' not in sys.modules; print('ok')"
    src = os.path.dirname(os.path.dirname(mempool.__file__))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": src})
    assert r.stdout.strip() == "ok", r.stderr


