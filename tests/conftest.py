"""Shared test settings: Hypothesis profiles (MEMPOOL_SLOW_TESTS=1 runs long), the
`name` fixture of the shared-pool tests, `oos_made` (the OutOfSpace objects made), and
MEMPOOL_SHARD=k/n (run the k-th of n shards: .ci/run's ASan run, two processes)."""

import itertools
import os
import sys
import zlib

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py, machines.py, shared_workers.py

SLOW = os.environ.get("MEMPOOL_SLOW_TESTS") == "1"

settings.register_profile(
    "ci", max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "slow", max_examples=2000, stateful_step_count=120, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("slow" if SLOW else "ci")


_count = itertools.count()


@pytest.fixture
def name():
    """A fresh shared-memory segment name; the segment is removed after the test."""
    n = f"mptest-{os.getpid()}-{next(_count)}"
    yield n
    try:
        os.unlink(f"/dev/shm/{n}")
    except FileNotFoundError:
        pass


@pytest.fixture
def oos_made(monkeypatch):
    """The arguments of every OutOfSpace made during the test, in order (a list): to
    show that a "does not fit" answered with None made no exception object at all."""
    import mempool

    made = []
    init = mempool.OutOfSpace.__init__

    def counting_init(self, *args):
        made.append(args)
        init(self, *args)

    monkeypatch.setattr(mempool.OutOfSpace, "__init__", counting_init)
    return made


def pytest_collection_modifyitems(config, items):
    """MEMPOOL_SHARD=k/n keeps the k-th of n shards of the collected tests: every n-th
    test from the k-th, and an xdist_group's tests all in the shard its name picks
    (n processes, each with its own shard, run the suite once between them)."""
    shard = os.environ.get("MEMPOOL_SHARD")
    if not shard:
        return
    try:
        k, n = (int(x) for x in shard.split("/"))
    except ValueError:
        k = n = 0
    if not 0 <= k < n:
        raise pytest.UsageError(f"MEMPOOL_SHARD={shard}: expected k/n with 0 <= k < n")
    keep, drop = [], []
    for i, item in enumerate(items):
        g = item.get_closest_marker("xdist_group")
        at = zlib.crc32(str(g.args[0] if g.args else g.kwargs["name"]).encode()) if g else i
        (keep if at % n == k else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)
