"""``SweepResult``: the rows a :func:`~lightning_reg.sweeps.sweep` measured; best, Pareto front, plot.

Plain data: this module imports neither Lightning nor Optuna, and matplotlib only when a plot is drawn
(it comes with the ``demo`` extra).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lightning_reg.utilities.checks import InvalidArgumentError
from lightning_reg.utilities.optional import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "MEASUREMENTS",
    "MODES",
    "STATES",
    "Mode",
    "State",
    "SweepResult",
]

Mode = Literal["min", "max"]
State = Literal["complete", "pruned", "failed"]

MODES: tuple[Mode, ...] = ("min", "max")
#: What became of a point: trained to the end (or to its own stopping rule), pruned, or failed.
STATES: tuple[State, ...] = ("complete", "pruned", "failed")
#: The measured columns of every row, after the strengths and the monitored value; a failed row adds
#: ``"error"`` after them.
MEASUREMENTS = ("sparsity", "seconds", "state", "epochs", "best_epoch")


@dataclass(frozen=True)
class SweepResult:
    """What a :func:`~lightning_reg.sweeps.sweep` measured: one row per point.

    Attributes:
        table: one dict per point: each swept strength by name, the monitored value under the
            ``monitor``'s name (the best over the point's validations, a pruned point's included; NaN
            for a failed point), ``sparsity`` (fraction of the regularized weights exactly ``0`` after
            training), ``seconds`` (the wall time of ``Trainer.fit``), ``state`` (``"complete"``,
            ``"pruned"`` or ``"failed"``), ``epochs`` (the epochs it trained), ``best_epoch`` (the
            epoch of the best value; ``None`` for a failed point) and, for a failed point, ``error``
            (the exception, as ``"ValueError: message"``). A grid's rows come in the grid's order
            (``l1`` varies slowest), whatever order the points were trained in; a search's rows by
            trial number. A row without ``state`` counts as complete.
        names: the swept strengths, a subset of ``("l1", "l2", "group_l1")`` in that order.
        monitor: the name of the monitored metric.
        mode: ``"min"`` or ``"max"``: which monitored value is best.

    Example::

        >>> result = SweepResult(
        ...     table=[
        ...         {"l1": 1e-4, "val_loss": 0.5, "sparsity": 0.0, "seconds": 1.0},
        ...         {"l1": 1e-3, "val_loss": 0.4, "sparsity": 0.2, "seconds": 1.0},
        ...         {"l1": 1e-2, "val_loss": 0.3, "sparsity": 0.1, "seconds": 0.2, "state": "pruned"},
        ...     ],
        ...     names=("l1",),
        ...     monitor="val_loss",
        ...     mode="min",
        ... )
        >>> result.best  # the pruned row's value is from an unfinished model: it is never best
        {'l1': 0.001}
    """

    table: list[dict[str, Any]]
    names: tuple[str, ...]
    monitor: str
    mode: Mode

    @property
    def best(self) -> dict[str, float]:
        """The strengths of the complete row with the best monitored value (the first of equal ones).

        Pruned and failed rows, and rows whose monitored value is NaN (a diverged run), are never best.

        Raises:
            ValueError: no complete row has a monitored value that is not NaN.
        """
        rows = [row for row in self._complete() if not math.isnan(row[self.monitor])]
        if not rows:
            raise ValueError(f"no row of the sweep has a {self.monitor} to compare (table: {self.table})")
        best = min(rows, key=self._score)  # min keeps the first of equal keys
        return {name: best[name] for name in self.names}

    @property
    def pareto(self) -> list[dict[str, Any]]:
        """The complete rows that no other complete row beats on both the monitored value and sparsity.

        A row is beaten when another one is at least as good on both (its monitored value in the
        ``mode``'s direction, its sparsity higher) and better on one: what is left is the trade-off
        between accuracy and sparse weights, in table order. Rows with a NaN value or sparsity are left
        out.

        >>> rows = [
        ...     {"l1": 1e-4, "val_loss": 0.30, "sparsity": 0.0},
        ...     {"l1": 1e-3, "val_loss": 0.35, "sparsity": 0.4},
        ...     {"l1": 3e-3, "val_loss": 0.40, "sparsity": 0.3},  # worse than 1e-3 on both
        ...     {"l1": 1e-2, "val_loss": 0.90, "sparsity": 0.9},
        ... ]
        >>> [row["l1"] for row in SweepResult(rows, ("l1",), "val_loss", "min").pareto]
        [0.0001, 0.001, 0.01]
        """
        rows = [
            row
            for row in self._complete()
            if not (math.isnan(row[self.monitor]) or math.isnan(row["sparsity"]))
        ]

        def beats(row: dict[str, Any], other: dict[str, Any]) -> bool:
            score, sparsity = self._score(row), row["sparsity"]
            at_least = score <= self._score(other) and sparsity >= other["sparsity"]
            return at_least and (score < self._score(other) or sparsity > other["sparsity"])

        return [row for row in rows if not any(beats(other, row) for other in rows)]

    def _complete(self) -> list[dict[str, Any]]:
        return [row for row in self.table if row.get("state", "complete") == "complete"]

    def _score(self, row: dict[str, Any]) -> float:
        """The monitored value, signed so that lower is better."""
        value: float = row[self.monitor]
        return value if self.mode == "min" else -value

    def plot(self, path: str | Path | None = None, against: str | None = None) -> Figure:
        """The regularization path: the monitored value and the sparsity against one strength.

        The strength (``against``, default the first swept one) is on a log x-axis; the monitored value
        is on the left y-axis (solid lines, circles) and the sparsity on the right one (dashed lines,
        squares), one line of each per combination of the other swept strengths, through the complete
        rows. A pruned row is an ``x`` at its last monitored value; a failed row is not drawn. The rows
        of :attr:`pareto` are ringed (large hollow circles on the monitored value). A row whose strength
        is ``0`` has no place on a log axis: its monitored value is drawn as a dotted horizontal line in
        its line's colour (the unregularized baseline), and its sparsity is left out.

        Args:
            path: also write the figure there (the format follows the suffix: ``.png``, ``.pdf``, ...).
            against: the swept strength on the x-axis.

        Returns:
            a ``matplotlib.figure.Figure`` (not attached to pyplot: display it in a notebook as is).

        Raises:
            ValueError: ``against`` is not a swept strength, or every row has it at ``0``.
            ~lightning_reg.MissingDependencyError: matplotlib is not installed.
        """
        x_name = self.names[0] if against is None else against
        if x_name not in self.names:
            raise InvalidArgumentError("against", against, f"one of the swept {list(self.names)}")
        if not any(row[x_name] > 0 for row in self.table):
            raise ValueError(f"cannot draw {x_name} on a log axis: no row has {x_name} > 0")
        figure_module = require("matplotlib.figure", "SweepResult.plot", "demo")
        others = [name for name in self.names if name != x_name]
        lines: dict[tuple[float, ...], list[dict[str, Any]]] = {}
        for row in self.table:
            lines.setdefault(tuple(row[name] for name in others), []).append(row)
        front = [id(row) for row in self.pareto]
        figure: Figure = figure_module.Figure(figsize=(7, 4.5), layout="constrained")
        ax = figure.subplots()
        right = ax.twinx()
        for index, (key, rows) in enumerate(lines.items()):
            color = f"C{index % 10}"
            label = ", ".join(f"{name}={value:.3g}" for name, value in zip(others, key, strict=True))
            placed = sorted((row for row in rows if row[x_name] > 0), key=lambda row: row[x_name])
            drawn = [row for row in placed if row.get("state", "complete") == "complete"]
            xs = [row[x_name] for row in drawn]
            ax.plot(xs, [row[self.monitor] for row in drawn], "o-", color=color, label=label or None)
            right.plot(xs, [row["sparsity"] for row in drawn], "s--", color=color)
            pruned = [row for row in placed if row.get("state") == "pruned"]
            if pruned:
                ax.plot(
                    [row[x_name] for row in pruned], [row[self.monitor] for row in pruned], "x", color=color
                )
            ringed = [row for row in drawn if id(row) in front]
            if ringed:
                ax.plot(
                    [row[x_name] for row in ringed],
                    [row[self.monitor] for row in ringed],
                    "o",
                    markersize=12,
                    markerfacecolor="none",
                    markeredgecolor="black",
                )
            for row in rows:
                if row[x_name] == 0 and row.get("state", "complete") == "complete":
                    ax.axhline(row[self.monitor], color=color, linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"{x_name} (log scale)")
        ax.set_ylabel(f"{self.monitor} (solid)")
        right.set_ylabel("sparsity: fraction of weights exactly 0 (dashed)")
        right.set_ylim(-0.02, 1.02)
        title = f"{self.monitor} and sparsity against {x_name}; ringed: the Pareto front"
        if any(row.get("state") == "pruned" for row in self.table):
            title += ", x: pruned"
        if any(row[x_name] == 0 for row in self.table):
            title += f"\ndotted: {self.monitor} at {x_name} = 0"
        ax.set_title(title)
        if others:
            ax.legend(fontsize=8)
        if path is not None:
            figure.savefig(path)
        return figure
