"""What one regularization term does in one mode (:class:`Term`), and the registry of modes.

A mode is how a term reaches the weights: ``l1_mode="proximal"`` shrinks them after the optimizer's
update, ``l2_mode="weight_decay"`` hands ``l2`` to the optimizer, and so on. Each mode is one class, in one
file of :mod:`lightning_reg.terms`, registered for the option value it implements with :func:`register`.
``Regularizer`` asks the registry for the classes of its two modes (:func:`terms_for`) and calls each
object at the points of a step; it never compares a mode's name.

A :class:`Term` subclass overrides what its mode does and inherits "nothing" for the rest:

- in the loss (``in_loss``): :meth:`Term.value`, the term of some weights, through autograd; and, with
  ``closed_form``, :meth:`Term.deferred_value` and :meth:`Term.add_gradient`, where the gradient of the
  unsharded weights is written directly instead (the L1 term's ``l1 * sign(w)``);
- in the optimizer: :meth:`Term.decays` (the ``weight_decay`` of new groups), :meth:`Term.check` (refuse an
  optimizer before anything changes), :meth:`Term.configure` (change its groups) and :meth:`Term.hooks`
  (what runs right before and right after each of its updates).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar

from torch import Tensor
from torch.optim import Optimizer

from lightning_reg import options as declared
from lightning_reg.functional.couplings import Coupling
from lightning_reg.optim.param_groups import check_no_own_decay
from lightning_reg.optim.step_hooks import StepCallback
from lightning_reg.options import RegularizationOptions
from lightning_reg.selection import Selection
from lightning_reg.utilities.checks import InvalidArgumentError

__all__ = ["Context", "Hooks", "L2Term", "Term", "register", "registered", "terms_for"]


@dataclass(frozen=True)
class Context:
    """What every term of one regularizer shares.

    Attributes:
        selection: the regularized weights and their strengths.
        options: the regularization's options.
        units: the groups of ``group_l1`` with their strengths
            (:func:`~lightning_reg.selection.units_of`).
        clock: the index of the optimizer step being taken (the L1 warm-up reads it).
    """

    selection: Selection
    options: RegularizationOptions
    units: Sequence[tuple[Coupling, float]]
    clock: Callable[[], int]

    @property
    def has_l1(self) -> bool:
        """Whether some weight has ``l1 > 0``."""
        return any(strength.l1 > 0 for strength in self.selection.strengths)

    @property
    def has_l2(self) -> bool:
        """Whether some weight has ``l2 > 0``."""
        return any(strength.l2 > 0 for strength in self.selection.strengths)

    @property
    def has_group_l1(self) -> bool:
        """Whether some group (row, column or coupled channel) has ``group_l1 > 0``."""
        return any(strength > 0 for _, strength in self.units)

    @property
    def regularized_parameters(self) -> list[Tensor]:
        """The regularized weights, in ``named_parameters()`` order."""
        return [param for _, param in self.selection.regularized]


class Hooks(NamedTuple):
    """What a term runs around each update of one optimizer: right before it, and right after it."""

    before: list[StepCallback]
    after: list[StepCallback]


class Term:
    """One regularization term in one mode. The defaults do nothing: a mode overrides what it does.

    Args:
        context: what the regularizer's terms share.
    """

    #: The option (``"l1_mode"`` or ``"l2_mode"``) and the value of it this class implements; set by
    #: :func:`register`.
    option: ClassVar[str]
    mode: ClassVar[str]
    #: Whether the term is part of ``Regularizer.penalty()``.
    in_loss: ClassVar[bool] = False
    #: Whether an unsharded weight's part is computed by :meth:`deferred_value` and :meth:`add_gradient`
    #: rather than :meth:`value`.
    closed_form: ClassVar[bool] = False

    def __init__(self, context: Context) -> None:
        self.context = context
        self.selection = context.selection
        self.options = context.options

    @property
    def active(self) -> bool:
        """Whether some weight has a positive strength of this term (else it does nothing)."""
        return False

    def prepare(self) -> None:
        """Compute now what the next :meth:`deferred_value` needs a pass over the weights for."""

    def value(
        self, params: Sequence[Tensor], step: int, coupled: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        """The term of ``params`` at optimizer step ``step``, through autograd, one tensor per strength;
        a group term counts the units with a member among ``coupled`` (``params`` unless given)."""
        return []

    def deferred_value(self, step: int) -> list[Tensor]:
        """With ``closed_form``: the term of the unsharded weights, its gradient added after backward."""
        return []

    def add_gradient(self, params: Sequence[Tensor], step: int, scale: Tensor | None) -> None:
        """With ``closed_form``: add the term's gradient of ``params`` to their ``.grad``, times ``scale``
        (a pending gradient scale) when given."""

    def decays(self) -> Sequence[float] | None:
        """The ``weight_decay`` of each regularized weight in new optimizer groups; ``None``: no decay."""
        return None

    def splits_groups(self) -> bool:
        """Whether :meth:`configure` moves parameters between the optimizer's groups."""
        return False

    def check(self, optimizer: Optimizer) -> None:
        """Refuse ``optimizer`` (``ValueError`` naming what is wrong) before anything is changed."""

    def configure(self, optimizer: Optimizer, schedulers: Iterable[Any]) -> None:
        """Change ``optimizer``'s groups (and the per-group lists of ``schedulers`` bound to it)."""

    def hooks(self, optimizer: Optimizer) -> Hooks:
        """What to run right before and right after each update of ``optimizer``."""
        return Hooks([], [])


class L2Term(Term):
    """The L2 term beside the optimizer's own weight decay, which must then leave the weights alone."""

    @property
    def active(self) -> bool:
        return self.context.has_l2

    def check(self, optimizer: Optimizer) -> None:
        if self.options.l2 > 0 or self.active:  # the module-wide l2 asked is enough to refuse
            check_no_own_decay(optimizer, self.context.regularized_parameters, f"l2_mode={self.mode!r}")


_TermT = TypeVar("_TermT", bound=type[Term])

# Per mode option, per value, the term classes implementing it, in registration order.
_REGISTRY: dict[str, dict[str, list[type[Term]]]] = {option: {} for option in declared.MODE_OPTIONS}


def register(option: str, mode: str) -> Callable[[_TermT], _TermT]:
    """Class decorator: the class implements ``mode``, a value of ``option`` that the options declare.

    Several classes may implement one mode (``l1_mode="loss"`` has the L1 term and the group term); they
    act in the order they were registered.

    Raises:
        ~lightning_reg.InvalidArgumentError: ``option`` is not a mode option, or ``mode`` is not one of
            its declared values (:func:`~lightning_reg.options.mode_choices`).
    """
    if option not in _REGISTRY:
        raise InvalidArgumentError("option", option, f"one of {', '.join(map(repr, _REGISTRY))}")
    choices = declared.mode_choices(option)
    if mode not in choices:
        raise InvalidArgumentError(
            "mode", mode, f"a declared value of {option}: {', '.join(map(repr, choices))}"
        )

    def add(cls: _TermT) -> _TermT:
        cls.option, cls.mode = option, mode
        _REGISTRY[option].setdefault(mode, []).append(cls)
        return cls

    return add


def registered(option: str) -> dict[str, list[type[Term]]]:
    """The values of ``option`` that have term classes, with them (a copy)."""
    return {mode: list(classes) for mode, classes in _REGISTRY[option].items()}


def terms_for(context: Context) -> list[Term]:
    """The terms of ``context``'s modes, one object per registered class: the ``l1_mode`` ones first."""
    options = context.options
    return [
        cls(context)
        for option in declared.MODE_OPTIONS
        for cls in _REGISTRY[option].get(getattr(options, option), [])
    ]
