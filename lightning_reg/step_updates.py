"""What the regularization does to the weights at an optimizer step, around the optimizer's own update.

- :func:`decoupled_decay`, right before the update: ``w <- w * (1 - lr * l2)`` (what AdamW does).
- :func:`proximal_step`, right after it: the proximal operators of the L1 and group terms, for the step
  the update has just applied to each entry (:mod:`~lightning_reg.step_sizes`).

Both act on the regularized parameters of one :class:`~lightning_reg.selection.Selection` that the
optimizer holds and that have a gradient at this step, each with its own strengths. ``Regularizer.attach``
installs them (:mod:`~lightning_reg.step_hooks`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_reg import kernels, step_hooks, step_sizes
from lightning_reg.couplings import coupled_shrink_, coupled_shrink_scaled_
from lightning_reg.options import GroupBy, ProximalThreshold
from lightning_reg.penalties import group_shrink_, group_shrink_scaled_
from lightning_reg.selection import Selection
from lightning_reg.sharding import local


def in_optimizer(
    selection: Selection, optimizer: Optimizer
) -> Iterable[tuple[dict[str, Any], float | Tensor, list[Tensor]]]:
    """``(group, taken, the regularized params in it that have a gradient)`` for each group of ``optimizer``.

    ``taken`` is ``1.0``, or a device tensor that is ``0`` in a step a fused optimizer skips for inf
    gradients (:func:`~lightning_reg.step_hooks.step_taken`).
    """
    taken = step_hooks.step_taken(optimizer)
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None and selection.is_regularized(p)]
        if params:
            yield group, taken, params


@torch.no_grad()
def decoupled_decay(selection: Selection, optimizer: Optimizer) -> None:
    """``w <- w * (1 - lr * l2)``, ``lr`` that of the group holding ``w`` and ``l2`` the weight's own."""
    for group, taken, params in in_optimizer(selection, optimizer):
        lr = group["lr"] if isinstance(taken, float) else group["lr"] * taken
        for strength, same in selection.by_strength(params, "l2"):
            kernels.scale_(same, 1 - lr * strength)


@torch.no_grad()
def proximal_step(
    selection: Selection,
    optimizer: Optimizer,
    *,
    ramp: float,
    group_by: GroupBy,
    threshold: ProximalThreshold,
) -> None:
    """Soft-threshold each weight by ``s * l1 * ramp``, then block-shrink its groups by ``group_l1``.

    ``s`` is the step the update applied to each entry: read from the optimizer's state
    (:func:`~lightning_reg.step_sizes.step_size`) with ``threshold="optimizer"``, the group's learning
    rate with ``"lr"``. Together the two are the exact proximal operator of ``l1 * |w| + group_l1 *
    ||w_g||`` (sparse group lasso) in the metric of ``s``.
    """
    coupled = group_by == "channels"  # the group terms act on the couplings, after every L1 step
    for group, taken, params in in_optimizer(selection, optimizer):
        uniform: dict[Any, tuple[float | Tensor, list[Tensor]]] = {}  # params that took one step
        for param in params:
            strengths = selection.strength_of(param)
            if strengths.l1 == 0 and (coupled or strengths.group_l1 == 0):  # nothing to do: no pass
                continue
            size = (
                step_sizes.step_size(optimizer, group, param)
                if threshold == "optimizer"
                else step_sizes.StepSize(group["lr"], None)
            )
            if size.denominator is not None:  # at once: one denominator alive at a time, in cache
                _shrink_per_entry(selection, param, size, taken, ramp, group_by)
            else:
                key = size.scale if isinstance(size.scale, float) else id(size.scale)
                uniform.setdefault(key, (size.scale, []))[1].append(param)
        for scale, same in uniform.values():  # one list each: the multi-tensor kernels
            step = scale if isinstance(taken, float) else scale * taken
            _shrink_uniformly(selection, same, step, ramp, group_by)
    if coupled:
        _shrink_couplings(selection, optimizer, threshold)


def coupled_members(selection: Selection, optimizer: Optimizer, params: Iterable[Tensor]) -> list[Tensor]:
    """The members of the regularized couplings that ``optimizer`` holds and that have a gradient, other
    than ``params`` (each once): what else a coupling's term reaches through this optimizer.

    A unit may be split over optimizers in the loss mode (its BatchNorm parameters in a second one, which
    holds no regularized weight): each member gets the term's gradient through the optimizer holding it.
    """
    if not selection.couplings:
        return []
    held = {
        id(param): param
        for group in optimizer.param_groups
        for param in group["params"]
        if param.grad is not None
    }
    given = {id(param) for param in params}
    found: dict[int, Tensor] = {}
    for _, couplings in selection.couplings_by_strength(held.values()):
        for coupling in couplings:
            for param in coupling.parameters:
                if id(param) in held and id(param) not in given:
                    found.setdefault(id(param), param)
    return list(found.values())


def check_couplings_held(selection: Selection, optimizer: Optimizer) -> None:
    """Refuse an optimizer that holds some, but not all, of a regularized coupled unit's parameters.

    The proximal step shrinks a unit as one block after the optimizer that updates it: a unit split
    over two optimizers would never be shrunk.
    """
    held = {id(param) for group in optimizer.param_groups for param in group["params"]}
    for coupling, strength in zip(selection.couplings, selection.coupling_strengths, strict=True):
        missing = [member.name for member in coupling.members if id(member.param) not in held]
        if strength > 0 and missing and len(missing) < len(coupling.members):
            raise ValueError(
                f"Invalid optimizer: it holds some parameters of the coupled unit {coupling.name!r} but not "
                f"{missing[0]!r}; l1_mode='proximal' shrinks a unit as one block after the optimizer that "
                "updates all of it. Give all of the unit's parameters to one optimizer."
            )


def _shrink_couplings(selection: Selection, optimizer: Optimizer, threshold: ProximalThreshold) -> None:
    """Block-shrink each coupled unit whose members all took this step, in the metric of their steps.

    A unit whose members do not all have a gradient at this step (or that another optimizer holds) is
    left for a step where they do: its channels are one block, shrunk as one.
    """
    taken = step_hooks.step_taken(optimizer)
    holder = {id(param): group for group in optimizer.param_groups for param in group["params"]}
    for coupling, strength in zip(selection.couplings, selection.coupling_strengths, strict=True):
        params = coupling.parameters
        if strength == 0 or any(id(p) not in holder or p.grad is None for p in params):
            continue
        sizes = [
            step_sizes.step_size(optimizer, holder[id(member.param)], member.param)
            if threshold == "optimizer"
            else step_sizes.StepSize(holder[id(member.param)]["lr"], None)
            for member in coupling.members
        ]
        scales = {size.scale for size in sizes if isinstance(size.scale, float)}
        if len(scales) == 1 and all(
            size.denominator is None and isinstance(size.scale, float) for size in sizes
        ):
            step = scales.pop() if isinstance(taken, float) else scales.pop() * taken
            coupled_shrink_(coupling, step * strength)
            continue
        steps = []
        for member, size in zip(coupling.members, sizes, strict=True):
            per_entry = torch.as_tensor(
                size.per_entry(), dtype=member.param.dtype, device=member.param.device
            )
            steps.append(per_entry if isinstance(taken, float) else per_entry * taken)
        coupled_shrink_scaled_(coupling, strength, steps)


def _shrink_uniformly(
    selection: Selection, params: list[Tensor], scale: float | Tensor, ramp: float, group_by: GroupBy
) -> None:
    """The proximal step of ``params``, which all took the step ``scale``."""
    for strength, same in selection.by_strength(params, "l1"):
        kernels.soft_threshold_(same, scale * (strength * ramp))
    if group_by == "channels":
        return
    for strength, same in selection.by_strength(params, "group_l1"):
        for param in same:
            group_shrink_(param, scale * strength, group_by)


def _shrink_per_entry(
    selection: Selection,
    param: Tensor,
    size: step_sizes.StepSize,
    taken: float | Tensor,
    ramp: float,
    group_by: GroupBy,
) -> None:
    """The proximal step of one parameter whose entries took the steps ``size``."""
    assert size.denominator is not None
    strengths = selection.strength_of(param)
    scale = size.scale if isinstance(taken, float) else size.scale * taken
    denominator = local(size.denominator)
    if strengths.l1 > 0:
        kernels.soft_threshold_scaled_(local(param), scale * (strengths.l1 * ramp), denominator)
    if strengths.group_l1 > 0 and group_by != "channels":
        group_shrink_scaled_(param, strengths.group_l1, scale / denominator, group_by)
