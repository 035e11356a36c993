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


def decay_groups(
    regularized: Sequence[Tensor], others: Sequence[Tensor], weight_decay: float
) -> list[dict[str, Any]]:
    """Two optimizer groups: ``regularized`` with ``weight_decay``, ``others`` without; empty ones dropped.

    >>> import torch
    >>> w, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    >>> [(g["name"], g["weight_decay"]) for g in decay_groups([w], [b], 0.01)]
    [('decay', 0.01), ('no_decay', 0.0)]
    """
    groups = [
        {"params": list(regularized), "weight_decay": weight_decay, "name": DECAY},
        {"params": list(others), "weight_decay": 0.0, "name": NO_DECAY},
    ]
    return [group for group in groups if group["params"]]


def split_optimizer(
    optimizer: Optimizer,
    regularized: Iterable[Tensor],
    weight_decay: float,
    schedulers: Iterable[Any] = (),
) -> None:
    """Split every group of ``optimizer`` in place into its regularized part and the rest.

    The regularized part gets ``weight_decay``; the rest gets ``0``; every other hyperparameter of the
    original group is kept. Groups are named ``decay`` / ``no_decay`` (``<name>/decay`` when the original
    group had a name or there were several, ``pg1/decay``, ...) so that ``LearningRateMonitor`` shows
    readable keys. ``schedulers`` bound to this optimizer have their per-group lists expanded to match.

    Raises:
        ValueError: a group has no ``weight_decay`` (the optimizer cannot apply L2), or already has a
            weight decay other than ``0`` or ``weight_decay`` (two sources of decay would disagree).
    """
    chosen = {id(param) for param in regularized}
    if _already_split(optimizer, chosen, weight_decay):
        return
    old_groups = optimizer.param_groups
    several = len(old_groups) > 1
    new_groups: list[dict[str, Any]] = []
    origin: list[int] = []
    for index, group in enumerate(old_groups):
        _check_group(optimizer, index, group, weight_decay)
        prefix = group.get("name") or (f"pg{index + 1}" if several else "")
        parts = (
            (DECAY, weight_decay, [p for p in group["params"] if id(p) in chosen]),
            (NO_DECAY, 0.0, [p for p in group["params"] if id(p) not in chosen]),
        )
        for suffix, decay, params in parts:
            if params:
                name = f"{prefix}/{suffix}" if prefix else suffix
                new_groups.append({**group, "params": params, "weight_decay": decay, "name": name})
                origin.append(index)
    optimizer.param_groups = new_groups
    for scheduler in schedulers:
        _expand_scheduler(scheduler, optimizer, origin, len(old_groups))


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


def _already_split(optimizer: Optimizer, chosen: set[int], weight_decay: float) -> bool:
    """True when every group is wholly regularized with ``weight_decay`` or wholly not with ``0``."""
    for group in optimizer.param_groups:
        inside = [id(p) in chosen for p in group["params"]]
        if all(inside) and group.get("weight_decay") == weight_decay:
            continue
        if not any(inside) and group.get("weight_decay") == 0:
            continue
        return False
    return True


def _check_group(optimizer: Optimizer, index: int, group: dict[str, Any], weight_decay: float) -> None:
    kind = type(optimizer).__name__
    if "weight_decay" not in group:
        raise ValueError(
            f"Invalid l2: {weight_decay!r}: {kind} has no weight_decay, so it cannot apply L2. "
            "Use an optimizer with weight_decay (SGD, Adam, AdamW, ...) or set l2=0."
        )
    present = group["weight_decay"]
    if present not in (0, weight_decay):
        raise ValueError(
            f"{kind} param group {index} already has weight_decay={present!r}, but the module's "
            f"l2={weight_decay!r} sets weight decay itself. Build the optimizer with weight_decay=0 "
            "(note AdamW's default is 0.01) and pass the strength as l2."
        )


def _expand_scheduler(scheduler: Any, optimizer: Optimizer, origin: list[int], old_count: int) -> None:
    """Repeat each per-group entry of ``scheduler`` for the groups its group was split into."""
    for child in getattr(scheduler, "_schedulers", ()):  # SequentialLR, ChainedScheduler
        _expand_scheduler(child, optimizer, origin, old_count)
    if getattr(scheduler, "optimizer", None) is not optimizer:
        return
    for attribute in PER_GROUP_SCHEDULER_ATTRIBUTES:
        values = getattr(scheduler, attribute, None)
        if isinstance(values, list) and len(values) == old_count:
            setattr(scheduler, attribute, [values[index] for index in origin])
