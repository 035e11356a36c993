"""Penalty and statistics math over lists of tensors. Plain PyTorch; nothing here knows Lightning."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_reg.kernels import sum_in_order
from lightning_reg.sharding import (
    global_value,
    group_squares,
    group_sums,
    local,
    piece_of,
    sum_over_shards,
)

#: Columns of the table returned by :func:`weight_statistics`.
STATISTICS_COLUMNS = ("abs_sum", "sq_sum", "zeros", "near_zero")


def grouped(param: Tensor, group_by: str) -> Tensor:
    """``param`` as a matrix with one row per group: its slices along dim 0 (``"rows"``) or dim 1.

    A parameter with fewer than two dims (which only a ``rules`` opt-in regularizes) has one group per
    entry, whatever ``group_by``: the group term on it is refused unless it is 1-D and grouped by rows
    (see :func:`~lightning_reg.selection.select_parameters`); the statistics count its zero entries.

    >>> grouped(torch.arange(6.0).reshape(2, 3), "columns")
    tensor([[0., 3.],
            [1., 4.],
            [2., 5.]])
    """
    if param.dim() < 2:
        return param.reshape(-1, 1)
    matrix: Tensor = (
        param.reshape(param.shape[0], -1)
        if group_by == "rows"
        else param.transpose(0, 1).reshape(param.shape[1], -1)
    )
    return matrix


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


@torch.no_grad()
def group_shrink_(param: Tensor, threshold: float | Tensor, group_by: str) -> None:
    """In place, ``w_g <- w_g * max(0, 1 - threshold / ||w_g||)`` for every group ``g`` along ``group_by``.

    The proximal operator of ``threshold * sum_g ||w_g||_2``: a group whose norm is at most ``threshold``
    becomes exactly ``0``.

    >>> w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    >>> group_shrink_(w, 1.0, "rows")
    >>> w
    tensor([[2.4000, 3.2000],
            [0.0000, 0.0000]])
    """
    norms = group_squares(param, group_by).sqrt()
    scale = (1 - threshold / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp_min(0)
    shape = [-1] + [1] * (param.dim() - 1) if group_by == "rows" else [1, -1] + [1] * (param.dim() - 2)
    factor = scale.reshape(shape).expand(param.shape)
    local(param).mul_(piece_of(factor, param))


#: Newton steps of :func:`group_shrink_scaled_`. The iteration rises monotonically to the root and
#: converges quadratically near it: on groups whose step sizes differ by factors up to 10^6 it was at
#: the root to float64 rounding after 8 steps (4 left errors of 3e-7), and it takes one when they are
#: equal.
GROUP_NEWTON_STEPS = 10


@torch.no_grad()
def group_shrink_scaled_(
    param: Tensor, strength: float, steps: Tensor, group_by: str, newton_steps: int = GROUP_NEWTON_STEPS
) -> None:
    """In place, the proximal operator of ``strength * sum_g ||w_g||`` in the metric of per-entry steps.

    With ``s`` the step of each entry (``steps``, positive, shaped like this process's piece of
    ``param``), each group ``z = w_g`` becomes ``argmin_x sum_i (x_i - z_i)^2 / (2 s_i) + strength *
    ||x||``: exactly ``0`` when ``||z / s|| <= strength``, else ``x_i = z_i * nu / (nu + strength *
    s_i)``, with ``nu = ||x||`` the root of ``sum_i (z_i / (nu + strength * s_i))^2 = 1``. The root is
    found for all groups at once by Newton's method on ``1 / sqrt(that sum)``, a concave function of
    ``nu`` equal to ``(nu + strength * s) / ||z||`` when the steps are equal: it starts from a lower bound
    and rises to the root without overshooting, a fixed number of steps (no host synchronisation).
    With equal steps ``s`` this is :func:`group_shrink_` with the threshold ``strength * s``.

    >>> w = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64)
    >>> group_shrink_scaled_(w, 1.0, torch.full_like(w, 1.0), "rows")
    >>> w
    tensor([[2.4000, 3.2000],
            [0.0000, 0.0000]], dtype=torch.float64)
    """
    piece = local(param)
    dtype = torch.float32 if piece.device.type == "mps" else torch.float64
    pull = least_pull(steps * strength)  # strength * s_i, per entry
    kept = metric_prox_norms(
        [piece.square()],
        [pull],
        lambda values: group_sums(values[0], param, group_by, dtype),
        lambda per_group: [_entries(per_group, param, group_by, piece.dtype)],
        newton_steps,
    )
    factor = _entries(kept, param, group_by, piece.dtype)
    piece.mul_(factor / (factor + pull).clamp_min(_TINY))


def metric_prox_norms(
    squares: Sequence[Tensor],
    pulls: Sequence[Tensor],
    sums: Callable[[list[Tensor]], Tensor],
    spread: Callable[[Tensor], list[Tensor]],
    newton_steps: int = GROUP_NEWTON_STEPS,
) -> Tensor:
    """The norm ``nu`` of each group after the proximal step in the metric of per-entry steps.

    The solver that :func:`group_shrink_scaled_` and its coupled form share: ``squares`` and ``pulls``
    hold ``z_i^2`` and ``strength * s_i`` of each entry, in one or more tensors; ``sums`` adds values of
    those tensors' shapes up per group, and ``spread`` puts one value per group back on their entries.
    ``nu`` is ``0`` when ``||z / s|| <= strength``, else the root of ``sum_i (z_i / (nu + strength *
    s_i))^2 = 1`` by ``newton_steps`` Newton steps on ``1 / sqrt(that sum)``, from the lower bound
    Jensen's inequality gives: the iteration rises to the root without overshooting.
    """
    pairs = list(zip(squares, pulls, strict=True))
    norms = sums(list(squares)).sqrt()
    zero = sums([square / pull.square() for square, pull in pairs]) <= 1  # ||z / s|| <= strength
    # Jensen: the root is at least ||z|| - sum_i z_i^2 * strength * s_i / ||z||^2.
    mean_pull = sums([square * pull for square, pull in pairs]) / norms.square().clamp_min(_TINY)
    root = (norms - mean_pull).clamp_min(0)
    for _ in range(newton_steps):
        shifted = [(entry + pull).clamp_min(_TINY) for entry, pull in zip(spread(root), pulls, strict=True)]
        terms = [square / shift.square() for square, shift in zip(squares, shifted, strict=True)]
        total = sums(terms)
        slope = sums([term / shift for term, shift in zip(terms, shifted, strict=True)])
        # nu <- nu - (total^(-1/2) - 1) / (total^(-3/2) * slope)
        root = root + (total.pow(1.5) - total) / slope.clamp_min(_TINY)
    return torch.where(zero, 0.0, root)


_TINY = 1e-300


def least_pull(pull: Tensor) -> Tensor:
    """``pull`` (``strength`` times each entry's step) raised to ``sqrt(tiny)`` of its dtype where smaller.

    A step of ``0`` (a learning rate of ``0`` at the start of a warm-up schedule, a step a fused optimizer
    skips) would make ``0 / 0`` of a zero group; a pull that small moves no entry and zeroes no group with
    a non-zero entry, as a step of ``0`` should, and its square is still a normal number.
    """
    return pull.clamp_min(torch.finfo(pull.dtype).tiny ** 0.5)


def _entries(per_group: Tensor, like: Tensor, group_by: str, dtype: torch.dtype) -> Tensor:
    """One value per group spread over the entries of this process's piece of ``like``."""
    shape = [-1] + [1] * (like.dim() - 1) if group_by == "rows" else [1, -1] + [1] * (like.dim() - 2)
    if like.dim() < 2:
        shape = [-1]
    return piece_of(per_group.to(dtype).reshape(shape).expand(like.shape), like)


def weight_statistics(params: Sequence[Tensor], near_zero_tol: float) -> Tensor:
    """One row per parameter: ``sum|w|``, ``sum w^2``, count of ``w == 0`` and of ``|w| < tol``.

    Computed without autograd and accumulated in float64 (float32 on devices without float64), so
    that the sums of large models stay exact to float32 precision. Every column is a sum over entries,
    so tables from shards of one tensor combine by addition. The groups' statistics are
    :func:`~lightning_reg.couplings.coupled_statistics`, rows and columns being one-member couplings.

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
