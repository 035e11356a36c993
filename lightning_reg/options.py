"""The regularization options, validated once, shared by the engine and the Lightning adapter.

Every option lives in :class:`RegularizationOptions`. ``Regularizer`` and ``RegularizedModule`` take the
same keywords and hand them here, so a new option is declared, defaulted and validated in this file.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

L1Mode = Literal["loss", "proximal"]
L2Mode = Literal["weight_decay", "loss", "decoupled"]
GroupBy = Literal["rows", "columns"]
ProximalThreshold = Literal["optimizer", "lr"]

L1_MODES: tuple[L1Mode, ...] = ("loss", "proximal")
L2_MODES: tuple[L2Mode, ...] = ("weight_decay", "loss", "decoupled")
GROUP_BY: tuple[GroupBy, ...] = ("rows", "columns")
PROXIMAL_THRESHOLDS: tuple[ProximalThreshold, ...] = ("optimizer", "lr")
#: The strengths a rule of ``rules`` may set.
RULE_KEYS = ("l1", "l2", "group_l1")


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


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` naming it.

    >>> check_choice("l1_mode", "prox", ("loss", "proximal"))
    Traceback (most recent call last):
    ...
    ValueError: Invalid l1_mode: 'prox' (expected one of 'loss', 'proximal')
    """
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {expected})")
    return value


def check_count(name: str, value: object) -> int:
    """Return ``value`` if it is an integer >= 0, else raise ``ValueError`` naming it.

    >>> check_count("l1_warmup_steps", 2.5)
    Traceback (most recent call last):
    ...
    ValueError: Invalid l1_warmup_steps: 2.5 (expected an integer >= 0)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"Invalid {name}: {value!r} (expected an integer >= 0)")
    return int(value)


def check_strengths(name: str, value: object) -> dict[str, float]:
    """Return ``value`` as a dict of names to strengths (``None``: empty), else raise ``ValueError``.

    >>> check_strengths("activity_l1", {"encoder": 1e-3})
    {'encoder': 0.001}
    >>> check_strengths("activity_l1", {"encoder": -1})
    Traceback (most recent call last):
    ...
    ValueError: Invalid activity_l1['encoder']: -1 (expected a finite number >= 0)
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"Invalid {name}: {value!r} (expected a dict of module names to strengths)")
    checked = {}
    for key, strength in value.items():
        if not isinstance(key, str):
            raise ValueError(f"Invalid {name}: key {key!r} (expected module names, as strings)")
        checked[key] = check_strength(f"{name}[{key!r}]", strength)
    return checked


def check_rules(name: str, value: object) -> dict[str, dict[str, float]]:
    """Return ``value`` as a dict of glob patterns to dicts of strengths (``None``: empty), else raise.

    Each rule maps a non-empty glob over parameter names to some of the strengths ``l1``, ``l2`` and
    ``group_l1``; every strength is checked by :func:`check_strength`.

    >>> check_rules("rules", {"*.bias": {"l1": 1e-4}})
    {'*.bias': {'l1': 0.0001}}
    >>> check_rules("rules", {"*.bias": {"l1": -1}})
    Traceback (most recent call last):
    ...
    ValueError: Invalid rules['*.bias']['l1']: -1 (expected a finite number >= 0)
    >>> check_rules("rules", {"*.bias": {"decay": 0.1}})
    Traceback (most recent call last):
    ...
    ValueError: Invalid rules['*.bias']: unknown key 'decay' (expected keys among 'l1', 'l2', 'group_l1')
    """
    if value is None:
        return {}
    keys = ", ".join(repr(key) for key in RULE_KEYS)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"Invalid {name}: {value!r} (expected a dict of glob patterns to dicts of strengths, "
            f"e.g. {name}={{'*.bias': {{'l2': 1e-4}}}})"
        )
    checked: dict[str, dict[str, float]] = {}
    for pattern, strengths in value.items():
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"Invalid {name}: pattern {pattern!r} (expected non-empty glob strings)")
        where = f"{name}[{pattern!r}]"
        if not isinstance(strengths, Mapping):
            raise ValueError(f"Invalid {where}: {strengths!r} (expected a dict with keys among {keys})")
        for key in strengths:
            if key not in RULE_KEYS:
                raise ValueError(f"Invalid {where}: unknown key {key!r} (expected keys among {keys})")
        checked[pattern] = {
            key: check_strength(f"{where}[{key!r}]", strength) for key, strength in strengths.items()
        }
    return checked


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
        l1: strength of the L1 penalty ``l1 * sum(|w|)``.
        l2: strength of the L2 penalty ``l2 / 2 * sum(w**2)`` (gradient ``l2 * w``: PyTorch's
            ``weight_decay``).
        exclude: glob patterns over ``named_parameters()`` names that are never regularized.
        l1_mode: ``"loss"`` adds the L1 and group-L1 terms to the training loss; ``"proximal"`` applies
            their proximal operators (soft thresholding) after every optimizer step, giving exact zeros.
        group_l1: strength of the group penalty ``group_l1 * sum_g ||w_g||_2`` over the slices ``w_g``
            of each weight along ``group_by``.
        group_by: ``"rows"`` (dim 0: output units, conv filters) or ``"columns"`` (dim 1: input units,
            input channels).
        l2_mode: ``"weight_decay"`` sets the optimizer's ``weight_decay``; ``"loss"`` adds the L2 term to
            the loss; ``"decoupled"`` multiplies ``w`` by ``1 - lr * l2`` before every optimizer update.
        l1_warmup_steps: ramp the L1 strength up over this many optimizer steps: at step ``s`` (from 0)
            it is ``l1 * min(1, (s + 1) / l1_warmup_steps)``; ``0`` means no ramp.
        activity_l1: module name (as in ``named_modules()``) to strength: ``strength * sum(|a|) /
            a.shape[0]`` is added to the training loss for every output ``a`` of that module during a
            training step (Keras' activity regularizer).
        rules: glob pattern over ``named_parameters()`` names to strengths (``{"l1": ..., "l2": ...,
            "group_l1": ...}``, any subset): a parameter gets its strengths from the first rule whose
            pattern matches one of its names, each key the rule omits falling back to the module-wide
            value. A parameter a rule matches is regularized even with ``dim() <= 1`` (an explicit
            opt-in); ``exclude`` and ``no_weight_decay()`` beat rules.
        proximal_threshold: how far the proximal step (``l1_mode="proximal"``) shrinks each entry:
            ``"optimizer"`` (default) by the strength times the step the optimizer has just applied to
            that entry's gradient (see :mod:`~lightning_reg.step_sizes`), so that training converges to
            the minimiser of ``loss + l1 * sum|w| + group_l1 * sum_g ||w_g||`` with Adam, RMSprop,
            Adagrad or momentum as with plain SGD; ``"lr"`` by ``lr * l1`` (ISTA: exact for plain SGD
            only), for any optimizer.

    >>> RegularizationOptions(l1=1e-5, l2=1e-4, exclude=["*.bias"])  # doctest: +NORMALIZE_WHITESPACE
    RegularizationOptions(l1=1e-05, l2=0.0001, exclude=('*.bias',), l1_mode='loss', group_l1=0.0,
                          group_by='rows', l2_mode='weight_decay', l1_warmup_steps=0, activity_l1={},
                          rules={}, proximal_threshold='optimizer')
    >>> RegularizationOptions(l1=float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: Invalid l1: nan (expected a finite number >= 0)
    """

    l1: float = 0.0
    l2: float = 0.0
    exclude: Sequence[str] = field(default=())
    l1_mode: L1Mode = "loss"
    group_l1: float = 0.0
    group_by: GroupBy = "rows"
    l2_mode: L2Mode = "weight_decay"
    l1_warmup_steps: int = 0
    activity_l1: Mapping[str, float] | None = None
    rules: Mapping[str, Mapping[str, float]] | None = None
    proximal_threshold: ProximalThreshold = "optimizer"

    def __post_init__(self) -> None:
        checked = {
            "l1": check_strength("l1", self.l1),
            "l2": check_strength("l2", self.l2),
            "exclude": check_globs("exclude", self.exclude),
            "l1_mode": check_choice("l1_mode", self.l1_mode, L1_MODES),
            "group_l1": check_strength("group_l1", self.group_l1),
            "group_by": check_choice("group_by", self.group_by, GROUP_BY),
            "l2_mode": check_choice("l2_mode", self.l2_mode, L2_MODES),
            "l1_warmup_steps": check_count("l1_warmup_steps", self.l1_warmup_steps),
            "activity_l1": check_strengths("activity_l1", self.activity_l1),
            "rules": check_rules("rules", self.rules),
            "proximal_threshold": check_choice(
                "proximal_threshold", self.proximal_threshold, PROXIMAL_THRESHOLDS
            ),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def l1_at(self, step: int) -> float:
        """The L1 strength at optimizer step ``step`` (from 0), with the warm-up ramp.

        >>> RegularizationOptions(l1=1.0, l1_warmup_steps=4).l1_at(0)
        0.25
        """
        if self.l1_warmup_steps == 0:
            return self.l1
        return self.l1 * self.l1_ramp(step)

    def l1_ramp(self, step: int) -> float:
        """The factor the warm-up scales every L1 strength by at optimizer step ``step`` (from 0).

        >>> RegularizationOptions(l1=1.0, l1_warmup_steps=4).l1_ramp(1)
        0.5
        """
        if self.l1_warmup_steps == 0:
            return 1.0
        return min(1.0, (step + 1) / self.l1_warmup_steps)

    def as_hparams(self) -> dict[str, Any]:
        """The options as plain values (lists, floats) for ``hparams`` and checkpoints."""
        values = asdict(self)
        values["exclude"] = list(self.exclude)
        values["activity_l1"] = dict(self.activity_l1 or {})
        values["rules"] = {pattern: dict(strengths) for pattern, strengths in (self.rules or {}).items()}
        return values
