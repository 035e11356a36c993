"""``l2_mode="decoupled"``: ``w <- w * (1 - lr * l2)`` right before each update, as AdamW does."""

from __future__ import annotations

from torch.optim import Optimizer

from lightning_reg.optim.step_updates import decoupled_decay
from lightning_reg.terms.base import Hooks, L2Term, register

__all__ = ["DecoupledL2"]


@register("l2_mode", "decoupled")
class DecoupledL2(L2Term):
    """The decoupled decay of each regularized weight by its own ``l2`` and its group's ``lr``, before the
    optimizer's update; the optimizer must not decay the weights as well."""

    def hooks(self, optimizer: Optimizer) -> Hooks:
        return Hooks([self.step], []) if self.active else Hooks([], [])

    def step(self, optimizer: Optimizer) -> None:
        """Decay the weights ``optimizer`` is about to update (see ``Regularizer.decoupled_decay``)."""
        decoupled_decay(self.selection, optimizer, fused=self.options.fused)
