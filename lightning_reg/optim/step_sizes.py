"""The step an optimizer applies to each entry's gradient at its steady state, read from its own state.

A proximal step after the optimizer's update solves ``min loss + l1 * sum|w|`` only when its threshold is
``l1`` times the step the update just applied to that entry's gradient. For plain SGD that is ``lr``;
for momentum, Adam and the other adaptive rules it is a different number for every entry, and it
changes with every step. Each rule below reads it from the optimizer's group hyperparameters and from
the state the step has just updated, as ``scale / denominator``:

- ``scale`` is a number (a 0-dim tensor where the optimizer keeps its step count on the device);
- the denominator is none (every entry takes ``scale``) or made entry by entry from the optimizer's
  state (:class:`Denominator`), positive wherever the optimizer's own update is finite.

"Steady state" means that the moment buffers hold the values a gradient ``g`` kept constant would
bring them to (``exp_avg = g``, ``momentum_buffer = (1 - dampening) * g / (1 - momentum)``), while the
coefficients of the step (learning rate, bias corrections, rectification) are those of this step. Then
the update moves the entry by exactly ``-scale / denominator * g``: each rule is tested that way against
the optimizer's real ``step()``, entry by entry. The fixed points of "update, then threshold by
``l1 * scale / denominator``" are the minimisers of ``loss + l1 * sum|w|`` (ProxGen, Yun et al., 2021).

Each rule is written once, as a :class:`Form`; :func:`step_size` evaluates it for one parameter and
:func:`steps_of` for many at once, with a fixed number of multi-tensor operations.

Supported: ``SGD`` (momentum, dampening, Nesterov), ``Adam`` and ``AdamW`` (``amsgrad`` too), ``NAdam``,
``RAdam``, ``Adamax``, ``RMSprop`` (momentum, centered) and ``Adagrad``, with their ``foreach``, ``fused``
and ``capturable`` forms (the state is the same). Subclasses are refused: they may change the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "RULES",
    "Denominator",
    "Form",
    "Rule",
    "Scalar",
    "StepSize",
    "check_supported",
    "form_of",
    "forms_of",
    "step_size",
    "steps_of",
]

Scalar = float | Tensor


class StepSize(NamedTuple):
    """The step ``scale / denominator`` per unit of gradient (``denominator`` ``None``: ``scale`` for all)."""

    scale: Scalar
    denominator: Tensor | None

    def per_entry(self) -> Scalar:
        """The step of every entry, as one tensor (or the common number when there is no denominator)."""
        return self.scale if self.denominator is None else self.scale / self.denominator


class Denominator(NamedTuple):
    """A denominator made entry by entry from the optimizer's state.

    ``sqrt(state[keys[0]] - state[keys[1]]**2) + offset`` with ``root`` (the second key only when
    given), else ``state[keys[0]]`` itself; where ``tractable`` (a device tensor) is false, ``1``.
    """

    keys: tuple[str, ...]
    root: bool = True
    offset: Scalar = 0.0
    tractable: Tensor | None = None


class Form(NamedTuple):
    """A rule's answer for one parameter: ``scale / denominator`` (no denominator: ``scale``)."""

    scale: Scalar
    denominator: Denominator | None


def _value(state_value: Tensor | float) -> Scalar:
    """A number of the optimizer's state as the optimizer itself computes with it.

    One on the CPU is read as a Python number, as torch.optim does outside its capturable path; one on
    an accelerator (``capturable``, ``fused``) stays a tensor, so that nothing waits on it.
    """
    if isinstance(state_value, Tensor) and state_value.device.type != "cpu":
        return state_value
    return float(state_value)


def _count(count: Scalar) -> Scalar:
    """A step count, at least ``1``.

    A count of ``0`` remains only after a first step that ``GradScaler`` skipped (a fused optimizer
    takes its count back): that step moves nothing, and the rules only need to stay finite.
    """
    return count.clamp_min(1) if isinstance(count, Tensor) else max(count, 1.0)


def _sqrt(value: Scalar) -> Scalar:
    return value.sqrt() if isinstance(value, Tensor) else math.sqrt(value)


def _sgd(group: Mapping[str, Any], state: Mapping[str, Any], step: Scalar) -> Form:
    momentum = group["momentum"]
    if momentum == 0:
        return Form(group["lr"], None)
    # buf <- momentum * buf + (1 - dampening) * g settles at (1 - dampening) * g / (1 - momentum); with
    # Nesterov (dampening 0) the update g + momentum * buf settles at g / (1 - momentum) as well.
    return Form(group["lr"] * (1 - group["dampening"]) / (1 - momentum), None)


def _adam(group: Mapping[str, Any], state: Mapping[str, Any], step: Scalar) -> Form:
    """``lr / (1 - beta1**t) / (sqrt(v / (1 - beta2**t)) + eps)``, with ``max(v)`` under ``amsgrad``."""
    beta1, beta2 = group["betas"]
    correction2 = _sqrt(1 - beta2**step)
    second = "max_exp_avg_sq" if group["amsgrad"] else "exp_avg_sq"
    # sqrt(v / c2) + eps = (sqrt(v) + eps * sqrt(c2)) / sqrt(c2)
    denominator = Denominator((second,), offset=group["eps"] * correction2)
    return Form(group["lr"] / (1 - beta1**step) * correction2, denominator)


def _nadam(group: Mapping[str, Any], state: Mapping[str, Any], step: Scalar) -> Form:
    """NAdam's ``(1 - mu_t) / (1 - prod_t) * g + mu_{t+1} / (1 - prod_{t+1}) * m`` at ``m = g``."""
    beta1, beta2 = group["betas"]
    decay = group["momentum_decay"]
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * decay))
    product = _value(state["mu_product"])  # already multiplied by mu_t
    coefficient = (1.0 - mu) / (1.0 - product) + mu_next / (1.0 - product * mu_next)
    correction2 = _sqrt(1 - beta2**step)
    denominator = Denominator(("exp_avg_sq",), offset=group["eps"] * correction2)
    return Form(group["lr"] * coefficient * correction2, denominator)


def _radam(group: Mapping[str, Any], state: Mapping[str, Any], step: Scalar) -> Form:
    """The rectified step while the variance is tractable (``rho_t > 5``), else ``lr / (1 - beta1**t)``."""
    beta1, beta2 = group["betas"]
    correction1, correction2 = 1 - beta1**step, 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * step * beta2**step / correction2
    plain = group["lr"] / correction1
    if isinstance(rho, Tensor):  # a capturable optimizer decides on the device; so do we
        rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)).clamp_min(0).sqrt()
        tractable = rho > 5.0
        rectified = plain * rect * _sqrt(correction2)
        # one formula for both cases: scale / (sqrt(v) + eps) when tractable, plain / 1 otherwise
        denominator = Denominator(("exp_avg_sq",), offset=group["eps"], tractable=tractable)
        return Form(torch.where(tractable, rectified, plain), denominator)
    if rho <= 5.0:
        return Form(plain, None)
    rect = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    return Form(plain * rect * math.sqrt(correction2), Denominator(("exp_avg_sq",), offset=group["eps"]))


def _adamax(group: Mapping[str, Any], state: Mapping[str, Any], step: Scalar) -> Form:
    """``lr / (1 - beta1**t) / u``, with ``u`` Adamax's infinity norm (``eps`` already in it)."""
    beta1, _ = group["betas"]
    return Form(group["lr"] / (1 - beta1**step), Denominator(("exp_inf",), root=False))


def _rmsprop(group: Mapping[str, Any], state: Mapping[str, Any], step: Scalar) -> Form:
    """``lr / (sqrt(E[g^2] (- E[g]^2 centered)) + eps)``, over ``1 - momentum`` with momentum."""
    keys = ("square_avg", "grad_avg") if group["centered"] else ("square_avg",)
    momentum = group["momentum"]
    scale = group["lr"] / (1 - momentum) if momentum > 0 else group["lr"]
    return Form(scale, Denominator(keys, offset=group["eps"]))


def _adagrad(group: Mapping[str, Any], state: Mapping[str, Any], step: Scalar) -> Form:
    """``lr / (1 + (t - 1) * lr_decay) / (sqrt(sum g^2) + eps)``."""
    scale = group["lr"] / (1 + (step - 1) * group["lr_decay"])
    return Form(scale, Denominator(("sum",), offset=group["eps"]))


Rule = Callable[[Mapping[str, Any], Mapping[str, Any], Scalar], Form]

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


def form_of(optimizer: Optimizer, group: Mapping[str, Any], param: Tensor, step: Scalar = 1.0) -> Form:
    """The rule's :class:`Form` for ``param`` of ``group``, at the step count ``step`` (read, at least 1)."""
    return RULES[type(optimizer)](group, optimizer.state.get(param, {}), _count(step))


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
    state = optimizer.state.get(param, {})
    step = _value(state["step"]) if "step" in state else 1.0
    scale, denominator = form_of(optimizer, group, param, step)
    if denominator is None:
        return StepSize(scale, None)
    return StepSize(scale, _denominators(denominator, [state])[0])


def steps_of(
    optimizer: Optimizer, groups: Sequence[Mapping[str, Any]], params: Sequence[Tensor]
) -> list[Scalar]:
    """The per-entry step of each of ``params`` (held in ``groups``), as :func:`step_size` gives it.

    A tensor shaped like the parameter where the rule has a denominator, else the common number. The
    work is a fixed number of multi-tensor operations for all parameters whose denominators share their
    form (usually all of them): the step counts are read at once, and each form's denominators are made,
    inverted and scaled over the list.

    >>> w, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    >>> adam = torch.optim.Adam([w, b], lr=0.5)
    >>> w.grad, b.grad = torch.full((2,), 4.0), torch.full((3,), 2.0)
    >>> adam.step()
    >>> [[round(float(s), 6) for s in steps] for steps in steps_of(adam, adam.param_groups * 2, [w, b])]
    [[1.25, 1.25], [2.5, 2.5, 2.5]]
    """
    states = [optimizer.state.get(param, {}) for param in params]
    forms = forms_of(optimizer, groups, params)
    steps: list[Scalar] = [form.scale for form in forms]
    partitions: dict[tuple[Any, ...], list[int]] = {}
    for index, (_, denominator) in enumerate(forms):
        if denominator is not None:
            offset = denominator.offset if isinstance(denominator.offset, float) else id(denominator.offset)
            key = (denominator.keys, denominator.root, offset, id(denominator.tractable))
            partitions.setdefault(key, []).append(index)
    for indices in partitions.values():
        denominator = forms[indices[0]].denominator
        assert denominator is not None
        inverses = _denominators(denominator, [states[index] for index in indices], fresh=True)
        torch._foreach_reciprocal_(inverses)
        scales = [forms[index].scale for index in indices]
        if all(isinstance(scale, float) for scale in scales):
            torch._foreach_mul_(inverses, scales)  # type: ignore[arg-type]
        else:
            torch._foreach_mul_(inverses, [torch.as_tensor(scale) for scale in scales])
        for index, inverse in zip(indices, inverses, strict=True):
            steps[index] = inverse
    return steps


def forms_of(
    optimizer: Optimizer, groups: Sequence[Mapping[str, Any]], params: Sequence[Tensor]
) -> list[Form]:
    """The rule's :class:`Form` for each of ``params`` (held in ``groups``), the step counts on the CPU
    read in one operation.

    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> sgd = torch.optim.SGD([w], lr=0.5)
    >>> forms_of(sgd, sgd.param_groups, [w])
    [Form(scale=0.5, denominator=None)]
    """
    counts = _counts([optimizer.state.get(param, {}) for param in params])
    return [
        form_of(optimizer, group, param, count)
        for group, param, count in zip(groups, params, counts, strict=True)
    ]


def _counts(states: Sequence[Mapping[str, Any]]) -> list[Scalar]:
    """Each state's step count (``1`` where there is none), those on the CPU read in one operation."""
    counts: list[Scalar] = [1.0] * len(states)
    on_cpu = [
        index
        for index, state in enumerate(states)
        if isinstance(state.get("step"), Tensor) and state["step"].device.type == "cpu"
    ]
    if on_cpu:
        read = torch.stack([states[index]["step"] for index in on_cpu]).tolist()
        for index, value in zip(on_cpu, read, strict=True):
            counts[index] = float(value)
    for index, state in enumerate(states):
        if index not in on_cpu and "step" in state:
            counts[index] = _value(state["step"])
    return counts


def _denominators(
    denominator: Denominator, states: Sequence[Mapping[str, Any]], fresh: bool = False
) -> list[Tensor]:
    """``denominator`` of each state, made with multi-tensor operations; new tensors (the state is read).

    Without ``root`` the state's own tensors come back unless ``fresh`` (they are only to be read).
    """
    firsts = [state[denominator.keys[0]] for state in states]
    if len(denominator.keys) == 2:  # centered: E[g^2] - E[g]^2
        seconds = [state[denominator.keys[1]] for state in states]
        values = list(torch._foreach_addcmul(firsts, seconds, seconds, value=-1))
        if denominator.root:
            torch._foreach_sqrt_(values)
    elif denominator.root:
        values = list(torch._foreach_sqrt(firsts))
    else:
        values = [first.clone() for first in firsts] if fresh else list(firsts)
    if not isinstance(denominator.offset, float) or denominator.offset != 0:
        torch._foreach_add_(values, denominator.offset)
    if denominator.tractable is not None:
        values = [torch.where(denominator.tractable, value, 1.0) for value in values]
    return values
