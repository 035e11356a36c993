"""Strength sweeps: one model per point of a grid or per Optuna trial, compared on a validation set.

The modules, by job: :mod:`~lightning_reg.sweeps.result` (:class:`SweepResult`, its best row and plot;
no Lightning), :mod:`~lightning_reg.sweeps.arguments` (every argument checked before training),
:mod:`~lightning_reg.sweeps.runner` (:func:`sweep` itself: the grid, one point's training) and
:mod:`~lightning_reg.sweeps.study` (the Optuna search). ``from lightning_reg import sweep`` is the same
function.
"""

from lightning_reg.sweeps.arguments import SAMPLERS, TRAINER_DEFAULTS, Sampler, check_arguments
from lightning_reg.sweeps.result import MODES, Mode, SweepResult
from lightning_reg.sweeps.runner import sweep

__all__ = [
    "MODES",
    "SAMPLERS",
    "TRAINER_DEFAULTS",
    "Mode",
    "Sampler",
    "SweepResult",
    "check_arguments",
    "sweep",
]
