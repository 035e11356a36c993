"""Global values of sharded parameters (``DTensor``, as FSDP2 and tensor parallelism make them).

A regularizer reads sums over whole weights. For a sharded parameter each process holds a piece, so
every such sum is computed on the local piece and added up over the mesh dimensions the parameter is
sharded on (never over those it is replicated on: a replicated weight is counted once). Plain tensors
pass through unchanged, and nothing here runs a collective for them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

try:  # torch >= 2.4; earlier releases keep DTensor private
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
except ImportError:  # pragma: no cover - depends on the torch build
    DTensor = None  # type: ignore[misc,assignment]


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (each process holds a piece or a replica of it)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensor: Tensor) -> Tensor:
    """The piece of ``tensor`` this process holds (the tensor itself when it is not sharded)."""
    return tensor.to_local() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


def global_value(tensor: Tensor) -> Tensor:
    """A reduction of a ``DTensor`` (e.g. its sum) as a plain tensor, differentiably; others unchanged."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


def sum_over_shards(values: Tensor, like: Tensor) -> Tensor:
    """Add up ``values``, computed on the local piece of ``like``, over the processes that hold its pieces.

    ``values`` must be sums over entries of ``like`` (counts, sums of magnitudes, ...). For a plain
    ``like`` they are already global and are returned as they are.
    """
    if not is_sharded(like):
        return values
    placements = [Partial() if isinstance(p, Shard) else Replicate() for p in like.placements]  # type: ignore[attr-defined]
    summed: Tensor = DTensor.from_local(values, like.device_mesh, placements).full_tensor()  # type: ignore[attr-defined]
    return summed


def group_squares(param: Tensor, group_by: str, dtype: torch.dtype | None = None) -> Tensor:
    """``sum(w_g**2)`` for every group ``g`` of ``param`` (rows: dim 0, columns: dim 1), over all pieces.

    Not differentiable for sharded parameters (it reads their pieces); used for statistics and the
    proximal step, which run without autograd.
    """
    piece = local(param)
    piece = piece if dtype is None else piece.to(dtype)
    return group_sums(piece.square(), param, group_by)


def group_sums(values: Tensor, like: Tensor, group_by: str, dtype: torch.dtype | None = None) -> Tensor:
    """The sum of ``values`` over every group ``g`` of ``like``, over all pieces: one entry per group.

    ``values`` is shaped like this process's piece of ``like`` (``like`` itself when it is not sharded),
    one value per entry; the sums are accumulated in ``dtype`` (default: that of ``values``).
    """
    axis = 0 if group_by == "rows" else 1
    other_dims = [dim for dim in range(values.dim()) if dim != axis]
    sums = values.sum(dim=other_dims, dtype=dtype) if other_dims else values.to(dtype or values.dtype)
    if not is_sharded(like):
        return sums
    placements: list[Any] = []
    for placement in like.placements:  # type: ignore[attr-defined]
        if isinstance(placement, Shard) and placement.dim == axis:
            placements.append(Shard(0))  # this process holds whole groups, a slice of them
        elif isinstance(placement, Shard):
            placements.append(Partial())  # every process holds part of every group
        else:
            placements.append(Replicate())
    count = like.shape[axis]
    mesh = like.device_mesh  # type: ignore[attr-defined]
    spread = DTensor.from_local(sums, mesh, placements, shape=torch.Size([count]), stride=(1,))
    full: Tensor = spread.full_tensor()
    return full


def piece_of(full: Tensor, like: Tensor) -> Tensor:
    """This process's piece of ``full`` (the same on every process), cut as ``like`` is cut."""
    if not is_sharded(like):
        return full
    mesh = like.device_mesh  # type: ignore[attr-defined]
    replicated = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim)
    piece: Tensor = replicated.redistribute(mesh, like.placements).to_local()  # type: ignore[attr-defined]
    return piece


def add_(target: Tensor, value: Tensor) -> None:
    """``target += value`` in place, ``value`` brought to ``target``'s placement first if sharded."""
    if is_sharded(value):
        value = value.redistribute(target.device_mesh, target.placements)  # type: ignore[attr-defined]
    local(target).add_(local(value))
