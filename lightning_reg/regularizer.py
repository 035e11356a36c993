"""``Regularizer``: L1, L2 and Elastic Net for any ``torch.nn.Module``, usable in a bare training loop."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_reg import kernels, step_hooks, step_sizes
from lightning_reg.activity import ActivityPenalty
from lightning_reg.deferred import l1_term
from lightning_reg.options import GroupBy, L1Mode, L2Mode, ProximalThreshold, RegularizationOptions
from lightning_reg.param_groups import check_no_own_decay, decay_groups, split_optimizer
from lightning_reg.penalties import (
    STATISTICS_COLUMNS,
    group_count,
    group_l1_norm,
    group_shrink_,
    group_shrink_scaled_,
    l1_norm,
    squared_norm,
    weight_statistics,
)
from lightning_reg.selection import Selection, Strengths, select_parameters
from lightning_reg.sharding import add_, is_sharded, local

#: Default threshold below which a weight counts as "near zero" in the statistics.
NEAR_ZERO_TOL = 1e-3


class Regularizer:
    """The regularization of one model: which weights, the L1 term, the weight-decay groups, statistics.

    The parameters are chosen once, at construction, by
    :func:`~lightning_reg.selection.select_parameters`: trainable floating-point parameters with
    ``dim() > 1`` or matched by a ``rules`` pattern, minus ``exclude`` globs and the model's
    ``no_weight_decay()`` names. Each gets its own strengths (``l1_p``, ``l2_p``, ``group_l1_p``): those
    of the first rule matching it, else the module-wide ``l1``, ``l2``, ``group_l1``; every term below
    uses each weight's own (``l1 * sum|w|`` stands for ``sum_p l1_p * sum|w_p|``, and so on), and the
    tensor work runs over the weights that share a strength, as one list.

    How each term reaches the weights (see :class:`~lightning_reg.options.RegularizationOptions`):

    - in the loss: :meth:`penalty` returns ``l1 * sum|w|`` and ``group_l1 * sum_g ||w_g||`` when
      ``l1_mode="loss"``, and ``l2 / 2 * sum w^2`` when ``l2_mode="loss"``;
    - in the optimizer: :meth:`param_groups` (new optimizers) and :meth:`attach` (existing ones) give
      ``W`` ``weight_decay=l2`` when ``l2_mode="weight_decay"`` (one group per distinct ``l2_p``, see
      :func:`~lightning_reg.param_groups.decay_names`); :meth:`attach` also installs the
      step-bound updates of the other modes: ``w <- w * (1 - lr * l2)`` right before each update
      (``"decoupled"``), with ``lr`` the learning rate of the group holding ``w`` at that step, and
      the proximal operators of the L1 and group terms right after it (``"proximal"``), for the step
      the update applied to each entry (see :meth:`proximal_step`).

    Args:
        model: the module whose parameters are regularized.
        l1: strength of the L1 term ``l1 * sum|w|``.
        l2: strength of the L2 term ``l2 / 2 * sum w^2`` (PyTorch's ``weight_decay``).
        exclude: glob patterns over parameter names that are never regularized.
        l1_mode: ``"loss"`` or ``"proximal"``, for the L1 and group-L1 terms.
        group_l1: strength of the group term ``group_l1 * sum_g ||w_g||_2``.
        group_by: ``"rows"`` (slices along dim 0) or ``"columns"`` (along dim 1) form the groups.
        l2_mode: ``"weight_decay"``, ``"loss"`` or ``"decoupled"``.
        l1_warmup_steps: ramp the L1 strength up over this many optimizer steps: at step ``s`` it is
            ``l1 * min(1, (s + 1) / l1_warmup_steps)``, with ``s`` read from :attr:`step`, which the
            training loop sets (``RegularizedModule`` sets it to ``trainer.global_step``).
        activity_l1: module name to strength: ``strength * sum(|a|) / a.shape[0]`` for every output ``a``
            of that module recorded by :attr:`activity` (see
            :class:`~lightning_reg.activity.ActivityPenalty`); :meth:`penalty` adds the recorded terms.
        rules: glob pattern over parameter names to some of ``l1``, ``l2``, ``group_l1``: the first
            rule matching a parameter gives its strengths, the keys it omits falling back to the
            module-wide values; a matched parameter is regularized whatever its ``dim()``; ``exclude``
            and ``no_weight_decay()`` beat rules.
        proximal_threshold: ``"optimizer"`` (default) or ``"lr"``: the step ``s`` of
            :meth:`proximal_step`, read from the optimizer's state or taken to be the learning rate.

    Attributes:
        step: the index of the optimizer step being taken, from 0; only the L1 warm-up reads it.
        activity: the activity terms; record a step's with ``with reg.activity.capture(): model(x)``.

    Raises:
        ValueError: a strength is negative, NaN, infinite or not a number; ``exclude`` is not a list of
            non-empty strings; a mode or ``group_by`` is not one of its choices; ``rules`` is not a dict
            of non-empty globs to dicts of those strengths; a rule gives ``group_l1 > 0`` to a 0-D
            parameter, or to a 1-D one with ``group_by="columns"`` (it has no groups there).

    Warns:
        UserWarning: an ``exclude`` or ``rules`` pattern matches no parameter.

    Example, the tutorial's Elastic Net loop::

        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        >>> reg = Regularizer(model, l1=1e-4, l2=1e-3)
        >>> optimizer = torch.optim.SGD(reg.param_groups(), lr=0.1)
        >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
        >>> for _ in range(3):
        ...     optimizer.zero_grad()
        ...     loss = nn.functional.mse_loss(model(x), y) + reg.penalty()
        ...     loss.backward()
        ...     optimizer.step()
        >>> sorted(reg.statistics().summary())  # doctest: +NORMALIZE_WHITESPACE
        ['dead_units', 'group_l1_penalty', 'l1_norm', 'l1_penalty', 'l1_strength', 'l2_norm',
         'l2_penalty', 'near_zero', 'sparsity']
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        l1: float = 0.0,
        l2: float = 0.0,
        exclude: Sequence[str] = (),
        l1_mode: L1Mode = "loss",
        group_l1: float = 0.0,
        group_by: GroupBy = "rows",
        l2_mode: L2Mode = "weight_decay",
        l1_warmup_steps: int = 0,
        activity_l1: Mapping[str, float] | None = None,
        rules: Mapping[str, Mapping[str, float]] | None = None,
        proximal_threshold: ProximalThreshold = "optimizer",
    ) -> None:
        self.options = RegularizationOptions(
            l1=l1,
            l2=l2,
            exclude=exclude,
            l1_mode=l1_mode,
            group_l1=group_l1,
            group_by=group_by,
            l2_mode=l2_mode,
            l1_warmup_steps=l1_warmup_steps,
            activity_l1=activity_l1,
            rules=rules,
            proximal_threshold=proximal_threshold,
        )
        options = self.options
        self.selection: Selection = select_parameters(
            model,
            options.exclude,
            options.rules,
            Strengths(options.l1, options.l2, options.group_l1),
            options.group_by,
        )
        self._chosen_ids = frozenset(id(param) for _, param in self.selection.regularized)
        self._strength_of = {
            id(param): strength
            for (_, param), strength in zip(self.selection.regularized, self.selection.strengths, strict=True)
        }
        # Whether some weight of W has a positive strength of each kind.
        self._has_l1 = any(strength.l1 > 0 for strength in self.selection.strengths)
        self._has_l2 = any(strength.l2 > 0 for strength in self.selection.strengths)
        self._has_group_l1 = any(strength.group_l1 > 0 for strength in self.selection.strengths)
        # Worked out once: the training step reads them every step.
        self._plain = [param for _, param in self.selection.regularized if not is_sharded(param)]
        self._plain_l1 = self._by_strength(self._plain, "l1")
        self._prepared: dict[float, tuple[list[int], list[int], Tensor]] = {}  # see prepare_penalty
        self.step = 0
        self.activity = ActivityPenalty(model, options.activity_l1 or {})
        self._sharded = [param for _, param in self.selection.regularized if is_sharded(param)]
        in_loss = options.l1_mode == "loss" and (self._has_l1 or self._has_group_l1)
        self._weights_in_loss = bool(self.selection.regularized) and (
            in_loss or (options.l2_mode == "loss" and self._has_l2)
        )
        unmatched = [("exclude", pattern) for pattern in self.selection.unmatched]
        unmatched += [("rules", pattern) for pattern in self.selection.unmatched_rules]
        for option, pattern in unmatched:
            warnings.warn(
                f"{option} pattern {pattern!r} matches no trainable parameter of "
                f"{type(model).__name__}; names look like {self._example_names(model)}",
                UserWarning,
                stacklevel=2,
            )

    @classmethod
    def from_options(cls, model: nn.Module, options: RegularizationOptions) -> Regularizer:
        """Build from already validated options."""
        return cls(model, **options.as_hparams())

    @property
    def l1(self) -> float:
        return self.options.l1

    @property
    def l1_now(self) -> float:
        """The L1 strength at :attr:`step`: ``l1`` once the warm-up is over."""
        return self.options.l1_at(self.step)

    @property
    def l2(self) -> float:
        return self.options.l2

    @property
    def group_l1(self) -> float:
        return self.options.group_l1

    @property
    def strengths(self) -> dict[str, Strengths]:
        """Each regularized parameter's name to its strengths (``l1`` before any warm-up)."""
        return dict(zip(self.names, self.selection.strengths, strict=True))

    @property
    def names(self) -> list[str]:
        """Names of the regularized parameters, in ``named_parameters()`` order."""
        return [name for name, _ in self.selection.regularized]

    @property
    def parameters(self) -> list[nn.Parameter]:
        """The regularized parameters (``W``), each once."""
        return [param for _, param in self.selection.regularized]

    def penalty(self) -> Tensor:
        """The terms to add to the loss (see the class docstring); a constant zero when there are none.

        The L1 term's gradient is added to each weight's ``.grad`` at the end of backward rather than
        carried by autograd (:func:`~lightning_reg.deferred.l1_term`): the same numbers, in fewer passes.

        Over sharded parameters (``DTensor``) the value is included but detached: their gradient is added
        at the optimizer step by the hook :meth:`attach` installs, after FSDP has reduced the gradients of
        the data loss (autograd through a shard would write a gradient FSDP does not expect).
        """
        activity = list(self.activity.take().values())
        if self._weights_in_loss or not activity:
            total = self._weight_penalty()
            activity.insert(0, total)
        for term in activity[1:]:
            activity[0] = activity[0] + term
        return activity[0]

    def activity_penalty(self) -> Tensor:
        """The activity terms recorded since the capture began, summed; the recorded terms are cleared.

        :meth:`penalty` includes them. Under manual optimization, where the weight terms reach the weights
        as gradients at the step, add this to the loss you backpropagate.
        """
        terms = list(self.activity.take().values())
        if not terms:
            return torch.zeros(())
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    def _weight_penalty(self) -> Tensor:
        if not self._sharded:
            return self._penalty_of(self._plain, deferred_l1=True)
        total = self._penalty_of(self._sharded).detach()
        return self._penalty_of(self._plain, deferred_l1=True) + total if self._plain else total

    def prepare_penalty(self) -> None:
        """Compute now the part of the next :meth:`penalty` that needs a pass over the weights.

        ``penalty()`` then uses it, provided no weight has changed since. A training step's memory peaks
        at the end of its forward pass, and Lightning only clears the last step's gradients after
        ``training_step``: computed before the forward pass, the L1 sum's temporary memory is not added to
        that peak. ``RegularizedModule`` calls this before every training step.
        """
        if self.options.l1_mode == "loss" and self._has_l1:
            self._prepared = {
                strength: ([id(p) for p in params], [p._version for p in params], kernels.abs_sum(params))
                for strength, params in self._plain_l1
            }

    def _take_prepared(self) -> dict[float, tuple[list[int], list[int], Tensor]]:
        """The sums :meth:`prepare_penalty` computed, per L1 strength; once."""
        prepared, self._prepared = self._prepared, {}
        return prepared

    def _by_strength(self, params: Iterable[Tensor], kind: str) -> list[tuple[float, list[Tensor]]]:
        """``params`` grouped by their strength ``kind`` (``"l1"``, ``"l2"``, ``"group_l1"``), in order.

        Groups come in the order of their first parameter; parameters with strength ``0`` are left out.
        Without ``rules`` this is at most one group: all of ``params``, in their order.
        """
        groups: dict[float, list[Tensor]] = {}
        for param in params:
            strength: float = getattr(self._strength_of[id(param)], kind)
            if strength > 0:
                groups.setdefault(strength, []).append(param)
        return list(groups.items())

    def _penalty_of(self, params: Sequence[Tensor], *, deferred_l1: bool = False, l1: bool = True) -> Tensor:
        options = self.options
        terms = []
        if options.l1_mode == "loss" and l1 and self._has_l1:
            ramp = options.l1_ramp(self.step)
            prepared = self._take_prepared() if deferred_l1 else {}
            by_l1 = (
                self._plain_l1 if deferred_l1 and params is self._plain else self._by_strength(params, "l1")
            )
            for strength, group in by_l1:
                if deferred_l1:
                    terms.append(l1_term(group, strength * ramp, _still_valid(prepared.get(strength), group)))
                else:
                    terms.append(strength * ramp * l1_norm(group))
        if options.l1_mode == "loss" and self._has_group_l1:
            for strength, group in self._by_strength(params, "group_l1"):
                terms.append(strength * group_l1_norm(group, options.group_by))
        if options.l2_mode == "loss" and self._has_l2:
            for strength, group in self._by_strength(params, "l2"):
                terms.append(strength / 2 * squared_norm(group))
        if not terms or not params:
            return torch.zeros((), device=params[0].device if params else None)
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    @property
    def adds_to_loss(self) -> bool:
        """Whether :meth:`penalty` has any term: the Lightning adapter skips it when not."""
        return self._weights_in_loss or bool(self.activity)

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: ``W`` with ``weight_decay=l2``, every other trainable parameter with ``0``.

        With ``l2_mode`` other than ``"weight_decay"`` both groups get ``weight_decay=0``. Pass them to
        any optimizer that has ``weight_decay``: ``torch.optim.SGD(reg.param_groups(), lr=0.1)``; call
        :meth:`attach` on it for the proximal and decoupled modes.
        """
        others = [param for _, param in self.selection.others]
        if self.options.l2_mode != "weight_decay":
            return decay_groups(self.parameters, others, 0.0)
        return decay_groups(self.parameters, others, self.l2, self._decays())

    def _decays(self) -> list[float]:
        """Each regularized parameter's ``l2``, in the order of :attr:`parameters`."""
        return [strength.l2 for strength in self.selection.strengths]

    def attach(
        self, optimizer: Optimizer, schedulers: Iterable[Any] = (), *, penalty_as_gradient: bool = False
    ) -> None:
        """Make an existing optimizer carry this regularization's optimizer-side terms.

        - ``l2_mode="weight_decay"``, ``l2 > 0``: split its groups so that only ``W`` decays, with
          ``weight_decay=l2`` (:func:`~lightning_reg.param_groups.split_optimizer`; ``schedulers`` bound
          to it are expanded to match). With ``l2 == 0`` the groups are left as built.
        - ``"decoupled"`` or ``"loss"`` L2: the optimizer's own weight decay of ``W`` must be ``0``.
        - installs the decoupled decay (before each update) and the proximal step (after each update),
          when those modes have a strength. Attaching again replaces the earlier hooks.
        - with ``penalty_as_gradient``, the loss-mode terms are not expected in the loss: right before each
          update, :meth:`add_penalty_gradient` adds their gradient to the optimizer's parameters instead
          (manual optimization, where the package never sees the loss). Sharded parameters always get
          their loss-mode gradient this way (see :meth:`penalty`).

        Raises:
            ValueError: see :func:`~lightning_reg.param_groups.split_optimizer`; for a non-zero
                ``weight_decay`` on ``W`` with ``l2_mode`` ``"loss"`` or ``"decoupled"``; and for an
                optimizer whose step sizes are unknown, with ``l1_mode="proximal"`` and
                ``proximal_threshold="optimizer"`` (:func:`~lightning_reg.step_sizes.check_supported`).
        """
        options = self.options
        l2 = options.l2 > 0 or self._has_l2
        if options.l2_mode == "weight_decay" and l2:
            split_optimizer(optimizer, self.parameters, options.l2, schedulers, self._decays())
        elif options.l2_mode != "weight_decay" and l2:
            check_no_own_decay(optimizer, self.parameters, f"l2_mode={options.l2_mode!r}")
        before: list[step_hooks.StepCallback] = []
        if self._weights_in_loss and penalty_as_gradient:
            before.append(self.add_penalty_gradient)
        elif self._weights_in_loss and self._sharded:
            before.append(functools.partial(self.add_penalty_gradient, sharded_only=True))
        if options.l2_mode == "decoupled" and self._has_l2:
            before.append(self.decoupled_decay)
        proximal = options.l1_mode == "proximal" and (self._has_l1 or self._has_group_l1)
        if proximal and options.proximal_threshold == "optimizer":
            step_sizes.check_supported(optimizer)
        step_hooks.attach(optimizer, before=before, after=[self.proximal_step] if proximal else [])

    def add_penalty_gradient(self, optimizer: Optimizer, *, sharded_only: bool = False) -> None:
        """Add the gradient of :meth:`penalty` to the ``.grad`` of the ``W`` in ``optimizer``.

        Only parameters that have a gradient are counted, each through the optimizer that holds it: the
        same update as if :meth:`penalty` had been added to the loss of this step, once. With
        ``sharded_only``, only sharded parameters (whose gradient :meth:`penalty` leaves out).
        """
        params = [
            param
            for _, _, group in self._by_group(optimizer)
            for param in group
            if not sharded_only or is_sharded(param)
        ]
        scale = step_hooks.pending_grad_scale(optimizer)  # a fused optimizer unscales inside its step
        plain = [param for param in params if not is_sharded(param)]
        sharded = [param for param in params if is_sharded(param)]
        options = self.options
        if options.l1_mode == "loss" and self._has_l1:  # no autograd needed: l1 * sign(w)
            ramp = options.l1_ramp(self.step)
            for strength, group in self._by_strength(plain, "l1"):
                factor = torch.full((), strength * ramp, dtype=group[0].dtype, device=group[0].device)
                grads = [param.grad for param in group if param.grad is not None]
                kernels.add_scaled_sign_(grads, group, factor if scale is None else factor * scale)
        with torch.enable_grad():
            terms = [self._penalty_of(sharded)] if sharded else []
            terms += [self._penalty_of(plain, l1=False)] if plain else []
            terms = [term for term in terms if term.requires_grad]
            if not terms:
                return
            total = terms[0] if len(terms) == 1 else terms[0] + terms[1]
            gradients = torch.autograd.grad(total, params, allow_unused=True)
        with torch.no_grad():
            for param, gradient in zip(params, gradients, strict=True):
                if gradient is not None and param.grad is not None:
                    add_(param.grad, gradient if scale is None else gradient * scale)

    @torch.no_grad()
    def decoupled_decay(self, optimizer: Optimizer) -> None:
        """``w <- w * (1 - lr * l2)`` for each ``w`` of ``W`` in ``optimizer`` that has a gradient.

        What AdamW does before its update; called by the hook :meth:`attach` installs. ``l2`` is each
        weight's own.
        """
        for lr, params in self._lr_by_group(optimizer):
            for strength, group in self._by_strength(params, "l2"):
                kernels.scale_(group, 1 - lr * strength)

    @torch.no_grad()
    def proximal_step(self, optimizer: Optimizer) -> None:
        """Apply the proximal operators of the L1 and group terms after the optimizer's update.

        Each ``w`` of ``W`` that has a gradient at this step is soft-thresholded, ``w <- sign(w) *
        max(|w| - s * l1, 0)``, and then each group block-shrunk by ``s * group_l1`` in the metric of
        ``s``: together the exact proximal operator of ``l1 * |w| + group_l1 * ||w_g||`` (sparse group
        lasso) for the step ``s`` the update applied to that entry. With ``proximal_threshold=
        "optimizer"`` ``s`` is read from the optimizer's state
        (:func:`~lightning_reg.step_sizes.step_size`); with ``"lr"`` it is the group's learning rate.
        ``l1`` (with the warm-up's ramp) and ``group_l1`` are each weight's own.
        """
        ramp = self.options.l1_ramp(self.step)
        by_optimizer = self.options.proximal_threshold == "optimizer"
        for group, taken, params in self._by_group(optimizer):
            uniform: dict[Any, tuple[float | Tensor, list[Tensor]]] = {}  # params that took one step
            for param in params:
                strengths = self._strength_of[id(param)]
                if strengths.l1 == 0 and strengths.group_l1 == 0:  # a rule switched both off: no pass
                    continue
                size = (
                    step_sizes.step_size(optimizer, group, param)
                    if by_optimizer
                    else step_sizes.StepSize(group["lr"], None)
                )
                if size.denominator is not None:  # at once: one denominator alive at a time, in cache
                    self._shrink_per_entry(param, size, taken, ramp)
                else:
                    key = size.scale if isinstance(size.scale, float) else id(size.scale)
                    uniform.setdefault(key, (size.scale, []))[1].append(param)
            for scale, same in uniform.values():  # one list each: the multi-tensor kernels
                self._shrink_uniformly(same, scale if isinstance(taken, float) else scale * taken, ramp)

    def _shrink_uniformly(self, params: list[Tensor], scale: float | Tensor, ramp: float) -> None:
        """The proximal step of ``params``, which all took the step ``scale``."""
        for strength, group in self._by_strength(params, "l1"):
            kernels.soft_threshold_(group, scale * (strength * ramp))
        for strength, group in self._by_strength(params, "group_l1"):
            for param in group:
                group_shrink_(param, scale * strength, self.options.group_by)

    def _shrink_per_entry(
        self, param: Tensor, size: step_sizes.StepSize, taken: float | Tensor, ramp: float
    ) -> None:
        """The proximal step of one parameter whose entries took the steps ``size``."""
        assert size.denominator is not None
        strengths = self._strength_of[id(param)]
        scale = size.scale if isinstance(taken, float) else size.scale * taken
        denominator = local(size.denominator)
        if strengths.l1 > 0:
            kernels.soft_threshold_scaled_(local(param), scale * (strengths.l1 * ramp), denominator)
        if strengths.group_l1 > 0:
            steps = scale / denominator
            group_shrink_scaled_(param, strengths.group_l1, steps, self.options.group_by)

    def _by_group(
        self, optimizer: Optimizer
    ) -> Iterable[tuple[dict[str, Any], float | Tensor, list[Tensor]]]:
        """``(group, taken, the params of W in it that have a gradient)`` for each group of ``optimizer``.

        ``taken`` is ``1.0``, or a device tensor that is ``0`` in a step a fused optimizer skips for inf
        gradients (:func:`~lightning_reg.step_hooks.step_taken`).
        """
        chosen, taken = self._chosen_ids, step_hooks.step_taken(optimizer)
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if id(p) in chosen and p.grad is not None]
            if params:
                yield group, taken, params

    def _lr_by_group(self, optimizer: Optimizer) -> Iterable[tuple[Any, list[Tensor]]]:
        """``(lr, params)`` as :meth:`_by_group` gives them, ``lr`` times ``taken``."""
        for group, taken, params in self._by_group(optimizer):
            yield (group["lr"] if isinstance(taken, float) else group["lr"] * taken), params

    def statistics(self, near_zero_tol: float = NEAR_ZERO_TOL) -> WeightStatistics:
        """Norms and zero counts of ``W``, as tensors on the weights' device (no host synchronisation)."""
        params, group_by = self.parameters, self.options.group_by
        ramp = self.options.l1_ramp(self.step)
        module_wide = Strengths(self.l1, self.l2, self.group_l1)
        own = self.selection.strengths
        return WeightStatistics(
            names=tuple(self.names),
            numels=tuple(param.numel() for param in params),
            groups=tuple(group_count(param, group_by) for param in params),
            table=weight_statistics(params, near_zero_tol, group_by),
            l1=self.l1_now,
            l2=self.l2,
            group_l1=self.group_l1,
            strengths=None
            if all(strength == module_wide for strength in own)
            else tuple(Strengths(s.l1 * ramp, s.l2, s.group_l1) for s in own),
        )

    @staticmethod
    def _example_names(model: nn.Module, count: int = 3) -> list[str]:
        return [name for name, _ in model.named_parameters()][:count]


@dataclass(frozen=True)
class WeightStatistics:
    """Raw sums over the regularized weights; :meth:`summary` turns them into named values.

    Attributes:
        names: parameter names, one per row of ``table``.
        numels: entry counts, one per row.
        groups: group counts (along ``group_by``), one per row.
        table: ``(len(names), 6)`` float64 tensor, per parameter: ``sum|w|``, ``sum w^2``,
            ``#(w == 0)``, ``#(|w| < tol)``, ``sum_g ||w_g||``, ``#(w_g == 0)``.
        l1: the module-wide L1 strength at the step the statistics were taken (after any warm-up), for
            ``l1_penalty`` and ``l1_strength``.
        l2: the module-wide L2 strength, for ``l2_penalty``.
        group_l1: the module-wide group strength, for ``group_l1_penalty``.
        strengths: each row's own strengths (its ``l1`` after any warm-up), where ``rules`` give some
            parameter other strengths than the module-wide ones; ``None``: every row has ``l1``, ``l2``
            and ``group_l1``.
    """

    names: tuple[str, ...]
    numels: tuple[int, ...]
    groups: tuple[int, ...]
    table: Tensor
    l1: float
    l2: float
    group_l1: float
    strengths: tuple[Strengths, ...] | None = None

    def summary(self, per_parameter: bool = False, penalties: bool = True) -> dict[str, float]:
        """The values as floats, read from the device in one transfer.

        Keys: ``l1_norm`` (``sum|w|``), ``l2_norm`` (``sqrt(sum w^2)``), ``sparsity`` (fraction of
        entries exactly ``0``), ``near_zero`` (fraction below the tolerance), ``dead_units`` (fraction of
        groups entirely ``0``); with ``penalties``, ``l1_penalty`` (``l1 * l1_norm``), ``l2_penalty``
        (``l2 / 2 * sum w^2``), ``group_l1_penalty`` (``group_l1 * sum_g ||w_g||``) and ``l1_strength``
        (the module-wide L1 strength in force, which a warm-up ramps up); with ``rules``, each penalty
        sums every parameter's own strength times its norm (``l1_penalty = sum_p l1_p * sum|w_p|``); with
        ``per_parameter``, ``sparsity/<name>``, ``l1_norm/<name>`` and ``dead_units/<name>``.
        """
        rows = self.table.tolist()
        column = [math.fsum(row[index] for row in rows) for index in range(len(STATISTICS_COLUMNS))]
        abs_sum, sq_sum, zeros, near_zero, group_norm_sum, dead = column
        values = {"l1_norm": abs_sum, "l2_norm": math.sqrt(sq_sum)}
        if self.numels:
            values["sparsity"] = zeros / sum(self.numels)
            values["near_zero"] = near_zero / sum(self.numels)
            values["dead_units"] = dead / sum(self.groups)
        if penalties and self.strengths is None:
            values["l1_penalty"] = self.l1 * abs_sum
            values["l2_penalty"] = self.l2 / 2 * sq_sum
            values["group_l1_penalty"] = self.group_l1 * group_norm_sum
        elif penalties and self.strengths is not None:
            pairs = list(zip(self.strengths, rows, strict=True))
            values["l1_penalty"] = math.fsum(strength.l1 * row[0] for strength, row in pairs)
            values["l2_penalty"] = math.fsum(strength.l2 / 2 * row[1] for strength, row in pairs)
            values["group_l1_penalty"] = math.fsum(strength.group_l1 * row[4] for strength, row in pairs)
        if penalties:
            values["l1_strength"] = self.l1
        if per_parameter:
            for name, numel, groups, row in zip(self.names, self.numels, self.groups, rows, strict=True):
                values[f"sparsity/{name}"] = row[2] / numel
                values[f"l1_norm/{name}"] = row[0]
                values[f"dead_units/{name}"] = row[5] / groups
        return values


def _still_valid(prepared: tuple[list[int], list[int], Tensor] | None, params: list[Tensor]) -> Tensor | None:
    """The sum :meth:`Regularizer.prepare_penalty` computed, if ``params`` are still the weights it read."""
    if prepared is None or prepared[0] != [id(p) for p in params]:
        return None
    return prepared[2] if prepared[1] == [p._version for p in params] else None
