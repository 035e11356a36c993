"""Run code right before and right after an optimizer's parameter update, however ``step`` is called.

``before`` runs once the gradients of the step exist: at once when ``step()`` gets no closure, and after
the closure's first evaluation when it gets one (Lightning's automatic optimization and LBFGS evaluate
the loss and its gradients inside ``step(closure)``). ``after`` runs when ``step`` returns. A step that
is skipped (e.g. by ``GradScaler`` on inf gradients) calls neither, except for fused optimizers, which
``GradScaler`` lets skip the update themselves: :func:`step_taken` and :func:`pending_grad_scale` tell the
callbacks what such a step does.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from lightning_reg.utilities.eager import always_eager

__all__ = [
    "AttachHandle",
    "StepCallback",
    "attach",
    "detach",
    "owners",
    "pending_grad_scale",
    "step_taken",
]

StepCallback = Callable[[Optimizer], None]

# Per optimizer, each owner's registration: attaching again with the same owner replaces that owner's
# hooks; other owners' hooks stay. Hooks run in the order they were installed.
_REGISTRY: weakref.WeakKeyDictionary[Optimizer, dict[int, tuple[object, list[RemovableHandle]]]] = (
    weakref.WeakKeyDictionary()
)


def attach(
    optimizer: Optimizer, owner: object, before: Sequence[StepCallback], after: Sequence[StepCallback]
) -> None:
    """Call ``owner``'s ``before`` / ``after`` callbacks, in order, around every update of ``optimizer``.

    ``owner`` is registered even without callbacks, so that :func:`owners` names everyone that attached.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> calls = []
    >>> attach(optimizer, "a", before=[lambda opt: calls.append("a")], after=[])
    >>> attach(optimizer, "b", before=[lambda opt: calls.append("b")], after=[])
    >>> attach(optimizer, "a", before=[lambda opt: calls.append("a again")], after=[])
    >>> optimizer.step()
    >>> calls, owners(optimizer)
    (['b', 'a again'], ['b', 'a'])
    """
    detach(optimizer, owner)
    handles = []
    if before:
        handles.append(optimizer.register_step_pre_hook(_pre_hook(_in_order(before))))
    if after:
        run_after = _in_order(after)
        handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: run_after(opt)))
    _REGISTRY.setdefault(optimizer, {})[id(owner)] = (owner, handles)


def detach(optimizer: Optimizer, owner: object) -> None:
    """Remove the callbacks :func:`attach` installed on ``optimizer`` for ``owner``, if any."""
    registered = _REGISTRY.get(optimizer, {})
    _, handles = registered.pop(id(owner), (None, []))
    for handle in handles:
        handle.remove()


class AttachHandle:
    """What attaching returns, in torch's convention for hooks: :meth:`remove` takes the owner's
    callbacks off the optimizer (a second call does nothing); as a context manager it removes them on
    exit.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> attach(optimizer, "a", before=[print], after=[])
    >>> handle = AttachHandle(optimizer, "a")
    >>> owners(optimizer), handle.remove(), owners(optimizer)
    (['a'], None, [])
    """

    def __init__(
        self, optimizer: Optimizer, owner: object, on_remove: Callable[[Optimizer], object] | None = None
    ) -> None:
        self._optimizer: weakref.ref[Optimizer] = weakref.ref(optimizer)
        self._owner: weakref.ref[object] | None = _weak(owner)
        self._strong_owner = None if self._owner is not None else owner
        self._on_remove = on_remove

    def remove(self) -> None:
        """Remove the owner's callbacks from the optimizer, if both still exist."""
        optimizer = self._optimizer()
        owner = self._strong_owner if self._owner is None else self._owner()
        if optimizer is None or owner is None:
            return
        detach(optimizer, owner)
        if self._on_remove is not None:
            self._on_remove(optimizer)

    def __enter__(self) -> AttachHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def _weak(owner: object) -> weakref.ref[object] | None:
    """A weak reference to ``owner``, or ``None`` where it cannot have one (a string, say)."""
    try:
        return weakref.ref(owner)
    except TypeError:
        return None


def owners(optimizer: Optimizer) -> list[object]:
    """Everyone attached to ``optimizer``, in the order their current callbacks were installed."""
    return [owner for owner, _ in _REGISTRY.get(optimizer, {}).values()]


def _in_order(callbacks: Sequence[StepCallback]) -> StepCallback:
    # Always eager, also inside a compiled ``optimizer.step``: the callbacks read the optimizer's state
    # per parameter, which Dynamo traced wrongly across a graph break (every parameter got the first
    # one's state), and their Python-side caches would guard and recompile at every step.
    @always_eager
    def run(optimizer: Optimizer) -> None:
        for callback in callbacks:
            callback(optimizer)

    return run


def _pre_hook(before: StepCallback) -> Callable[..., Any]:
    def hook(
        optimizer: Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if args and callable(args[0]):
            return (_after_first_call(args[0], lambda: before(optimizer)), *args[1:]), kwargs
        if callable(kwargs.get("closure")):
            return args, {
                **kwargs,
                "closure": _after_first_call(kwargs["closure"], lambda: before(optimizer)),
            }
        before(optimizer)
        return None

    return hook


def _after_first_call(closure: Callable[[], Any], then: Callable[[], None]) -> Callable[[], Any]:
    pending = True

    def wrapped() -> Any:
        nonlocal pending
        result = closure()
        if pending:
            pending = False
            then()
        return result

    return wrapped


def pending_grad_scale(optimizer: Optimizer) -> Tensor | None:
    """The factor the gradients still carry during this step, or ``None`` when they carry none.

    ``GradScaler`` leaves the gradients of a fused optimizer scaled and has the optimizer unscale them
    inside ``step``, telling it the factor as ``optimizer.grad_scale``.
    """
    return getattr(optimizer, "grad_scale", None)


def step_taken(optimizer: Optimizer) -> float | Tensor:
    """``1`` when this step updates the weights; ``0`` when ``GradScaler`` found inf gradients.

    During a fused optimizer's scaled step it is a device tensor, read without a host synchronisation
    (the optimizer itself skips the update on that device); otherwise a skipped step never reaches the
    hooks, and this is the float ``1.0``.
    """
    found_inf = getattr(optimizer, "found_inf", None)
    if found_inf is None:
        return 1.0
    taken: Tensor = (found_inf == 0).to(found_inf.dtype)
    return taken
