"""The callbacks a sweep adds to a point's ``Trainer``.

- ``ReportToTrial``: the monitored value of every validation, reported to an Optuna trial for its pruner.
- ``BestValue``: the best monitored value of a point and its epoch, which its row reports.
- ``CarryOptimizerState``: a warm-started point's optimizer continues from the previous point's state.

Optuna's own ``PyTorchLightningPruningCallback`` (``optuna-integration``) would add a dependency for a few
lines; this one reads the value as :func:`~lightning_reg.sweeps.sweep` does, and stops the ``Trainer``
the way ``EarlyStopping`` does, so that the point's row can still measure the model it stopped.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Protocol

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_reg.optim.group_prox import STATE_PREFIX

__all__ = [
    "BestValue",
    "CarryOptimizerState",
    "ReportToTrial",
    "Reportable",
    "carry_state",
]


class Reportable(Protocol):
    """What the callback needs of an ``optuna.Trial``."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class BestValue(Callback):
    """The best monitored value over a fit's validations, and the epoch it came at.

    The epoch counts the epochs begun, as :class:`ReportToTrial`'s step does: a value from the validation
    at the end of the third epoch has ``epoch == 3``. The sanity check is not counted. ``value`` is NaN
    and ``epoch`` ``None`` until a validation has logged ``monitor``; NaN values are never best.

    Args:
        monitor: the logged metric.
        mode: ``"min"`` or ``"max"``: which value is best.

    Example::

        >>> import lightning.pytorch as L
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> class Model(BoringModel):
        ...     def validation_step(self, batch, batch_idx):
        ...         self.log("val_loss", [3.0, 1.0, 2.0][self.current_epoch])
        >>> best = BestValue("val_loss", "min")
        >>> trainer = L.Trainer(
        ...     max_epochs=3, limit_train_batches=1, limit_val_batches=1, callbacks=[best],
        ...     logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...     enable_model_summary=False, accelerator="cpu",
        ... )
        >>> trainer.fit(Model())
        >>> best.value, best.epoch
        (1.0, 2)
    """

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor = monitor
        self.mode = mode
        self.value = math.nan
        self.epoch: int | None = None

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if math.isnan(value):
            return
        if self.epoch is None or (value < self.value if self.mode == "min" else value > self.value):
            self.value, self.epoch = value, trainer.current_epoch + 1


class ReportToTrial(BestValue):
    """After each validation, ``trial.report(best, step=epochs)``; stop training if the trial should prune.

    The value reported is the point's best so far (a :class:`BestValue`), the value its row would
    show if it stopped there; pruners then compare points as the table does. (Optuna's own pruners
    judge a trial by its best report, but compare it with the other trials' reports at the same step:
    raw values that rise again as a network overfits would make a worse point look better.) The step
    is the number of epochs begun, so a pruner's resources (``HyperbandPruner``'s ``min_resource``,
    ``MedianPruner``'s ``n_warmup_steps``) count epochs. The sanity check is not reported. A pruned run
    sets ``trainer.should_stop`` (Lightning ends it after the current epoch) and :attr:`pruned`.

    Args:
        trial: the Optuna trial of the point (anything with ``report`` and ``should_prune``).
        monitor: the logged metric to report.
        mode: ``"min"`` or ``"max"``: which value is best.

    Example::

        >>> class Trial:  # records what a pruner would see; prunes a value above 1 from the 2nd epoch
        ...     def __init__(self):
        ...         self.reports = []
        ...     def report(self, value, step):
        ...         self.reports.append((step, value))
        ...     def should_prune(self):
        ...         step, value = self.reports[-1]
        ...         return step >= 2 and value > 1
        >>> import lightning.pytorch as L
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> class Model(BoringModel):
        ...     def validation_step(self, batch, batch_idx):
        ...         self.log("val_loss", [3.0, 0.5, 2.0, 1.5][self.current_epoch])
        >>> reporter = ReportToTrial(Trial(), "val_loss", "min")
        >>> trainer = L.Trainer(
        ...     max_epochs=4, limit_train_batches=1, limit_val_batches=1, callbacks=[reporter],
        ...     logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...     enable_model_summary=False, accelerator="cpu",
        ... )
        >>> trainer.fit(Model())  # 2.0 and 1.5 are above 1, but the point's best is 0.5
        >>> reporter.trial.reports, reporter.pruned, (reporter.value, reporter.epoch)
        ([(1, 3.0), (2, 0.5), (3, 0.5), (4, 0.5)], False, (0.5, 2))
    """

    def __init__(self, trial: Reportable, monitor: str, mode: str) -> None:
        super().__init__(monitor, mode)
        self.trial = trial
        self.pruned = False

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.sanity_checking or self.epoch is None or self.monitor not in trainer.callback_metrics:
            return
        self.trial.report(self.value, step=trainer.current_epoch + 1)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


class CarryOptimizerState(Callback):
    """Start each optimizer from the state of another run's: its moments and step counts, not its settings.

    A warm-started point of a regularization path continues from the previous point's weights; with this
    callback its optimizer continues too, instead of restarting Adam's moments from zero (whose first
    steps move every weight by about the learning rate). Only the per-parameter ``state`` is carried: the
    ``param_groups`` (learning rate, ``weight_decay``, which is this point's ``l2``) stay this run's, and
    the entries lightning-reg keeps in the state (keys that begin with ``"lightning_reg."``: the group
    step's channel norms and dual variables, which belong to the previous strength) are left behind.

    Args:
        states: the other run's ``optimizer.state_dict()`` of each optimizer, in ``trainer.optimizers``'
            order; each must hold as many parameter groups, of the same sizes.

    Raises:
        ValueError: at the start of training, where the optimizers do not match ``states``.
    """

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(trainer.optimizers) != len(self.states):
            raise ValueError(
                f"the warm start carries {len(self.states)} optimizer state(s), but this point has "
                f"{len(trainer.optimizers)} optimizer(s): make_model must build the same optimizers"
            )
        for optimizer, state in zip(trainer.optimizers, self.states, strict=True):
            carry_state(optimizer, state)


def carry_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load ``state["state"]`` (another optimizer's ``state_dict()``) into ``optimizer``, keeping its own
    ``param_groups`` and leaving lightning-reg's own entries behind (see :class:`CarryOptimizerState`)."""
    own = optimizer.state_dict()["param_groups"]
    sizes = [len(group["params"]) for group in own]
    given = [len(group["params"]) for group in state["param_groups"]]
    if sizes != given:
        raise ValueError(
            f"the warm start carries an optimizer state with parameter groups of sizes {given}, but this "
            f"point's optimizer has {sizes}: make_model must build the same model and optimizer"
        )
    carried = {
        index: {key: value for key, value in entry.items() if not str(key).startswith(STATE_PREFIX)}
        for index, entry in state["state"].items()
    }
    optimizer.load_state_dict(copy.deepcopy({"state": carried, "param_groups": own}))
