"""The per-step tensor work of a regularizer, over lists of tensors, in two interchangeable forms.

Each function comes as a loop over the tensors (``_single_tensor_*``) and as ``torch._foreach_*`` calls
over buckets of tensors (``_multi_tensor_*``), whose number of kernel launches does not depend on how
many tensors there are, only on their total size. Both give the same numbers (tested). Which one runs
is decided in one place, :func:`prefer_multi_tensor`: the loop on CPU, where each tensor then stays in
cache between the two passes over it and ``torch._foreach_*`` is itself a loop; multi-tensor on
accelerators, where a launch per tensor costs more than the work on a small one.

Temporary memory is bounded: the loop holds one temporary the size of the tensor at hand, the
multi-tensor form one bucket of at most ``max(largest tensor, BUCKET_NUMEL)`` entries.

Nothing here records autograd history; callers decide where the results go.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor

from lightning_reg.functional import fused as fused_kernels

__all__ = [
    "BUCKET_NUMEL",
    "abs_sum",
    "add_scaled_sign_",
    "prefer_multi_tensor",
    "scale_",
    "soft_threshold_",
    "soft_threshold_each_",
    "soft_threshold_scaled_",
    "sum_in_order",
]

#: Entries per bucket of the multi-tensor form (at least the largest tensor): 16 MiB of float32.
BUCKET_NUMEL = 1 << 22

# Devices with torch._foreach_* kernels that launch once for many tensors.
_MULTI_TENSOR_DEVICES = frozenset({"cuda", "xpu"})


def prefer_multi_tensor(tensors: Sequence[Tensor]) -> bool:
    """Whether the multi-tensor form is the faster one for ``tensors``: all on a CUDA or XPU device.

    >>> prefer_multi_tensor([torch.zeros(2, 2)])
    False
    """
    return bool(tensors) and all(tensor.device.type in _MULTI_TENSOR_DEVICES for tensor in tensors)


def sum_in_order(terms: Iterable[Tensor], device: torch.device | None = None) -> Tensor:
    """``terms[0] + terms[1] + ...``, added left to right as a loop would; a zero on ``device`` when empty.

    The order fixes the rounding: a sum written as a loop gives the same bits as this.

    >>> sum_in_order([torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)])
    tensor(6.)
    >>> sum_in_order([])
    tensor(0.)
    """
    total: Tensor | None = None
    for term in terms:
        total = term if total is None else total + term
    return torch.zeros((), device=device) if total is None else total


def abs_sum(params: Sequence[Tensor], multi_tensor: bool | None = None, fused: bool = False) -> Tensor:
    """``sum|w|`` over all ``params``, without autograd.

    The loop adds the tensors' sums in order, each computed as ``torch.sum(torch.abs(w))``: the value
    of the tutorial's loop to the last bit. The multi-tensor form sums ``torch._foreach_norm(ord=1)``;
    it differs from the loop in rounding only, as does the compiled kernel of ``fused``
    (:func:`~lightning_reg.functional.fused.abs_sum`).

    >>> abs_sum([torch.tensor([[1.0, -2.0]]), torch.tensor([[-3.0]])])
    tensor(6.)
    """
    if not params:
        return torch.zeros(())
    if fused:
        return fused_kernels.abs_sum(params)
    if _multi(params, multi_tensor):
        return _multi_tensor_abs_sum(params)
    return _single_tensor_abs_sum(params)


@torch.no_grad()
def _single_tensor_abs_sum(params: Sequence[Tensor]) -> Tensor:
    return sum_in_order(torch.sum(torch.abs(param)) for param in params)


@torch.no_grad()
def _multi_tensor_abs_sum(params: Sequence[Tensor]) -> Tensor:
    norms = [norm for bucket in _buckets(params) for norm in torch._foreach_norm(bucket, 1)]
    return torch.stack(norms).sum()


def add_scaled_sign_(
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    factor: Tensor,
    multi_tensor: bool | None = None,
    fused: bool = False,
) -> None:
    """In place, ``grads[i] += sign(params[i]) * factor``: the gradient of ``factor * sum|w|``.

    ``factor`` is a 0-dim tensor (it may carry a loss scale that must stay on the device). The sum
    ``grad + sign(w) * factor`` is rounded once, as when autograd adds the gradient of
    ``factor * torch.sum(torch.abs(w))`` to a gradient that already holds ``grad``.

    >>> grad = torch.zeros(3)
    >>> add_scaled_sign_([grad], [torch.tensor([-2.0, 0.0, 5.0])], torch.tensor(0.5))
    >>> grad
    tensor([-0.5000,  0.0000,  0.5000])
    """
    if not params:
        return
    if fused:  # one compiled kernel (lightning_reg.functional.fused): the same numbers to float tolerance
        fused_kernels.add_scaled_sign_(grads, params, factor)
    elif _multi(params, multi_tensor):
        _multi_tensor_add_scaled_sign_(grads, params, factor)
    else:
        _single_tensor_add_scaled_sign_(grads, params, factor)


@torch.no_grad()
def _single_tensor_add_scaled_sign_(
    grads: Sequence[Tensor], params: Sequence[Tensor], factor: Tensor
) -> None:
    for grad, param in zip(grads, params, strict=True):
        grad.addcmul_(torch.sign(param), factor)


@torch.no_grad()
def _multi_tensor_add_scaled_sign_(grads: Sequence[Tensor], params: Sequence[Tensor], factor: Tensor) -> None:
    for indices in _bucket_indices(params):
        signs = torch._foreach_sign([params[index] for index in indices])
        torch._foreach_mul_(signs, factor)
        torch._foreach_add_([grads[index] for index in indices], signs)


def scale_(params: Sequence[Tensor], factor: float | Tensor, multi_tensor: bool | None = None) -> None:
    """In place, ``w <- w * factor`` for every ``w`` in ``params`` (decoupled weight decay).

    >>> w = torch.tensor([2.0, -4.0])
    >>> scale_([w], 0.5)
    >>> w
    tensor([ 1., -2.])
    """
    if not params:
        return
    with torch.no_grad():
        if _multi(params, multi_tensor):
            torch._foreach_mul_(list(params), factor)
        else:
            for param in params:
                param.mul_(factor)


def soft_threshold_(
    params: Sequence[Tensor], threshold: float | Tensor, multi_tensor: bool | None = None
) -> None:
    """In place, ``w <- w - clamp(w, -t, t)`` for every ``w`` in ``params``: ``sign(w) * max(|w| - t, 0)``.

    The proximal operator of ``t * |w|``; exactly ``0`` where ``|w| <= t`` (with a float threshold the
    loop keeps the sign bit there, ``-0.0``, as ``sign(w) * max(|w| - t, 0)`` does; it compares equal
    to ``0``). ``threshold`` may be a 0-dim tensor (a step ``GradScaler`` may skip); the multi-tensor
    form then runs the loop.

    >>> w = torch.tensor([-1.5, -0.2, 0.0, 0.3, 2.0])
    >>> soft_threshold_([w], 0.5)
    >>> w
    tensor([-1.0000, -0.0000,  0.0000,  0.0000,  1.5000])
    >>> int((w == 0).sum())
    3
    """
    if not params:
        return
    if _multi(params, multi_tensor) and not isinstance(threshold, Tensor):
        _multi_tensor_soft_threshold_(params, threshold)
    else:
        _single_tensor_soft_threshold_(params, threshold)


@torch.no_grad()
def _single_tensor_soft_threshold_(params: Sequence[Tensor], threshold: float | Tensor) -> None:
    for param in params:
        if isinstance(threshold, Tensor):
            param.sub_(param.clamp(-threshold, threshold))
        else:  # the same numbers in one pass: w > t -> w - t, w < -t -> w + t, else 0
            torch.ops.aten.softshrink.out(param, threshold, out=param)


@torch.no_grad()
def _multi_tensor_soft_threshold_(params: Sequence[Tensor], threshold: float) -> None:
    for indices in _bucket_indices(params):
        bucket = [params[index] for index in indices]
        clamped = torch._foreach_clamp_min(bucket, -threshold)
        torch._foreach_clamp_max_(clamped, threshold)
        torch._foreach_sub_(bucket, clamped)


def soft_threshold_each_(
    params: Sequence[Tensor], thresholds: Sequence[Tensor], multi_tensor: bool | None = None
) -> None:
    """In place, ``w <- w - clamp(w, -t, t)`` with a threshold ``t`` per entry (``thresholds[i]`` shaped
    like ``params[i]``, non-negative): ``sign(w) * max(|w| - t, 0)``, exactly ``0`` where ``|w| <= t``.

    The thresholds are overwritten. The multi-tensor form is four operations for all the tensors.

    >>> w = torch.tensor([-1.5, -0.2, 0.3, 2.0])
    >>> soft_threshold_each_([w], [torch.tensor([1.0, 1.0, 0.5, 0.25])])
    >>> w
    tensor([-0.5000,  0.0000,  0.0000,  1.7500])
    """
    if not params:
        return
    with torch.no_grad():
        if _multi(params, multi_tensor):
            clamped = torch._foreach_minimum(list(params), list(thresholds))
            torch._foreach_neg_(list(thresholds))
            torch._foreach_maximum_(clamped, list(thresholds))
            torch._foreach_sub_(list(params), clamped)
        else:
            for param, threshold in zip(params, thresholds, strict=True):
                param.sub_(torch.clamp(param, min=threshold.neg(), max=threshold))


@torch.no_grad()
def soft_threshold_scaled_(param: Tensor, scale: float | Tensor, denominator: Tensor) -> None:
    """In place, ``w <- sign(w) * max(|w| - t, 0)`` with the per-entry threshold ``t = scale / denominator``.

    The proximal operator of ``t * |w|`` entry by entry, for thresholds that differ per entry (an adaptive
    optimizer's step sizes). ``denominator`` is positive and shaped like ``param``; it is only read.
    With a float ``scale`` it takes three passes and one temporary: ``d * w`` is soft-thresholded by
    ``scale`` and divided by ``d`` again (an entry becomes exactly ``0`` where ``|d * w| <= scale``); a
    0-dim tensor ``scale`` (a step count or a skipped step that lives on the device) is clamped instead.

    >>> w = torch.tensor([-1.5, -0.2, 0.3, 2.0])
    >>> soft_threshold_scaled_(w, 1.0, torch.tensor([1.0, 1.0, 2.0, 4.0]))
    >>> w
    tensor([-0.5000, -0.0000,  0.0000,  1.7500])
    """
    if isinstance(scale, Tensor):
        threshold = scale / denominator
        param.sub_(torch.clamp(param, min=threshold.neg(), max=threshold))
        return
    scaled = torch.mul(param, denominator)
    torch.ops.aten.softshrink.out(scaled, scale, out=scaled)
    torch.div(scaled, denominator, out=param)


def _multi(params: Sequence[Tensor], multi_tensor: bool | None) -> bool:
    return prefer_multi_tensor(params) if multi_tensor is None else multi_tensor


def _buckets(params: Sequence[Tensor]) -> Iterator[list[Tensor]]:
    for indices in _bucket_indices(params):
        yield [params[index] for index in indices]


def _bucket_indices(params: Sequence[Tensor]) -> Iterator[list[int]]:
    """Consecutive runs of indices of ``params`` on one device and dtype, each of bounded total size."""
    capacity = max(BUCKET_NUMEL, max(param.numel() for param in params))
    run: list[int] = []
    size = 0
    for index, param in enumerate(params):
        if run and (
            size + param.numel() > capacity
            or (param.device, param.dtype) != (params[run[0]].device, params[run[0]].dtype)
        ):
            yield run
            run, size = [], 0
        run.append(index)
        size += param.numel()
    if run:
        yield run
