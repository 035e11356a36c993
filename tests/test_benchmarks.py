"""The benchmarks still run (a smoke run on a small model; timings are printed, never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run_benchmark(script: str, *arguments: str) -> list[str]:
    """Run ``benchmarks/<script>`` in a fresh interpreter; the lines it printed."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_step_overhead_runs_and_prints_every_variant() -> None:
    lines = run_benchmark("step_overhead.py", "--quick")
    assert any(line.startswith("floor (grads += lam * W") for line in lines)
    variants = ("plain", "seed recipe", "package: l1 + l2", "package: proximal l1 + l2", "decoupled l2")
    for variant in (*variants, "plain (Adam)", "package: proximal l1 + l2 (Adam)"):
        assert any(variant in line for line in lines), variant
    assert any(line.startswith("monitor (RegularizationMonitor") for line in lines)


def test_gpu_benchmark_runs_on_cpu_and_counts_operators() -> None:
    lines = run_benchmark("gpu.py", "--device", "cpu", "--quick")
    rows = [line.split() for line in lines if line.startswith(("l1 ", "decoupled", "proximal"))]
    assert len(rows) == 16  # 4 kinds of work x 2 forms x 2 tensor counts
    assert any(line.startswith(("plain", "seed", "package")) for line in lines)


def test_l1_term_benchmark_runs() -> None:
    lines = run_benchmark("l1_term.py", "--quick")
    assert [line.split()[0] for line in lines[2:]] == ["floor", "tutorial", "package"]


def test_structured_benchmark_runs_and_prints_each_strength() -> None:
    lines = run_benchmark("structured.py", "--quick")
    rows = [line.split() for line in lines if line.strip().startswith(("0e+00", "1e-02"))]
    assert [row[0] for row in rows] == ["0e+00", "1e-02"]
    assert all(row[1] == row[2] for row in rows)  # the shrunk copy (not yet fine-tuned) has the same accuracy


def test_sweep_cost_benchmark_runs_every_variant_on_every_task() -> None:
    lines = run_benchmark("sweep_cost.py", "--quick")
    tasks = [line.split(",")[0] for line in lines if ", on val_" in line]
    assert tasks == ["l2-mlp", "l1-mlp", "group-resnet"]
    variants = ("grid", "pruned grid", "warm path", "warm path, weights only", "TPE")
    rows = [line for line in lines if line.startswith(variants)]
    assert len(rows) == 5 * len(tasks)
    for grid in rows[::5]:
        assert grid.split()[:3:2] == ["grid", "1.00"]  # the grid is its own baseline
    assert any(line.startswith("targets: warm path <= 0.45") for line in lines)


def test_group_step_benchmark_runs_and_prints_each_mode() -> None:
    lines = run_benchmark("group_step.py", "--quick")
    rows = [line.split() for line in lines if line.startswith(("plain ", "l1 ", "rows ", "channels "))]
    assert [row[0] for row in rows] == ["plain", "l1", "rows", "channels"]
    assert rows[0][2] == "1.00"  # plain Adam is its own baseline


def test_peers_benchmark_runs_each_method() -> None:
    lines = run_benchmark("peers.py", "--quick")
    for method in ("lightning-reg", "Torch-Pruning", "OTO", "PAT"):
        rows = [line for line in lines if line.startswith(method)]
        assert rows, method
        assert not any("failed:" in line for line in rows), rows
    assert any(line.startswith("over the seeds") for line in lines)
