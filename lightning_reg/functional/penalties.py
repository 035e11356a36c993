"""Penalty and statistics math over lists of tensors. Plain PyTorch; nothing here knows Lightning."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_reg.functional.kernels import sum_in_order
from lightning_reg.functional.sharding import global_value, local, sum_over_shards

__all__ = [
    "STATISTICS_COLUMNS",
    "l1_norm",
    "squared_norm",
    "weight_statistics",
]

#: Columns of the table returned by :func:`weight_statistics`.
STATISTICS_COLUMNS = ("abs_sum", "sq_sum", "zeros", "near_zero")


def l1_norm(params: Sequence[Tensor]) -> Tensor:
    """``sum(|w|)`` over all ``params``, differentiable, accumulated in parameter order.

    The order of accumulation is the tutorial's loop (``total += torch.sum(torch.abs(p))``), so the
    value is the same to the last bit as that loop's.

    >>> l1_norm([torch.tensor([[1.0, -2.0]]), torch.tensor([[-3.0]])])
    tensor(6.)
    """
    return sum_in_order(global_value(torch.sum(torch.abs(param))) for param in params)


def squared_norm(params: Sequence[Tensor]) -> Tensor:
    """``sum(w**2)`` over all ``params``, differentiable, accumulated in parameter order.

    >>> squared_norm([torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0]])])
    tensor(14.)
    """
    return sum_in_order(global_value(torch.sum(param * param)) for param in params)


def weight_statistics(params: Sequence[Tensor], near_zero_tol: float) -> Tensor:
    """One row per parameter: ``sum|w|``, ``sum w^2``, count of ``w == 0`` and of ``|w| < tol``.

    Computed without autograd and accumulated in float64 (float32 on devices without float64), so
    that the sums of large models stay exact to float32 precision. Every column is a sum over entries,
    so tables from shards of one tensor combine by addition. The groups' statistics are
    :func:`~lightning_reg.functional.couplings.coupled_statistics`, rows and columns being one-member
    couplings.

    >>> weight_statistics([torch.tensor([[0.0, -2.0, 1e-4]])], near_zero_tol=1e-3)
    tensor([[2.0001, 4.0000, 1.0000, 2.0000]], dtype=torch.float64)
    """
    if not params:
        return torch.zeros((0, len(STATISTICS_COLUMNS)), dtype=torch.float64)
    device = params[0].device
    dtype = torch.float32 if device.type == "mps" else torch.float64
    with torch.no_grad():
        return torch.stack([_statistics(param.detach(), near_zero_tol, dtype) for param in params])


def _statistics(param: Tensor, near_zero_tol: float, dtype: torch.dtype) -> Tensor:
    """One row of :func:`weight_statistics`: of this process's piece, added over the pieces of a
    ``DTensor``."""
    values = local(param)
    magnitude = values.abs()
    sums = torch.stack(
        (
            magnitude.sum(dtype=dtype),
            torch.linalg.vector_norm(values, dtype=dtype).square(),
            (values.numel() - torch.count_nonzero(values)).to(dtype),
            (magnitude < near_zero_tol).sum().to(dtype),
        )
    )
    return sum_over_shards(sums, param)
