"""Optional dependencies: imported only by the feature that needs them, with one message when missing.

scikit-learn and matplotlib come with the ``demo`` extra, Optuna with the ``sweep`` extra. A feature
imports them through :func:`require`, which names the feature, the missing distribution and the ``pip``
command that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Import name -> distribution name, where they differ.
_DISTRIBUTIONS = {"sklearn": "scikit-learn"}


class MissingDependencyError(ImportError):
    """An optional dependency of a feature is not installed."""


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
