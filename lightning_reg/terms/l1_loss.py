"""``l1_mode="loss"`` (the tutorial's): the L1 term and the group term added to the training loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_reg.functional import kernels
from lightning_reg.functional.couplings import coupled_l1_norm
from lightning_reg.functional.deferred import PreparedSum, l1_term
from lightning_reg.functional.penalties import l1_norm
from lightning_reg.functional.sharding import is_sharded
from lightning_reg.selection import units_by_strength
from lightning_reg.terms.base import Context, Term, register

__all__ = ["GroupL1InLoss", "L1InLoss"]


@register("l1_mode", "loss")
class L1InLoss(Term):
    """``l1 * sum|w|`` in the loss, each weight with its own ``l1`` ramped by the warm-up.

    Over the unsharded weights the value needs no autograd graph: its gradient ``l1 * sign(w)`` is added
    to ``.grad`` at the end of backward (:func:`~lightning_reg.functional.deferred.l1_term`), or at the
    optimizer step by :meth:`add_gradient`.
    """

    in_loss = True
    closed_form = True

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        # Worked out once: the training step reads them every step.
        plain = [param for _, param in self.selection.regularized if not is_sharded(param)]
        self._plain = self.selection.by_strength(plain, "l1")
        self._prepared: dict[float, PreparedSum] = {}  # per strength, see prepare

    @property
    def active(self) -> bool:
        return self.context.has_l1

    def prepare(self) -> None:
        fused = self.options.fused
        self._prepared = {strength: PreparedSum.of(params, fused) for strength, params in self._plain}

    def deferred_value(self, step: int) -> list[Tensor]:
        ramp = self.options.l1_ramp(step)
        prepared, self._prepared = self._prepared, {}  # each sum serves one penalty
        fused = self.options.fused
        return [
            l1_term(params, strength * ramp, PreparedSum.valid_total(prepared.get(strength), params), fused)
            for strength, params in self._plain
        ]

    def value(
        self, params: Sequence[Tensor], step: int, coupled: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        ramp = self.options.l1_ramp(step)
        return [
            strength * ramp * l1_norm(same) for strength, same in self.selection.by_strength(params, "l1")
        ]

    def add_gradient(self, params: Sequence[Tensor], step: int, scale: Tensor | None) -> None:
        ramp = self.options.l1_ramp(step)
        for strength, same in self.selection.by_strength(params, "l1"):
            factor = torch.full((), strength * ramp, dtype=same[0].dtype, device=same[0].device)
            grads = [param.grad for param in same if param.grad is not None]
            factor = factor if scale is None else factor * scale
            kernels.add_scaled_sign_(grads, same, factor, fused=self.options.fused)


@register("l1_mode", "loss")
class GroupL1InLoss(Term):
    """``group_l1 * sum_g ||w_g||`` in the loss, over each weight's rows or columns or the coupled
    channels, each unit with its own ``group_l1``."""

    in_loss = True

    @property
    def active(self) -> bool:
        return self.context.has_group_l1

    def value(
        self, params: Sequence[Tensor], step: int, coupled: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        touching = params if coupled is None else coupled
        return [
            strength * coupled_l1_norm(units)
            for strength, units in units_by_strength(self.context.units, touching)
        ]
