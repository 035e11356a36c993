"""``WeightStatistics``: the norms and zero counts of the regularized weights, and their named values."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from lightning_reg.functional.couplings import coupled_statistics
from lightning_reg.functional.penalties import weight_statistics
from lightning_reg.options import RegularizationOptions
from lightning_reg.selection import Selection, Strengths, units_of

__all__ = [
    "NEAR_ZERO_TOL",
    "WeightStatistics",
    "statistics_of",
]

#: Default threshold below which a weight counts as "near zero" in the statistics.
NEAR_ZERO_TOL = 1e-3


@dataclass(frozen=True)
class WeightStatistics:
    """Raw sums over the regularized weights; :meth:`summary` turns them into named values.

    Attributes:
        names: parameter names, one per row of ``table``.
        numels: entry counts, one per row.
        table: ``(len(names), 4)`` float64 tensor, per parameter: ``sum|w|``, ``sum w^2``,
            ``#(w == 0)``, ``#(|w| < tol)``.
        units: the names of the rows of ``unit_table``: the parameters, grouped along ``"rows"`` or
            ``"columns"``, or the coupled units with ``group_by="channels"``.
        groups: the group counts, one per row of ``unit_table``.
        unit_table: ``(len(units), 2)`` float64 tensor: ``sum_g ||w_g||`` and ``#(w_g == 0)``.
        l1: the module-wide L1 strength at the step the statistics were taken (after any warm-up), for
            ``l1_penalty`` and ``l1_strength``.
        l2: the module-wide L2 strength, for ``l2_penalty``.
        group_l1: the module-wide group strength, for ``group_l1_penalty``.
        strengths: each row's own strengths (its ``l1`` after any warm-up), where ``rules`` give some
            parameter other strengths than the module-wide ones; ``None``: every row has ``l1``, ``l2``
            and ``group_l1``.
        unit_strengths: each unit's ``group_l1``, where some differs from ``group_l1``; ``None``: all
            have ``group_l1``.
    """

    names: tuple[str, ...]
    numels: tuple[int, ...]
    table: Tensor
    units: tuple[str, ...]
    groups: tuple[int, ...]
    unit_table: Tensor
    l1: float
    l2: float
    group_l1: float
    strengths: tuple[Strengths, ...] | None = None
    unit_strengths: tuple[float, ...] | None = None

    def summary(self, per_parameter: bool = False, penalties: bool = True) -> dict[str, float]:
        """The values as floats, read from the device in one transfer.

        Keys: ``l1_norm`` (``sum|w|``), ``l2_norm`` (``sqrt(sum w^2)``), ``sparsity`` (fraction of
        entries exactly ``0``), ``near_zero`` (fraction below the tolerance), ``dead_units`` (fraction of
        groups entirely ``0``); with ``penalties``, ``l1_penalty`` (``l1 * l1_norm``), ``l2_penalty``
        (``l2 / 2 * sum w^2``), ``group_l1_penalty`` (``group_l1 * sum_g ||w_g||``) and ``l1_strength``
        (the module-wide L1 strength in force, which a warm-up ramps up); with ``rules``, each penalty
        sums every parameter's own strength times its norm (``l1_penalty = sum_p l1_p * sum|w_p|``); with
        ``per_parameter``, ``sparsity/<name>``, ``l1_norm/<name>`` and ``dead_units/<unit>`` (a unit
        is a parameter, or with ``group_by="channels"`` a coupled unit, named by its producing layer).
        """
        rows, units = self.table.tolist(), self.unit_table.tolist()
        abs_sum, sq_sum, zeros, near_zero = (math.fsum(row[index] for row in rows) for index in range(4))
        group_norm_sum, dead = (math.fsum(unit[index] for unit in units) for index in range(2))
        values = {"l1_norm": abs_sum, "l2_norm": math.sqrt(sq_sum)}
        if self.numels:
            values["sparsity"] = zeros / sum(self.numels)
            values["near_zero"] = near_zero / sum(self.numels)
        if self.groups:
            values["dead_units"] = dead / sum(self.groups)
        if penalties and self.strengths is None:
            values["l1_penalty"] = self.l1 * abs_sum
            values["l2_penalty"] = self.l2 / 2 * sq_sum
        elif penalties and self.strengths is not None:
            pairs = list(zip(self.strengths, rows, strict=True))
            values["l1_penalty"] = math.fsum(strength.l1 * row[0] for strength, row in pairs)
            values["l2_penalty"] = math.fsum(strength.l2 / 2 * row[1] for strength, row in pairs)
        if penalties and self.unit_strengths is None:
            values["group_l1_penalty"] = self.group_l1 * group_norm_sum
        elif penalties and self.unit_strengths is not None:
            pairs_of_units = zip(self.unit_strengths, units, strict=True)
            values["group_l1_penalty"] = math.fsum(strength * unit[0] for strength, unit in pairs_of_units)
        if penalties:
            values["l1_strength"] = self.l1
        if per_parameter:
            for name, numel, row in zip(self.names, self.numels, rows, strict=True):
                values[f"sparsity/{name}"] = row[2] / numel
                values[f"l1_norm/{name}"] = row[0]
            for unit_name, groups, unit in zip(self.units, self.groups, units, strict=True):
                values[f"dead_units/{unit_name}"] = unit[1] / groups
        return values


def statistics_of(
    selection: Selection, options: RegularizationOptions, step: int, near_zero_tol: float = NEAR_ZERO_TOL
) -> WeightStatistics:
    """The statistics of ``selection``'s regularized parameters at optimizer step ``step``.

    No host synchronisation: the tables stay on the weights' device until :meth:`WeightStatistics.summary`.
    """
    names = tuple(name for name, _ in selection.regularized)
    params = [param for _, param in selection.regularized]
    module_wide = Strengths(options.l1, options.l2, options.group_l1)
    own, ramp = selection.strengths, options.l1_ramp(step)
    table = weight_statistics(params, near_zero_tol)
    units = units_of(selection, options.group_by, every=True)
    couplings = tuple(unit for unit, _ in units)
    unit_strengths = tuple(strength for _, strength in units)
    return WeightStatistics(
        names=names,
        numels=tuple(param.numel() for param in params),
        table=table,
        units=tuple(coupling.name for coupling in couplings),
        groups=tuple(coupling.count for coupling in couplings),
        unit_table=coupled_statistics(couplings, table.dtype).to(table.device),
        l1=options.l1_at(step),
        l2=options.l2,
        group_l1=options.group_l1,
        strengths=None
        if all(strength == module_wide for strength in own)
        else tuple(Strengths(s.l1 * ramp, s.l2, s.group_l1) for s in own),
        unit_strengths=None
        if all(strength == options.group_l1 for strength in unit_strengths)
        else unit_strengths,
    )
