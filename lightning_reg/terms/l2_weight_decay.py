"""``l2_mode="weight_decay"`` (the tutorial's): ``l2`` as the optimizer's ``weight_decay`` on the
regularized weights only."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch.optim import Optimizer

from lightning_reg.optim.param_groups import split_optimizer
from lightning_reg.terms.base import Term, register

__all__ = ["L2AsWeightDecay"]


@register("l2_mode", "weight_decay")
class L2AsWeightDecay(Term):
    """New groups decay each regularized weight by its own ``l2``; an existing optimizer's groups are
    split so that only they decay (:func:`~lightning_reg.optim.param_groups.split_optimizer`)."""

    @property
    def active(self) -> bool:
        return self.context.has_l2

    def decays(self) -> Sequence[float]:
        return [strength.l2 for strength in self.selection.strengths]

    def splits_groups(self) -> bool:
        # The module-wide l2 alone splits too: rules that zero every weight's l2 still leave it asked.
        return self.options.l2 > 0 or self.active

    def configure(self, optimizer: Optimizer, schedulers: Iterable[Any]) -> None:
        if self.splits_groups():
            split_optimizer(
                optimizer, self.context.regularized_parameters, self.options.l2, schedulers, self.decays()
            )
