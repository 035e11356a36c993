"""Coupled channel groups: the slices of several parameters that together make up one removable unit.

In a real network a channel is more than one row: a convolution's output channel is its row of the
kernel and its bias entry, the BatchNorm scale and shift of that channel and the next convolution's
input slice, and across a residual connection every tensor that adds into the same stream.
A :class:`Coupling` holds the channels of one such unit type: a list of :class:`Member` s, each a
parameter, an axis, and which channel each index along that axis belongs to. Today's ``"rows"`` and
``"columns"`` groups are its one-member case (:meth:`Coupling.along`).

The math over couplings mirrors :mod:`~lightning_reg.functional.penalties`: the norm of each channel (every
member's slices together), the group term and the statistics. Plain PyTorch; the tracing that finds
couplings in a model lives in :mod:`~lightning_reg.structured.channels`, their proximal step in
:mod:`~lightning_reg.optim.group_prox`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_reg.functional.kernels import sum_in_order
from lightning_reg.functional.sharding import global_value

__all__ = [
    "Coupling",
    "Member",
    "channel_norms",
    "channel_squares",
    "coupled_l1_norm",
    "coupled_statistics",
]


@dataclass(frozen=True, eq=False)
class Member:
    """The slices of one parameter that belong to the channels of a coupling.

    Attributes:
        name: the parameter's name in ``named_parameters()``.
        param: the parameter.
        axis: the dimension its slices are taken along.
        positions: the indices along ``axis`` that belong to the coupling (a ``long`` tensor).
        channels: the channel each of ``positions`` belongs to (a ``long`` tensor of the same length);
            several positions may belong to one channel (a flattened feature map, an attention head).
    """

    name: str
    param: Tensor
    axis: int
    positions: Tensor
    channels: Tensor
    #: Whether ``positions`` and ``channels`` are both ``0, 1, ..., n - 1`` over the whole axis.
    identity: bool = field(init=False)

    def __post_init__(self) -> None:
        size = self.param.shape[self.axis]
        whole = torch.arange(size, device=self.positions.device)
        identity = (
            self.positions.numel() == size
            and bool(torch.equal(self.positions, whole))
            and bool(torch.equal(self.channels, whole))
        )
        object.__setattr__(self, "identity", identity)

    def slice_sums(self, values: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``values`` (shaped like :attr:`param`) summed over every dim but :attr:`axis`: one per index."""
        dims = [dim for dim in range(values.dim()) if dim != self.axis]
        return values.sum(dim=dims, dtype=dtype) if dims else values.to(dtype or values.dtype)

    def spread(self, per_channel: Tensor, fill: float) -> Tensor:
        """One value per channel placed on this member's entries, ``fill`` on the entries of no channel.

        The result broadcasts against :attr:`param`: its size along :attr:`axis` is the parameter's,
        every other size is ``1``.
        """
        if self.identity:
            along = per_channel
        else:
            along = torch.full(
                (self.param.shape[self.axis],), fill, dtype=per_channel.dtype, device=per_channel.device
            )
            along = along.index_copy(0, self.positions, per_channel.index_select(0, self.channels))
        shape = [1] * self.param.dim()
        shape[self.axis] = -1
        return along.reshape(shape)


@dataclass(frozen=True, eq=False)
class Coupling:
    """``count`` channels, each the slices of :attr:`members` it owns: the unit a group term acts on.

    Attributes:
        name: what the coupling is called in statistics (``reg/dead_units/<name>``): its producing
            layer's name (the layer the tracer started from).
        count: how many channels (groups) it has.
        members: the parameters' slices, each parameter at most once per axis.
    """

    name: str
    count: int
    members: tuple[Member, ...]

    @classmethod
    def along(cls, name: str, param: Tensor, axis: int) -> Coupling:
        """The groups of one parameter alone: its slices along ``axis`` (``"rows"``: 0, ``"columns"``: 1).

        >>> coupling = Coupling.along("w", torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0]])), 0)
        >>> channel_norms(coupling)
        tensor([5., 0.], grad_fn=<WhereBackward0>)
        """
        indices = torch.arange(param.shape[axis], device=param.device)
        return cls(name, param.shape[axis], (Member(name, param, axis, indices, indices),))

    @property
    def parameters(self) -> list[Tensor]:
        """The parameters with slices in this coupling, each once, in the order of :attr:`members`."""
        seen: dict[int, Tensor] = {}
        for member in self.members:
            seen.setdefault(id(member.param), member.param)
        return list(seen.values())

    def channel_sums(self, per_member: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
        """Sum, per channel, ``per_member[i]`` (shaped like member ``i``'s parameter) over its slices."""
        total: Tensor | None = None
        for member, values in zip(self.members, per_member, strict=True):
            sums = member.slice_sums(values, dtype)
            if not member.identity:
                sums = torch.zeros(self.count, dtype=sums.dtype, device=sums.device).index_add(
                    0, member.channels, sums.index_select(0, member.positions)
                )
            total = sums if total is None else total + sums
        assert total is not None, "a coupling has at least one member"
        return total


def channel_squares(coupling: Coupling, dtype: torch.dtype | None = None) -> Tensor:
    """``||w_c||^2`` of each channel ``c``: the squares of every member's slices of ``c``, added."""
    params = [member.param if dtype is None else member.param.to(dtype) for member in coupling.members]
    return coupling.channel_sums([param.square() for param in params], dtype)


def channel_norms(coupling: Coupling) -> Tensor:
    """``||w_c||`` of each channel; differentiable, with a zero (not NaN) gradient at ``0``."""
    squares = channel_squares(coupling)
    positive = squares > 0
    safe = torch.where(positive, squares, torch.ones_like(squares))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(squares))


def coupled_l1_norm(couplings: Sequence[Coupling]) -> Tensor:
    """``sum_c ||w_c||`` over the channels of all ``couplings``, differentiable.

    >>> w = torch.nn.Parameter(torch.tensor([[3.0, 0.0], [4.0, 0.0]]))
    >>> coupled_l1_norm([Coupling.along("w", w, 1)])
    tensor(5., grad_fn=<SumBackward0>)
    """
    return sum_in_order(global_value(channel_norms(coupling).sum()) for coupling in couplings)


def coupled_statistics(couplings: Sequence[Coupling], dtype: torch.dtype = torch.float64) -> Tensor:
    """One row per coupling: ``sum_c ||w_c||`` and the count of channels entirely ``0``; no autograd.

    >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    >>> coupled_statistics([Coupling.along("w", w, 0)])
    tensor([[5., 1.]], dtype=torch.float64)
    """
    if not couplings:
        return torch.zeros((0, 2), dtype=dtype)
    with torch.no_grad():
        rows = []
        for coupling in couplings:
            norms = global_value(channel_squares(coupling, dtype)).sqrt()
            rows.append(torch.stack((norms.sum(), (norms == 0).sum().to(dtype))))
        return torch.stack(rows)
