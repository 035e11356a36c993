"""``Regularizer``: L1, L2 and Elastic Net for any ``torch.nn.Module``, usable in a bare training loop."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_reg.activity import ActivityPenalty
from lightning_reg.functional import fused
from lightning_reg.functional.kernels import sum_in_order
from lightning_reg.optim import step_hooks, step_updates
from lightning_reg.optim.param_groups import decay_groups, unwrapped
from lightning_reg.options import (
    GroupBy,
    L1Mode,
    L2Mode,
    ProximalThreshold,
    RegularizationOptions,
    document_options,
)
from lightning_reg.selection import (
    Selection,
    Strengths,
    couple,
    select_parameters,
    units_of,
    warn_if_empty,
    warn_unmatched,
)
from lightning_reg.statistics import NEAR_ZERO_TOL, WeightStatistics, statistics_of
from lightning_reg.structured import channels
from lightning_reg.terms import Context, Term, WeightPenalty, terms_for
from lightning_reg.terms.l2_decoupled import DecoupledL2
from lightning_reg.terms.proximal import SparseGroupProximal
from lightning_reg.utilities.checks import InvalidArgumentError, check_integer, deprecated

__all__ = [
    "Regularizer",
]

_TermT = TypeVar("_TermT", bound=Term)


@document_options
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
      :func:`~lightning_reg.optim.param_groups.decay_names`); :meth:`attach` also installs the
      step-bound updates of the other modes: ``w <- w * (1 - lr * l2)`` right before each update
      (``"decoupled"``), with ``lr`` the learning rate of the group holding ``w`` at that step, and
      the proximal operators of the L1 and group terms right after it (``"proximal"``), for the step
      the update applied to each entry (see :meth:`proximal_step`).

    Args:
        model: the module whose parameters are regularized.
        @options@
        example_inputs: with ``group_by="channels"``, what ``model`` is called with to trace its coupled
            units (a tensor, a tuple of positional inputs or a dict of keyword inputs); else unused.

    Attributes:
        global_step: the index of the optimizer step being taken, from 0; only the L1 warm-up reads it.
        activity: the activity terms; record a step's with ``with reg.activity.capture(): model(x)``.

    Raises:
        ValueError: a strength is negative, NaN, infinite or not a number; ``exclude`` is not a list of
            non-empty strings; a mode or ``group_by`` is not one of its choices; ``rules`` is not a dict
            of non-empty globs to dicts of those strengths; a rule gives ``group_l1 > 0`` to a 0-D
            parameter, or to a 1-D one with ``group_by="columns"`` (it has no groups there);
            ``fused=True`` where ``torch.compile`` cannot generate kernels
            (:mod:`~lightning_reg.functional.fused`).

    Warns:
        UserWarning: an ``exclude`` or ``rules`` pattern matches no parameter.

    Example, the tutorial's Elastic Net loop::

        >>> import torch
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
        group_l1: float = 0.0,
        group_by: GroupBy = "rows",
        exclude: Sequence[str] = (),
        rules: Mapping[str, Mapping[str, float]] | None = None,
        l1_mode: L1Mode = "loss",
        proximal_threshold: ProximalThreshold = "optimizer",
        l2_mode: L2Mode = "weight_decay",
        l1_warmup_steps: int = 0,
        fused: bool = False,
        activity_l1: Mapping[str, float] | None = None,
        example_inputs: Any = None,
    ) -> None:
        self.options = options = RegularizationOptions.from_arguments(locals())
        selection = select_parameters(
            model,
            options.exclude,
            options.rules,
            Strengths(options.l1, options.l2, options.group_l1),
            options.group_by,
        )
        if options.group_by == "channels":
            selection = couple(selection, channels.traced_couplings(model, example_inputs))
        self.selection: Selection = selection
        self._check_fused()
        self._context = Context(selection, options, units_of(selection, options.group_by), self._clock)
        self._terms: list[Term] = terms_for(self._context)  # one per term of the chosen modes
        self._extra: dict[type[Term], Term] = {}  # see _term
        self._weights = WeightPenalty(selection, self._terms)
        self._optimizers: weakref.WeakSet[Optimizer] = weakref.WeakSet()  # those attach() was given
        self.global_step = 0
        self.activity = ActivityPenalty(model, options.activity_l1 or {})
        warn_unmatched(self.selection, model)
        warn_if_empty(self.selection, model, {"l1": l1, "l2": l2, "group_l1": group_l1})

    def _clock(self) -> int:
        return self.global_step

    def _term(self, kind: type[_TermT]) -> _TermT:
        """This regularizer's term of ``kind``: the one its modes made, else one made now (for the public
        methods that apply a mode's update on demand)."""
        found = next((term for term in [*self._terms, *self._extra.values()] if isinstance(term, kind)), None)
        if found is None:
            found = self._extra[kind] = kind(self._context)
        return found

    @classmethod
    def from_options(
        cls, model: nn.Module, options: RegularizationOptions, example_inputs: Any = None
    ) -> Regularizer:
        """Build from already validated options."""
        return cls(model, **options.as_hparams(), example_inputs=example_inputs)

    @property
    def l1(self) -> float:
        return self.options.l1

    @property
    def l1_now(self) -> float:
        """The L1 strength at :attr:`global_step`: ``l1`` once the warm-up is over."""
        return self.options.l1_at(self.global_step)

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
    def regularized_parameters(self) -> list[nn.Parameter]:
        """The regularized parameters (``W``), each once, in the order of :attr:`names`."""
        return [param for _, param in self.selection.regularized]

    @property
    def has_group_term(self) -> bool:
        """Whether some group (row, column or coupled channel) has a positive ``group_l1``."""
        return self._context.has_group_l1

    @property
    def adds_to_loss(self) -> bool:
        """Whether :meth:`penalty` has any term: the Lightning adapter skips it when not."""
        return bool(self._weights) or bool(self.activity)

    def penalty(self) -> Tensor:
        """The terms to add to the loss (see the class docstring); a constant zero when there are none.

        The L1 term's gradient is added to each weight's ``.grad`` at the end of backward rather than
        carried by autograd (:func:`~lightning_reg.functional.deferred.l1_term`): the same numbers, in fewer
        passes.

        Over sharded parameters (``DTensor``) the value is included but detached: their gradient is added
        at the optimizer step by the hook :meth:`attach` installs, after FSDP has reduced the gradients of
        the data loss (autograd through a shard would write a gradient FSDP does not expect).
        """
        terms = list(self.activity.take().values())
        if self._weights or not terms:
            terms.insert(0, self._weights.value(self.global_step))
        return sum_in_order(terms)

    def activity_penalty(self) -> Tensor:
        """The activity terms recorded since the capture began, summed; the recorded terms are cleared.

        :meth:`penalty` includes them. Under manual optimization, where the weight terms reach the weights
        as gradients at the step, add this to the loss you backpropagate.
        """
        return sum_in_order(self.activity.take().values())

    def prepare_penalty(self) -> None:
        """Compute now the part of the next :meth:`penalty` that needs a pass over the weights.

        ``penalty()`` then uses it, provided no weight has changed since. A training step's memory peaks
        at the end of its forward pass, and Lightning only clears the last step's gradients after
        ``training_step``: computed before the forward pass, the L1 sum's temporary memory is not added to
        that peak. ``RegularizedModule`` calls this before every training step.
        """
        self._weights.prepare()

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: ``W`` with ``weight_decay=l2``, every other trainable parameter with ``0``.

        With ``l2_mode`` other than ``"weight_decay"`` both groups get ``weight_decay=0``. Pass them to
        any optimizer that has ``weight_decay``: ``torch.optim.SGD(reg.param_groups(), lr=0.1)``; call
        :meth:`attach` on it for the proximal and decoupled modes.
        """
        others = [param for _, param in self.selection.others]
        decays = next((decays for term in self._terms if (decays := term.decays()) is not None), None)
        if decays is None:
            return decay_groups(self.regularized_parameters, others, 0.0)
        return decay_groups(self.regularized_parameters, others, self.l2, decays)

    def attach(
        self, optimizer: Optimizer, schedulers: Iterable[Any] = (), *, penalty_as_gradient: bool = False
    ) -> step_hooks.AttachHandle:
        """Make an existing optimizer carry this regularization's optimizer-side terms.

        ``optimizer`` may be Fabric's or Lightning's wrapper of one: the regularization acts on the
        optimizer inside, which the wrapper's steps run.

        - ``l2_mode="weight_decay"``, ``l2 > 0``: split its groups so that only ``W`` decays, with
          ``weight_decay=l2`` (:func:`~lightning_reg.optim.param_groups.split_optimizer`; ``schedulers`` bound
          to it are expanded to match). With ``l2 == 0`` the groups are left as built.
        - ``"decoupled"`` or ``"loss"`` L2: the optimizer's own weight decay of ``W`` must be ``0``.
        - installs the decoupled decay (before each update) and the proximal step (after each update),
          when those modes have a strength. Attaching again replaces this regularizer's earlier hooks.
        - with ``penalty_as_gradient``, the loss-mode terms are not expected in the loss: right before each
          update, :meth:`add_penalty_gradient` adds their gradient to the optimizer's parameters instead
          (manual optimization, where the package never sees the loss). Sharded parameters always get
          their loss-mode gradient this way (see :meth:`penalty`).

        Several regularizers may share one optimizer, each acting on its own parameters, provided no
        parameter is regularized by two of them and only the first splits the groups for weight decay.

        Raises:
            ValueError: see :func:`~lightning_reg.optim.param_groups.split_optimizer`; for a non-zero
                ``weight_decay`` on ``W`` with ``l2_mode`` ``"loss"`` or ``"decoupled"``; for an
                optimizer whose step sizes are unknown, with ``l1_mode="proximal"`` and
                ``proximal_threshold="optimizer"`` (:func:`~lightning_reg.optim.step_sizes.check_supported`);
                for an optimizer another regularizer is attached to, when the two regularize a parameter
                in common or this one would split the groups for weight decay.
        """
        optimizer = unwrapped(optimizer)
        self._check_fused()  # the model may have moved to another device since
        splits = any(term.splits_groups() for term in self._terms)
        step_updates.check_shared(self, self.selection, optimizer, splits)
        step_updates.warn_if_unheld(self.selection, [optimizer])
        for term in self._terms:  # every refusal before anything changes
            term.check(optimizer)
        for term in self._terms:
            term.configure(optimizer, schedulers)
        before: list[step_hooks.StepCallback] = []
        if self._weights and penalty_as_gradient:
            before.append(self.add_penalty_gradient)
        elif self._weights and self._weights.sharded:
            before.append(functools.partial(self.add_penalty_gradient, sharded_only=True))
        after: list[step_hooks.StepCallback] = []
        for term in self._terms:
            hooks = term.hooks(optimizer)
            before += hooks.before
            after += hooks.after
        step_hooks.attach(optimizer, self, before=before, after=after)
        self._optimizers.add(optimizer)
        return step_hooks.AttachHandle(optimizer, self, self._optimizers.discard)

    def _check_fused(self) -> None:
        """With ``fused=True``, refuse devices where ``torch.compile`` cannot generate the kernels."""
        if self.options.fused:
            fused.check_supported(param.device for _, param in self.selection.regularized)

    def detach(self) -> None:
        """Deprecated: remove each attachment with the handle :meth:`attach` returns (``.remove()``).

        Removes the hooks :meth:`attach` installed on every optimizer (the groups stay as split).
        """
        deprecated("Regularizer.detach()", "the handle attach() returns: handle.remove()")
        self._detach_all()

    def _detach_all(self) -> None:
        for optimizer in list(self._optimizers):
            step_hooks.detach(optimizer, self)
        self._optimizers = weakref.WeakSet()

    @property
    def step(self) -> int:
        """Deprecated name of :attr:`global_step`."""
        deprecated("Regularizer.step", "Regularizer.global_step")
        return self.global_step

    @step.setter
    def step(self, value: int) -> None:
        deprecated("Regularizer.step", "Regularizer.global_step")
        self.global_step = value

    def state_dict(self) -> dict[str, Any]:
        """What a bare loop saves to resume: the optimizer steps taken (:attr:`global_step`), which the
        L1 warm-up reads. The rest lives in the model and the optimizer (whose state holds the group
        step's)."""
        return {"global_step": self.global_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`.

        Raises:
            ~lightning_reg.InvalidArgumentError: ``state`` has no ``global_step`` integer >= 0.
        """
        if not isinstance(state, Mapping):
            raise InvalidArgumentError("state", state, "the dict Regularizer.state_dict() returned")
        self.global_step = check_integer("state['global_step']", state.get("global_step"), 0)

    def add_penalty_gradient(self, optimizer: Optimizer, *, sharded_only: bool = False) -> None:
        """Add the gradient of :meth:`penalty` to the ``.grad`` of the ``W`` in ``optimizer``.

        Only parameters that have a gradient are counted, each through the optimizer that holds it: the
        same update as if :meth:`penalty` had been added to the loss of this step, once. With
        ``sharded_only``, only sharded parameters (whose gradient :meth:`penalty` leaves out).
        """
        self._weights.add_gradient(optimizer, self.global_step, sharded_only=sharded_only)

    def decoupled_decay(self, optimizer: Optimizer) -> None:
        """``w <- w * (1 - lr * l2)`` for each ``w`` of ``W`` in ``optimizer`` that has a gradient.

        What AdamW does before its update; called by the hook :meth:`attach` installs. ``l2`` is each
        weight's own, ``lr`` that of the group holding the weight.
        """
        self._term(DecoupledL2).step(optimizer)

    def proximal_step(self, optimizer: Optimizer) -> None:
        """Apply the proximal operators of the L1 and group terms after the optimizer's update.

        Each ``w`` of ``W`` that has a gradient at this step is soft-thresholded, ``w <- sign(w) *
        max(|w| - s * l1, 0)``, and then each group block-shrunk by ``s * group_l1`` in the metric of
        ``s``: together the exact proximal operator of ``l1 * |w| + group_l1 * ||w_g||`` (sparse group
        lasso) for the step ``s`` the update applied to that entry. With ``proximal_threshold=
        "optimizer"`` ``s`` is read from the optimizer's state
        (:mod:`~lightning_reg.optim.step_sizes`); with ``"lr"`` it is the group's learning rate.
        ``l1`` (with the warm-up's ramp) and ``group_l1`` are each weight's own.
        """
        self._term(SparseGroupProximal).step(optimizer)

    def statistics(self, near_zero_tol: float = NEAR_ZERO_TOL) -> WeightStatistics:
        """Norms and zero counts of ``W``, as tensors on the weights' device (no host synchronisation)."""
        return statistics_of(self.selection, self.options, self.global_step, near_zero_tol)
