"""Shared test settings: Hypothesis profiles (MEMPOOL_SLOW_TESTS=1 runs long), and the
`name` fixture of the shared-pool tests, `oos_made` (the OutOfSpace objects made)."""

import itertools
import os
import sys

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
