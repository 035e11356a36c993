"""The L1 term as a loss term whose gradient is added to ``.grad`` in place at the end of backward.

Added to the loss as ``l1 * sum|w|`` through autograd, the term's gradient ``l1 * sign(w)`` takes
autograd three kernels per weight (sign, multiply by the incoming gradient, add), and each result may
wait in autograd's buffers until the data gradient of that weight arrives. :func:`l1_term` has the same
value and the same gradient. Its backward only records the factor the loss scaled it by
(``1 / accumulate_grad_batches``, a ``GradScaler`` scale). Once the gradients of the whole backward pass
are in, it adds ``sign(w) * factor`` to each weight's ``.grad``, one weight at a time.

That is still before anything that reads the gradients after ``backward()`` returns (gradient
clipping, ``on_after_backward``, the optimizer), and after ``DistributedDataParallel`` has averaged the
data gradients over processes; the penalty gradient is the same on every process, so the result is
the average of the per-process gradients of the penalized loss, as with the term in the loss.

Under ``torch.autograd.grad`` (which must not touch ``.grad``), and for a weight that the backward
pass does not accumulate into (``backward(inputs=...)`` without it), the term behaves as an ordinary
autograd term: its gradient is returned, or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd import Variable

from lightning_reg.functional import kernels

__all__ = [
    "PreparedSum",
    "l1_term",
]

_will_execute: Callable[[Any], bool] | None = getattr(torch._C, "_will_engine_execute_node", None)


class PreparedSum(NamedTuple):
    """``sum|w|`` of some weights computed ahead of the penalty (``Regularizer.prepare_penalty``)."""

    ids: tuple[int, ...]
    versions: tuple[int, ...]
    total: Tensor

    @classmethod
    def of(cls, params: Sequence[Tensor], fused: bool = False) -> PreparedSum:
        """The sum of ``params`` as they are now (``fused``: by the compiled kernel)."""
        total = kernels.abs_sum(params, fused=fused)
        return cls(tuple(map(id, params)), tuple(p._version for p in params), total)

    @staticmethod
    def valid_total(prepared: PreparedSum | None, params: Sequence[Tensor]) -> Tensor | None:
        """``prepared``'s sum, if ``params`` are the weights it read and none has changed since."""
        if prepared is None or prepared.ids != tuple(map(id, params)):
            return None
        return prepared.total if prepared.versions == tuple(p._version for p in params) else None


def l1_term(
    params: Sequence[Tensor], strength: float, abs_sum: Tensor | None = None, fused: bool = False
) -> Tensor:
    """``strength * sum|w|`` over ``params``, differentiable, with the gradient added at end of backward.

    The value is the tutorial's ``l1 * sum(torch.sum(torch.abs(w)))`` to the last bit, and so is the gradient
    each weight receives when nothing else is accumulated into its ``.grad`` in the pass. ``abs_sum``, when
    given, is ``sum|w|`` already computed (by :func:`~lightning_reg.functional.kernels.abs_sum`) on the
    weights as they are now. With ``fused`` the sum and the gradient are compiled kernels
    (:mod:`~lightning_reg.functional.fused`).

    >>> w = torch.tensor([[1.0, -2.0]], requires_grad=True)
    >>> loss = l1_term([w], 0.5)
    >>> loss
    tensor(1.5000, grad_fn=<_DeferredL1Backward>)
    >>> loss.backward()
    >>> w.grad
    tensor([[ 0.5000, -0.5000]])
    """
    value: Tensor = _DeferredL1.apply(strength, abs_sum, fused, *params)  # type: ignore[no-untyped-call]
    return value


class _DeferredL1(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, strength: float, abs_sum: Tensor | None, fused: bool, *params: Tensor) -> Tensor:
        ctx.strength, ctx.fused = strength, fused
        ctx.save_for_backward(*params)  # so that changing a weight before backward is an error, as for abs
        return strength * (kernels.abs_sum(params, fused=fused) if abs_sum is None else abs_sum)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        params: tuple[Tensor, ...] = ctx.saved_tensors
        factor = grad_output * ctx.strength
        accumulates = _accumulates(ctx, len(params))
        if accumulates is None:  # torch.autograd.grad: hand the gradients to autograd
            return (None, None, None, *(torch.sign(param) * factor for param in params))
        targets = [param for param, flag in zip(params, accumulates, strict=True) if flag]
        if targets:
            # Queue from a callback, so that the addition runs after every callback queued during this
            # backward pass: DistributedDataParallel's, which writes the averaged gradients to .grad.
            engine = Variable._execution_engine
            fused = ctx.fused
            engine.queue_callback(
                lambda: engine.queue_callback(lambda: _add_gradient(targets, factor, fused))
            )
        return (None,) * (3 + len(params))


def _accumulates(ctx: Any, count: int) -> list[bool] | None:
    """For each weight, whether this backward pass accumulates into its ``.grad``; ``None`` for none.

    ``None`` also under ``torch.autograd.grad`` and where torch cannot tell: the caller then returns the
    gradients to autograd, which is always correct.
    """
    if _will_execute is None:
        return None
    edges = ctx.next_functions  # one per tensor input: the weights
    nodes = [node for node, _ in edges[len(edges) - count :]]
    try:
        return [node is not None and _will_execute(node) for node in nodes]
    except RuntimeError:  # raised under torch.autograd.grad, which never writes .grad
        return None


@torch.no_grad()
def _add_gradient(params: Sequence[Tensor], factor: Tensor, fused: bool) -> None:
    present = [param for param in params if param.grad is not None]
    grads = [param.grad for param in present if param.grad is not None]
    kernels.add_scaled_sign_(grads, present, factor, fused=fused)
    for param in params:
        if param.grad is None:  # a weight the data loss does not reach: the penalty's gradient alone
            param.grad = torch.sign(param) * factor
