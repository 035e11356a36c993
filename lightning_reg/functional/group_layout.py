"""Where the entries of the group terms' units go for the proximal step: colours, rows and views.

The proximal step of ``sum_u strength_u * ||w_u||`` works on one flat buffer per *colour*: a set of
units that share no parameter, so that the proximal operators of its units are independent and run
together. Units that share a parameter (a residual block's ``conv2``: its rows in the stream's unit, its
input slices in the block's own) get different colours, and the colours run one after the other.

In a colour's buffer each channel is a *row*: its slices of every member side by side, padded with zeros
to a multiple of :data:`CHUNK` entries. Viewed as a matrix of chunks (``(-1, CHUNK)``), a colour's sums
over channels are one reduction over the chunks and one segmented sum of the chunks of each row, so the
number of operations of a step depends on the number of colours, not of units, members or channel widths.

Each member's slices are read and written through a view of the buffer shaped like the member's
parameter (an ``as_strided`` view): one multi-tensor copy gathers every member of a colour from the
parameters (or from tensors shaped like them: the optimizer's steps, the dual state), one copy scatters
them back. Members whose channels are not whole slices in order (an attention head's rows, part of a
concatenation) are gathered by index instead.

Plain PyTorch; the math that runs on the buffers lives in :mod:`~lightning_reg.optim.group_prox`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_reg.functional.couplings import Coupling, Member

__all__ = [
    "CHUNK",
    "Chunked",
    "Colour",
    "GroupLayout",
    "Placement",
    "build",
    "gather_into",
    "padding",
    "scatter_from",
    "signed",
    "views",
]

#: Entries per chunk: each channel's row is padded to a multiple of it (at most ``CHUNK - 1`` zeros).
CHUNK = 32


@dataclass(frozen=True, eq=False)
class Placement:
    """One member's place in a colour's buffer.

    Attributes:
        member: the member.
        offset: where its first entry lies in the buffer.
        stride: the buffer's distance between two channels (its unit's row width).
        per_channel: how many positions along the member's axis each channel holds (1 for whole slices).
        order: with several positions per channel or a subset of the axis, the positions sorted by
            channel (gathered by index); ``None`` when the member's channels are its slices in order.
    """

    member: Member
    offset: int
    stride: int
    per_channel: int
    order: Tensor | None

    def view(self, buffer: Tensor) -> Tensor:
        """The member's region of ``buffer``: shaped like its parameter, or like the gathered slices.

        Channel ``c`` of the member is row ``c`` of its unit; inside a row the slice keeps the
        parameter's other dims in order, contiguous.
        """
        param, axis = self.member.param, self.member.axis
        shape = list(param.shape)
        shape[axis] = self.member.positions.numel()
        rest = param.numel() // max(param.shape[axis], 1)
        strides, inner = [0] * len(shape), 1
        for dim in reversed(range(len(shape))):
            if dim != axis:
                strides[dim] = inner
                inner *= shape[dim]
        if self.order is None:
            strides[axis] = self.stride
            return buffer.as_strided(shape, strides, buffer.storage_offset() + self.offset)
        # several positions per channel: the axis splits into (channel, position within it)
        split = [*shape[:axis], shape[axis] // self.per_channel, self.per_channel, *shape[axis + 1 :]]
        split_strides = [*strides[:axis], self.stride, rest, *strides[axis + 1 :]]
        return buffer.as_strided(split, split_strides, buffer.storage_offset() + self.offset)


@dataclass(frozen=True, eq=False)
class Colour:
    """Units that share no parameter, laid out in one buffer of :attr:`size` entries.

    Attributes:
        units: the indices of its units (in :attr:`GroupLayout.units`), in buffer order: their channels
            are its rows, in this order.
        placements: every member of every unit of the colour.
        strengths: the strength of each row's unit, one per row (float64).
        chunk_rows: for each chunk of the buffer, its row.
        row_chunks: for each row, how many chunks it spans.
        first: ``True`` on the entries of this colour that belong to a unit of a later colour too (the
            dual state of that unit is taken out of them before this colour's step); ``None`` when
            there are none.
        later: ``True`` on the entries that belong to a unit of an earlier colour too (this colour's
            dual is kept for them); ``None`` when there are none.
        l1: the L1 strength of the entries whose first colour this is (each entry's L1 term goes with
            its first unit), ``0`` elsewhere; ``None`` when no entry has one.
    """

    size: int
    units: tuple[int, ...]
    placements: tuple[Placement, ...]
    strengths: Tensor
    chunk_rows: Tensor
    row_chunks: Tensor
    first: Tensor | None = None
    later: Tensor | None = None
    l1: Tensor | None = None
    params: tuple[Tensor, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(place.member.param for place in self.placements))


@dataclass(frozen=True, eq=False)
class GroupLayout:
    """The units of one proximal step and where their entries go.

    Attributes:
        units: the units (couplings), each with a strength > 0.
        colours: the colours, in the order the step runs them.
        crossing: the parameters with entries in two units (they carry a dual state).
        uncovered: ``(parameter, mask, l1)`` of members with an L1 strength whose entries are not all in
            some unit: their L1 step runs apart, on the entries of ``mask``.
        dtype: the buffers' dtype.
    """

    units: tuple[Coupling, ...]
    colours: tuple[Colour, ...]
    crossing: tuple[Tensor, ...]
    uncovered: tuple[tuple[Tensor, Tensor, float], ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class Chunked:
    """A colour's buffers in ``GroupProx`` as ``(chunks, CHUNK)`` views, made once."""

    entries: Tensor
    steps: Tensor
    duals: Tensor | None
    signed: Tensor | None  # later - first (int8): +1 where a pull is given back, -1 where one is taken out
    shared: Tensor | None  # later
    outside: Tensor | None  # not later
    l1: Tensor | None
    work: list[Tensor]
    alive: Tensor
    column: Tensor


def build(units: Sequence[Coupling], strengths: Sequence[float], l1: dict[int, float]) -> GroupLayout:
    """Lay out ``units`` (with their ``strengths``), the L1 strengths ``l1`` of parameters by ``id``.

    Raises:
        ValueError: an entry belongs to three units; a member's channels hold different numbers of
            positions; the units' parameters are on several devices.
    """
    params = {id(member.param): member.param for unit in units for member in unit.members}
    devices = {param.device for param in params.values()}
    if len(devices) > 1:
        raise ValueError(
            f"Invalid units: their parameters are on several devices ({sorted(map(str, devices))})"
        )
    dtype = functools.reduce(torch.promote_types, [param.dtype for param in params.values()], torch.float16)
    colours_of = _colour(units)
    count = max(colours_of, default=-1) + 1
    maps = _entry_maps(units, colours_of)
    colours = []
    for colour in range(count):
        members = [index for index, value in enumerate(colours_of) if value == colour]
        colours.append(_lay_out(units, members, strengths, maps, l1, colour, dtype))
    crossing = tuple(params[key] for key, (_, covered) in maps.items() if bool((covered == 2).any()))
    uncovered = tuple(
        (params[key], (covered == 0).to(params[key].dtype), l1[key])
        for key, (_, covered) in maps.items()
        if l1.get(key, 0.0) > 0 and bool((covered == 0).any())
    )
    return GroupLayout(tuple(units), tuple(colours), crossing, uncovered, dtype)


def _colour(units: Sequence[Coupling]) -> list[int]:
    """A colour for each unit, the least one no earlier unit sharing a parameter with it has (greedy)."""
    colours: list[int] = []
    holders: dict[int, set[int]] = {}  # parameter id -> colours of the units holding it
    for unit in units:
        taken = set().union(*(holders.get(id(param), set()) for param in unit.parameters))
        colour = next(value for value in range(len(units) + 1) if value not in taken)
        colours.append(colour)
        for param in unit.parameters:
            holders.setdefault(id(param), set()).add(colour)
    return colours


def _entry_maps(units: Sequence[Coupling], colours: Sequence[int]) -> dict[int, tuple[Tensor, Tensor]]:
    """For each parameter, per entry: the first colour of a unit holding it, and how many units do."""
    maps: dict[int, tuple[Tensor, Tensor]] = {}
    for unit, colour in zip(units, colours, strict=True):
        for member in unit.members:
            param = member.param
            first, covered = maps.setdefault(
                id(param),
                (
                    torch.full(param.shape, len(units), dtype=torch.long, device=param.device),
                    torch.zeros(param.shape, dtype=torch.long, device=param.device),
                ),
            )
            inside = _inside(member)
            first.copy_(torch.where(inside, first.clamp_max(colour), first))
            covered.add_(inside.long())
    for key, (_, covered) in maps.items():
        if bool((covered > 2).any()):
            name = next(m.name for unit in units for m in unit.members if id(m.param) == key)
            raise ValueError(
                f"Invalid units: entries of {name!r} belong to three units at once; the group step handles "
                "an entry in at most two (its rows' and its columns' unit)"
            )
    return maps


def _inside(member: Member) -> Tensor:
    """``True`` on the entries of ``member``'s parameter that belong to its channels."""
    param, axis = member.param, member.axis
    along = torch.zeros(param.shape[axis], dtype=torch.bool, device=param.device)
    along[member.positions] = True
    shape = [1] * param.dim()
    shape[axis] = -1
    return along.reshape(shape).expand(param.shape)


def _lay_out(
    units: Sequence[Coupling],
    indices: Sequence[int],
    strengths: Sequence[float],
    maps: dict[int, tuple[Tensor, Tensor]],
    l1: dict[int, float],
    colour: int,
    dtype: torch.dtype,
) -> Colour:
    """The rows and placements of one colour's ``indices`` of ``units``, and its masks."""
    placements, offset = [], 0
    strengths_of_rows: list[float] = []
    chunks_of_rows: list[int] = []
    for index in indices:
        unit = units[index]
        length = sum(_slice_length(member, unit.count) for member in unit.members)
        width = -(-length // CHUNK) * CHUNK
        column = 0
        for member in unit.members:
            per_channel, order = _order(member, unit.count)
            placements.append(Placement(member, offset + column, width, per_channel, order))
            column += _slice_length(member, unit.count)
        strengths_of_rows += [strengths[index]] * unit.count
        chunks_of_rows += [width // CHUNK] * unit.count
        offset += unit.count * width
    device = placements[0].member.param.device if placements else torch.device("cpu")
    row_chunks = torch.tensor(chunks_of_rows, dtype=torch.long, device=device)
    rows = torch.arange(len(chunks_of_rows), device=device)
    chunk_rows = torch.repeat_interleave(rows, row_chunks)
    row_strengths = torch.tensor(strengths_of_rows, dtype=torch.float64, device=device)
    colour_of = Colour(offset, tuple(indices), tuple(placements), row_strengths, chunk_rows, row_chunks)
    masks: dict[str, list[Tensor]] = {"first": [], "later": [], "l1": []}
    for place in placements:
        param = place.member.param
        first, covered = maps[id(param)]
        inside = _inside(place.member)
        masks["first"].append(inside & (first == colour) & (covered == 2))
        masks["later"].append(inside & (first != colour))
        strength = l1.get(id(param), 0.0)
        masks["l1"].append((inside & (first == colour)).to(dtype) * strength)
    gathered: dict[str, Tensor | None] = {}
    for name, values in masks.items():
        gathered[name] = None
        if any(bool(mask.any()) for mask in values):
            kind = dtype if name == "l1" else torch.bool  # the strengths, or where a unit crosses
            buffer = torch.zeros(offset, dtype=kind, device=device)
            gather_into(placements, [mask.to(kind) for mask in values], views(colour_of, buffer))
            gathered[name] = buffer
    return dataclasses.replace(colour_of, first=gathered["first"], later=gathered["later"], l1=gathered["l1"])


def _slice_length(member: Member, count: int) -> int:
    """The entries of one channel of ``member``: its positions per channel times a slice's size."""
    param, axis = member.param, member.axis
    rest = param.numel() // max(param.shape[axis], 1)
    return rest * (member.positions.numel() // max(count, 1))


def _order(member: Member, count: int) -> tuple[int, Tensor | None]:
    """``(positions per channel, positions sorted by channel or None)``; refuses uneven channels."""
    if member.identity:
        return 1, None
    sizes = torch.bincount(member.channels, minlength=count)
    if bool((sizes != sizes[0]).any()):
        raise ValueError(
            f"Invalid unit member {member.name!r}: its channels hold different numbers of positions "
            f"({sizes.tolist()}); the group step lays out channels of equal length"
        )
    per_channel = int(sizes[0])
    keys = member.channels * (member.param.shape[member.axis] + 1) + member.positions
    order = member.positions[torch.argsort(keys)]
    whole = torch.arange(member.param.shape[member.axis], device=order.device)
    if per_channel == 1 and order.numel() == whole.numel() and bool(torch.equal(order, whole)):
        return 1, None
    return per_channel, order


def views(colour: Colour, buffer: Tensor) -> list[Tensor]:
    """Each placement's view of ``buffer`` (see :meth:`Placement.view`); made once per buffer."""
    return [place.view(buffer) for place in colour.placements]


def gather_into(
    placements: Sequence[Placement], sources: Sequence[Tensor], regions: Sequence[Tensor]
) -> None:
    """Copy ``sources`` (one per placement, shaped like its parameter) into their ``regions``."""
    into, whole = [], []
    for place, source, region in zip(placements, sources, regions, strict=True):
        if place.order is None:
            into.append(region)
            whole.append(source)
        else:
            region.copy_(source.index_select(place.member.axis, place.order).view(region.shape))
    if into:
        torch._foreach_copy_(into, whole)


def scatter_from(
    placements: Sequence[Placement], regions: Sequence[Tensor], targets: Sequence[Tensor]
) -> None:
    """Copy the ``regions`` of a buffer back into ``targets`` (one per placement, shaped like its param)."""
    into, whole = [], []
    for place, region, target in zip(placements, regions, targets, strict=True):
        if place.order is None:
            into.append(target)
            whole.append(region)
        else:
            axis = place.member.axis
            shape = list(target.shape)
            shape[axis] = place.order.numel()
            target.index_copy_(axis, place.order, region.reshape(shape))
    if into:
        torch._foreach_copy_(into, whole)


def padding(colour: Colour) -> Tensor | None:
    """The positions of ``colour``'s buffer that no member fills, or ``None`` where there are none."""
    covered = torch.zeros(colour.size, dtype=torch.bool, device=colour.strengths.device)
    ones = [torch.ones_like(param, dtype=torch.bool) for param in colour.params]
    gather_into(colour.placements, ones, views(colour, covered))
    padding = covered.logical_not().nonzero().squeeze(1)
    return padding if padding.numel() else None


def signed(colour: Colour) -> Tensor | None:
    """``later - first`` as a ``(chunks, CHUNK)`` view, or ``None`` where no unit of the colour crosses."""
    masks = [mask for mask in (colour.later, colour.first) if mask is not None]
    if not masks:
        return None
    signed = torch.zeros(masks[0].shape, dtype=torch.int8, device=masks[0].device)
    if colour.later is not None:
        signed.add_(colour.later)
    if colour.first is not None:
        signed.sub_(colour.first.to(torch.int8))
    return signed.view(-1, CHUNK)
