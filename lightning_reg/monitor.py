"""``RegularizationMonitor``: logs penalty magnitudes and weight sparsity; never changes training."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_reg.module import RegularizedModule
from lightning_reg.regularizer import NEAR_ZERO_TOL, Regularizer

PREFIX = "reg/"


class RegularizationMonitor(Callback):
    """Log how strongly the weights are regularized and how sparse they are, to every Trainer logger.

    Values are computed over the regularized weights ``W`` (for a :class:`RegularizedModule`, its own
    selection; for any other ``LightningModule``, the default rule: trainable floating-point parameters
    with ``dim() > 1``, minus ``no_weight_decay()``). They are logged after an optimizer step, every
    ``log_every_n_steps`` steps, at the same step index as the module's own ``self.log`` metrics.

    Metric names (stable, public):

    - ``reg/l1_penalty``: ``l1 * sum|w|``; ``reg/l2_penalty``: ``l2 / 2 * sum w^2``, the loss term that
      ``weight_decay=l2`` corresponds to; ``reg/group_l1_penalty``: ``group_l1 * sum_g ||w_g||_2``. The
      values of the terms whatever applies them (loss, weight decay, proximal step), with the L1
      strength in force at that step. ``reg/l1_strength``: that strength (``l1`` once an
      ``l1_warmup_steps`` ramp is over). Only for a :class:`RegularizedModule`, whose strengths are known.
    - ``reg/l1_norm``: ``sum|w|``; ``reg/l2_norm``: ``sqrt(sum w^2)``.
    - ``reg/sparsity``: fraction of entries of ``W`` exactly ``0``; ``reg/near_zero``: fraction with
      ``|w| < near_zero_tol``; ``reg/dead_units``: fraction of groups (rows, or columns with
      ``group_by="columns"``) of ``W`` that are entirely ``0``.
    - with ``per_layer=True``, also ``reg/sparsity/<param name>``, ``reg/l1_norm/<param name>`` and
      ``reg/dead_units/<param name>``.

    The monitor reads the weights without autograd and changes nothing: a run with it ends on the same
    weights, bit for bit, as a run without. On steps where it does not log it touches no tensor, so it
    causes no host-device synchronisation there.

    Args:
        log_every_n_steps: log every this many optimizer steps; ``None`` uses the Trainer's
            ``log_every_n_steps``.
        per_layer: also log the per-parameter values.
        near_zero_tol: the threshold of ``reg/near_zero`` (absolute; default ``1e-3``).

    Raises:
        ValueError: at construction, for a ``log_every_n_steps`` that is not a positive integer, a
            ``per_layer`` that is not a bool, or a ``near_zero_tol`` that is not a finite number > 0.
        MisconfigurationException: at setup, when the Trainer has no logger.

    Example::

        >>> import lightning.pytorch as L
        >>> trainer = L.Trainer(callbacks=[RegularizationMonitor(log_every_n_steps=10)], logger=False)
        >>> RegularizationMonitor(log_every_n_steps=0)
        Traceback (most recent call last):
        ...
        ValueError: Invalid log_every_n_steps: 0 (expected a positive integer or None)
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        per_layer: bool = False,
        near_zero_tol: float = NEAR_ZERO_TOL,
    ) -> None:
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool)
            or not isinstance(log_every_n_steps, int)
            or log_every_n_steps < 1
        ):
            raise ValueError(
                f"Invalid log_every_n_steps: {log_every_n_steps!r} (expected a positive integer or None)"
            )
        if not isinstance(per_layer, bool):
            raise ValueError(f"Invalid per_layer: {per_layer!r} (expected True or False)")
        if (
            isinstance(near_zero_tol, bool)
            or not isinstance(near_zero_tol, (int, float))
            or not math.isfinite(near_zero_tol)
            or near_zero_tol <= 0
        ):
            raise ValueError(f"Invalid near_zero_tol: {near_zero_tol!r} (expected a finite number > 0)")
        self.log_every_n_steps = log_every_n_steps
        self.per_layer = per_layer
        self.near_zero_tol = float(near_zero_tol)
        self._regularizer: Regularizer | None = None
        self._penalties = False
        self._every = 0
        self._last_global_step = -1

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and not trainer.loggers:
            raise MisconfigurationException(
                "RegularizationMonitor needs a logger: pass Trainer(logger=...) or remove the callback."
            )

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(pl_module, RegularizedModule):
            self._regularizer, self._penalties = pl_module.regularizer, True
        else:
            self._regularizer, self._penalties = Regularizer(pl_module), False
        self._every = self.log_every_n_steps or trainer.log_every_n_steps  # type: ignore[attr-defined]
        self._last_global_step = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._last_global_step:
            return  # no optimizer step in this batch (gradient accumulation)
        self._last_global_step = trainer.global_step
        # The loggers' step index, as LearningRateMonitor and ``self.log`` use it for this batch.
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        if self._every and (step + 1) % self._every == 0:
            self._log(trainer, step)

    def _log(self, trainer: L.Trainer, step: int) -> None:
        assert self._regularizer is not None
        # Every process takes part: the sums over sharded weights are collectives. Replicated weights
        # are counted once, and only global rank 0 writes.
        statistics = self._regularizer.statistics(self.near_zero_tol)
        values = statistics.summary(per_parameter=self.per_layer, penalties=self._penalties)
        if trainer.is_global_zero:
            metrics = {PREFIX + key: value for key, value in values.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
