"""Global values of sharded parameters (``DTensor``, as FSDP2 and tensor parallelism make them).

A regularizer reads sums over whole weights. For a sharded parameter each process holds a piece, so
every such sum is computed on the local piece and added up over the mesh dimensions the parameter is
sharded on (never over those it is replicated on: a replicated weight is counted once). Plain tensors
pass through unchanged, and nothing here runs a collective for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.distributed as dist
from torch import Tensor

from lightning_reg.utilities.optional import DTensor, Partial, Replicate, Shard

__all__ = [
    "add_",
    "all_reduce_over",
    "global_value",
    "is_sharded",
    "local",
    "split_over",
    "sum_over_shards",
]


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


def add_(target: Tensor, value: Tensor) -> None:
    """``target += value`` in place, ``value`` brought to ``target``'s placement first if sharded."""
    if is_sharded(value):
        value = value.redistribute(target.device_mesh, target.placements)  # type: ignore[attr-defined]
    local(target).add_(local(value))


def split_over(param: Tensor, axis: int) -> tuple[Any, ...]:
    """The process groups over which each slice of ``param`` along ``axis`` is split: those of the mesh
    dimensions sharding it along another dim (empty when each process holds whole slices)."""
    if not is_sharded(param):
        return ()
    mesh = param.device_mesh  # type: ignore[attr-defined]
    return tuple(
        mesh.get_group(dim)
        for dim, placement in enumerate(param.placements)  # type: ignore[attr-defined]
        if isinstance(placement, Shard) and placement.dim != axis
    )


def all_reduce_over(groups: tuple[Any, ...]) -> Callable[[Tensor], None] | None:
    """In place, the sum over ``groups`` of a tensor of per-slice sums (``None``: no groups)."""
    if not groups:
        return None

    def reduce(values: Tensor) -> None:
        for group in groups:
            dist.all_reduce(values, group=group)

    return reduce
