"""Run code right before and right after an optimizer's parameter update, however ``step`` is called.

``before`` runs once the gradients of the step exist: at once when ``step()`` gets no closure, and after
the closure's first evaluation when it gets one (Lightning's automatic optimization and LBFGS evaluate
the loss and its gradients inside ``step(closure)``). ``after`` runs when ``step`` returns. A step that
is skipped (e.g. by ``GradScaler`` on inf gradients) calls neither.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

StepCallback = Callable[[Optimizer], None]

# One registration per optimizer: attaching again replaces the earlier hooks instead of stacking them.
_HANDLES: weakref.WeakKeyDictionary[Optimizer, list[RemovableHandle]] = weakref.WeakKeyDictionary()


def attach(optimizer: Optimizer, before: Sequence[StepCallback], after: Sequence[StepCallback]) -> None:
    """Call the ``before`` / ``after`` callbacks, in order, around every update of ``optimizer``."""
    detach(optimizer)
    handles = []
    if before:
        handles.append(optimizer.register_step_pre_hook(_pre_hook(_in_order(before))))
    if after:
        run_after = _in_order(after)
        handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: run_after(opt)))
    if handles:
        _HANDLES[optimizer] = handles


def detach(optimizer: Optimizer) -> None:
    """Remove the callbacks :func:`attach` installed on ``optimizer``, if any."""
    for handle in _HANDLES.pop(optimizer, []):
        handle.remove()


def _in_order(callbacks: Sequence[StepCallback]) -> StepCallback:
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
