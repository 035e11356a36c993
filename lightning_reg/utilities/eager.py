"""What always runs eagerly, also when called from code ``torch.compile`` traces.

The package's work around a training step and an optimizer step reads Python-side state (the Trainer's
step count, the regularizer's caches, the optimizer's state per parameter). Traced by Dynamo, that
state becomes guards that fail at every step (a recompile each time), and reads of the optimizer's
state across a graph break have come back for the wrong parameter. Marked with :func:`always_eager`,
that work is one graph break at its boundary instead, and runs as written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

__all__ = [
    "F",
    "always_eager",
]

F = TypeVar("F", bound=Callable[..., Any])


def always_eager(function: F) -> F:
    """``function``, run eagerly even when compiled code calls it (``torch.compiler.disable``).

    >>> double = always_eager(lambda x: 2 * x)
    >>> torch.compile(lambda x: double(x) + 1, backend="eager")(torch.ones(1))
    tensor([3.])
    """
    return cast(F, torch.compiler.disable(function))  # type: ignore[no-untyped-call]
