"""Benchmarks: spacenb measured against baselines run side by side, in the same invocation.

Each module is a command (``python -m bench.message_path [--smoke] [--json]``) that runs
spacenb and its baseline one after the other on loopback and reports the ratio, so a busy
shared machine slows both alike. ``common`` is the shared harness (timing, statistics,
memory, worker processes, the report); ``bare_relay`` is the baseline relay; ``peers`` puts
a spacenb client and a bare client behind one interface. BENCHMARKS.md holds the figures.
"""
