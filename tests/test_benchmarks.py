"""The benchmarks still run (a smoke run on a small model; timings are printed, never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def test_step_overhead_runs_and_prints_every_variant() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "step_overhead.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("floor (grads += lam * W") for line in lines)
    for variant in ("plain", "seed recipe", "package: l1 + l2", "package: proximal l1 + l2", "decoupled l2"):
        assert any(variant in line for line in lines), variant
