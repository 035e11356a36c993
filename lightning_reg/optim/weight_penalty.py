"""The loss-mode terms of the weights (L1, group L1, L2): their value for the loss, or their gradient
added at the optimizer step (manual optimization, sharded weights)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_reg.functional import kernels
from lightning_reg.functional.couplings import Coupling, coupled_l1_norm
from lightning_reg.functional.deferred import PreparedSum, l1_term
from lightning_reg.functional.kernels import sum_in_order
from lightning_reg.functional.penalties import l1_norm, squared_norm
from lightning_reg.functional.sharding import add_, is_sharded
from lightning_reg.optim import step_hooks, step_updates
from lightning_reg.options import RegularizationOptions
from lightning_reg.selection import Selection, units_by_strength

__all__ = ["Terms", "WeightPenalty"]


class Terms(NamedTuple):
    """Which kinds of term some weight has a positive strength of."""

    l1: bool
    l2: bool
    group_l1: bool


class WeightPenalty:
    """The loss-mode terms of the weights of ``selection`` (the modes and strengths of ``options``).

    Args:
        selection: the regularized weights and their strengths.
        options: the regularization's options (its modes).
        units: the groups of ``group_l1``, with their strengths.
        has: which kinds of term some weight has a positive strength of.
    """

    def __init__(
        self,
        selection: Selection,
        options: RegularizationOptions,
        units: Sequence[tuple[Coupling, float]],
        has: Terms,
    ) -> None:
        self.selection, self.options, self.units, self.has = selection, options, units, has
        # Worked out once: the training step reads them every step.
        self.plain = [param for _, param in selection.regularized if not is_sharded(param)]
        self.sharded = [param for _, param in selection.regularized if is_sharded(param)]
        self._plain_l1 = selection.by_strength(self.plain, "l1")
        self._prepared: dict[float, PreparedSum] = {}  # per L1 strength, see prepare

    def prepare(self) -> None:
        """Compute now the sums of the next :meth:`value` that need a pass over the weights (see
        :meth:`~lightning_reg.regularizer.Regularizer.prepare_penalty`)."""
        if self.options.l1_mode == "loss" and self.has.l1:
            fused = self.options.fused
            self._prepared = {strength: PreparedSum.of(params, fused) for strength, params in self._plain_l1}

    def value(self, step: int) -> Tensor:
        """The terms at optimizer step ``step`` (the L1 warm-up reads it); those of sharded weights
        detached (see :meth:`~lightning_reg.regularizer.Regularizer.penalty`)."""
        plain = self._total(self._deferred_l1_terms(step) + self._norm_terms(self.plain), self.plain)
        if not self.sharded:
            return plain
        sharded = self._total(
            self._l1_terms(self.sharded, step) + self._norm_terms(self.sharded), self.sharded
        )
        return plain + sharded.detach() if self.plain else sharded.detach()

    def _deferred_l1_terms(self, step: int) -> list[Tensor]:
        """``l1 * sum|w|`` of the plain weights, per strength, with the gradient added after backward."""
        if self.options.l1_mode != "loss" or not self.has.l1:
            return []
        ramp = self.options.l1_ramp(step)
        prepared, self._prepared = self._prepared, {}  # each sum serves one penalty
        fused = self.options.fused
        return [
            l1_term(params, strength * ramp, PreparedSum.valid_total(prepared.get(strength), params), fused)
            for strength, params in self._plain_l1
        ]

    def _l1_terms(self, params: Sequence[Tensor], step: int) -> list[Tensor]:
        """``l1 * sum|w|`` of ``params``, per strength, through autograd."""
        if self.options.l1_mode != "loss" or not self.has.l1:
            return []
        ramp = self.options.l1_ramp(step)
        return [
            strength * ramp * l1_norm(same) for strength, same in self.selection.by_strength(params, "l1")
        ]

    def _norm_terms(self, params: Sequence[Tensor], coupled: Sequence[Tensor] | None = None) -> list[Tensor]:
        """The loss-mode group and L2 terms of ``params``, per strength; the group terms of the coupled
        units with a member among ``coupled`` (``params`` unless given)."""
        options, terms = self.options, []
        if options.l1_mode == "loss" and self.has.group_l1:
            touching = params if coupled is None else coupled
            for strength, units in units_by_strength(self.units, touching):
                terms.append(strength * coupled_l1_norm(units))
        if options.l2_mode == "loss" and self.has.l2:
            for strength, same in self.selection.by_strength(params, "l2"):
                terms.append(strength / 2 * squared_norm(same))
        return terms

    def _sharded_total(self, sharded: Sequence[Tensor], step: int) -> Tensor:
        """Every term of the sharded weights ``sharded``, through autograd."""
        return self._total(self._l1_terms(sharded, step) + self._norm_terms(sharded), sharded)

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
        options = self.options
        if options.l1_mode == "loss" and self.has.l1:  # no autograd needed: l1 * sign(w)
            ramp = options.l1_ramp(step)
            for strength, same in self.selection.by_strength(plain, "l1"):
                factor = torch.full((), strength * ramp, dtype=same[0].dtype, device=same[0].device)
                grads = [param.grad for param in same if param.grad is not None]
                factor = factor if scale is None else factor * scale
                kernels.add_scaled_sign_(grads, same, factor, fused=options.fused)
        with torch.enable_grad():
            terms = (
                [self._total(self._l1_terms(sharded, step) + self._norm_terms(sharded), sharded)]
                if sharded
                else []
            )
            touched = plain + members  # a unit's term also reaches members held without its weights
            terms += [self._total(self._norm_terms(plain, touched), touched)] if touched else []
            terms = [term for term in terms if term.requires_grad]
            if not terms:
                return
            targets = params + members
            gradients = torch.autograd.grad(sum_in_order(terms), targets, allow_unused=True)
        with torch.no_grad():
            for param, gradient in zip(targets, gradients, strict=True):
                if gradient is not None and param.grad is not None:
                    add_(param.grad, gradient if scale is None else gradient * scale)
