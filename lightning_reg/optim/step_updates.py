"""What the regularization does to the weights at an optimizer step, around the optimizer's own update.

- :func:`decoupled_decay`, right before the update: ``w <- w * (1 - lr * l2)`` (what AdamW does).
- :class:`ProximalStep`, right after it: the proximal operators of the L1 and group terms, for the step
  the update has just applied to each entry (:mod:`~lightning_reg.optim.step_sizes`).

Both act on the regularized parameters of one :class:`~lightning_reg.selection.Selection` that the
optimizer holds and that have a gradient at this step, each with its own strengths. ``Regularizer.attach``
installs them (:mod:`~lightning_reg.optim.step_hooks`).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_reg.functional import fused as fused_kernels
from lightning_reg.functional import group_layout, kernels
from lightning_reg.functional.couplings import Coupling
from lightning_reg.functional.sharding import all_reduce_over, is_sharded, local, split_over
from lightning_reg.optim import step_hooks, step_sizes
from lightning_reg.optim.group_prox import GroupProx
from lightning_reg.options import ProximalThreshold
from lightning_reg.selection import Selection

__all__ = [
    "ProximalStep",
    "UnheldParametersWarning",
    "check_couplings_held",
    "check_shared",
    "coupled_members",
    "decoupled_decay",
    "in_optimizer",
    "warn_if_unheld",
]


def in_optimizer(
    selection: Selection, optimizer: Optimizer
) -> Iterable[tuple[dict[str, Any], float | Tensor, list[Tensor]]]:
    """``(group, taken, the regularized params in it that have a gradient)`` for each group of ``optimizer``.

    ``taken`` is ``1.0``, or a device tensor that is ``0`` in a step a fused optimizer skips for inf
    gradients (:func:`~lightning_reg.optim.step_hooks.step_taken`).
    """
    taken = step_hooks.step_taken(optimizer)
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None and selection.is_regularized(p)]
        if params:
            yield group, taken, params


@torch.no_grad()
def decoupled_decay(selection: Selection, optimizer: Optimizer, fused: bool = False) -> None:
    """``w <- w * (1 - lr * l2)``, ``lr`` that of the group holding ``w`` and ``l2`` the weight's own;
    with ``fused``, one compiled kernel for all of them (:func:`~lightning_reg.functional.fused.scale_`)."""
    decayed: list[Tensor] = []
    factors: list[float | Tensor] = []
    for group, taken, params in in_optimizer(selection, optimizer):
        lr = group["lr"] if isinstance(taken, float) else group["lr"] * taken
        for strength, same in selection.by_strength(params, "l2"):
            compiled = [param for param in same if fused and not is_sharded(param)]  # DTensors: eager
            kernels.scale_([param for param in same if not fused or is_sharded(param)], 1 - lr * strength)
            decayed += compiled
            factors += [1 - lr * strength] * len(compiled)
    if decayed:
        fused_kernels.scale_(decayed, fused_kernels.scalars(factors, decayed[0].device))


class ProximalStep:
    """The proximal step of one selection's units, with the group engines it keeps per optimizer.

    ``units`` are the group terms' units with their strengths (a parameter's rows or columns, or coupled
    channels: :func:`~lightning_reg.selection.units_of`). Each optimizer gets one
    :class:`~lightning_reg.optim.group_prox.GroupProx` per set of units taking part, laid out once. With
    ``fused``, the arithmetic runs as compiled kernels (:mod:`~lightning_reg.functional.fused`), except
    on sharded weights' pieces, whose sums are added up over processes between eager kernels.
    """

    def __init__(
        self, selection: Selection, units: Sequence[tuple[Coupling, float]], fused: bool = False
    ) -> None:
        self.selection = selection
        self.units = list(units)
        self.fused = fused
        self._engines: weakref.WeakKeyDictionary[Optimizer, dict[tuple[int, ...], GroupProx]] = (
            weakref.WeakKeyDictionary()
        )
        self._sharded: weakref.WeakKeyDictionary[
            Optimizer, dict[tuple[Any, ...], tuple[GroupProx, dict[int, Tensor]]]
        ] = weakref.WeakKeyDictionary()

    def prepare(self, optimizer: Optimizer) -> None:
        """Lay out, before training, the units ``optimizer`` holds whole: the steps then only run the math."""
        held = {id(param) for group in optimizer.param_groups for param in group["params"]}
        active = [
            index
            for index, (unit, strength) in enumerate(self.units)
            if strength > 0
            and all(id(p) in held for p in unit.parameters)
            and not any(is_sharded(p) for p in unit.parameters)
        ]
        if active:
            self._engine(optimizer, active)

    @torch.no_grad()
    def __call__(self, optimizer: Optimizer, *, ramp: float, threshold: ProximalThreshold) -> None:
        """Soft-threshold each weight by ``s * l1 * ramp`` and block-shrink its units by ``group_l1``.

        ``s`` is the step the update applied to each entry: read from the optimizer's state
        (:func:`~lightning_reg.optim.step_sizes.steps_of`) with ``threshold="optimizer"``, the group's
        learning rate with ``"lr"``. The units whose parameters all took this step are shrunk by
        :class:`~lightning_reg.optim.group_prox.GroupProx`, the exact proximal operator of ``l1 * |w| +
        group_l1 * ||w_u||`` (sparse group lasso) in the metric of ``s``, exact at the fixed point where
        units cross. The weights in no unit are soft-thresholded alone.
        """
        selection, units = self.selection, self.units
        taken = step_hooks.step_taken(optimizer)
        holder = {id(param): group for group in optimizer.param_groups for param in group["params"]}
        active = [
            index
            for index, (unit, strength) in enumerate(units)
            if strength > 0 and all(id(p) in holder and p.grad is not None for p in unit.parameters)
        ]
        sharded = [index for index in active if any(is_sharded(p) for p in units[index][0].parameters)]
        active = [index for index in active if index not in sharded]
        members = {id(p): p for index in active + sharded for p in units[index][0].parameters}
        alone = [
            param
            for group, _, params in in_optimizer(selection, optimizer)
            for param in params
            if id(param) not in members and selection.strength_of(param).l1 > 0
        ]
        if self.fused and alone:  # sharded weights (DTensors) stay eager
            plain = [param for param in alone if not is_sharded(param)]
            _soft_threshold_fused(selection, optimizer, holder, plain, ramp, taken, threshold)
            alone = [param for param in alone if is_sharded(param)]
        if threshold == "optimizer" and alone and not kernels.prefer_multi_tensor(alone):
            # on the CPU, weight by weight: one denominator alive at a time, in cache
            _soft_threshold_each_alone(selection, optimizer, holder, alone, ramp, taken)
            alone = []
        stepped = list(members.values()) + alone
        if not stepped:
            return
        groups = [holder[id(param)] for param in stepped]
        if threshold == "optimizer":
            steps = step_sizes.steps_of(optimizer, groups, stepped)
        else:
            steps = [float(group["lr"]) for group in groups]
        by_param = dict(zip((id(param) for param in stepped), steps, strict=True))
        _soft_threshold_alone(selection, alone, by_param, ramp, taken)
        if active:
            self._engine(optimizer, active).step(optimizer, by_param, ramp, taken)
        if sharded:
            self._sharded_step(optimizer, sharded, by_param, ramp, taken)

    def _sharded_step(
        self,
        optimizer: Optimizer,
        indices: Sequence[int],
        steps: dict[int, float | Tensor],
        ramp: float,
        taken: float | Tensor,
    ) -> None:
        """Sharded weights' rows or columns (one-member units): the engine on this process's pieces,
        each channel's sums added up over the processes holding parts of it."""
        by_groups: dict[tuple[int, ...], list[int]] = {}
        for index in indices:
            member = self.units[index][0].members[0]
            groups = split_over(member.param, member.axis)
            by_groups.setdefault(tuple(id(group) for group in groups), []).append(index)
        for chosen in by_groups.values():
            engine, pieces = self._sharded_engine(optimizer, chosen)
            local_steps = {
                id(piece): local(step) if isinstance(step := steps[key], Tensor) else step
                for key, piece in pieces.items()
            }
            engine.step(optimizer, local_steps, ramp, taken)

    def _sharded_engine(
        self, optimizer: Optimizer, chosen: Sequence[int]
    ) -> tuple[GroupProx, dict[int, Tensor]]:
        """The engine of sharded units ``chosen``, on the pieces each parameter has here (made again
        should a parameter's piece change), and those pieces by the parameter's ``id``."""
        pieces = {id(p): local(p) for index in chosen for p in self.units[index][0].parameters}
        key = ("sharded", *chosen)
        cached = self._sharded.setdefault(optimizer, {}).get(key)
        if cached is not None and all(_same_piece(cached[1][k], piece) for k, piece in pieces.items()):
            return cached
        units, strengths, l1 = [], [], {}
        for index in chosen:
            unit, strength = self.units[index]
            member = unit.members[0]
            piece = pieces[id(member.param)]
            if piece.shape[member.axis] == 0:
                continue  # no channel here (and nothing to add up with other processes)
            units.append(Coupling.along(member.name, piece, member.axis))
            strengths.append(strength)
            l1[id(piece)] = self.selection.strength_of(member.param).l1
        member = self.units[chosen[0]][0].members[0]
        reduce = all_reduce_over(split_over(member.param, member.axis))
        engine = GroupProx(group_layout.build(units, strengths, l1), reduce=reduce, own_state=True)
        self._sharded[optimizer][key] = (engine, pieces)
        return engine, pieces

    def _engine(self, optimizer: Optimizer, active: Sequence[int]) -> GroupProx:
        """The :class:`GroupProx` of the ``active`` indices of the units, made once per optimizer."""
        engines = self._engines.setdefault(optimizer, {})
        key = tuple(active)
        engine = engines.get(key)
        if engine is None:
            units = self.units
            params = {id(p): p for index in active for p in units[index][0].parameters}
            l1 = {
                key: self.selection.strength_of(p).l1
                for key, p in params.items()
                if self.selection.is_regularized(p)
            }
            chosen = [units[index] for index in active]
            strengths = [strength for _, strength in chosen]
            layout = group_layout.build([unit for unit, _ in chosen], strengths, l1)
            engine = engines[key] = GroupProx(layout, fused=self.fused)
        return engine


def _same_piece(kept: Tensor, piece: Tensor) -> bool:
    """Whether ``kept`` still is this process's piece: the same memory, shape and strides."""
    return (
        kept.data_ptr() == piece.data_ptr() and kept.shape == piece.shape and kept.stride() == piece.stride()
    )


def _soft_threshold_fused(
    selection: Selection,
    optimizer: Optimizer,
    holder: dict[int, dict[str, Any]],
    params: Sequence[Tensor],
    ramp: float,
    taken: float | Tensor,
    threshold: ProximalThreshold,
) -> None:
    """:func:`_soft_threshold_alone` as compiled kernels: one per form of the steps' denominators
    (usually one for all the weights), each reading the optimizer's state and writing the weights once."""
    groups = [holder[id(param)] for param in params]
    if threshold == "optimizer":
        forms = step_sizes.forms_of(optimizer, groups, params)
    else:
        forms = [step_sizes.Form(float(group["lr"]), None) for group in groups]
    kinds: dict[tuple[Any, ...], list[int]] = {}
    for index, (_, denominator) in enumerate(forms):
        key = () if denominator is None else (denominator.keys, denominator.root, id(denominator.tractable))
        kinds.setdefault(key, []).append(index)
    skipped = taken if isinstance(taken, Tensor) else None
    for indices in kinds.values():
        chosen = [params[index] for index in indices]
        device = chosen[0].device
        factors = [forms[index].scale * (selection.strength_of(params[index]).l1 * ramp) for index in indices]
        scales = fused_kernels.scalars(factors, device)
        denominator = forms[indices[0]].denominator
        if denominator is None:
            fused_kernels.soft_threshold_(chosen, scales, skipped)
            continue
        states = [optimizer.state[param] for param in chosen]
        offsets = [each.offset for index in indices if (each := forms[index].denominator) is not None]
        fused_kernels.soft_threshold_scaled_(
            chosen,
            [state[denominator.keys[0]] for state in states],
            [state[denominator.keys[1]] for state in states] if len(denominator.keys) == 2 else None,
            root=denominator.root,
            offsets=fused_kernels.scalars(offsets, device),
            scales=scales,
            tractable=denominator.tractable,
            taken=skipped,
        )


def _soft_threshold_each_alone(
    selection: Selection,
    optimizer: Optimizer,
    holder: dict[int, dict[str, Any]],
    params: Sequence[Tensor],
    ramp: float,
    taken: float | Tensor,
) -> None:
    """:func:`_soft_threshold_alone` with the optimizer's steps read and applied one weight at a time."""
    uniform: dict[int, float | Tensor] = {}
    for param in params:
        size = step_sizes.step_size(optimizer, holder[id(param)], param)
        factor = selection.strength_of(param).l1 * ramp
        if size.denominator is None:
            uniform[id(param)] = size.scale
            continue
        scale = size.scale * factor if isinstance(taken, float) else size.scale * taken * factor
        kernels.soft_threshold_scaled_(param, scale, size.denominator)
    if uniform:
        _soft_threshold_alone(selection, [p for p in params if id(p) in uniform], uniform, ramp, taken)


def _soft_threshold_alone(
    selection: Selection,
    params: Sequence[Tensor],
    steps: dict[int, float | Tensor],
    ramp: float,
    taken: float | Tensor,
) -> None:
    """``w <- sign(w) * max(|w| - l1 * ramp * s, 0)`` for weights in no unit, those sharing a step at once."""
    uniform: dict[float, list[Tensor]] = {}
    per_entry: list[Tensor] = []
    for param in params:
        step = steps[id(param)]
        if isinstance(step, float):
            uniform.setdefault(step, []).append(param)
        else:
            per_entry.append(param)
    for step, same in uniform.items():
        scale = step if isinstance(taken, float) else step * taken
        for strength, alike in selection.by_strength(same, "l1"):
            kernels.soft_threshold_(alike, scale * (strength * ramp))
    for strength, alike in selection.by_strength(per_entry, "l1"):
        factor = strength * ramp if isinstance(taken, float) else taken * (strength * ramp)
        per_entry_steps = [step for param in alike if isinstance(step := steps[id(param)], Tensor)]
        thresholds = torch._foreach_mul(per_entry_steps, factor)
        kernels.soft_threshold_each_(alike, thresholds)


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


class UnheldParametersWarning(UserWarning):
    """A regularizer was attached to an optimizer that holds none of its regularized parameters."""


def warn_if_unheld(selection: Selection, optimizers: Sequence[Optimizer]) -> None:
    """Warn (:class:`UnheldParametersWarning`) when no optimizer of ``optimizers`` holds any of the
    regularized parameters of ``selection``: its optimizer-side terms would never act."""
    held = {
        id(param) for optimizer in optimizers for group in optimizer.param_groups for param in group["params"]
    }
    if not optimizers or not selection.regularized:
        return
    if any(id(param) in held for _, param in selection.regularized):
        return
    names = [name for name, _ in selection.regularized]
    kinds = " and ".join(sorted({type(optimizer).__name__ for optimizer in optimizers}))
    warnings.warn(
        f"attach: the {kinds} optimizer(s) hold none of the {len(names)} regularized parameters (e.g. "
        f"{names[0]!r}): the optimizer-side terms (weight decay, the proximal step) will not act through "
        "them. Build the optimizer over the regularized model's parameters.",
        UnheldParametersWarning,
        stacklevel=3,
    )


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


def check_shared(owner: object, selection: Selection, optimizer: Optimizer, splits: bool) -> None:
    """Refuse to attach ``owner`` (a regularizer of ``selection``) to ``optimizer`` where another
    regularizer attached to it would interfere: one regularizing a parameter in common, or any other
    when ``owner`` splits the groups for weight decay (``splits``)."""
    for other in step_hooks.owners(optimizer):
        theirs = getattr(other, "selection", None)
        if other is owner or not isinstance(theirs, Selection):
            continue
        common = [name for name, p in selection.regularized if theirs.is_regularized(p)]
        if common:
            raise ValueError(
                f"Invalid optimizer: another Regularizer is attached to this {type(optimizer).__name__} "
                f"and regularizes {common[0]!r} too, which would then be regularized twice. Use one "
                "Regularizer with rules for per-parameter strengths, or exclude the shared parameters "
                "from one of them."
            )
        if splits:
            raise ValueError(
                f"Invalid optimizer: another Regularizer is attached to this {type(optimizer).__name__}, "
                "and splitting its groups for weight decay (l2_mode='weight_decay') would move that "
                "one's parameters. Use one Regularizer with rules for per-parameter strengths, or "
                "l2_mode='decoupled' here."
            )
