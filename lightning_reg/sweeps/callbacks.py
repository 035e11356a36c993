"""``ReportToTrial``: the monitored value of every validation, reported to an Optuna trial for its pruner.

Optuna's own ``PyTorchLightningPruningCallback`` (``optuna-integration``) would add a dependency for a few
lines; this one reads the value as :func:`~lightning_reg.sweeps.sweep` does, and stops the ``Trainer``
the way ``EarlyStopping`` does, so that the point's row can still measure the model it stopped.
"""

from __future__ import annotations

from typing import Protocol

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class Reportable(Protocol):
    """What the callback needs of an ``optuna.Trial``."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class ReportToTrial(Callback):
    """After each validation, ``trial.report(value, step=epochs)``; stop training if the trial should prune.

    The step is the number of epochs begun, so a pruner's resources (``HyperbandPruner``'s
    ``min_resource``, ``MedianPruner``'s ``n_warmup_steps``) count epochs. The sanity check is not
    reported. A pruned run sets ``trainer.should_stop`` (Lightning ends it after the current epoch) and
    :attr:`pruned`.

    Args:
        trial: the Optuna trial of the point (anything with ``report`` and ``should_prune``).
        monitor: the logged metric to report.

    Example::

        >>> class Trial:  # records what a pruner would see; prunes once the value exceeds 1
        ...     def __init__(self):
        ...         self.reports = []
        ...     def report(self, value, step):
        ...         self.reports.append((step, value))
        ...     def should_prune(self):
        ...         return self.reports[-1][1] > 1
        >>> import lightning.pytorch as L
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> class Model(BoringModel):
        ...     def validation_step(self, batch, batch_idx):
        ...         self.log("val_loss", 0.5 * self.current_epoch)
        >>> reporter = ReportToTrial(Trial(), "val_loss")
        >>> trainer = L.Trainer(
        ...     max_epochs=10, limit_train_batches=1, limit_val_batches=1, callbacks=[reporter],
        ...     logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...     enable_model_summary=False, accelerator="cpu",
        ... )
        >>> trainer.fit(Model())
        >>> reporter.trial.reports, reporter.pruned, trainer.current_epoch
        ([(1, 0.0), (2, 0.5), (3, 1.0), (4, 1.5)], True, 4)
    """

    def __init__(self, trial: Reportable, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned = False

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        self.trial.report(float(trainer.callback_metrics[self.monitor]), step=trainer.current_epoch + 1)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True
