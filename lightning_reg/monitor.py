"""``RegularizationMonitor``: logs penalty magnitudes and weight sparsity; never changes training."""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from torch import Tensor
from typing_extensions import override

from lightning_reg.functional.sharding import is_sharded
from lightning_reg.module import RegularizedModule, regularizer_of
from lightning_reg.regularizer import Regularizer
from lightning_reg.statistics import NEAR_ZERO_TOL
from lightning_reg.utilities.checks import check_flag, check_integer, check_number

__all__ = [
    "HISTOGRAM_PREFIX",
    "PREFIX",
    "RegularizationMonitor",
    "experiment",
    "host_copy",
    "supports_histograms",
]

PREFIX = "reg/"
HISTOGRAM_PREFIX = PREFIX + "weights/"


def experiment(logger: Logger) -> Any:
    """The object behind ``logger`` (``SummaryWriter`` for ``TensorBoardLogger``); ``None`` if it has none."""
    return getattr(logger, "experiment", None)


def supports_histograms(logger: Logger) -> bool:
    """Whether ``logger`` can take a histogram: its experiment has ``add_histogram`` (a ``SummaryWriter``).

    Ask on global rank 0 only: elsewhere Lightning's loggers hand out a stand-in that accepts any call.
    """
    return callable(getattr(experiment(logger), "add_histogram", None))


def host_copy(weight: Tensor) -> Tensor:
    """``weight`` detached, whole and on the CPU, in float32 (float64 stays float64) for the histogram.

    A sharded weight (``DTensor``) is gathered first: a collective, every process must call this.
    """
    if is_sharded(weight):
        weight = weight.detach().full_tensor()  # type: ignore[attr-defined]
    dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    return weight.detach().to(device="cpu", dtype=dtype)


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
    - ``reg/activity_l1/<module name>``: the activity term ``strength * sum(|a|) / a.shape[0]`` of that
      module in the last training step (summed over its calls, averaged over processes), for each
      module in ``activity_l1``.
    - ``reg/l1_norm``: ``sum|w|``; ``reg/l2_norm``: ``sqrt(sum w^2)``.
    - ``reg/sparsity``: fraction of entries of ``W`` exactly ``0``; ``reg/near_zero``: fraction with
      ``|w| < near_zero_tol``; ``reg/dead_units``: fraction of groups (rows, or columns with
      ``group_by="columns"``) of ``W`` that are entirely ``0``.
    - with ``per_layer=True``, also ``reg/sparsity/<param name>``, ``reg/l1_norm/<param name>`` and
      ``reg/dead_units/<param name>``.
    - with ``histograms=True``, a histogram ``reg/weights/<param name>`` of every regularized parameter,
      its whole weight (a sharded ``DTensor`` is gathered), to each logger whose experiment has
      ``add_histogram`` (TensorBoard's ``SummaryWriter``: ``TensorBoardLogger``), at the same steps and
      step index as the scalars. Other loggers get none; when no logger can take them, a
      ``UserWarning`` at the start of training says so. A weight with a NaN or infinite entry is left
      out of that step's histograms, with a ``UserWarning`` (once per parameter).

    The monitor reads the weights without autograd and changes nothing: a run with it ends on the same
    weights, bit for bit, as a run without. On steps where it does not log it touches no tensor, so it
    causes no host-device synchronisation there.

    Histograms cost more than the scalars on a logging step: each regularized weight is copied to the
    host (float32, or float64 for float64 weights) and binned there by the writer, on global rank 0; a
    sharded weight is first gathered whole on every process, one parameter at a time (an all-gather of
    that parameter, as FSDP does for its forward pass).

    Args:
        log_every_n_steps: log every this many optimizer steps; ``None`` uses the Trainer's
            ``log_every_n_steps``.
        per_layer: also log the per-parameter values.
        near_zero_tol: the threshold of ``reg/near_zero`` (absolute; default ``1e-3``).
        histograms: also log a histogram of each regularized weight, to the loggers that support them.

    Raises:
        ValueError: at construction, for a ``log_every_n_steps`` that is not a positive integer, a
            ``per_layer`` or ``histograms`` that is not a bool, or a ``near_zero_tol`` that is not a
            finite number > 0.
        MisconfigurationException: at setup, when the Trainer has no logger.

    Warns:
        UserWarning: at the start of training, with ``histograms=True``, when no logger supports
            histograms.

    Example::

        >>> import lightning.pytorch as L
        >>> trainer = L.Trainer(callbacks=[RegularizationMonitor(log_every_n_steps=10)], logger=False)
        >>> RegularizationMonitor(log_every_n_steps=0)
        Traceback (most recent call last):
        ...
        lightning_reg.InvalidArgumentError: Invalid log_every_n_steps: 0 (expected an integer >= 1)
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        per_layer: bool = False,
        near_zero_tol: float = NEAR_ZERO_TOL,
        histograms: bool = False,
    ) -> None:
        if log_every_n_steps is not None:
            check_integer("log_every_n_steps", log_every_n_steps, minimum=1)
        check_flag("per_layer", per_layer)
        check_number("near_zero_tol", near_zero_tol, above_zero=True)
        check_flag("histograms", histograms)
        self.log_every_n_steps = log_every_n_steps
        self.per_layer = per_layer
        self.near_zero_tol = float(near_zero_tol)
        self.histograms = histograms
        self._regularizer: Regularizer | None = None
        self._penalties = False
        self._every = 0
        self._last_global_step = -1
        self._histogram_loggers: list[Logger] = []  # on global rank 0; empty elsewhere
        self._gather_histograms = False  # the same on every process: whether histograms are made
        self._non_finite: set[str] = set()  # parameters already warned about

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and not trainer.loggers:
            raise MisconfigurationException(
                "RegularizationMonitor needs a logger: pass Trainer(logger=...) or remove the callback."
            )

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._regularizer = regularizer_of(pl_module)
        self._penalties = isinstance(pl_module, RegularizedModule)  # only its strengths are known
        self._every = self.log_every_n_steps or trainer.log_every_n_steps  # type: ignore[attr-defined]
        self._last_global_step = trainer.global_step
        self._histogram_loggers, self._gather_histograms = [], False
        if self.histograms:
            self._find_histogram_loggers(trainer)

    def _find_histogram_loggers(self, trainer: L.Trainer) -> None:
        # Only rank 0 sees the real experiments; the others learn the answer from it, since gathering a
        # sharded weight needs every process.
        if trainer.is_global_zero:
            self._histogram_loggers = [logger for logger in trainer.loggers if supports_histograms(logger)]
            if not self._histogram_loggers:
                names = ", ".join(type(logger).__name__ for logger in trainer.loggers)
                warnings.warn(
                    f"RegularizationMonitor(histograms=True): none of the Trainer's loggers ({names}) "
                    "supports histograms (an experiment with add_histogram, as TensorBoardLogger has); "
                    "no histograms will be logged",
                    UserWarning,
                    stacklevel=2,
                )
        self._gather_histograms = bool(trainer.strategy.broadcast(bool(self._histogram_loggers), src=0))

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
        values.update(self._activity(trainer))
        if trainer.is_global_zero:
            metrics = {PREFIX + key: value for key, value in values.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        if self._gather_histograms:
            self._log_histograms(trainer, step)

    def _activity(self, trainer: L.Trainer) -> dict[str, float]:
        """The last training step's activity terms, averaged over processes (each has its own batch)."""
        assert self._regularizer is not None
        terms = self._regularizer.activity.last if self._penalties else {}
        if not terms:
            return {}
        local_terms = torch.stack([term.float() for term in terms.values()])
        averaged = trainer.strategy.reduce(local_terms, reduce_op="mean")
        return {f"activity_l1/{name}": value for name, value in zip(terms, averaged.tolist(), strict=True)}

    @torch.no_grad()
    def _log_histograms(self, trainer: L.Trainer, step: int) -> None:
        assert self._regularizer is not None
        writers = [experiment(logger) for logger in self._histogram_loggers]
        for name, param in zip(
            self._regularizer.names, self._regularizer.regularized_parameters, strict=True
        ):
            if param.numel() == 0 or not (writers or is_sharded(param)):
                continue
            values = host_copy(param)  # every process, for a sharded weight: gathering is a collective
            if not trainer.is_global_zero:
                continue
            if not bool(torch.isfinite(values).all()):
                if name not in self._non_finite:
                    self._non_finite.add(name)
                    warnings.warn(
                        f"RegularizationMonitor: {name} has NaN or infinite entries; its histogram "
                        f"{HISTOGRAM_PREFIX + name} is not logged while they last",
                        UserWarning,
                        stacklevel=2,
                    )
                continue
            for writer in writers:
                writer.add_histogram(HISTOGRAM_PREFIX + name, values, global_step=step)
