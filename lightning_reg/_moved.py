"""The module paths of 0.2, which moved into subpackages in 0.3: importing one still works, with a
``FutureWarning`` naming the new path, until the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = [
    "MOVED",
    "install",
]

#: Each module 0.2.0 shipped under ``lightning_reg`` (but ``shrink``, whose name is the function's) -> the
#: subpackage it moved to. Modules added since were never at the old paths.
MOVED = {
    **dict.fromkeys(("couplings", "deferred", "kernels", "penalties", "sharding"), "functional"),
    **dict.fromkeys(("param_groups", "step_hooks", "step_sizes", "step_updates"), "optim"),
    **dict.fromkeys(("channels", "pruning"), "structured"),
    **dict.fromkeys(("checks", "optional"), "utilities"),
}


class _Alias(importlib.abc.Loader):
    """Gives the module at the new path for the old one."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new} in 0.3; the old path goes in the next release",
            FutureWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """The module at the new path is already executed."""


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != "lightning_reg" or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(f"lightning_reg.{MOVED[name]}.{name}"))


def install() -> None:
    """Put the finder of the old paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
