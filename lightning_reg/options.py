"""The regularization options, validated once, shared by the engine and the Lightning adapter.

Every option lives in :class:`RegularizationOptions`. ``Regularizer`` and ``RegularizedModule`` take the
same keywords and hand them here, so a new option is declared, defaulted and validated in this file.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def check_strength(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number >= 0, else raise ``ValueError`` naming it.

    >>> check_strength("l1", 1e-4)
    0.0001
    >>> check_strength("l2", -1.0)
    Traceback (most recent call last):
    ...
    ValueError: Invalid l2: -1.0 (expected a finite number >= 0)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Invalid {name}: {value!r} of type {type(value).__name__} (expected a finite number >= 0)"
        )
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite number >= 0)")
    return number


def check_globs(name: str, value: object) -> tuple[str, ...]:
    """Return ``value`` as a tuple of non-empty glob patterns, else raise ``ValueError`` naming it.

    A bare string is refused: ``exclude="bias"`` would otherwise be read as the patterns ``b``, ``i``, ...

    >>> check_globs("exclude", ["*.bias", "norm*"])
    ('*.bias', 'norm*')
    """
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(
            f"Invalid {name}: {value!r} (expected a list of glob patterns, e.g. {name}=[{str(value)!r}])"
        )
    for pattern in value:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"Invalid {name}: {value!r} (each pattern must be a non-empty string)")
    return tuple(value)


@dataclass(frozen=True)
class RegularizationOptions:
    """What to regularize and how strongly; validated on construction.

    Attributes:
        l1: strength of the L1 term ``l1 * sum(|w|)`` added to the training loss.
        l2: the optimizer's ``weight_decay`` on the regularized parameters (gradient ``l2 * w``,
            the loss term ``l2 / 2 * sum(w**2)``).
        exclude: glob patterns over ``named_parameters()`` names that are never regularized.

    >>> RegularizationOptions(l1=1e-5, l2=1e-4, exclude=["*.bias"])
    RegularizationOptions(l1=1e-05, l2=0.0001, exclude=('*.bias',))
    >>> RegularizationOptions(l1=float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: Invalid l1: nan (expected a finite number >= 0)
    """

    l1: float = 0.0
    l2: float = 0.0
    exclude: Sequence[str] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "l1", check_strength("l1", self.l1))
        object.__setattr__(self, "l2", check_strength("l2", self.l2))
        object.__setattr__(self, "exclude", check_globs("exclude", self.exclude))

    def as_hparams(self) -> dict[str, Any]:
        """The options as plain values (lists, floats) for ``hparams`` and checkpoints."""
        values = asdict(self)
        values["exclude"] = list(self.exclude)
        return values
