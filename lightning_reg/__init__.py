"""L1, L2 (weight decay) and Elastic Net regularization for PyTorch Lightning, exact and observable.

The engine (:class:`Regularizer`, the options, :func:`shrink`) needs only torch. The Lightning-facing
names (:class:`RegularizedModule`, :class:`RegularizationMonitor`, :func:`sweep`, :class:`SweepResult`)
are imported on first use, so a bare training loop pays no Lightning import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_reg.batchnorm import recalibrate_batchnorm
from lightning_reg.options import RegularizationOptions
from lightning_reg.regularizer import Regularizer
from lightning_reg.shrink import shrink
from lightning_reg.statistics import WeightStatistics

if TYPE_CHECKING:
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
    "RegularizationMonitor",
    "RegularizationOptions",
    "RegularizedModule",
    "Regularizer",
    "SweepResult",
    "WeightStatistics",
    "recalibrate_batchnorm",
    "shrink",
    "sweep",
]
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # imported once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
