"""L1, L2 (weight decay) and Elastic Net regularization for PyTorch Lightning, exact and observable.

The engine (:class:`Regularizer`, the options, :func:`shrink`) needs only torch. The Lightning-facing
names (:class:`RegularizedModule`, :class:`RegularizationMonitor`, :func:`sweep`, :class:`SweepResult`)
are imported on first use, so a bare training loop pays no Lightning import.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from lightning_reg import _moved
from lightning_reg.options import RegularizationOptions
from lightning_reg.regularizer import Regularizer
from lightning_reg.statistics import WeightStatistics
from lightning_reg.structured.batchnorm import recalibrate_batchnorm
from lightning_reg.structured.channels import UntraceableModelError
from lightning_reg.structured.shrink import shrink
from lightning_reg.utilities.checks import InvalidArgumentError
from lightning_reg.utilities.optional import MissingDependencyError

if _typing.TYPE_CHECKING:
    from lightning_reg.module import RegularizedModule
    from lightning_reg.monitor import RegularizationMonitor
    from lightning_reg.recalibration import BatchNormRecalibration
    from lightning_reg.sweeps import SweepResult, sweep

#: Each Lightning-facing public name, and the module it is imported from when first used.
_LAZY = {
    "BatchNormRecalibration": "lightning_reg.recalibration",
    "RegularizedModule": "lightning_reg.module",
    "RegularizationMonitor": "lightning_reg.monitor",
    "SweepResult": "lightning_reg.sweeps",
    "sweep": "lightning_reg.sweeps",
}

__all__ = [
    "BatchNormRecalibration",
    "InvalidArgumentError",
    "MissingDependencyError",
    "RegularizationMonitor",
    "RegularizationOptions",
    "RegularizedModule",
    "Regularizer",
    "SweepResult",
    "UntraceableModelError",
    "WeightStatistics",
    "recalibrate_batchnorm",
    "shrink",
    "sweep",
]
__version__ = "0.2.0"


def __getattr__(name: str) -> _typing.Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # imported once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    """The public API, and nothing else."""
    return sorted(__all__)


_moved.install()
