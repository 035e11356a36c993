"""Strength sweeps: one model per point of a grid or per Optuna trial, compared on a validation set.

The modules, by job: :mod:`~lightning_reg.sweeps.result` (:class:`SweepResult`, its best row, Pareto
front and plot; no Lightning), :mod:`~lightning_reg.sweeps.arguments` (every argument checked before
training), :mod:`~lightning_reg.sweeps.runner` (:func:`sweep` itself: the grid, the warm-started paths,
one point's training), :mod:`~lightning_reg.sweeps.callbacks` (the pruner's report after each
validation, a point's best value, the optimizer state a warm start carries),
:mod:`~lightning_reg.sweeps.study` (the Optuna study and its workers) and
:mod:`~lightning_reg.sweeps.storages` (databases with heartbeats, the journal file).
``from lightning_reg import sweep`` is the same function.
"""

from lightning_reg.sweeps.arguments import (
    PATH_ORDER,
    PRUNERS,
    SAMPLERS,
    TRAINER_DEFAULTS,
    Pruner,
    Sampler,
    WarmStart,
    check_arguments,
)
from lightning_reg.sweeps.callbacks import BestValue, CarryOptimizerState, ReportToTrial
from lightning_reg.sweeps.result import MODES, STATES, Mode, State, SweepResult
from lightning_reg.sweeps.runner import WARM_START_BUDGET, WARM_START_PATIENCE, sweep
from lightning_reg.sweeps.storages import HEARTBEAT_INTERVAL, MAX_RETRY, open_storage

__all__ = [
    "HEARTBEAT_INTERVAL",
    "MAX_RETRY",
    "MODES",
    "PATH_ORDER",
    "PRUNERS",
    "SAMPLERS",
    "STATES",
    "TRAINER_DEFAULTS",
    "WARM_START_BUDGET",
    "WARM_START_PATIENCE",
    "BestValue",
    "CarryOptimizerState",
    "Mode",
    "Pruner",
    "ReportToTrial",
    "Sampler",
    "State",
    "SweepResult",
    "WarmStart",
    "check_arguments",
    "open_storage",
    "sweep",
]
