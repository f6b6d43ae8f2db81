"""A/B: one benchmark run alternately from two checkouts of spacenb, in one invocation.

Each round runs ``python -m bench.<name> --json`` once from checkout A and once from
checkout B (in that order, then B before A in the next round, so drift on a shared machine
falls on both), each with ``PYTHONPATH`` set to its checkout so that its own ``spacenb``
is imported. Every metric is reported as the median over rounds for A and for B, and as
B / A: a before/after figure measured side by side, as BENCHMARKS.md asks.

``python -m bench.ab --a ../spacenb-v1 --b . --bench message_path [--rounds 2] [-- ARGS...]``
(arguments after ``--`` go to the benchmark, e.g. ``-- --count 5000``). ``--a-path`` and
``--b-path`` add import directories after a checkout: the same checkout with and without
an optional dependency, say.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["compare", "main", "run_once"]


def run_once(
    checkout: Path, bench: str, extra: list[str], path: str | None = None
) -> dict[str, Any]:
    """One benchmark report (its JSON) from ``checkout`` (``path``: more import
    directories after it, e.g. one holding an optional dependency)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(checkout), *([path] if path else [])]))
    out = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", "--json", *extra],
        cwd=checkout,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
    ).stdout
    report: dict[str, Any] = json.loads(out[out.index("{") :])
    return report


def compare(runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric: the median spacenb value of A's and B's reports, and B / A; where the
    metric has a baseline, also the median ratio to it (each run's own) on either side,
    and every run's ratio, so the spread on a shared machine shows."""
    rows = []
    for metric in runs_a[0]["metrics"]:
        name = metric["name"]
        a = statistics.median(_value(r, name) for r in runs_a)
        b = statistics.median(_value(r, name) for r in runs_b)
        row = {"metric": name, "unit": metric["unit"], "a": a, "b": b, "b_over_a": b / a}
        ratios_a = [x for x in (_value(r, name, "ratio") for r in runs_a) if x is not None]
        ratios_b = [x for x in (_value(r, name, "ratio") for r in runs_b) if x is not None]
        if ratios_a and ratios_b:
            row.update(
                ratio_a=statistics.median(ratios_a),
                ratio_b=statistics.median(ratios_b),
                ratios_a=ratios_a,
                ratios_b=ratios_b,
            )
        rows.append(row)
    return rows


def _value(report: dict[str, Any], name: str, key: str = "value") -> Any:
    for metric in report["metrics"]:
        if metric["name"] == name:
            value = metric.get(key)
            return None if value is None else float(value)
    raise KeyError(f"{report['benchmark']} reported no metric {name!r}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A (before)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B (after)")
    parser.add_argument("--bench", required=True, help="benchmark module under bench/")
    parser.add_argument("--a-path", help="import directories added after checkout A")
    parser.add_argument("--b-path", help="import directories added after checkout B")
    parser.add_argument("--rounds", type=int, default=2, help="runs per checkout")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    for i in range(args.rounds):
        order = ("a", "b") if i % 2 == 0 else ("b", "a")
        for side in order:
            checkout, path = getattr(args, side).resolve(), getattr(args, f"{side}_path")
            runs[side].append(run_once(checkout, args.bench, extra, path))
    rows = compare(runs["a"], runs["b"])
    if args.json:
        print(json.dumps({"bench": args.bench, "rounds": args.rounds, "rows": rows}, indent=2))
    else:
        print(f"{args.bench}: A = {args.a}, B = {args.b}, median of {args.rounds} rounds each")
        for row in rows:
            line = (
                f"  {row['metric']} ({row['unit']}): A {row['a']:,.1f}  B {row['b']:,.1f}  "
                f"B/A {row['b_over_a']:.2f}"
            )
            if "ratio_a" in row:
                spread = "; ".join(
                    ", ".join(f"{x:.2f}" for x in row[f"ratios_{side}"]) for side in "ab"
                )
                line += (
                    f"  | to baseline: A {row['ratio_a']:.2f}  B {row['ratio_b']:.2f}"
                    f"  (runs: {spread})"
                )
            print(line)
        for side in "ab":
            for i, report in enumerate(runs[side]):
                for note in report.get("notes", []):
                    print(f"  {side.upper()} run {i + 1}: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
