"""The group step of one colour as compiled functions (``fused=True``).

:class:`~lightning_reg.optim.group_prox.GroupProx` gathers a colour's entries, steps and dual variables into
its buffers and scatters them back; between the two, :func:`colour_step` does the arithmetic of its
eager path (see :mod:`~lightning_reg.optim.group_prox` for the method) in three compiled functions: a
prologue (the crossing units' pulls given back and taken out, the L1 term's soft threshold, the solve's
start), one Newton step of every channel's root, called until the roots stop moving as in the eager
path, and an epilogue (each channel's shrink, the dual variables kept, the earlier units' zeros kept, a
skipped step's input kept). Each is a few loops over the colour's buffers, where the eager path runs
some twenty kernels.

It differs from the eager path within float tolerance: where every channel's steps are equal the eager
path uses its closed form, on which Newton lands in one step; and each channel's sums are added by an
indexed sum over its chunks rather than a segmented one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_reg.functional.fused import PerLayout
from lightning_reg.functional.group_layout import Chunked

__all__ = ["colour_step"]


def _row_sums(chunks: Tensor, chunk_rows: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """Each channel's sum of ``chunks`` (``(chunks, CHUNK)``): a sum per chunk, added up per channel."""
    partial = chunks.sum(1, dtype=dtype)
    return torch.zeros(count, dtype=dtype, device=chunks.device).index_add(0, chunk_rows, partial)


def _per_chunk(values: Tensor, chunk_rows: Tensor, dtype: torch.dtype) -> Tensor:
    """Per-channel ``values`` spread over the channels' chunks, as a ``(chunks, 1)`` column."""
    return values.to(dtype)[chunk_rows].unsqueeze(1)


def _prologue(
    rows: Tensor,
    steps: Tensor,
    pulls: Tensor,
    alive: Tensor | None,
    duals: Tensor | None,
    signed: Tensor | None,
    outside: Tensor | None,
    l1: Tensor | None,
    chunk_strengths: Tensor,
    chunk_rows: Tensor,
    warm: Tensor,
    has_warm: Tensor,
    ramp: Tensor,
    taken: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The input of each channel's solve, into ``rows``; ``strength * s`` into ``pulls``; the zero
    channels and the solve's start (the last roots, or Jensen's bound)."""
    dtype, count = warm.dtype, warm.shape[0]
    tiny = torch.finfo(dtype).tiny
    step = steps if taken is None else steps * taken.to(steps.dtype)
    if alive is not None and outside is not None:  # the entries an earlier unit zeroed stay 0
        alive.copy_((rows != 0) | outside)
    x = rows
    if signed is not None and duals is not None:  # the later units' pulls out, this colour's back in
        x = x + duals * signed * step
    if l1 is not None:
        threshold = l1 * ramp.to(l1.dtype) * step
        x = x - torch.clamp(x, -threshold, threshold)
    rows.copy_(x)
    pulls.copy_(torch.clamp_min(step * chunk_strengths, torch.finfo(rows.dtype).tiny ** 0.5))
    zero = _row_sums(torch.square(x / pulls), chunk_rows, count, dtype) <= 1
    squares = _row_sums(x * x, chunk_rows, count, dtype)
    pulled = _row_sums(x * x * pulls, chunk_rows, count, dtype)
    jensen = torch.clamp_min(squares.sqrt() - pulled / squares.clamp_min(tiny), 0)
    return zero, torch.where(has_warm, warm, jensen)


def _newton(
    rows: Tensor, pulls: Tensor, root: Tensor, zero: Tensor, chunk_rows: Tensor
) -> tuple[Tensor, Tensor]:
    """One Newton step of every channel's root; whether no root moved by more than eight units in the
    last place of ``rows``' dtype (the zero channels aside)."""
    dtype, count = root.dtype, root.shape[0]
    shifted = pulls + _per_chunk(root, chunk_rows, rows.dtype)
    squared = torch.square(rows / shifted)  # (x_i / (nu + strength * s_i))^2
    total = _row_sums(squared, chunk_rows, count, dtype)
    slope = _row_sums(squared / shifted, chunk_rows, count, dtype)
    move = (total.pow(1.5) - total) / slope.clamp_min(torch.finfo(dtype).tiny)
    root = torch.clamp_min(root + move, 0)
    tolerance = 8 * torch.finfo(rows.dtype).eps
    return root, ((move.abs() <= tolerance * root) | zero).all()


def _epilogue(
    rows: Tensor,
    pulls: Tensor,
    root: Tensor,
    zero: Tensor,
    alive: Tensor | None,
    duals: Tensor | None,
    shared: Tensor | None,
    chunk_strengths: Tensor,
    chunk_rows: Tensor,
    before: Tensor | None,
    taken: Tensor | None,
) -> Tensor:
    """Each channel shrunk by ``nu / (nu + strength * s_i)``, in ``rows``; its dual kept; the roots."""
    root = root.masked_fill(zero, 0.0)
    root_of = _per_chunk(root, chunk_rows, rows.dtype)
    shifted = pulls + root_of
    if shared is not None and duals is not None:  # the unit's dual: strength * x_i / (nu + strength * s_i)
        keep = shared if taken is None else shared & (taken > 0)
        duals.copy_(torch.where(keep, rows / shifted * chunk_strengths, duals))
    x = rows * (root_of / shifted)  # exactly 1 for a 0 step
    if alive is not None:
        x = x * alive
    if before is not None and taken is not None:  # a skipped step keeps its input, bit for bit
        x = torch.where(taken > 0, x, before)
    rows.copy_(x)
    return root


_PROLOGUE, _NEWTON, _EPILOGUE = PerLayout(_prologue), PerLayout(_newton), PerLayout(_epilogue)


@torch.no_grad()
def colour_step(
    views: Chunked,
    chunk_strengths: Tensor,
    chunk_rows: Tensor,
    warm: Tensor | None,
    *,
    count: int,
    sum_dtype: torch.dtype,
    ramp: float,
    taken: Tensor | None,
    newton_steps: int,
    checked: bool,
) -> Tensor:
    """One colour's group step on its buffers' ``views``, in place; each channel's new root.

    ``views.entries`` holds the entries after the update, ``views.steps`` their steps, ``views.duals``
    the later units' dual variables (updated where ``views.shared``); the first two work buffers hold
    ``strength * s`` and, in a step that may have been skipped (``taken`` is a tensor), the input.
    ``warm`` holds the last step's roots (``None``: the first step, which starts at Jensen's bound) of
    the ``count`` channels, in ``sum_dtype``. The solve takes ``newton_steps`` Newton steps, or, when
    ``checked``, stops as soon as no root moves (reading the check is free on the CPU).
    """
    rows, pulls = views.entries, views.work[0]
    device = rows.device
    alive = None if views.outside is None else views.alive
    before = None if taken is None else views.work[1].copy_(rows)
    start = torch.zeros(count, dtype=sum_dtype, device=device) if warm is None else warm
    has_warm = torch.tensor(warm is not None, device=device)
    scaled = torch.tensor(ramp, dtype=torch.float64, device=device)
    zero, root = _PROLOGUE(
        rows, views.steps, pulls, alive, views.duals, views.signed, views.outside, views.l1,
        chunk_strengths, chunk_rows, start, has_warm, scaled, taken,
    )  # fmt: skip
    for _ in range(newton_steps):
        root, done = _NEWTON(rows, pulls, root, zero, chunk_rows)
        if checked and bool(done):
            break
    result: Tensor = _EPILOGUE(
        rows, pulls, root, zero, alive, views.duals, views.shared, chunk_strengths, chunk_rows, before, taken
    )
    return result
