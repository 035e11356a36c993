"""The terms in the loss, together: their value for ``Regularizer.penalty()``, or their gradient added at
the optimizer step (manual optimization, sharded weights)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_reg.functional.kernels import sum_in_order
from lightning_reg.functional.sharding import add_, is_sharded
from lightning_reg.optim import step_hooks, step_updates
from lightning_reg.selection import Selection
from lightning_reg.terms.base import Term

__all__ = ["WeightPenalty"]


class WeightPenalty:
    """The active in-loss terms among ``terms``, over the weights of ``selection``.

    A closed-form term's part over unsharded weights comes from its own fast path
    (:meth:`~lightning_reg.terms.base.Term.deferred_value`); every other part goes through autograd.
    Sharded weights' parts are detached in :meth:`value`: their gradient comes from :meth:`add_gradient`.
    """

    def __init__(self, selection: Selection, terms: Sequence[Term]) -> None:
        self.selection = selection
        self.terms = [term for term in terms if term.in_loss and term.active]
        # Worked out once: the training step reads them every step.
        self.plain = [param for _, param in selection.regularized if not is_sharded(param)]
        self.sharded = [param for _, param in selection.regularized if is_sharded(param)]

    def __bool__(self) -> bool:
        """Whether there is any term in the loss."""
        return bool(self.terms) and bool(self.selection.regularized)

    def prepare(self) -> None:
        """Compute now the sums of the next :meth:`value` that need a pass over the weights (see
        :meth:`~lightning_reg.regularizer.Regularizer.prepare_penalty`)."""
        for term in self.terms:
            term.prepare()

    def value(self, step: int) -> Tensor:
        """The terms at optimizer step ``step`` (the L1 warm-up reads it); those of sharded weights
        detached (see :meth:`~lightning_reg.regularizer.Regularizer.penalty`)."""
        parts = [
            value
            for term in self.terms
            for value in (term.deferred_value(step) if term.closed_form else term.value(self.plain, step))
        ]
        plain = self._total(parts, self.plain)
        if not self.sharded:
            return plain
        sharded = self._autograd_total(self.terms, self.sharded, step)
        return plain + sharded.detach() if self.plain else sharded.detach()

    def _autograd_total(
        self,
        terms: Sequence[Term],
        params: Sequence[Tensor],
        step: int,
        coupled: Sequence[Tensor] | None = None,
    ) -> Tensor:
        values = [value for term in terms for value in term.value(params, step, coupled)]
        return self._total(values, params if coupled is None else coupled)

    @staticmethod
    def _total(terms: list[Tensor], params: Sequence[Tensor]) -> Tensor:
        return sum_in_order(terms, params[0].device if params else None)

    def add_gradient(self, optimizer: Optimizer, step: int, *, sharded_only: bool = False) -> None:
        """Add the terms' gradient at step ``step`` to the ``.grad`` of the weights in ``optimizer`` (see
        :meth:`~lightning_reg.regularizer.Regularizer.add_penalty_gradient`)."""
        params = [
            param
            for _, _, group in step_updates.in_optimizer(self.selection, optimizer)
            for param in group
            if not sharded_only or is_sharded(param)
        ]
        scale = step_hooks.pending_grad_scale(optimizer)  # a fused optimizer unscales inside its step
        plain = [param for param in params if not is_sharded(param)]
        sharded = [param for param in params if is_sharded(param)]
        # The coupled units' other members (biases, norm parameters) in this optimizer get their part too.
        members = step_updates.coupled_members(self.selection, optimizer, plain)
        closed = [term for term in self.terms if term.closed_form]
        for term in closed:  # no autograd needed
            term.add_gradient(plain, step, scale)
        with torch.enable_grad():
            totals = [self._autograd_total(self.terms, sharded, step)] if sharded else []
            touched = plain + members  # a unit's term also reaches members held without its weights
            others = [term for term in self.terms if not term.closed_form]
            totals += [self._autograd_total(others, plain, step, touched)] if touched else []
            totals = [total for total in totals if total.requires_grad]
            if not totals:
                return
            targets = params + members
            gradients = torch.autograd.grad(sum_in_order(totals), targets, allow_unused=True)
        with torch.no_grad():
            for param, gradient in zip(targets, gradients, strict=True):
                if gradient is not None and param.grad is not None:
                    add_(param.grad, gradient if scale is None else gradient * scale)
