"""The figure of ``lightning-reg demo --plot``: one bar group per variant, the monitor's norms per step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_reg.statistics import NEAR_ZERO_TOL
from lightning_reg.utilities.optional import require

if TYPE_CHECKING:
    from lightning_reg.cli.demo_variants import VariantResult
    from lightning_reg.options import GroupBy

__all__ = [
    "CURVES",
    "plot_results",
]

#: The monitor's metrics that the figure draws over the training steps.
CURVES = ("reg/l1_norm", "reg/l2_norm")


def plot_results(results: Sequence[VariantResult], path: str | Path, *, group_by: GroupBy) -> None:
    """Write a PNG figure: accuracies, gap, validation loss, zeros and dead units, the monitor's norms.

    Args:
        results: the trained variants, in the order of their bars.
        path: where to write the PNG.
        group_by: the groups of the dead-unit count, for the title.

    Raises:
        ~lightning_reg.MissingDependencyError: matplotlib is not installed.
    """
    figure_module = require("matplotlib.figure", "the demo", "demo")
    names = [result.variant.name for result in results]
    positions = list(range(len(results)))
    figure = figure_module.Figure(figsize=(16, 8.5), layout="constrained")
    (accuracy, gap, loss), (weights, *norms) = figure.subplots(2, 3)
    _grouped_bars(
        accuracy,
        {"train": [r.train_acc for r in results], "val": [r.val_acc for r in results]},
        "accuracy after training",
    )
    accuracy.set_ylim(0, 1.15)
    _grouped_bars(gap, {"gap": [r.gap for r in results]}, "train acc - val acc (gap): overfitting")
    _grouped_bars(loss, {"val loss": [r.val_loss for r in results]}, "validation loss")
    _grouped_bars(
        weights,
        {
            f"|w| < {NEAR_ZERO_TOL:g}": [r.near_zero for r in results],
            "w == 0": [r.sparsity for r in results],
            "dead units": [r.dead_units for r in results],
        },
        f"fraction of regularized weights; of units (zero {group_by})",
    )
    weights.set_ylim(0, 1.15)
    for ax in (accuracy, gap, loss, weights):
        ax.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    for ax, name in zip(norms, CURVES, strict=True):
        for result in results:
            curve = result.curves.get(name, ())
            ax.plot(
                [step for step, _ in curve],
                [value for _, value in curve],
                label=result.variant.name,
                linestyle="--" if result.variant.l1_mode == "proximal" else "-",
            )
        ax.set_title(f"{name}, logged by RegularizationMonitor")
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    figure.suptitle("Same MLP, seed, initial weights and data; only the regularization differs")
    figure.savefig(path, format="png", dpi=100)


def _grouped_bars(ax: Any, series: Mapping[str, Sequence[float]], title: str) -> None:
    """Draw one group of bars per variant, one bar per series, labelled with its value."""
    width = 0.8 / len(series)
    narrow = len(series) > 2  # vertical labels, or they overlap
    for index, (label, values) in enumerate(series.items()):
        offset = (index - (len(series) - 1) / 2) * width
        bars = ax.bar([x + offset for x in range(len(values))], values, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90 if narrow else 0, padding=2)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(loc="upper left", fontsize=8, ncols=len(series))
