"""Run every benchmark, one after the other, and print one Markdown table of all figures.

Each benchmark runs as its own command (``python -m bench.<name> --json``), so a failure
in one does not stop the others (it shows as a row saying so). ``--out-dir`` keeps each
JSON report.

``python -m bench.run_all [--smoke] [--only message_path fanout ...] [--out-dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import Metric, machine_info

BENCHMARKS = (
    "message_path",
    "latency_sweep",
    "signup",
    "fanout",
    "history",
    "files",
    "scale",
    "rotation",
    "hostile",
    "relays",
)


def run_one(name: str, smoke: bool, out_dir: Path | None) -> dict[str, Any]:
    """The JSON report of ``python -m bench.<name>``; raises ``RuntimeError`` if it failed."""
    command = [sys.executable, "-m", f"bench.{name}", "--json"] + (["--smoke"] if smoke else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    report: dict[str, Any] = json.loads(done.stdout)
    if out_dir is not None:
        (out_dir / f"{name}.json").write_text(done.stdout)
    return report


def _cell(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def markdown_rows(report: dict[str, Any]) -> list[str]:
    """One table row per metric of a JSON report."""
    rows = []
    for m in report["metrics"]:
        metric = Metric(**{field: m[field] for field in Metric.__dataclass_fields__})
        ratio = metric.ratio
        met = {True: "met", False: "**missed**", None: ""}[metric.met]
        rows.append(
            f"| {report['benchmark']} | {m['name']} | {_cell(m['value'], m['unit'])} | "
            f"{_cell(m['baseline'], m['unit'])} | {'-' if ratio is None else f'{ratio:.2f}'} | "
            f"{metric.target_text() or '-'} | {met} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks they run")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run just these")
    parser.add_argument("--out-dir", type=Path, help="keep each JSON report here")
    args = parser.parse_args(argv)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    print(
        f"{machine['nproc']} cores ({machine['cpu']}), Python {machine['python']}, "
        f"{machine['date']}\n"
    )
    print("| benchmark | metric | spacenb | baseline | ratio | target | |")
    print("|---|---|---|---|---|---|---|")
    failures = 0
    for name in args.only or BENCHMARKS:
        try:
            rows = markdown_rows(run_one(name, args.smoke, args.out_dir))
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            failures += 1
            rows = [f"| {name} | failed: {exc} | | | | | |"]
        print("\n".join(rows), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
