"""``BatchNormRecalibration``: BatchNorm statistics recomputed before each validation and after ``fit``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as L

from lightning_reg.structured.batchnorm import first_input, has_batchnorm, recalibrate_batchnorm
from lightning_reg.utilities.checks import check_integer

__all__ = ["BatchNormRecalibration", "warn_if_stale"]

#: Training batches per recalibration unless told otherwise.
DEFAULT_BATCHES = 20


class BatchNormRecalibration(L.Callback):
    """Recompute the model's BatchNorm statistics from training batches before each validation (not
    the sanity check) and at the end of ``fit``
    (:func:`~lightning_reg.structured.batchnorm.recalibrate_batchnorm`).

    Under group L1 the running statistics lag behind the shrinking convolutions in front of each
    BatchNorm and eval-mode outputs go wrong (see :mod:`~lightning_reg.structured.batchnorm`); with
    this callback every validation, and the model ``fit`` leaves, use statistics of the weights as they are. A
    ``RegularizedModule`` with group L1 and BatchNorm warns when the Trainer has none.

    Cost: one forward pass without gradients over ``num_batches`` training batches each time, about a
    third of a training step's time per batch.

    Args:
        num_batches: training batches per recalibration (the first ones the training dataloader gives).
        inputs: what the model is called with, from a batch (default: the batch, or its first element).

    Example::

        trainer = L.Trainer(callbacks=[BatchNormRecalibration(num_batches=20)])
    """

    def __init__(
        self, num_batches: int = DEFAULT_BATCHES, inputs: Callable[[Any], Any] = first_input
    ) -> None:
        self.num_batches = check_integer("num_batches", num_batches, 1)
        self.inputs = inputs
        #: How many batches each recalibration used, in order.
        self.used: list[int] = []

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.recalibrate(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.recalibrate(trainer, pl_module)

    def recalibrate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        """Recalibrate now from the training dataloader's first batches; the number used."""
        loader = trainer.train_dataloader
        if loader is None:
            return 0

        def on_device() -> Iterator[Any]:
            for batch in loader:
                yield trainer.strategy.batch_to_device(batch)

        used = recalibrate_batchnorm(pl_module, on_device(), num_batches=self.num_batches, inputs=self.inputs)
        self.used.append(used)
        return used


def warn_if_stale(trainer: L.Trainer, model: L.LightningModule, group_term: bool) -> None:
    """Warn, before training, where group L1 meets BatchNorm and no :class:`BatchNormRecalibration` is
    among the Trainer's callbacks: the eval-mode outputs would use stale statistics."""
    if not group_term or not has_batchnorm(model):
        return
    callbacks: list[L.Callback] = getattr(trainer, "callbacks", [])
    if any(isinstance(callback, BatchNormRecalibration) for callback in callbacks):
        return
    warnings.warn(
        f"{type(model).__name__} has BatchNorm layers and group L1: the penalty shrinks the convolutions "
        "in front of them for free (BatchNorm is scale-invariant in train mode), and their running "
        "statistics fall behind, so eval-mode outputs (validation, inference) can be far off. Add "
        "lightning_reg.BatchNormRecalibration() to the Trainer's callbacks, or call "
        "lightning_reg.recalibrate_batchnorm(model, batches) before evaluating.",
        UserWarning,
        stacklevel=2,
    )
