"""Every benchmark runs in ``--smoke`` mode and reports sane numbers (no speed assertions).

Each one runs as its own command (``python -m bench.<name> --smoke --json``), exactly as
BENCHMARKS.md says to run it, so the benchmarks cannot rot unnoticed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.run_all import BENCHMARKS

ROOT = Path(__file__).resolve().parent.parent


def run_smoke(name: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke", "--json", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", BENCHMARKS)
def test_smoke(name: str) -> None:
    if name == "relays":
        from tests.pgserver import ENV_REQUIRED, unavailable_reason

        reason = unavailable_reason()
        if reason and not os.environ.get(ENV_REQUIRED):
            pytest.skip(reason)
    report = run_smoke(name)
    assert report["benchmark"] == name
    assert report["machine"]["nproc"] >= 1
    assert report["metrics"], "no figures reported"
    for metric in report["metrics"]:
        for field in ("name", "unit", "value", "baseline", "ratio", "target_text", "met"):
            assert field in metric, f"{metric['name']}: no {field!r}"
        assert math.isfinite(metric["value"]) and metric["value"] > 0, metric
        if metric["baseline"] is not None:
            assert math.isfinite(metric["baseline"]) and metric["baseline"] > 0, metric
            assert metric["ratio"] == pytest.approx(metric["value"] / metric["baseline"])
    assert any(m["baseline"] is not None for m in report["metrics"]), "no baseline"


def test_run_all_table_rows() -> None:
    from bench.run_all import markdown_rows

    report = run_smoke("rotation")
    rows = markdown_rows(report)
    assert len(rows) == len(report["metrics"])
    assert all(row.startswith("| rotation | ") and row.endswith(" |") for row in rows)


def test_scale_breakdown_reports_each_stage_of_a_join() -> None:
    """``bench.scale --breakdown --members-idle``: the stages of the newcomers' joins (the
    keeper's part from the relay's process) and the separate members-idle figure."""
    report = run_smoke("scale", "--breakdown", "--members-idle")
    names = [m["name"] for m in report["metrics"]]
    assert any("once the members are idle" in n for n in names), names
    notes = "\n".join(report["notes"])
    for stage in ("state log verification (", "join request round trip", "keeper admit ("):
        assert notes.count(stage) == 2, notes  # members busy, then members idle
