"""The argument checks of every entry point: one function per kind of value, one message style.

Each check returns the value in its canonical type or raises :class:`InvalidArgumentError`, a
``ValueError`` whose message names the argument, shows the value and says what would be accepted:
``Invalid l1: -1.0 (expected a finite number >= 0)``. The options, the monitor, the sweep and the
command line all check through this module; the command line shows the same ``expected`` text under
its own flag names.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence

__all__ = [
    "InvalidArgumentError",
    "check_choice",
    "check_flag",
    "check_globs",
    "check_integer",
    "check_number",
    "check_rules",
    "check_strength_list",
    "check_strengths",
    "check_text",
    "deprecated",
]


class InvalidArgumentError(ValueError):
    """A value an argument does not accept.

    Attributes:
        name: the argument, as the caller wrote it (``"rules['*.bias']['l1']"`` for a nested value).
        value: the value refused.
        expected: what the argument accepts, as a phrase (``"a finite number >= 0"``).

    >>> str(InvalidArgumentError("l1", -1.0, "a finite number >= 0"))
    'Invalid l1: -1.0 (expected a finite number >= 0)'
    """

    __module__ = "lightning_reg"  # public: shown, caught and documented as lightning_reg.InvalidArgumentError

    def __init__(self, name: str, value: object, expected: str, shown: str | None = None) -> None:
        self.name, self.value, self.expected = name, value, expected
        super().__init__(f"Invalid {name}: {repr(value) if shown is None else shown} (expected {expected})")


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(name: str, value: object, *, above_zero: bool = False) -> float:
    """``value`` as a float if it is a finite number >= 0 (> 0 with ``above_zero``).

    >>> check_number("l1", 1e-4)
    0.0001
    >>> check_number("l2", -1.0)
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid l2: -1.0 (expected a finite number >= 0)
    >>> check_number("near_zero_tol", 0.0, above_zero=True)
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid near_zero_tol: 0.0 (expected a finite number > 0)
    """
    expected = "a finite number > 0" if above_zero else "a finite number >= 0"
    if not _is_real(value):
        raise InvalidArgumentError(name, value, expected, f"{value!r} of type {type(value).__name__}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or number < 0 or (above_zero and number == 0):
        raise InvalidArgumentError(name, value, expected)
    return number


def check_integer(name: str, value: object, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` as an int if it is an integer in ``[minimum, maximum]`` (no upper bound: ``None``).

    >>> check_integer("l1_warmup_steps", 2.5)
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid l1_warmup_steps: 2.5 (expected an integer >= 0)
    >>> check_integer("seed", -1, 0, 2**32 - 1)
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid seed: -1 (expected an integer from 0 to 2**32 - 1)
    """
    if maximum is None:
        expected = f"an integer >= {minimum}"
    else:
        top = "2**32 - 1" if maximum == 2**32 - 1 else str(maximum)
        expected = f"an integer from {minimum} to {top}"
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise InvalidArgumentError(name, value, expected)
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        raise InvalidArgumentError(name, value, expected)
    return number


def check_flag(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False`` (not ``1``, not ``"yes"``).

    >>> check_flag("per_layer", "yes")
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid per_layer: 'yes' (expected True or False)
    """
    if not isinstance(value, bool):
        raise InvalidArgumentError(name, value, "True or False")
    return value


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``.

    >>> check_choice("l1_mode", "prox", ("loss", "proximal"))
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid l1_mode: 'prox' (expected one of 'loss', 'proximal')
    """
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(name, value, "one of " + ", ".join(repr(choice) for choice in choices))
    return value


def check_text(name: str, value: object, expected: str = "a non-empty string") -> str:
    """``value`` if it is a non-empty string.

    >>> check_text("monitor", "", "the name of a logged metric")
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid monitor: '' (expected the name of a logged metric)
    """
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(name, value, expected)
    return value


def check_strength_list(name: str, value: object, *, positive: bool = False) -> list[float]:
    """``value`` as a non-empty list of finite floats ``>= 0`` (``> 0`` with ``positive``).

    >>> check_strength_list("l1", [1e-4, 1e-3])
    [0.0001, 0.001]
    >>> check_strength_list("l1", 1e-3)
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid l1: 0.001 (expected a non-empty list of ...)
    """
    expected = f"a non-empty list of finite numbers {'>' if positive else '>='} 0"
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidArgumentError(name, value, expected)
    items = [float(item) if _is_real(item) else math.nan for item in value]
    valid = bool(items) and all(
        math.isfinite(item) and (item > 0 if positive else item >= 0) for item in items
    )
    if not valid:
        raise InvalidArgumentError(name, value, expected)
    return items


def check_strengths(name: str, value: object) -> dict[str, float]:
    """``value`` as a dict of names to strengths (``None``: empty).

    >>> check_strengths("activity_l1", {"encoder": 1e-3})
    {'encoder': 0.001}
    >>> check_strengths("activity_l1", {"encoder": -1})
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid activity_l1['encoder']: -1 (expected ...)
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(name, value, "a dict of module names to strengths")
    checked = {}
    for key, strength in value.items():
        if not isinstance(key, str):
            raise InvalidArgumentError(name, key, "module names, as strings", f"key {key!r}")
        checked[key] = check_number(f"{name}[{key!r}]", strength)
    return checked


def check_rules(name: str, value: object, keys: Sequence[str]) -> dict[str, dict[str, float]]:
    """``value`` as a dict of glob patterns to dicts of strengths named by ``keys`` (``None``: empty).

    >>> check_rules("rules", {"*.bias": {"l1": 1e-4}}, ("l1", "l2"))
    {'*.bias': {'l1': 0.0001}}
    >>> check_rules("rules", {"*.bias": {"decay": 0.1}}, ("l1", "l2"))
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid rules['*.bias']: unknown key 'decay' (...)
    """
    if value is None:
        return {}
    among = "keys among " + ", ".join(repr(key) for key in keys)
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(
            name,
            value,
            f"a dict of glob patterns to dicts of strengths, e.g. {name}={{'*.bias': {{'l2': 1e-4}}}}",
        )
    checked: dict[str, dict[str, float]] = {}
    for pattern, strengths in value.items():
        if not isinstance(pattern, str) or not pattern:
            raise InvalidArgumentError(name, pattern, "non-empty glob strings", f"pattern {pattern!r}")
        where = f"{name}[{pattern!r}]"
        if not isinstance(strengths, Mapping):
            raise InvalidArgumentError(where, strengths, f"a dict with {among}")
        for key in strengths:
            if key not in keys:
                raise InvalidArgumentError(where, key, among, f"unknown key {key!r}")
        checked[pattern] = {
            key: check_number(f"{where}[{key!r}]", strength) for key, strength in strengths.items()
        }
    return checked


def check_globs(name: str, value: object) -> tuple[str, ...]:
    """``value`` as a tuple of non-empty glob patterns.

    A bare string is refused: ``exclude="bias"`` would otherwise be read as the patterns ``b``, ``i``, ...

    >>> check_globs("exclude", ["*.bias", "norm*"])
    ('*.bias', 'norm*')
    """
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidArgumentError(name, value, f"a list of glob patterns, e.g. {name}=[{str(value)!r}]")
    for pattern in value:
        if not isinstance(pattern, str) or not pattern:
            raise InvalidArgumentError(name, value, "a list of non-empty strings")
    return tuple(value)


def deprecated(old: str, new: str) -> None:
    """Warn (``FutureWarning``) that ``old`` is deprecated in favour of ``new``, and goes in a release.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     deprecated("Regularizer.step", "Regularizer.global_step")
    >>> print(caught[0].message)
    Regularizer.step is deprecated and will be removed in the next release: use Regularizer.global_step
    """
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: use {new}", FutureWarning, stacklevel=3
    )
