"""Optimizer parameter groups with weight decay on the regularized parameters only.

Two ways in: :func:`decay_groups` builds fresh group dicts for a new optimizer, and
:func:`split_optimizer` rewrites the groups of an optimizer that already exists (what a
``configure_optimizers`` returns), together with the per-group lists of the LR schedulers bound to it,
so that a scheduler keeps driving every group after the split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "DECAY",
    "NO_DECAY",
    "PER_GROUP_SCHEDULER_ATTRIBUTES",
    "check_no_own_decay",
    "decay_groups",
    "decay_names",
    "split_optimizer",
    "unwrapped",
]

DECAY = "decay"
NO_DECAY = "no_decay"

#: Attributes of ``torch.optim.lr_scheduler`` classes that hold one entry per parameter group.
PER_GROUP_SCHEDULER_ATTRIBUTES = (
    "base_lrs",
    "_last_lr",
    "lr_lambdas",
    "min_lrs",
    "max_lrs",
    "base_momentums",
    "max_momentums",
)


def unwrapped(optimizer: Any) -> Any:
    """The optimizer that ``optimizer`` wraps, if it is a wrapper (Fabric's, Lightning's); else itself.

    The wrappers subclass the wrapped optimizer's class but share its attributes only for reading: groups
    assigned to a wrapper, or a step rule looked up by its class, would miss the optimizer that steps.

    >>> import torch
    >>> sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> unwrapped(sgd) is sgd
    True
    """
    inner = getattr(optimizer, "optimizer", None)
    while isinstance(inner, Optimizer) and inner is not optimizer:
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    return optimizer


def decay_groups(
    regularized: Sequence[Tensor],
    others: Sequence[Tensor],
    weight_decay: float,
    decays: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer groups: ``regularized`` with weight decay, ``others`` without; empty groups dropped.

    Every regularized parameter decays by ``weight_decay``, or by its own entry of ``decays`` (one per
    regularized parameter, from ``rules``). One group per distinct decay (see :func:`decay_names`);
    regularized parameters whose own decay is ``0`` join the ``no_decay`` group, after ``others``.

    >>> import torch
    >>> w, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    >>> [(g["name"], g["weight_decay"]) for g in decay_groups([w], [b], 0.01)]
    [('decay', 0.01), ('no_decay', 0.0)]
    >>> [(g["name"], g["weight_decay"]) for g in decay_groups([w, b], [], 0.01, decays=[0.01, 0.5])]
    [('decay', 0.01), ('decay/0.5', 0.5)]
    """
    target = _targets(regularized, weight_decay, decays)
    groups = [
        {
            "params": [p for p in regularized if target[id(p)] == (name, decay)],
            "weight_decay": decay,
            "name": name,
        }
        for name, decay in _parts(target, weight_decay)
        if name != NO_DECAY
    ]
    stay = [p for p in regularized if target[id(p)][0] == NO_DECAY]
    groups.append({"params": [*others, *stay], "weight_decay": 0.0, "name": NO_DECAY})
    return [group for group in groups if group["params"]]


def decay_names(decays: Iterable[float], weight_decay: float) -> dict[float, str]:
    """The group name of each distinct decay in ``decays``, in the order the groups are built.

    With one distinct decay (no ``rules``, or rules that agree) it is ``decay``, as without rules.
    Otherwise ``0`` is ``no_decay`` (the parameters do not decay), the module-wide ``weight_decay``
    is ``decay`` and each other value ``v`` is ``decay/<repr(v)>``; ``decay`` comes first, then the others
    in order of first appearance.

    >>> decay_names([0.01, 0.5, 0.01, 0.0], 0.01)
    {0.01: 'decay', 0.5: 'decay/0.5', 0.0: 'no_decay'}
    >>> decay_names([0.5, 0.0], 0.0)
    {0.5: 'decay', 0.0: 'no_decay'}
    """
    distinct = list(dict.fromkeys(decays))
    if len(distinct) <= 1 and (weight_decay == 0 or 0 not in distinct):
        return {decay: DECAY for decay in distinct}
    decaying = [decay for decay in distinct if decay != 0]
    if weight_decay in decaying:
        decaying.remove(weight_decay)
        decaying.insert(0, weight_decay)
    names = {
        decay: DECAY if len(decaying) == 1 or decay == weight_decay else f"{DECAY}/{decay!r}"
        for decay in decaying
    }
    if 0 in distinct:
        names[0.0] = NO_DECAY
    return names


def split_optimizer(
    optimizer: Optimizer,
    regularized: Iterable[Tensor],
    weight_decay: float,
    schedulers: Iterable[Any] = (),
    decays: Sequence[float] | None = None,
) -> None:
    """Split every group of ``optimizer`` in place into its regularized part and the rest.

    The regularized part gets ``weight_decay`` (or, with ``decays``, one part per distinct decay of the
    regularized parameters, each parameter's own, see :func:`decay_groups`); the rest gets ``0``; every
    other hyperparameter of the original group is kept. Groups are named ``decay`` / ``no_decay``
    (``<name>/decay`` when the original group had a name or there were several, ``pg1/decay``, ...; with
    several decays also ``decay/<value>``, see :func:`decay_names`) so that ``LearningRateMonitor`` shows
    readable keys. ``schedulers`` bound to this optimizer have their per-group lists expanded to match.

    Raises:
        ValueError: a group has no ``weight_decay`` (the optimizer cannot apply L2), or already has a
            weight decay other than ``0`` or ``weight_decay`` (two sources of decay would disagree).
    """
    regularized = list(regularized)
    target = _targets(regularized, weight_decay, decays)
    if _already_split(optimizer, target, weight_decay):
        return
    parts = _parts(target, weight_decay)
    own = [decay for _, decay in target.values() if decay not in (0, weight_decay)]  # from rules
    old_groups = optimizer.param_groups
    several = len(old_groups) > 1
    new_groups: list[dict[str, Any]] = []
    origin: list[int] = []
    for index, group in enumerate(old_groups):
        _check_group(optimizer, index, group, weight_decay, own)
        prefix = group.get("name") or (f"pg{index + 1}" if several else "")
        for suffix, decay in parts:
            params = [p for p in group["params"] if target.get(id(p), (NO_DECAY, 0.0)) == (suffix, decay)]
            if params:
                name = f"{prefix}/{suffix}" if prefix else suffix
                new_groups.append({**group, "params": params, "weight_decay": decay, "name": name})
                origin.append(index)
    optimizer.param_groups = new_groups
    for scheduler in schedulers:
        _expand_scheduler(scheduler, optimizer, origin, len(old_groups))


def _targets(
    regularized: Sequence[Tensor], weight_decay: float, decays: Sequence[float] | None
) -> dict[int, tuple[str, float]]:
    """``(group name, weight decay)`` for each regularized parameter, by ``id``."""
    own = [weight_decay] * len(regularized) if decays is None else [float(decay) for decay in decays]
    if len(own) != len(regularized):
        raise ValueError(f"decays has {len(own)} entries for {len(regularized)} regularized parameters")
    names = decay_names(own, weight_decay)
    return {id(p): (names[decay], decay) for p, decay in zip(regularized, own, strict=True)}


def _parts(target: dict[int, tuple[str, float]], weight_decay: float) -> list[tuple[str, float]]:
    """The ``(name, weight decay)`` of every group a split builds, in order; ``no_decay`` last."""
    decaying = [part for part in dict.fromkeys(target.values()) if part[0] != NO_DECAY]
    decaying.sort(key=lambda part: part[0] != DECAY)  # stable: "decay" first, then first appearance
    return [*decaying, (NO_DECAY, 0.0)]


def check_no_own_decay(optimizer: Optimizer, regularized: Iterable[Tensor], reason: str) -> None:
    """Refuse an optimizer whose groups already decay regularized parameters: L2 would apply twice.

    Raises:
        ValueError: a group holding a regularized parameter has a non-zero ``weight_decay``.
    """
    chosen = {id(param) for param in regularized}
    for index, group in enumerate(optimizer.param_groups):
        decay = group.get("weight_decay", 0)
        if decay != 0 and any(id(p) in chosen for p in group["params"]):
            raise ValueError(
                f"{type(optimizer).__name__} param group {index} has weight_decay={decay!r}, but {reason} "
                "applies L2 itself. Build the optimizer with weight_decay=0 (note AdamW's default is 0.01)."
            )


def _already_split(optimizer: Optimizer, target: dict[int, tuple[str, float]], weight_decay: float) -> bool:
    """True when every group holds parameters of one target decay only, and has that decay."""
    for group in optimizer.param_groups:
        decays = {target.get(id(p), (NO_DECAY, 0.0))[1] for p in group["params"]}
        if len(decays) > 1 or (decays and group.get("weight_decay") not in decays):
            return False
        if not decays and group.get("weight_decay") not in (0, weight_decay):
            return False
    return True


def _check_group(
    optimizer: Optimizer, index: int, group: dict[str, Any], weight_decay: float, own: list[float]
) -> None:
    """Refuse a group that cannot take the split's weight decays; ``own``: the rules' other decays."""
    kind = type(optimizer).__name__
    source = f"l2: {weight_decay!r}" if weight_decay > 0 else f"rules: an l2 of {max(own, default=0.0)!r}"
    if "weight_decay" not in group:
        raise ValueError(
            f"Invalid {source}: {kind} has no weight_decay, so it cannot apply L2. "
            "Use an optimizer with weight_decay (SGD, Adam, AdamW, ...) or set l2=0."
        )
    present = group["weight_decay"]
    if present not in (0, weight_decay):
        sets = "and its rules' l2 set weight decay" if own else "sets weight decay itself"
        raise ValueError(
            f"{kind} param group {index} already has weight_decay={present!r}, but the module's "
            f"l2={weight_decay!r} {sets}. Build the optimizer with weight_decay=0 "
            "(note AdamW's default is 0.01) and pass the strength as l2."
        )


def _expand_scheduler(scheduler: Any, optimizer: Optimizer, origin: list[int], old_count: int) -> None:
    """Repeat each per-group entry of ``scheduler`` for the groups its group was split into."""
    for child in getattr(scheduler, "_schedulers", ()):  # SequentialLR, ChainedScheduler
        _expand_scheduler(child, optimizer, origin, old_count)
    if unwrapped(getattr(scheduler, "optimizer", None)) is not optimizer:
        return
    for attribute in PER_GROUP_SCHEDULER_ATTRIBUTES:
        values = getattr(scheduler, attribute, None)
        if isinstance(values, list) and len(values) == old_count:
            setattr(scheduler, attribute, [values[index] for index in origin])
