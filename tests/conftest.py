"""Shared test settings: Hypothesis profiles (MEMPOOL_SLOW_TESTS=1 runs long)."""

import os
import sys

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
