"""Coupled channel groups: the slices of several parameters that together make up one removable unit.

In a real network a channel is more than one row: a convolution's output channel is its row of the
kernel and its bias entry, the BatchNorm scale and shift of that channel and the next convolution's
input slice, and across a residual connection every tensor that adds into the same stream.
A :class:`Coupling` holds the channels of one such unit type: a list of :class:`Member` s, each a
parameter, an axis, and which channel each index along that axis belongs to. Today's ``"rows"`` and
``"columns"`` groups are its one-member case (:meth:`Coupling.along`).

The math over couplings mirrors :mod:`~lightning_reg.penalties`: the norm of each channel (every
member's slices together), the group term, its proximal operator (block soft-thresholding) in the
plain and in the optimizer's diagonal metric, and the statistics. Plain PyTorch; the tracing that finds
couplings in a model lives in :mod:`~lightning_reg.channels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_reg.kernels import sum_in_order
from lightning_reg.penalties import GROUP_NEWTON_STEPS, least_pull, metric_prox_norms

_TINY = 1e-300


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
    return coupling.channel_sums([member.param.square() for member in coupling.members], dtype)


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
    return sum_in_order(channel_norms(coupling).sum() for coupling in couplings)


@torch.no_grad()
def coupled_shrink_(coupling: Coupling, threshold: float | Tensor) -> None:
    """In place, ``w_c <- w_c * max(0, 1 - threshold / ||w_c||)`` for every channel ``c``.

    The proximal operator of ``threshold * sum_c ||w_c||``: a channel whose norm (over all its slices)
    is at most ``threshold`` becomes exactly ``0`` in every member.

    >>> conv = torch.nn.Parameter(torch.tensor([[3.0], [0.3]]))
    >>> scale = torch.nn.Parameter(torch.tensor([4.0, 0.4]))
    >>> both = torch.arange(2)
    >>> coupling = Coupling("c", 2, (Member("conv", conv, 0, both, both), Member("bn", scale, 0, both, both)))
    >>> coupled_shrink_(coupling, 1.0)
    >>> conv.data, scale.data
    (tensor([[2.4000],
            [0.0000]]), tensor([3.2000, 0.0000]))
    """
    norms = channel_squares(coupling).sqrt()
    factor = (1 - threshold / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp_min(0)
    for member in coupling.members:
        member.param.mul_(member.spread(factor.to(member.param.dtype), 1.0))


@torch.no_grad()
def coupled_shrink_scaled_(
    coupling: Coupling, strength: float, steps: Sequence[Tensor], newton_steps: int = GROUP_NEWTON_STEPS
) -> None:
    """In place, the proximal operator of ``strength * sum_c ||w_c||`` in the metric of per-entry steps.

    The coupled form of :func:`~lightning_reg.penalties.group_shrink_scaled_`: ``steps[i]`` holds the
    step ``s`` of each entry of member ``i``'s parameter (broadcastable to it, positive). Each channel
    ``z = w_c`` becomes ``argmin_x sum_i (x_i - z_i)^2 / (2 s_i) + strength * ||x||``: exactly ``0``
    when ``||z / s|| <= strength``, else ``x_i = z_i * nu / (nu + strength * s_i)``, ``nu`` found by the
    same fixed number of Newton steps from the same lower bound, for all channels at once.

    >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64))
    >>> coupled_shrink_scaled_(Coupling.along("w", w, 0), 1.0, [torch.ones(2, 2, dtype=torch.float64)])
    >>> w.data
    tensor([[2.4000, 3.2000],
            [0.0000, 0.0000]], dtype=torch.float64)
    """
    members = coupling.members
    dtype = torch.float32 if members[0].param.device.type == "mps" else torch.float64
    pulls = [least_pull(step * strength) for step in steps]  # strength * s_i, per entry
    kept = metric_prox_norms(
        [member.param.square() for member in members],
        pulls,
        lambda values: coupling.channel_sums(values, dtype),
        lambda per_channel: [member.spread(per_channel.to(member.param.dtype), 0.0) for member in members],
        newton_steps,
    )
    for member, pull in zip(members, pulls, strict=True):
        factor = member.spread(kept.to(member.param.dtype), 0.0)
        ratio = factor / (factor + pull).clamp_min(_TINY)
        if not member.identity:  # entries of no channel keep their value
            inside = member.spread(torch.ones_like(kept, dtype=member.param.dtype), 0.0) > 0
            ratio = torch.where(inside, ratio, torch.ones_like(ratio))
        member.param.mul_(ratio)


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
            norms = channel_squares(coupling, dtype).sqrt()
            rows.append(torch.stack((norms.sum(), (norms == 0).sum().to(dtype))))
        return torch.stack(rows)
