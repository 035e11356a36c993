"""The regularization options: declared, documented, defaulted and validated once, in this file.

:class:`RegularizationOptions` holds every option. ``Regularizer`` and ``RegularizedModule`` take the same
keywords and hand them here; their ``Args:`` sections are built from :data:`OPTION_DOCS` by
:func:`document_options`, so an option is described in one place and reads the same in all three.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar, get_args

from lightning_reg.utilities.checks import (
    check_choice,
    check_flag,
    check_globs,
    check_integer,
    check_number,
    check_rules,
    check_strengths,
)

__all__ = [
    "GROUP_BY",
    "L1_MODES",
    "L2_MODES",
    "MODE_OPTIONS",
    "OPTIONS_PLACEHOLDER",
    "OPTION_DOCS",
    "PROXIMAL_THRESHOLDS",
    "STRENGTH_NAMES",
    "GroupBy",
    "L1Mode",
    "L2Mode",
    "ProximalThreshold",
    "RegularizationOptions",
    "StrengthName",
    "document_options",
    "mode_choices",
    "options_section",
]

StrengthName = Literal["l1", "l2", "group_l1"]
L1Mode = Literal["loss", "proximal"]
L2Mode = Literal["weight_decay", "loss", "decoupled"]
GroupBy = Literal["rows", "columns", "channels"]
ProximalThreshold = Literal["optimizer", "lr"]

#: The strengths, in the order of every table that shows them; the keys a rule of ``rules`` may set.
STRENGTH_NAMES: tuple[StrengthName, ...] = get_args(StrengthName)
L1_MODES: tuple[L1Mode, ...] = get_args(L1Mode)
L2_MODES: tuple[L2Mode, ...] = get_args(L2Mode)
#: The options that choose how a term reaches the weights; each value is implemented by the term classes
#: registered for it (:mod:`lightning_reg.terms`).
MODE_OPTIONS: tuple[str, ...] = ("l1_mode", "l2_mode")
GROUP_BY: tuple[GroupBy, ...] = get_args(GroupBy)
PROXIMAL_THRESHOLDS: tuple[ProximalThreshold, ...] = get_args(ProximalThreshold)

#: Each option's documentation, by theme: how strong, which weights, how the terms reach them, when, and
#: the activity term. The ``Args:`` and ``Attributes:`` sections of the entry points are made of these.
OPTION_DOCS: dict[str, str] = {
    "l1": "strength of the L1 term ``l1 * sum|w|``.",
    "l2": "strength of the L2 term ``l2 / 2 * sum w^2``: PyTorch's ``weight_decay`` (gradient ``l2 * w``).",
    "group_l1": "strength of the group term ``group_l1 * sum_g ||w_g||_2`` over the groups ``w_g`` that "
    "``group_by`` makes.",
    "group_by": '``"rows"`` (dim 0 of each weight: output units, conv filters), ``"columns"`` (dim 1: input '
    'units, input channels) or ``"channels"``: coupled units traced from the model (the ``structured`` '
    "extra; see :mod:`~lightning_reg.structured.channels`): each group holds every slice of one channel, "
    "the producing layer's row and bias entry, the normalization's scale and shift, the consumers' input "
    "slices and everything added to it through residual connections, or one attention head; such a group "
    "is regularized when every weight writing into it is and all its members are trainable, with those "
    "weights' common ``group_l1``, whatever ``exclude`` and ``rules`` say of its other members (biases, "
    "BatchNorm parameters). The groups of ``group_l1`` and of the dead-unit count.",
    "exclude": "glob patterns (``fnmatch``; ``*`` crosses dots) over ``named_parameters()`` names that are "
    "never regularized; a tied parameter is excluded if any of its names matches.",
    "rules": "glob pattern over ``named_parameters()`` names to some of ``l1``, ``l2``, ``group_l1``, e.g. "
    '``{"embed.*": {"l2": 0.0}, "*.bias": {"l1": 1e-5}}``: the first rule matching a parameter '
    "gives its strengths, each key it omits falling back to the module-wide value; a matched parameter "
    "is regularized even with ``dim() <= 1`` (an explicit opt-in); ``exclude`` and ``no_weight_decay()`` "
    "beat rules. With several distinct ``l2``, the decay groups are ``decay`` (the module-wide ``l2``) "
    "and ``decay/<l2>``; a rule's ``l2=0`` puts its parameters in ``no_decay``.",
    "l1_mode": '``"loss"`` (the tutorial\'s) adds the L1 and group terms to the training loss; '
    '``"proximal"`` applies their proximal operators after every optimizer step instead: exact zeros.',
    "proximal_threshold": 'how far the proximal step shrinks each entry: ``"optimizer"`` (default) by the '
    "strength times the step the optimizer has just applied to that entry's gradient (SGD with or "
    "without momentum, Adam, AdamW, NAdam, RAdam, Adamax, RMSprop, Adagrad; see "
    ":mod:`~lightning_reg.optim.step_sizes`), so that training lands on the minimiser of "
    '``loss + l1 * sum|w| + group_l1 * sum_g ||w_g||`` as with plain SGD; ``"lr"`` by ``lr * l1`` (ISTA), '
    "for any optimizer, exact for plain SGD only.",
    "l2_mode": "``\"weight_decay\"`` (the tutorial's) sets the optimizer's ``weight_decay`` on the "
    'regularized weights only; ``"loss"`` adds the L2 term to the loss; ``"decoupled"`` multiplies '
    "``w`` by ``1 - lr * l2`` right before every update (Adam then is AdamW), ``lr`` being the learning "
    "rate of the group holding ``w`` at that step.",
    "l1_warmup_steps": "ramp the L1 strength up over this many optimizer steps: at step ``s`` (from 0) it is "
    "``l1 * min(1, (s + 1) / l1_warmup_steps)``; ``0``: no ramp. ``RegularizedModule`` takes ``s`` from "
    "``trainer.global_step``, so a resumed run continues the ramp; a bare loop sets "
    "``Regularizer.global_step``.",
    "fused": "run the package's own work at each step (the L1 term's value and gradient, the decoupled "
    "decay, the proximal and group steps) as kernels ``torch.compile`` generates: C++ on the CPU (a C++ "
    "compiler must be installed), Triton on CUDA; each is compiled once per parameter layout, on the "
    "first step (see the torch.compile guide). The same numbers as ``False`` to float tolerance, with "
    "the same zeros.",
    "activity_l1": "module name (as in ``named_modules()``) to strength: ``strength * sum(|a|) / "
    "a.shape[0]`` is added to the loss for every output ``a`` of that module in a training step (Keras' "
    "activity regularizer; see :class:`~lightning_reg.activity.ActivityPenalty`).",
}

#: The line of a docstring that :func:`document_options` replaces with the options' entries.
OPTIONS_PLACEHOLDER = "@options@"

_Documented = TypeVar("_Documented", bound=Callable[..., Any])


def mode_choices(option: str) -> tuple[str, ...]:
    """The values the mode option ``option`` accepts.

    >>> mode_choices("l1_mode")
    ('loss', 'proximal')
    """
    return {"l1_mode": L1_MODES, "l2_mode": L2_MODES}[option]


def options_section(indent: str, width: int = 110) -> str:
    """The entries ``name: text`` of every option, at ``indent``, wrapped to ``width`` columns.

    >>> print(options_section("    ").splitlines()[0])
        l1: strength of the L1 term ``l1 * sum|w|``.
    """
    entries = [
        textwrap.fill(
            f"{name}: {text}",
            width=width,
            initial_indent=indent,
            subsequent_indent=indent + "    ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        for name, text in OPTION_DOCS.items()
    ]
    return "\n".join(entries)


def document_options(documented: _Documented) -> _Documented:
    """Replace the ``@options@`` line of ``documented``'s docstring with :func:`options_section`."""
    doc = documented.__doc__ or ""
    lines = doc.splitlines()
    for index, line in enumerate(lines):
        if line.strip() == OPTIONS_PLACEHOLDER:
            indent = line[: len(line) - len(line.lstrip())]
            lines[index] = options_section(indent)
            documented.__doc__ = "\n".join(lines)
            return documented
    raise ValueError(f"{documented.__qualname__}'s docstring has no {OPTIONS_PLACEHOLDER} line")


@document_options
@dataclass(frozen=True, kw_only=True)
class RegularizationOptions:
    """What to regularize and how strongly; validated on construction.

    Attributes:
        @options@

    >>> RegularizationOptions(l1=1e-5, l2=1e-4, exclude=["*.bias"])  # doctest: +NORMALIZE_WHITESPACE
    RegularizationOptions(l1=1e-05, l2=0.0001, group_l1=0.0, group_by='rows', exclude=('*.bias',), rules={},
                          l1_mode='loss', proximal_threshold='optimizer', l2_mode='weight_decay',
                          l1_warmup_steps=0, fused=False, activity_l1={})
    >>> RegularizationOptions(l1=float("nan"))
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid l1: nan (expected a finite number >= 0)
    """

    l1: float = 0.0
    l2: float = 0.0
    group_l1: float = 0.0
    group_by: GroupBy = "rows"
    exclude: Sequence[str] = field(default=())
    rules: Mapping[str, Mapping[str, float]] | None = None
    l1_mode: L1Mode = "loss"
    proximal_threshold: ProximalThreshold = "optimizer"
    l2_mode: L2Mode = "weight_decay"
    l1_warmup_steps: int = 0
    fused: bool = False
    activity_l1: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        checked = {
            "l1": check_number("l1", self.l1),
            "l2": check_number("l2", self.l2),
            "group_l1": check_number("group_l1", self.group_l1),
            "group_by": check_choice("group_by", self.group_by, GROUP_BY),
            "exclude": check_globs("exclude", self.exclude),
            "rules": check_rules("rules", self.rules, STRENGTH_NAMES),
            "l1_mode": check_choice("l1_mode", self.l1_mode, mode_choices("l1_mode")),
            "proximal_threshold": check_choice(
                "proximal_threshold", self.proximal_threshold, PROXIMAL_THRESHOLDS
            ),
            "l2_mode": check_choice("l2_mode", self.l2_mode, mode_choices("l2_mode")),
            "l1_warmup_steps": check_integer("l1_warmup_steps", self.l1_warmup_steps),
            "fused": check_flag("fused", self.fused),
            "activity_l1": check_strengths("activity_l1", self.activity_l1),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> RegularizationOptions:
        """The options among ``arguments``, validated: an entry point passes its ``locals()``.

        >>> RegularizationOptions.from_arguments({**vars(RegularizationOptions()), "l1": 0.5, "x": 1}).l1
        0.5
        """
        return cls(**{name: arguments[name] for name in OPTION_DOCS})

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
