"""``l1_mode="proximal"``: the L1 and group terms as the proximal step after each optimizer update."""

from __future__ import annotations

from torch.optim import Optimizer

from lightning_reg.optim import step_sizes
from lightning_reg.optim.step_updates import ProximalStep, check_couplings_held
from lightning_reg.terms.base import Context, Hooks, Term, register

__all__ = ["SparseGroupProximal"]


@register("l1_mode", "proximal")
class SparseGroupProximal(Term):
    """The exact proximal operator of ``l1 * |w| + group_l1 * ||w_g||`` (sparse group lasso) for the step
    the update applied to each entry, right after the update
    (:class:`~lightning_reg.optim.step_updates.ProximalStep`). One object for both terms: a unit's soft
    threshold and block shrink run in one pass over its entries, with the step sizes read once."""

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._step = ProximalStep(context.selection, context.units, fused=context.options.fused)

    @property
    def active(self) -> bool:
        return self.context.has_l1 or self.context.has_group_l1

    def check(self, optimizer: Optimizer) -> None:
        if not self.active:
            return
        if self.options.proximal_threshold == "optimizer":
            step_sizes.check_supported(optimizer)
        check_couplings_held(self.selection, optimizer)

    def hooks(self, optimizer: Optimizer) -> Hooks:
        if not self.active:
            return Hooks([], [])
        self._step.prepare(optimizer)
        return Hooks([], [self.step])

    def step(self, optimizer: Optimizer) -> None:
        """Shrink the weights ``optimizer`` has just updated (see ``Regularizer.proximal_step``)."""
        options = self.options
        self._step(
            optimizer,
            ramp=options.l1_ramp(self.context.clock()),
            threshold=options.proximal_threshold,
        )
