"""``SweepResult``: the rows a :func:`~lightning_reg.sweeps.sweep` measured, the best one and its plot.

Plain data: this module imports neither Lightning nor Optuna, and matplotlib only when a plot is drawn
(it comes with the ``demo`` extra).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lightning_reg.checks import InvalidArgumentError
from lightning_reg.optional import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Mode = Literal["min", "max"]

MODES: tuple[Mode, ...] = ("min", "max")
#: The measured columns of every row, after the strengths and the monitored value.
MEASUREMENTS = ("sparsity", "seconds")


@dataclass(frozen=True)
class SweepResult:
    """What a :func:`~lightning_reg.sweeps.sweep` measured: one row per trained model.

    Attributes:
        table: one dict per point, in the order the points were trained (for a study, by trial number):
            each swept strength by name, the monitored value under the ``monitor``'s name, ``sparsity``
            (fraction of the regularized weights exactly ``0`` after training) and ``seconds`` (the
            wall time of ``Trainer.fit``).
        names: the swept strengths, a subset of ``("l1", "l2", "group_l1")`` in that order.
        monitor: the name of the monitored metric.
        mode: ``"min"`` or ``"max"``: which monitored value is best.

    Example::

        >>> result = SweepResult(
        ...     table=[
        ...         {"l1": 1e-4, "val_loss": 0.5, "sparsity": 0.0, "seconds": 1.0},
        ...         {"l1": 1e-3, "val_loss": 0.4, "sparsity": 0.2, "seconds": 1.0},
        ...     ],
        ...     names=("l1",),
        ...     monitor="val_loss",
        ...     mode="min",
        ... )
        >>> result.best
        {'l1': 0.001}
    """

    table: list[dict[str, float]]
    names: tuple[str, ...]
    monitor: str
    mode: Mode

    @property
    def best(self) -> dict[str, float]:
        """The strengths of the row with the best monitored value (the first of equal ones).

        Rows whose monitored value is NaN (a diverged run) are never best.

        Raises:
            ValueError: no row has a monitored value that is not NaN.
        """
        rows = [row for row in self.table if not math.isnan(row[self.monitor])]
        if not rows:
            raise ValueError(f"no row of the sweep has a {self.monitor} to compare (table: {self.table})")
        sign = 1.0 if self.mode == "min" else -1.0
        best = min(rows, key=lambda row: sign * row[self.monitor])  # min keeps the first of equal keys
        return {name: best[name] for name in self.names}

    def plot(self, path: str | Path | None = None, against: str | None = None) -> Figure:
        """The regularization path: the monitored value and the sparsity against one strength.

        The strength (``against``, default the first swept one) is on a log x-axis; the monitored value
        is on the left y-axis (solid lines, circles) and the sparsity on the right one (dashed lines,
        squares), one line of each per combination of the other swept strengths. A row whose strength is
        ``0`` has no place on a log axis: its monitored value is drawn as a dotted horizontal line in its
        line's colour (the unregularized baseline), and its sparsity is left out.

        Args:
            path: also write the figure there (the format follows the suffix: ``.png``, ``.pdf``, ...).
            against: the swept strength on the x-axis.

        Returns:
            a ``matplotlib.figure.Figure`` (not attached to pyplot: display it in a notebook as is).

        Raises:
            ValueError: ``against`` is not a swept strength, or every row has it at ``0``.
            ~lightning_reg.optional.MissingDependencyError: matplotlib is not installed.
        """
        x_name = self.names[0] if against is None else against
        if x_name not in self.names:
            raise InvalidArgumentError("against", against, f"one of the swept {list(self.names)}")
        if not any(row[x_name] > 0 for row in self.table):
            raise ValueError(f"cannot draw {x_name} on a log axis: no row has {x_name} > 0")
        figure_module = require("matplotlib.figure", "SweepResult.plot", "demo")
        others = [name for name in self.names if name != x_name]
        lines: dict[tuple[float, ...], list[dict[str, float]]] = {}
        for row in self.table:
            lines.setdefault(tuple(row[name] for name in others), []).append(row)
        figure: Figure = figure_module.Figure(figsize=(7, 4.5), layout="constrained")
        ax = figure.subplots()
        right = ax.twinx()
        for index, (key, rows) in enumerate(lines.items()):
            color = f"C{index % 10}"
            label = ", ".join(f"{name}={value:.3g}" for name, value in zip(others, key, strict=True))
            drawn = sorted((row for row in rows if row[x_name] > 0), key=lambda row: row[x_name])
            xs = [row[x_name] for row in drawn]
            ax.plot(xs, [row[self.monitor] for row in drawn], "o-", color=color, label=label or None)
            right.plot(xs, [row["sparsity"] for row in drawn], "s--", color=color)
            for row in rows:
                if row[x_name] == 0:
                    ax.axhline(row[self.monitor], color=color, linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"{x_name} (log scale)")
        ax.set_ylabel(f"{self.monitor} (solid)")
        right.set_ylabel("sparsity: fraction of weights exactly 0 (dashed)")
        right.set_ylim(-0.02, 1.02)
        title = f"{self.monitor} and sparsity against {x_name}"
        if any(row[x_name] == 0 for row in self.table):
            title += f"\ndotted: {self.monitor} at {x_name} = 0"
        ax.set_title(title)
        if others:
            ax.legend(fontsize=8)
        if path is not None:
            figure.savefig(path)
        return figure
