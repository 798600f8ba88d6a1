"""The project's latency targets, checked against an rxt-bench result.

rxt-bench reports ratios between the systems of one run; whether they are good enough is this
project's acceptance question, not the tool's, so the targets live here.

    .venv/bin/python benchmarks/check_targets.py benchmarks/results/latency.json

Prints every ratio with its target and PASS/FAIL; exits 1 if any target fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TARGETS = {
    "rxt_ttft_last_over_first": ("<=", 1.05),
    "baseline_ttft_last_over_rxt": (">=", 10.0),
    "rxt_decode_tps_over_baseline_turn1": (">=", 0.85),
    "rxt_decode_tps_over_cached_baseline_last": (">=", 1.0),
    "rxt_ttft_after_memory_update_over_without": ("<=", 1.05),
}


def check(ratios: dict[str, float | None]) -> list[tuple[str, float | None, str, bool | None]]:
    """(name, value, target, passed) per ratio; ``passed`` is None for ratios without a target."""
    rows = []
    for name, value in ratios.items():
        rule = TARGETS.get(name)
        passed = None
        if rule is not None and value is not None:
            passed = value <= rule[1] if rule[0] == "<=" else value >= rule[1]
        rows.append((name, value, f"{rule[0]} {rule[1]}" if rule else "reported", passed))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path, help="latency.json written by rxt-bench")
    result = json.loads(parser.parse_args().result.read_text())
    rows = check(result["ratios"])
    for name, value, target, passed in rows:
        shown = "n/a" if value is None else f"{value:.3f}"
        print(f"  {name:<45} {shown:>10}  {target:<10} {({True: 'PASS', False: 'FAIL', None: ''})[passed]}")
    return 1 if any(passed is False for *_, passed in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
