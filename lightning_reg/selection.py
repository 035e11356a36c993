"""Which parameters are regularized, and how strongly: the one rule every other part of the package uses.

The rule is the tutorial's, made precise. A parameter is regularized when it

- is trainable (``requires_grad``) and floating point,
- has ``dim() > 1`` (weight matrices and kernels, not biases or norm scales), or is matched by a
  ``rules`` pattern (an explicit opt-in, whatever its ``dim()``),
- matches no ``exclude`` glob under any of its names, and
- is not named by the model's ``no_weight_decay()`` (the timm convention), if the model defines one.

Each regularized parameter gets its strengths (``l1``, ``l2``, ``group_l1``) from the first rule whose
pattern matches one of its names, each strength the rule omits falling back to the module-wide value;
a parameter no rule matches gets the module-wide values.

A parameter shared by several modules (tied weights) is one parameter: it is counted once, under the
first name ``named_parameters()`` gives it, and excluded (or matched by a rule) if any of its names is.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import Tensor, nn

from lightning_reg.functional.couplings import Coupling
from lightning_reg.options import StrengthName

__all__ = [
    "Selection",
    "Strengths",
    "couple",
    "select_parameters",
    "units_by_strength",
    "units_of",
    "warn_if_empty",
    "warn_unmatched",
]

#: The attribute FSDP1 sets on the parameters it flattens (``torch.distributed.fsdp._common_utils``).
_FSDP1_FLATTENED = "_fsdp_flattened"


@dataclass(frozen=True)
class Strengths:
    """The strengths one parameter is regularized with.

    Attributes:
        l1: of the term ``l1 * sum|w|``.
        l2: of the term ``l2 / 2 * sum w^2`` (the optimizer's ``weight_decay``).
        group_l1: of the term ``group_l1 * sum_g ||w_g||_2``.
    """

    l1: float = 0.0
    l2: float = 0.0
    group_l1: float = 0.0


@dataclass(frozen=True)
class Selection:
    """The trainable parameters of a model, split by the rule above.

    Attributes:
        regularized: ``(name, parameter)`` pairs that are regularized, in ``named_parameters()`` order.
        others: the remaining trainable ``(name, parameter)`` pairs.
        unmatched: the ``exclude`` patterns that matched no parameter name (likely typos).
        strengths: the strengths of each regularized parameter, in the order of ``regularized``.
        unmatched_rules: the ``rules`` patterns that matched no parameter name (likely typos).
        couplings: with ``group_by="channels"``, the coupled units that are regularized (see
            :func:`couple`), each with its ``group_l1`` in :attr:`coupling_strengths`.
    """

    regularized: tuple[tuple[str, nn.Parameter], ...]
    others: tuple[tuple[str, nn.Parameter], ...]
    unmatched: tuple[str, ...]
    strengths: tuple[Strengths, ...] = ()
    unmatched_rules: tuple[str, ...] = ()
    couplings: tuple[Coupling, ...] = ()
    coupling_strengths: tuple[float, ...] = ()

    @functools.cached_property
    def _strength_of(self) -> dict[int, Strengths]:
        return {
            id(param): strength for (_, param), strength in zip(self.regularized, self.strengths, strict=True)
        }

    def is_regularized(self, param: Tensor) -> bool:
        """Whether ``param`` is one of :attr:`regularized`."""
        return id(param) in self._strength_of

    def strength_of(self, param: Tensor) -> Strengths:
        """The strengths of the regularized parameter ``param``."""
        return self._strength_of[id(param)]

    def by_strength(self, params: Iterable[Tensor], name: StrengthName) -> list[tuple[float, list[Tensor]]]:
        """The regularized ``params`` grouped by their strength ``name``, in order, leaving out strength 0.

        Groups come in the order of their first parameter. Without ``rules`` this is at most one group:
        all of ``params``, in their order.

        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> chosen = select_parameters(model, rules={"1.*": {"l1": 0.5}}, defaults=Strengths(l1=0.1))
        >>> params = [param for _, param in chosen.regularized]
        >>> [(strength, len(group)) for strength, group in chosen.by_strength(params, "l1")]
        [(0.1, 1), (0.5, 2)]
        """
        groups: dict[float, list[Tensor]] = {}
        for param in params:
            strength: float = getattr(self.strength_of(param), name)
            if strength > 0:
                groups.setdefault(strength, []).append(param)
        return list(groups.items())

    def couplings_by_strength(self, params: Iterable[Tensor]) -> list[tuple[float, list[Coupling]]]:
        """The regularized :attr:`couplings` with a member among ``params``, grouped by ``group_l1 > 0``."""
        return units_by_strength(zip(self.couplings, self.coupling_strengths, strict=True), params)


def select_parameters(
    model: nn.Module,
    exclude: Iterable[str] = (),
    rules: Mapping[str, Mapping[str, float]] | None = None,
    defaults: Strengths = Strengths(),
    group_by: str = "rows",
) -> Selection:
    """Split ``model``'s trainable parameters into the regularized ones and the rest, with strengths.

    Args:
        model: any ``torch.nn.Module``.
        exclude: glob patterns (``fnmatch`` syntax, ``*`` crosses dots) over parameter names.
        rules: glob pattern to some of ``l1``, ``l2``, ``group_l1`` (already validated, see
            :func:`~lightning_reg.options.check_rules`); the first match wins.
        defaults: the module-wide strengths, for parameters no rule matches and keys a rule omits.
        group_by: ``"rows"`` or ``"columns"``: what ``group_l1`` groups, to refuse what cannot be grouped.

    Raises:
        ValueError: a parameter was flattened by FSDP1, which hides the shapes the rule needs; a rule
            gives ``group_l1 > 0`` to a 0-D parameter, or to a 1-D one with ``group_by="columns"``.

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> chosen = select_parameters(model, exclude=["2.*"])
    >>> [name for name, _ in chosen.regularized]
    ['0.weight']
    >>> [name for name, _ in chosen.others]
    ['0.bias', '2.weight', '2.bias']
    >>> chosen = select_parameters(model, rules={"2.*": {"l1": 0.5}}, defaults=Strengths(l1=0.1, l2=0.2))
    >>> [(name, s.l1, s.l2) for (name, _), s in zip(chosen.regularized, chosen.strengths)]
    [('0.weight', 0.1, 0.2), ('2.weight', 0.5, 0.2), ('2.bias', 0.5, 0.2)]
    """
    patterns = tuple(exclude)
    rule_items = tuple((rules or {}).items())
    aliases: dict[int, list[str]] = {}
    first: dict[int, nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
        first.setdefault(id(param), param)

    skip = _no_weight_decay_names(model)
    matched: set[str] = set()
    matched_rules: set[str] = set()
    regularized: list[tuple[str, nn.Parameter]] = []
    others: list[tuple[str, nn.Parameter]] = []
    strengths: list[Strengths] = []
    for key, param in first.items():
        if not param.requires_grad:
            continue
        if getattr(param, _FSDP1_FLATTENED, False):
            raise ValueError(
                f"Cannot select the regularized parameters of {type(model).__name__}: "
                f"{aliases[key][0]!r} was flattened by FSDP1 (Lightning's FSDPStrategy), so its shape, "
                "which the dim() > 1 rule reads, is gone. Use ModelParallelStrategy with "
                "torch.distributed.fsdp.fully_shard (FSDP2): its DTensor parameters keep their shapes."
            )
        names = aliases[key]
        hits = {pattern for pattern in patterns for name in names if fnmatchcase(name, pattern)}
        matched |= hits
        rule_hits = [pattern for pattern, _ in rule_items if any(fnmatchcase(n, pattern) for n in names)]
        matched_rules.update(rule_hits)
        rule = rule_hits[0] if rule_hits else None
        eligible = param.is_floating_point() and (param.dim() > 1 or rule is not None)
        if eligible and not hits and skip.isdisjoint(names):
            given = dict(rules[rule]) if rules is not None and rule is not None else {}
            strength = Strengths(
                l1=given.get("l1", defaults.l1),
                l2=given.get("l2", defaults.l2),
                group_l1=given.get("group_l1", defaults.group_l1),
            )
            _check_groupable(names[0], param, strength, rule, "group_l1" in given, group_by)
            regularized.append((names[0], param))
            strengths.append(strength)
        else:
            others.append((names[0], param))
    unmatched = tuple(pattern for pattern in patterns if pattern not in matched)
    unmatched_rules = tuple(pattern for pattern, _ in rule_items if pattern not in matched_rules)
    return Selection(tuple(regularized), tuple(others), unmatched, tuple(strengths), unmatched_rules)


def _check_groupable(
    name: str, param: nn.Parameter, strength: Strengths, rule: str | None, own: bool, group_by: str
) -> None:
    """Refuse a group term on a parameter that has no groups along ``group_by``.

    Only a rule can select a parameter with ``dim() < 2``. Such a parameter's rows are its single
    entries; a 0-D parameter has no rows and a 1-D one no columns.
    """
    if strength.group_l1 == 0 or param.dim() >= 2 or (param.dim() == 1 and group_by == "rows"):
        return
    source = (
        f"rules[{rule!r}]['group_l1']" if own else f"the module-wide group_l1, which rules[{rule!r}] keeps,"
    )
    missing = "no groups" if param.dim() == 0 else "no columns for group_by='columns'"
    hint = (
        ""
        if param.dim() == 0
        else ", or group_by='rows' (the groups of a 1-D parameter are then its entries)"
    )
    raise ValueError(
        f"Invalid rules[{rule!r}]: it selects {name!r}, a {param.dim()}-D parameter, and {source} gives it "
        f"group_l1={strength.group_l1!r}, but a {param.dim()}-D parameter has {missing}. "
        f"Set 'group_l1': 0.0 in the rule{hint}."
    )


def couple(selection: Selection, traced: Iterable[tuple[Coupling, Sequence[str]]]) -> Selection:
    """``selection`` with the coupled units it regularizes, each ``(coupling, producers)`` of ``traced``.

    A coupling is regularized when every producer (a weight, by name, writing into its channels) is
    regularized and every member is trainable. Its ``group_l1`` is its producers' own; ``exclude``,
    ``rules`` and ``no_weight_decay()`` act on a coupling through its producers only, so a coupling's
    biases and normalization parameters are part of its groups whatever those say of them.

    Raises:
        ValueError: the producers of one coupling have different ``group_l1`` (from ``rules``).
    """
    strength_of = {
        name: strength for (name, _), strength in zip(selection.regularized, selection.strengths, strict=True)
    }
    couplings: list[Coupling] = []
    strengths: list[float] = []
    for coupling, producers in traced:
        if not producers or any(name not in strength_of for name in producers):
            continue
        if not all(member.param.requires_grad for member in coupling.members):
            continue
        given = {name: strength_of[name].group_l1 for name in producers}
        if len(set(given.values())) > 1:
            shown = ", ".join(f"{name!r} (group_l1={value!r})" for name, value in given.items())
            raise ValueError(
                f"Invalid rules: the coupled channels of {coupling.name!r} are written by {shown}, one "
                "group each: give these weights one group_l1 (a rule matching all of them), or exclude "
                "some of them so that the unit is not regularized."
            )
        couplings.append(coupling)
        strengths.append(next(iter(given.values())))
    return dataclasses.replace(selection, couplings=tuple(couplings), coupling_strengths=tuple(strengths))


def warn_unmatched(selection: Selection, model: nn.Module) -> None:
    """Warn of each ``exclude`` or ``rules`` pattern that matched no parameter: likely a typo."""
    unmatched = [("exclude", pattern) for pattern in selection.unmatched]
    unmatched += [("rules", pattern) for pattern in selection.unmatched_rules]
    examples = [name for name, _ in model.named_parameters()][:3]
    for option, pattern in unmatched:
        warnings.warn(
            f"{option} pattern {pattern!r} matches no trainable parameter of "
            f"{type(model).__name__}; names look like {examples}",
            UserWarning,
            stacklevel=3,
        )


def warn_if_empty(selection: Selection, model: nn.Module, asked: Mapping[str, float]) -> None:
    """Warn when a strength is asked for (``asked``: name -> value) but no parameter is regularized."""
    positive = {name: value for name, value in asked.items() if value > 0}
    if selection.regularized or not positive:
        return
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    shapes = ", ".join(f"{name} {tuple(param.shape)}" for name, param in trainable[:3]) or "none"
    strengths = ", ".join(f"{name}={value!r}" for name, value in positive.items())
    warnings.warn(
        f"{strengths} regularizes no parameter of {type(model).__name__}: the strengths apply to "
        f"trainable parameters with dim > 1 not excluded (by exclude or no_weight_decay()), and it has "
        f"{len(trainable)} trainable parameter(s): {shapes}. Nothing will be penalized.",
        UserWarning,
        stacklevel=3,
    )


def _no_weight_decay_names(model: nn.Module) -> frozenset[str]:
    """The parameter names a model opts out of decay with ``no_weight_decay()``, if it defines it."""
    declared = getattr(model, "no_weight_decay", None)
    if not callable(declared):
        return frozenset()
    return frozenset(str(name) for name in declared())


def units_by_strength(
    units: Iterable[tuple[Coupling, float]], params: Iterable[Tensor]
) -> list[tuple[float, list[Coupling]]]:
    """The ``units`` with a member among ``params``, grouped by their strength (``> 0``), in order.

    >>> import torch
    >>> w = nn.Parameter(torch.ones(2, 2))
    >>> [(s, [u.name for u in us]) for s, us in units_by_strength([(Coupling.along("w", w, 0), 0.5)], [w])]
    [(0.5, ['w'])]
    """
    ids = {id(param) for param in params}
    groups: dict[float, list[Coupling]] = {}
    for unit, strength in units:
        if strength > 0 and any(id(member.param) in ids for member in unit.members):
            groups.setdefault(strength, []).append(unit)
    return list(groups.items())


def units_of(selection: Selection, group_by: str, *, every: bool = False) -> list[tuple[Coupling, float]]:
    """The units of the group term with their ``group_l1``: the coupled channels (``"channels"``), else
    each regularized weight's rows or columns (:meth:`~lightning_reg.functional.couplings.Coupling.along`)
    where its ``group_l1 > 0``; with ``every``, each regularized weight's, whatever its strength (a weight
    with fewer than two dims: its entries), as the statistics count them.

    >>> model = nn.Sequential(nn.Linear(4, 3))
    >>> [(unit.name, unit.count, strength) for unit, strength in units_of(
    ...     select_parameters(model, defaults=Strengths(group_l1=0.5)), "columns")]
    [('0.weight', 4, 0.5)]
    """
    if group_by == "channels":
        return list(zip(selection.couplings, selection.coupling_strengths, strict=True))
    axis = 0 if group_by == "rows" else 1
    return [
        (_own_groups(name, param, axis), strength.group_l1)
        for (name, param), strength in zip(selection.regularized, selection.strengths, strict=True)
        if every or strength.group_l1 > 0
    ]


def _own_groups(name: str, param: Tensor, axis: int) -> Coupling:
    """``param``'s groups along ``axis``; with fewer than two dims, its entries."""
    if param.dim() == 0:
        param = param.detach().reshape(1)
    return Coupling.along(name, param, axis if param.dim() >= 2 else 0)
