"""``WeightStatistics``: the norms and zero counts of the regularized weights, and their named values."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from lightning_reg.penalties import STATISTICS_COLUMNS
from lightning_reg.selection import Strengths

#: Default threshold below which a weight counts as "near zero" in the statistics.
NEAR_ZERO_TOL = 1e-3


@dataclass(frozen=True)
class WeightStatistics:
    """Raw sums over the regularized weights; :meth:`summary` turns them into named values.

    Attributes:
        names: parameter names, one per row of ``table``.
        numels: entry counts, one per row.
        groups: group counts (along ``group_by``), one per row.
        table: ``(len(names), 6)`` float64 tensor, per parameter: ``sum|w|``, ``sum w^2``,
            ``#(w == 0)``, ``#(|w| < tol)``, ``sum_g ||w_g||``, ``#(w_g == 0)``.
        l1: the module-wide L1 strength at the step the statistics were taken (after any warm-up), for
            ``l1_penalty`` and ``l1_strength``.
        l2: the module-wide L2 strength, for ``l2_penalty``.
        group_l1: the module-wide group strength, for ``group_l1_penalty``.
        strengths: each row's own strengths (its ``l1`` after any warm-up), where ``rules`` give some
            parameter other strengths than the module-wide ones; ``None``: every row has ``l1``, ``l2``
            and ``group_l1``.
    """

    names: tuple[str, ...]
    numels: tuple[int, ...]
    groups: tuple[int, ...]
    table: Tensor
    l1: float
    l2: float
    group_l1: float
    strengths: tuple[Strengths, ...] | None = None

    def summary(self, per_parameter: bool = False, penalties: bool = True) -> dict[str, float]:
        """The values as floats, read from the device in one transfer.

        Keys: ``l1_norm`` (``sum|w|``), ``l2_norm`` (``sqrt(sum w^2)``), ``sparsity`` (fraction of
        entries exactly ``0``), ``near_zero`` (fraction below the tolerance), ``dead_units`` (fraction of
        groups entirely ``0``); with ``penalties``, ``l1_penalty`` (``l1 * l1_norm``), ``l2_penalty``
        (``l2 / 2 * sum w^2``), ``group_l1_penalty`` (``group_l1 * sum_g ||w_g||``) and ``l1_strength``
        (the module-wide L1 strength in force, which a warm-up ramps up); with ``rules``, each penalty
        sums every parameter's own strength times its norm (``l1_penalty = sum_p l1_p * sum|w_p|``); with
        ``per_parameter``, ``sparsity/<name>``, ``l1_norm/<name>`` and ``dead_units/<name>``.
        """
        rows = self.table.tolist()
        column = [math.fsum(row[index] for row in rows) for index in range(len(STATISTICS_COLUMNS))]
        abs_sum, sq_sum, zeros, near_zero, group_norm_sum, dead = column
        values = {"l1_norm": abs_sum, "l2_norm": math.sqrt(sq_sum)}
        if self.numels:
            values["sparsity"] = zeros / sum(self.numels)
            values["near_zero"] = near_zero / sum(self.numels)
            values["dead_units"] = dead / sum(self.groups)
        if penalties and self.strengths is None:
            values["l1_penalty"] = self.l1 * abs_sum
            values["l2_penalty"] = self.l2 / 2 * sq_sum
            values["group_l1_penalty"] = self.group_l1 * group_norm_sum
        elif penalties and self.strengths is not None:
            pairs = list(zip(self.strengths, rows, strict=True))
            values["l1_penalty"] = math.fsum(strength.l1 * row[0] for strength, row in pairs)
            values["l2_penalty"] = math.fsum(strength.l2 / 2 * row[1] for strength, row in pairs)
            values["group_l1_penalty"] = math.fsum(strength.group_l1 * row[4] for strength, row in pairs)
        if penalties:
            values["l1_strength"] = self.l1
        if per_parameter:
            for name, numel, groups, row in zip(self.names, self.numels, self.groups, rows, strict=True):
                values[f"sparsity/{name}"] = row[2] / numel
                values[f"l1_norm/{name}"] = row[0]
                values[f"dead_units/{name}"] = row[5] / groups
        return values
