"""``RegularizedModule``: the Lightning adapter over :class:`~lightning_reg.regularizer.Regularizer`.

The mixin adds the L1 term to the loss that ``training_step`` returns and gives the optimizers that
``configure_optimizers`` returns weight decay on the regularized parameters only. Both hooks are
intercepted at their outermost call, whichever class in the hierarchy defines them, so the mixin works
in front of an existing module (``class RegNet(RegularizedModule, MyLitNet)``) and as a base whose
subclass defines the hooks itself (``class Net(RegularizedModule, LightningModule)``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_reg.optim.step_updates import UnheldParametersWarning, warn_if_unheld
from lightning_reg.options import (
    GroupBy,
    L1Mode,
    L2Mode,
    ProximalThreshold,
    RegularizationOptions,
    document_options,
)
from lightning_reg.regularizer import Regularizer
from lightning_reg.utilities.eager import always_eager
from lightning_reg.utilities.nested import leaves

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule as _Base
else:
    _Base = object

__all__ = [
    "RegularizedModule",
    "regularizer_of",
]

_LIGHTNING_PACKAGES = ("lightning", "pytorch_lightning")
_MARK = "_lightning_reg_hook"
#: Marks the mixin's own hooks, which only pass the call on to the next class (see :func:`_passing_on`).
_PASSES_ON = "_lightning_reg_passes_on"


class _Hook(NamedTuple):
    """What the mixin does around the outermost call of one hook of the user's module."""

    #: Before the hook runs; returns what the hook's body runs inside.
    begin: Callable[[RegularizedModule], contextlib.AbstractContextManager[Any]]
    #: After it returns: given the hook's output, returns what the caller gets.
    finish: Callable[[RegularizedModule, Any], Any]


# The mixin's work around the user's hooks is always eager, also in a compiled module: it reads the
# Trainer's step count and the regularizer's Python-side caches, on which Dynamo would guard and
# recompile at every step.
@always_eager
def _begin_training_step(module: RegularizedModule) -> contextlib.AbstractContextManager[Any]:
    """The step index, the part of the penalty that reads every weight, and the activity capture."""
    regularizer = module.regularizer
    trainer = getattr(module, "_trainer", None)  # None when the step is called outside Trainer.fit
    regularizer.global_step = trainer.global_step if trainer is not None else 0
    if module.automatic_optimization and regularizer.adds_to_loss:
        regularizer.prepare_penalty()
    return regularizer.activity.capture()


@always_eager
def _add_penalty(module: RegularizedModule, output: Any) -> Any:
    """Add the loss-mode terms to the loss a training step returns."""
    regularizer = module.regularizer
    if not regularizer.adds_to_loss or output is None or not module.automatic_optimization:
        return output  # under manual optimization the terms arrive as gradients instead
    if isinstance(output, Tensor):
        return output + regularizer.penalty()
    if isinstance(output, Mapping) and "loss" in output:
        return {**output, "loss": output["loss"] + regularizer.penalty()}
    return output


def _begin_configure_optimizers(module: RegularizedModule) -> contextlib.AbstractContextManager[Any]:
    """Forget the last regularizer: a fresh one sees the parameters as they are when training is set up."""
    if module._regularizer is not None:
        module._regularizer._detach_all()
        module._regularizer = None
    return contextlib.nullcontext()


def _attach_to_optimizers(module: RegularizedModule, output: Any) -> Any:
    """Give the returned optimizers the optimizer-side terms (weight decay groups, step hooks).

    Under manual optimization the package never sees the loss, so the loss-mode terms reach the weights
    as gradients added right before each ``opt.step()``, each parameter through its own optimizer.
    """
    regularizer = module.regularizer
    trainer = getattr(module, "_trainer", None)
    if trainer is not None:  # Lightning is imported: the trainer exists
        from lightning_reg.recalibration import warn_if_stale

        warn_if_stale(trainer, module, regularizer.has_group_term)
    returned = list(leaves(output))
    optimizers = [item for item in returned if isinstance(item, Optimizer)]
    schedulers = [item for item in returned if isinstance(getattr(item, "optimizer", None), Optimizer)]
    with warnings.catch_warnings():  # one optimizer of several may hold none (a GAN's other network)
        warnings.simplefilter("ignore", UnheldParametersWarning)
        for optimizer in optimizers:
            regularizer.attach(optimizer, schedulers, penalty_as_gradient=not module.automatic_optimization)
    warn_if_unheld(regularizer.selection, optimizers)  # but together they must hold some
    return output


#: The hooks the mixin intercepts, whichever class of the user's hierarchy defines them.
_HOOKS: dict[str, _Hook] = {
    "training_step": _Hook(_begin_training_step, _add_penalty),
    "configure_optimizers": _Hook(_begin_configure_optimizers, _attach_to_optimizers),
}


def _outermost(name: str, hook: Callable[..., Any], passes_on: bool = False) -> Callable[..., Any]:
    """Wrap ``hook`` so that :data:`_HOOKS` ``[name]`` acts once, around the outermost of nested calls."""
    around = _HOOKS[name]

    @functools.wraps(hook)
    def wrapper(self: RegularizedModule, *args: Any, **kwargs: Any) -> Any:
        if name in self._reg_active:
            return hook(self, *args, **kwargs)
        inside = around.begin(self)
        self._reg_active.add(name)
        try:
            with inside:
                output = hook(self, *args, **kwargs)
        finally:
            self._reg_active.discard(name)
        return around.finish(self, output)

    setattr(wrapper, _MARK, True)
    setattr(wrapper, _PASSES_ON, passes_on)
    return wrapper


def _passing_on(name: str, cls: type) -> Callable[..., Any]:
    """The mixin's hook ``name`` for ``cls``, naming as ``__wrapped__`` the next class's one it calls.

    Lightning's ``is_overridden`` reads ``__wrapped__``, so it sees whether the user's classes define the
    hook, not the mixin's pass-through: the Trainer still refuses a module without ``training_step``, and
    LightningCLI warns before replacing ``configure_optimizers`` only when the user wrote one.
    """
    passing = getattr(RegularizedModule, name)
    wrapper = _outermost(name, passing.__wrapped__, passes_on=True)  # calls the next class at run time
    wrapper.__wrapped__ = getattr(super(RegularizedModule, cls), name)  # type: ignore[attr-defined]
    return wrapper


def _unbound(method: Callable[..., Any]) -> Callable[..., Any]:
    """A hook that takes ``self`` first, from a callable already bound to its instance."""

    @functools.wraps(method)
    def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    return hook


def _check_base_order(cls: type) -> None:
    """Refuse ``class Net(LightningModule, RegularizedModule)``: the mixin must come first."""
    mro = cls.__mro__
    for base in mro[: mro.index(RegularizedModule)]:
        if base.__module__.split(".")[0] in _LIGHTNING_PACKAGES and hasattr(base, "training_step"):
            raise TypeError(
                f"{cls.__name__}: RegularizedModule must come before {base.__name__} in the bases, "
                f"e.g. class {cls.__name__}(RegularizedModule, {base.__name__})"
            )


@document_options
class RegularizedModule(_Base):
    """Mixin that regularizes a ``LightningModule``: L1, group L1 and L2, in the loss or the optimizer.

    The regularized parameters ``W`` are the trainable floating-point parameters with ``dim() > 1`` or
    matched by a ``rules`` pattern, minus those matching an ``exclude`` glob or named by the module's
    ``no_weight_decay()``; tied parameters count once. Each has its own strengths: its first matching
    rule's, the keys the rule omits (and every parameter no rule matches) taking the module-wide ones.
    They are chosen when ``configure_optimizers`` runs, so layers built in ``configure_model`` are included.

    - ``training_step``: the loss it returns (a tensor, or a dict's ``"loss"``; ``None`` passes) gains the
      loss-mode terms: ``l1 * sum|w| + group_l1 * sum_g ||w_g||`` with ``l1_mode="loss"`` and
      ``l2 / 2 * sum w^2`` with ``l2_mode="loss"``; once per step, however many
      ``super().training_step`` calls the class hierarchy makes. In the other modes those terms are not
      in the returned loss: they act on the weights at the optimizer step. Under manual optimization
      the loss-mode terms' gradients are added right before each ``opt.step()`` instead, once per step,
      each parameter through the optimizer that holds it: the user's code stays as it is (add
      ``self.regularizer.activity_penalty()`` to your loss for ``activity_l1``).
    - ``configure_optimizers``: with ``l2_mode="weight_decay"`` and ``l2 > 0``, every returned
      optimizer's groups are split into ``W`` (``weight_decay=l2``) and the rest (``weight_decay=0``),
      named ``decay`` / ``no_decay``; schedulers returned with it keep driving every group. With
      ``l2 == 0`` the groups are left as built. ``l1_mode="proximal"`` soft-thresholds each entry of
      ``W`` by ``s * l1`` (and block-shrinks its groups by ``group_l1`` in the metric of ``s``) after
      every optimizer step, ``s`` being the step the optimizer has just applied to that entry's gradient
      (``proximal_threshold``); ``l2_mode="decoupled"`` multiplies ``W`` by ``1 - lr * l2`` right before
      every update (Adam then is AdamW). ``lr`` is the learning rate of the group holding the weight at
      that step.
    - The options are saved in ``hparams``, so ``load_from_checkpoint`` rebuilds the same regularization.

    Args:
        @options@
        *args: passed on to the next class's ``__init__``.
        **kwargs: passed on to the next class's ``__init__``.

    Raises:
        ValueError: at construction, for a negative, NaN, infinite or non-numeric strength, a bad
            ``exclude``, mode, ``group_by`` or ``rules``; when ``configure_optimizers`` runs, for an
            optimizer that cannot carry the L2 mode (no ``weight_decay``, or its own decay of ``W``), for
            one whose step sizes are unknown under ``l1_mode="proximal"`` with
            ``proximal_threshold="optimizer"``, and for a rule giving ``group_l1 > 0`` to a parameter
            without groups (0-D; 1-D with ``group_by="columns"``).
        TypeError: at class creation, when the mixin is placed after a ``LightningModule`` in the bases.

    Example::

        >>> import lightning.pytorch as L
        >>> import torch
        >>> class Net(L.LightningModule):
        ...     def __init__(self, hidden: int = 8):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(4, hidden)
        ...     def training_step(self, batch, batch_idx):
        ...         return self.layer(batch).pow(2).mean()
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> class RegNet(RegularizedModule, Net):
        ...     pass
        >>> model = RegNet(l1=1e-4, l2=1e-3, hidden=16)
        >>> [group["name"] for group in model.configure_optimizers().param_groups]
        ['decay', 'no_decay']
        >>> model.hparams["l1"], model.hparams["l2"]
        (0.0001, 0.001)
    """

    def __init__(
        self,
        *args: Any,
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
        **kwargs: Any,
    ) -> None:
        self._reg_options = RegularizationOptions.from_arguments(locals())
        self._regularizer: Regularizer | None = None
        self._reg_active: set[str] = set()
        super().__init__(*args, **kwargs)
        self._remember_options()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_base_order(cls)
        for name in _HOOKS:
            defined = cls.__dict__.get(name)
            if callable(defined) and not getattr(defined, _MARK, False):
                setattr(cls, name, _outermost(name, defined))
            elif defined is None and getattr(getattr(cls, name, None), _PASSES_ON, False):
                setattr(cls, name, _passing_on(name, cls))

    def __setattr__(self, name: str, value: Any) -> None:
        # LightningCLI's --optimizer installs configure_optimizers on the instance: intercept it too.
        if name in _HOOKS and callable(value) and not getattr(value, _MARK, False):
            value = types.MethodType(_outermost(name, _unbound(value)), self)
        super().__setattr__(name, value)

    @property
    def regularization_options(self) -> RegularizationOptions:
        """The validated options this module was built with."""
        return self._reg_options

    @property
    def regularizer(self) -> Regularizer:
        """The :class:`Regularizer` over this module's parameters, built on first use."""
        if self._regularizer is None:
            self._regularizer = Regularizer.from_options(self, self._reg_options, self._example_inputs())
        return self._regularizer

    def _example_inputs(self) -> Any:
        """What ``group_by="channels"`` traces the model on: Lightning's ``example_input_array``."""
        if self._reg_options.group_by != "channels":
            return None
        example = getattr(self, "example_input_array", None)
        if example is None:
            raise ValueError(
                f"{type(self).__name__}(group_by='channels') traces the model on self.example_input_array, "
                "which is None: set it in __init__ to what forward takes (a tensor, a tuple of positional "
                "inputs or a dict of keyword inputs), e.g. self.example_input_array = torch.zeros(1, 3, 8, 8)"
            )
        return example

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        return super().training_step(*args, **kwargs)

    def configure_optimizers(self) -> Any:
        return super().configure_optimizers()

    training_step = _outermost("training_step", training_step, passes_on=True)
    configure_optimizers = _outermost("configure_optimizers", configure_optimizers, passes_on=True)

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Lightning's ``save_hyperparameters``, keeping the regularization options in ``hparams``."""
        if frame is None:
            current = inspect.currentframe()
            frame = current.f_back if current is not None else None
        super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        self._remember_options()

    def _remember_options(self) -> None:
        values = self._reg_options.as_hparams()
        self.hparams.update(values)
        initial = getattr(self, "_hparams_initial", None)
        if initial is not None:
            initial.update(values)


def regularizer_of(model: nn.Module) -> Regularizer:
    """The :class:`Regularizer` a model is trained with: its own for a :class:`RegularizedModule`, else
    one over the default rule (trainable floating-point parameters with ``dim() > 1``, minus
    ``no_weight_decay()``), with no strength.

    >>> regularizer_of(nn.Linear(3, 2)).names
    ['weight']
    """
    return model.regularizer if isinstance(model, RegularizedModule) else Regularizer(model)
