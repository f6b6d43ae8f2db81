"""Shared test configuration. Fixtures used by one test package live beside it."""

from __future__ import annotations

import os

from hypothesis import settings

# Shared machines have noisy timings: no per-example deadline. In CI the examples are
# derived from the test names, so a run is reproducible from the commit alone.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, database=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
