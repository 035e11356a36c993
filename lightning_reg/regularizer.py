"""``Regularizer``: L1, L2 and Elastic Net for any ``torch.nn.Module``, usable in a bare training loop."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_reg.options import RegularizationOptions
from lightning_reg.param_groups import decay_groups, split_optimizer
from lightning_reg.penalties import l1_norm, weight_statistics
from lightning_reg.selection import Selection, select_parameters

#: Default threshold below which a weight counts as "near zero" in the statistics.
NEAR_ZERO_TOL = 1e-3


class Regularizer:
    """The regularization of one model: which weights, the L1 term, the weight-decay groups, statistics.

    The parameters are chosen once, at construction, by
    :func:`~lightning_reg.selection.select_parameters`: trainable floating-point parameters with
    ``dim() > 1``, minus ``exclude`` globs and the model's ``no_weight_decay()`` names.

    Args:
        model: the module whose parameters are regularized.
        l1: strength of the L1 term ``l1 * sum(|w|)`` that :meth:`penalty` returns.
        l2: the ``weight_decay`` that :meth:`param_groups` gives the regularized parameters.
        exclude: glob patterns over parameter names that are never regularized.

    Raises:
        ValueError: a strength is negative, NaN, infinite or not a number; ``exclude`` is not a list of
            non-empty strings.

    Warns:
        UserWarning: an ``exclude`` pattern matches no parameter.

    Example, the tutorial's Elastic Net loop::

        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        >>> reg = Regularizer(model, l1=1e-4, l2=1e-3)
        >>> optimizer = torch.optim.SGD(reg.param_groups(), lr=0.1)
        >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
        >>> for _ in range(3):
        ...     optimizer.zero_grad()
        ...     loss = nn.functional.mse_loss(model(x), y) + reg.penalty()
        ...     loss.backward()
        ...     optimizer.step()
        >>> sorted(reg.statistics().summary())
        ['l1_norm', 'l1_penalty', 'l2_norm', 'l2_penalty', 'near_zero', 'sparsity']
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        l1: float = 0.0,
        l2: float = 0.0,
        exclude: Sequence[str] = (),
    ) -> None:
        self.options = RegularizationOptions(l1=l1, l2=l2, exclude=exclude)
        self.selection: Selection = select_parameters(model, self.options.exclude)
        for pattern in self.selection.unmatched:
            warnings.warn(
                f"exclude pattern {pattern!r} matches no trainable parameter of "
                f"{type(model).__name__}; names look like {self._example_names(model)}",
                UserWarning,
                stacklevel=2,
            )

    @classmethod
    def from_options(cls, model: nn.Module, options: RegularizationOptions) -> Regularizer:
        """Build from already validated options."""
        return cls(model, l1=options.l1, l2=options.l2, exclude=options.exclude)

    @property
    def l1(self) -> float:
        return self.options.l1

    @property
    def l2(self) -> float:
        return self.options.l2

    @property
    def names(self) -> list[str]:
        """Names of the regularized parameters, in ``named_parameters()`` order."""
        return [name for name, _ in self.selection.regularized]

    @property
    def parameters(self) -> list[nn.Parameter]:
        """The regularized parameters (``W``), each once."""
        return [param for _, param in self.selection.regularized]

    def penalty(self) -> Tensor:
        """The L1 term ``l1 * sum(|w| for w in W)`` to add to the loss; a constant zero when ``l1 == 0``."""
        params = self.parameters
        if self.l1 == 0 or not params:
            device = params[0].device if params else None
            return torch.zeros((), device=device)
        return self.l1 * l1_norm(params)

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: ``W`` with ``weight_decay=l2``, every other trainable parameter with ``0``.

        Pass them to any optimizer that has ``weight_decay``: ``torch.optim.SGD(reg.param_groups(), lr=0.1)``.
        """
        others = [param for _, param in self.selection.others]
        return decay_groups(self.parameters, others, self.l2)

    def apply_weight_decay(self, optimizer: Optimizer, schedulers: Iterable[Any] = ()) -> None:
        """Split an existing optimizer's groups so that only ``W`` decays, with ``weight_decay=l2``.

        Does nothing when ``l2 == 0``, so an optimizer's own settings stay as they were built.
        See :func:`~lightning_reg.param_groups.split_optimizer` for the group names and what is refused.
        """
        if self.l2 > 0:
            split_optimizer(optimizer, self.parameters, self.l2, schedulers)

    def statistics(self, near_zero_tol: float = NEAR_ZERO_TOL) -> WeightStatistics:
        """Norms and zero counts of ``W``, as tensors on the weights' device (no host synchronisation)."""
        params = self.parameters
        return WeightStatistics(
            names=tuple(self.names),
            numels=tuple(param.numel() for param in params),
            table=weight_statistics(params, near_zero_tol),
            l1=self.l1,
            l2=self.l2,
        )

    @staticmethod
    def _example_names(model: nn.Module, count: int = 3) -> list[str]:
        return [name for name, _ in model.named_parameters()][:count]


@dataclass(frozen=True)
class WeightStatistics:
    """Raw sums over the regularized weights; :meth:`summary` turns them into named values.

    Attributes:
        names: parameter names, one per row of ``table``.
        numels: entry counts, one per row.
        table: ``(len(names), 4)`` float64 tensor of ``sum|w|``, ``sum w^2``, ``#(w == 0)``,
            ``#(|w| < tol)`` per parameter.
        l1: the L1 strength, for ``l1_penalty``.
        l2: the L2 strength, for ``l2_penalty``.
    """

    names: tuple[str, ...]
    numels: tuple[int, ...]
    table: Tensor
    l1: float
    l2: float

    def summary(self, per_parameter: bool = False, penalties: bool = True) -> dict[str, float]:
        """The values as floats, read from the device in one transfer.

        Keys: ``l1_norm`` (``sum|w|``), ``l2_norm`` (``sqrt(sum w^2)``), ``sparsity`` (fraction of
        entries exactly ``0``), ``near_zero`` (fraction below the tolerance); with ``penalties``,
        ``l1_penalty`` (``l1 * l1_norm``) and ``l2_penalty`` (``l2 / 2 * sum w^2``); with
        ``per_parameter``, ``sparsity/<name>`` and ``l1_norm/<name>`` for each parameter.
        """
        rows = self.table.tolist()
        abs_sum = math.fsum(row[0] for row in rows)
        sq_sum = math.fsum(row[1] for row in rows)
        total = sum(self.numels)
        values = {"l1_norm": abs_sum, "l2_norm": math.sqrt(sq_sum)}
        if total:
            values["sparsity"] = sum(row[2] for row in rows) / total
            values["near_zero"] = sum(row[3] for row in rows) / total
        if penalties:
            values["l1_penalty"] = self.l1 * abs_sum
            values["l2_penalty"] = self.l2 / 2 * sq_sum
        if per_parameter:
            for name, numel, row in zip(self.names, self.numels, rows, strict=True):
                values[f"sparsity/{name}"] = row[2] / numel
                values[f"l1_norm/{name}"] = row[0]
        return values
