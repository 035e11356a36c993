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


def test_gpu_benchmark_runs_on_cpu_and_counts_operators() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    rows = [line.split() for line in lines if line.startswith(("l1 ", "decoupled", "proximal"))]
    assert len(rows) == 16  # 4 kinds of work x 2 forms x 2 tensor counts
    assert any(line.startswith(("plain", "seed", "package")) for line in lines)


def test_l1_term_benchmark_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "l1_term.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = [line.split()[0] for line in done.stdout.splitlines()[2:]]
    assert names == ["floor", "tutorial", "package"]
