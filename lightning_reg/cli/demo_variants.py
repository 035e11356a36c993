"""The demo's rows: a :class:`Variant` (a name and the options a model is built with) and the
:class:`VariantResult` it scored. The trainer (:mod:`~lightning_reg.cli.demo`) makes them, the table and
the figure (:mod:`~lightning_reg.cli.demo_plot`) read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from lightning_reg.options import L1Mode

__all__ = ["Variant", "VariantResult"]


class Variant(NamedTuple):
    """One row of the demo: a name and the options the model is built with."""

    name: str
    l1: float
    l2: float
    #: ``"loss"`` or ``"proximal"``: how ``l1`` and ``group_l1`` reach the weights.
    l1_mode: L1Mode = "loss"
    group_l1: float = 0.0

    @property
    def slug(self) -> str:
        """The name as a directory name: ``"Elastic Net prox"`` -> ``"elastic_net_prox"``."""
        return self.name.lower().replace(" ", "_")

    @property
    def mode(self) -> str:
        """``l1_mode`` where there is an L1 or group term, else ``"-"``."""
        return self.l1_mode if self.l1 > 0 or self.group_l1 > 0 else "-"


@dataclass(frozen=True)
class VariantResult:
    """What one trained variant scored. Accuracies and losses are measured after the last epoch."""

    variant: Variant
    train_acc: float
    val_acc: float
    val_loss: float
    sparsity: float
    near_zero: float
    #: Fraction of the rows of the regularized weight matrices that are entirely zero (``dead_units``).
    dead_units: float
    seconds: float
    #: ``reg/*`` metrics of the ``RegularizationMonitor``, read back from the CSV log: name -> (step, value).
    curves: Mapping[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)

    @property
    def gap(self) -> float:
        """Training accuracy minus validation accuracy: how much the model overfits."""
        return self.train_acc - self.val_acc
