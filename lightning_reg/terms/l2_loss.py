"""``l2_mode="loss"``: ``l2 / 2 * sum w^2`` added to the training loss."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lightning_reg.functional.penalties import squared_norm
from lightning_reg.terms.base import L2Term, register

__all__ = ["L2InLoss"]


@register("l2_mode", "loss")
class L2InLoss(L2Term):
    """``l2 / 2 * sum w^2`` in the loss, each weight with its own ``l2``; the optimizer must not decay the
    weights as well."""

    in_loss = True

    def value(
        self, params: Sequence[Tensor], step: int, coupled: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        return [
            strength / 2 * squared_norm(same) for strength, same in self.selection.by_strength(params, "l2")
        ]
