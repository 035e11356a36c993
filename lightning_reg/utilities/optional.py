"""Optional imports, all in this module: each is imported only by the feature that needs it, with one
message when missing.

scikit-learn and matplotlib come with the ``demo`` extra, Optuna with the ``sweep`` extra, Torch-Pruning
with the ``structured`` extra. A feature imports them through :func:`require` (or :func:`import_optuna`),
which names the feature, the missing distribution and the ``pip`` command that installs it. torch's
public ``DTensor`` (torch >= 2.4) is imported here too: ``None`` on earlier releases.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

try:  # torch >= 2.4; earlier releases keep DTensor private
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
except ImportError:  # pragma: no cover - depends on the torch build
    DTensor = Partial = Replicate = Shard = None  # type: ignore[misc,assignment]

__all__ = [
    "DTensor",
    "MissingDependencyError",
    "Partial",
    "Replicate",
    "Shard",
    "import_optuna",
    "require",
]

#: Import name -> distribution name, where they differ.
_DISTRIBUTIONS = {"sklearn": "scikit-learn"}


class MissingDependencyError(ImportError):
    """An optional dependency of a feature is not installed."""

    __module__ = "lightning_reg"  # public: shown and caught under this name


def require(module: str, feature: str, extra: str) -> ModuleType:
    """Import ``module`` for ``feature``, or explain how to install it with the package's ``extra``.

    Args:
        module: the module to import, e.g. ``"sklearn.datasets"``.
        feature: what needs it, as the start of a sentence: ``"the demo"``.
        extra: the extra of ``lightning-reg`` that installs it: ``"demo"``.

    Raises:
        MissingDependencyError: the module cannot be imported.

    >>> require("math", "the demo", "demo").sqrt(4.0)
    2.0
    >>> try:
    ...     require("no_such_module.datasets", "the demo", "demo")
    ... except MissingDependencyError as error:
    ...     print(error)
    the demo needs no_such_module, which is not installed: pip install 'lightning-reg[demo]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        raise MissingDependencyError(
            f"{feature} needs {_DISTRIBUTIONS.get(top, top)}, which is not installed: "
            f"pip install 'lightning-reg[{extra}]'"
        ) from error


def import_optuna() -> Any:
    """The ``optuna`` module, for sweeps with ``n_trials``, ``storage`` or ``pruner``.

    Raises:
        MissingDependencyError: Optuna is not installed.
    """
    return require("optuna", "sweep with n_trials, storage or pruner", "sweep")
