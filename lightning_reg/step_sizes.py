"""The step an optimizer applies to each entry's gradient at its steady state, read from its own state.

A proximal step after the optimizer's update solves ``min loss + l1 * sum|w|`` only when its threshold is
``l1`` times the step the update just applied to that entry's gradient. For plain SGD that is ``lr``;
for momentum, Adam and the other adaptive rules it is a different number for every entry, and it
changes with every step. Each rule below reads it from the optimizer's group hyperparameters and from
the state the step has just updated, as ``scale / denominator``:

- ``scale`` is a number (a 0-dim tensor where the optimizer keeps its step count on the device);
- ``denominator`` is ``None`` (every entry takes ``scale``) or a tensor shaped like the parameter,
  positive wherever the optimizer's own update is finite.

"Steady state" means that the moment buffers hold the values a gradient ``g`` kept constant would
bring them to (``exp_avg = g``, ``momentum_buffer = (1 - dampening) * g / (1 - momentum)``), while the
coefficients of the step (learning rate, bias corrections, rectification) are those of this step. Then
the update moves the entry by exactly ``-scale / denominator * g``: each rule is tested that way against
the optimizer's real ``step()``, entry by entry. The fixed points of "update, then threshold by
``l1 * scale / denominator``" are the minimisers of ``loss + l1 * sum|w|`` (ProxGen, Yun et al., 2021).

Supported: ``SGD`` (momentum, dampening, Nesterov), ``Adam`` and ``AdamW`` (``amsgrad`` too), ``NAdam``,
``RAdam``, ``Adamax``, ``RMSprop`` (momentum, centered) and ``Adagrad``, with their ``foreach``, ``fused``
and ``capturable`` forms (the state is the same). Subclasses are refused: they may change the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

Scalar = float | Tensor


class StepSize(NamedTuple):
    """The step ``scale / denominator`` per unit of gradient (``denominator`` ``None``: ``scale`` for all)."""

    scale: Scalar
    denominator: Tensor | None

    def per_entry(self) -> Scalar:
        """The step of every entry, as one tensor (or the common number when there is no denominator)."""
        return self.scale if self.denominator is None else self.scale / self.denominator


def _value(state_value: Tensor | float) -> Scalar:
    """A number of the optimizer's state as the optimizer itself computes with it.

    One on the CPU is read as a Python number, as torch.optim does outside its capturable path; one on
    an accelerator (``capturable``, ``fused``) stays a tensor, so that nothing waits on it.
    """
    if isinstance(state_value, Tensor) and state_value.device.type != "cpu":
        return state_value
    return float(state_value)


def _count(step: Tensor | float) -> Scalar:
    """The optimizer's step count (see :func:`_value`), at least ``1``.

    A count of ``0`` remains only after a first step that ``GradScaler`` skipped (a fused optimizer
    takes its count back): that step moves nothing, and the rules only need to stay finite.
    """
    count = _value(step)
    return count.clamp_min(1) if isinstance(count, Tensor) else max(count, 1.0)


def _sqrt(value: Scalar) -> Scalar:
    return value.sqrt() if isinstance(value, Tensor) else math.sqrt(value)


def _sgd(group: Mapping[str, Any], state: Mapping[str, Any]) -> StepSize:
    momentum = group["momentum"]
    if momentum == 0:
        return StepSize(group["lr"], None)
    # buf <- momentum * buf + (1 - dampening) * g settles at (1 - dampening) * g / (1 - momentum); with
    # Nesterov (dampening 0) the update g + momentum * buf settles at g / (1 - momentum) as well.
    return StepSize(group["lr"] * (1 - group["dampening"]) / (1 - momentum), None)


def _adam(group: Mapping[str, Any], state: Mapping[str, Any]) -> StepSize:
    """``lr / (1 - beta1**t) / (sqrt(v / (1 - beta2**t)) + eps)``, with ``max(v)`` under ``amsgrad``."""
    beta1, beta2 = group["betas"]
    step = _count(state["step"])
    correction2 = _sqrt(1 - beta2**step)
    second = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
    # sqrt(v / c2) + eps = (sqrt(v) + eps * sqrt(c2)) / sqrt(c2): one temporary, the denominator.
    denominator = second.sqrt().add_(group["eps"] * correction2)
    return StepSize(group["lr"] / (1 - beta1**step) * correction2, denominator)


def _nadam(group: Mapping[str, Any], state: Mapping[str, Any]) -> StepSize:
    """NAdam's ``(1 - mu_t) / (1 - prod_t) * g + mu_{t+1} / (1 - prod_{t+1}) * m`` at ``m = g``."""
    beta1, beta2 = group["betas"]
    step, decay = _count(state["step"]), group["momentum_decay"]
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * decay))
    product = _value(state["mu_product"])  # already multiplied by mu_t
    coefficient = (1.0 - mu) / (1.0 - product) + mu_next / (1.0 - product * mu_next)
    correction2 = _sqrt(1 - beta2**step)
    denominator = state["exp_avg_sq"].sqrt().add_(group["eps"] * correction2)
    return StepSize(group["lr"] * coefficient * correction2, denominator)


def _radam(group: Mapping[str, Any], state: Mapping[str, Any]) -> StepSize:
    """The rectified step while the variance is tractable (``rho_t > 5``), else ``lr / (1 - beta1**t)``."""
    beta1, beta2 = group["betas"]
    step = _count(state["step"])
    correction1, correction2 = 1 - beta1**step, 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * step * beta2**step / correction2
    plain = group["lr"] / correction1
    if isinstance(rho, Tensor):  # a capturable optimizer decides on the device; so do we
        rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)).clamp_min(0).sqrt()
        tractable = rho > 5.0
        rectified = plain * rect * _sqrt(correction2)
        # one formula for both cases: scale / (sqrt(v) + eps) when tractable, plain / 1 otherwise
        denominator = torch.where(tractable, state["exp_avg_sq"].sqrt().add_(group["eps"]), 1.0)
        return StepSize(torch.where(tractable, rectified, plain), denominator)
    if rho <= 5.0:
        return StepSize(plain, None)
    rect = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    denominator = state["exp_avg_sq"].sqrt().add_(group["eps"])
    return StepSize(plain * rect * math.sqrt(correction2), denominator)


def _adamax(group: Mapping[str, Any], state: Mapping[str, Any]) -> StepSize:
    """``lr / (1 - beta1**t) / u``, with ``u`` Adamax's infinity norm (``eps`` already in it)."""
    beta1, _ = group["betas"]
    return StepSize(group["lr"] / (1 - beta1 ** _count(state["step"])), state["exp_inf"])


def _rmsprop(group: Mapping[str, Any], state: Mapping[str, Any]) -> StepSize:
    """``lr / (sqrt(E[g^2] (- E[g]^2 centered)) + eps)``, over ``1 - momentum`` with momentum."""
    if group["centered"]:
        denominator = state["square_avg"].addcmul(state["grad_avg"], state["grad_avg"], value=-1).sqrt_()
    else:
        denominator = state["square_avg"].sqrt()
    denominator.add_(group["eps"])
    momentum = group["momentum"]
    return StepSize(group["lr"] / (1 - momentum) if momentum > 0 else group["lr"], denominator)


def _adagrad(group: Mapping[str, Any], state: Mapping[str, Any]) -> StepSize:
    """``lr / (1 + (t - 1) * lr_decay) / (sqrt(sum g^2) + eps)``."""
    step = _count(state["step"])
    denominator = state["sum"].sqrt().add_(group["eps"])
    return StepSize(group["lr"] / (1 + (step - 1) * group["lr_decay"]), denominator)


Rule = Callable[[Mapping[str, Any], Mapping[str, Any]], StepSize]

#: The optimizers whose step sizes are known, by exact class.
RULES: dict[type[Optimizer], Rule] = {
    torch.optim.SGD: _sgd,
    torch.optim.Adam: _adam,
    torch.optim.AdamW: _adam,
    torch.optim.NAdam: _nadam,
    torch.optim.RAdam: _radam,
    torch.optim.Adamax: _adamax,
    torch.optim.RMSprop: _rmsprop,
    torch.optim.Adagrad: _adagrad,
}


def check_supported(optimizer: Optimizer) -> None:
    """Raise ``ValueError`` unless :func:`step_size` knows ``optimizer``'s update rule.

    >>> check_supported(torch.optim.LBFGS([torch.zeros(1, requires_grad=True)]))
    Traceback (most recent call last):
    ...
    ValueError: Invalid optimizer for proximal_threshold='optimizer': LBFGS (supported: SGD, Adam, ...);
    proximal_threshold='lr' keeps the plain threshold lr * l1
    """
    if type(optimizer) not in RULES:
        names = ", ".join(rule.__name__ for rule in RULES)
        raise ValueError(
            f"Invalid optimizer for proximal_threshold='optimizer': {type(optimizer).__name__} "
            f"(supported: {names}); proximal_threshold='lr' keeps the plain threshold lr * l1"
        )


def step_size(optimizer: Optimizer, group: Mapping[str, Any], param: Tensor) -> StepSize:
    """The step ``optimizer`` has just applied to ``param``'s gradient, per unit, at steady state.

    Call it after ``optimizer.step()`` (the rules read the state that step wrote), for a ``param`` of
    ``group`` that the step updated.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> w.grad = torch.ones(2)
    >>> sgd.step()
    >>> round(step_size(sgd, sgd.param_groups[0], w).scale, 12)
    1.0
    """
    return RULES[type(optimizer)](group, optimizer.state.get(param, {}))
