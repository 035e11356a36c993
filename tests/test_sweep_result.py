"""``SweepResult`` with states: ``best`` and ``pareto`` read complete rows only; ``plot`` marks the front.

The Pareto front is checked against a skyline computed here another way (sort by the monitored value,
keep each row sparser than every better one), on random tables with ties.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from lightning_reg import SweepResult


def row(l1: float, value: float, sparsity: float, state: str = "complete") -> dict[str, Any]:
    return {"l1": l1, "val_loss": value, "sparsity": sparsity, "seconds": 1.0, "state": state, "epochs": 3}


def skyline(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """The rows no other row matches or beats on both, and beats on one: sorted by value, a row is
    kept when it is sparser than every row with a better value, and as sparse as the best of its ties."""
    sign = 1.0 if mode == "min" else -1.0
    ordered = sorted(rows, key=lambda r: (sign * r["val_loss"], -r["sparsity"]))
    kept, sparsest_better = [], -math.inf
    for value in sorted({sign * r["val_loss"] for r in ordered}):
        ties = [r for r in ordered if sign * r["val_loss"] == value]
        top = max(r["sparsity"] for r in ties)
        if top > sparsest_better:
            kept += [r for r in ties if r["sparsity"] == top]
        sparsest_better = max(sparsest_better, top)
    return [r for r in rows if any(r is k for k in kept)]


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("seed", range(5))
def test_pareto_is_the_skyline_of_the_complete_rows(mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    states = rng.choice(["complete", "complete", "pruned", "failed"], size=30)
    values = rng.integers(0, 8, size=30)
    # a trade-off with ties: a better value tends to come with fewer zeros
    worse = values if mode == "min" else 7 - values
    sparsities = np.clip(worse + rng.integers(-2, 3, size=30), 0, 7) / 7
    table = [
        row(float(i), float(value), float(sparsity), str(state))
        for i, (value, sparsity, state) in enumerate(zip(values, sparsities, states, strict=True))
    ]
    table[0]["val_loss"] = math.nan  # a diverged row is never on the front
    result = SweepResult(table, ("l1",), "val_loss", mode)  # type: ignore[arg-type]
    complete = [r for r in table if r["state"] == "complete" and not math.isnan(r["val_loss"])]

    assert result.pareto == skyline(complete, mode)
    assert len(result.pareto) >= 3


def test_best_and_pareto_ignore_pruned_and_failed_rows() -> None:
    table = [
        row(1e-4, 0.30, 0.1),
        row(1e-3, 0.10, 0.9, "pruned"),  # better on both, but unfinished
        row(1e-2, math.nan, math.nan, "failed"),
        row(1e-1, 0.50, 0.6),
        row(1.0, 0.60, 0.5),  # beaten by 1e-1 on both
    ]
    result = SweepResult(table, ("l1",), "val_loss", "min")
    assert result.best == {"l1": 1e-4}
    assert [r["l1"] for r in result.pareto] == [1e-4, 1e-1]
    with pytest.raises(ValueError, match="no row of the sweep has a val_loss"):
        _ = SweepResult(table[1:3], ("l1",), "val_loss", "min").best


def test_plot_rings_the_front_and_marks_pruned_points() -> None:
    pytest.importorskip("matplotlib")
    table = [
        row(1e-4, 0.30, 0.1),
        row(1e-3, 0.40, 0.0),  # beaten by 1e-4
        row(1e-2, 0.20, 0.9, "pruned"),
        row(1e-1, 0.50, 0.6),
        row(1.0, math.nan, math.nan, "failed"),
    ]
    (left, right) = SweepResult(table, ("l1",), "val_loss", "min").plot().axes
    lines = {str(line.get_marker()) + str(line.get_linestyle()): line for line in left.get_lines()}
    assert list(lines["o-"].get_xdata()) == [1e-4, 1e-3, 1e-1]  # the complete rows
    assert (list(lines["xNone"].get_xdata()), list(lines["xNone"].get_ydata())) == ([1e-2], [0.20])
    ringed = lines["oNone"]
    assert (list(ringed.get_xdata()), list(ringed.get_ydata())) == ([1e-4, 1e-1], [0.30, 0.50])
    assert ringed.get_markerfacecolor() == "none"
    assert [list(line.get_xdata()) for line in right.get_lines()] == [[1e-4, 1e-3, 1e-1]]
    assert "ringed: the Pareto front" in left.get_title()
    assert "x: pruned" in left.get_title()
