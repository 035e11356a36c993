"""L1, L2 (weight decay) and Elastic Net regularization for PyTorch Lightning, exact and observable."""

from lightning_reg.module import RegularizedModule
from lightning_reg.monitor import RegularizationMonitor
from lightning_reg.options import RegularizationOptions
from lightning_reg.regularizer import Regularizer, WeightStatistics
from lightning_reg.shrink import shrink
from lightning_reg.sweep import SweepResult, sweep

__all__ = [
    "RegularizationMonitor",
    "RegularizationOptions",
    "RegularizedModule",
    "Regularizer",
    "SweepResult",
    "WeightStatistics",
    "shrink",
    "sweep",
]
__version__ = "0.1.0"
