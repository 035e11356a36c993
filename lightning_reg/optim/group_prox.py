"""The proximal step of the group terms and their entries' L1 term, after the optimizer's update.

The term is ``sum_u strength_u * ||w_u|| + sum_i l1_i * |w_i|`` over the units ``u`` of a
:class:`~lightning_reg.functional.group_layout.GroupLayout`, in the metric of the steps ``s_i`` the
update applied to each entry. One unit's proximal operator is exact: soft-thresholding by ``l1_i * s_i``,
then ``x_i <- x_i * nu / (nu + strength * s_i)`` with ``nu = ||x||`` the root of ``sum_i (x_i / (nu +
strength * s_i))^2 = 1``, or ``0`` when ``||x / s|| <= strength`` (closed form when the steps are equal).

Units that share entries (a residual block's ``conv2``: its rows in one unit, its input slices in
another) cross, and composing their operators in turn is exact only for nested units. This step keeps,
for each shared entry, the dual variable of its later unit (``optimizer.state[p]["lightning_reg.dual"]``)
and runs one sweep of block-coordinate ascent on the dual of the proximal problem of the sum, warm
started from the last step's (Dykstra's method, as a proximal-gradient step with a warm-started inner
solver): the earlier unit sees its input less the later unit's pull, ``x - s * y``; the later one sees
the earlier one's output with that pull given back, ``x' + s * y``, and keeps its new
``y = strength * x / (nu + strength * s)``. The weights take the later unit's output, except where the
earlier unit left an exact zero, which stays (so a dead unit's and the L1 term's zeros are exact at
every step; at a fixed point the two outputs agree there, so the fixed point is unchanged). A fixed
point of "update, then this step" satisfies ``grad f(w) + sum_u y_u + l1 * sign(w) = 0`` with each
``y_u`` a subgradient of its unit's term at ``w``: the minimiser of the summed objective, its zero units
included.

The Newton solve for ``nu`` starts from the last step's root of each unit (``"lightning_reg.norms:..."``
in the optimizer's state, so that a resumed run continues bit for bit) or from the lower bound Jensen's
inequality gives, whichever is larger. On the CPU it runs until no root moves by more than eight units in
the last place of the buffers (reading the check is free there); on accelerators a fixed number of steps,
with no host synchronisation. All of a colour's channels solve together: each operation of a step runs
once per colour (:mod:`~lightning_reg.functional.group_layout`), whatever the number of units.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_reg.functional import fused_group, group_layout
from lightning_reg.functional.couplings import Coupling
from lightning_reg.functional.group_layout import CHUNK, Colour, GroupLayout

__all__ = ["DUAL", "NORMS", "STATE_PREFIX", "GroupProx"]

#: The prefix of every key this engine adds to an optimizer's per-parameter state.
STATE_PREFIX = "lightning_reg."
#: The optimizer-state key of each shared entry's dual variable (that of its later unit).
DUAL = f"{STATE_PREFIX}dual"
#: The optimizer-state key prefix of each unit's channel norms, the next step's starting point.
NORMS = f"{STATE_PREFIX}norms"
#: Newton steps where convergence is not checked (a fixed number: no host synchronisation).
NEWTON_STEPS = 10
#: The devices where the solve checks its convergence after each Newton step (reading the check costs
#: nothing on the CPU, where no device runs ahead of the host), and the most steps it takes there.
CHECKED_DEVICES = frozenset({"cpu"})
CHECKED_NEWTON_LIMIT = 50

Scalar = float | Tensor


class GroupProx:
    """Buffers and views for the proximal step of one :class:`GroupLayout`, made once and reused.

    Memory: per colour, a buffer of its entries (each unit-entry once, rows padded to whole chunks) and
    one of their steps, one for the dual variables where units cross, and the masks of
    :class:`~lightning_reg.functional.group_layout.Colour`; four work buffers the size of the largest
    colour, and a fifth with fused optimizers (the input, kept in case the step was skipped).
    """

    def __init__(
        self,
        layout: GroupLayout,
        reduce: Callable[[Tensor], None] | None = None,
        own_state: bool = False,
        fused: bool = False,
    ) -> None:
        """``reduce`` adds up, in place, each channel's sums over the processes holding parts of it (a
        sharded weight's pieces); ``own_state`` keeps the roots in the engine rather than in the optimizer's
        state (pieces of sharded weights are not keys of it); ``fused`` compiles each colour's arithmetic
        (:mod:`~lightning_reg.functional.fused_group`; not with ``reduce``)."""
        if fused and reduce is not None:
            raise ValueError("GroupProx(fused=True) does not add up sums over processes (reduce)")
        self.layout, self.fused = layout, fused
        self._reduce = reduce
        self._own: dict[int, dict[str, Tensor]] | None = {} if own_state else None
        colours = layout.colours
        device = colours[0].placements[0].member.param.device if colours else torch.device("cpu")
        self.device, self.dtype = device, layout.dtype
        # the channels' sums: the buffers' dtype, at least float32; pairwise in a chunk, then over chunks
        self.sum_dtype = torch.promote_types(layout.dtype, torch.float32)
        size = max((colour.size for colour in colours), default=0)
        dtype = self.dtype
        self._work = [torch.empty(size, dtype=dtype, device=device) for _ in range(4)]
        self._alive = torch.empty(size, dtype=torch.bool, device=device)
        self._before: Tensor | None = None  # the input of a fused step that may be skipped
        # the colours run one after the other: they share their entries', steps' and duals' buffers
        entries, steps, duals = (torch.zeros(size, dtype=dtype, device=device) for _ in range(3))
        self._entries = [entries[: colour.size] for colour in colours]
        self._steps = [steps[: colour.size] for colour in colours]
        self._duals = [
            duals[: colour.size] if colour.first is not None or colour.later is not None else None
            for colour in colours
        ]
        # the padding of each colour's rows, zeroed after each gather (another colour wrote there)
        self._padding = [group_layout.padding(colour) for colour in colours]
        self._entry_views = [group_layout.views(c, b) for c, b in zip(colours, self._entries, strict=True)]
        self._step_views = [group_layout.views(c, b) for c, b in zip(colours, self._steps, strict=True)]
        self._plan_duals()
        # per colour: each row's strength (for sums) and each chunk's (shaped to scale a chunk's entries)
        self._strengths = [colour.strengths.to(self.sum_dtype) for colour in colours]
        self._chunk_strengths = [
            colour.strengths.to(dtype)[colour.chunk_rows].unsqueeze(1) for colour in colours
        ]
        self._row_step_cache: dict[int, tuple[tuple[float, ...], Tensor]] = {}
        self._chunked = self._chunk_views()
        self._floor = torch.finfo(dtype).tiny ** 0.5

    def _plan_duals(self) -> None:
        """Per colour, made once: which placements hold crossing parameters (whose dual states the step
        reads and writes back), those placements, and the views of the duals' buffer they fill."""
        colours = self.layout.colours
        crossing = {id(param) for param in self.layout.crossing}
        self._dual_places = [
            [index for index, place in enumerate(colour.placements) if id(place.member.param) in crossing]
            for colour in colours
        ]
        self._dual_placements = [
            [colour.placements[i] for i in places]
            for colour, places in zip(colours, self._dual_places, strict=True)
        ]
        self._dual_views = [
            [group_layout.views(c, b)[i] for i in places] if b is not None else []
            for c, b, places in zip(colours, self._duals, self._dual_places, strict=True)
        ]

    def _chunk_views(self) -> list[group_layout.Chunked]:
        """Per colour, made once: the chunk views of its buffers and of the work buffers, and a column
        for per-row values spread over the chunks."""
        colours, dtype = self.layout.colours, self.dtype
        return [
            group_layout.Chunked(
                entries=entries.view(-1, CHUNK),
                steps=steps.view(-1, CHUNK),
                duals=None if duals is None else duals.view(-1, CHUNK),
                signed=group_layout.signed(colour),
                shared=None if colour.later is None else colour.later.view(-1, CHUNK),
                outside=None if colour.later is None else colour.later.logical_not().view(-1, CHUNK),
                l1=None if colour.l1 is None else colour.l1.view(-1, CHUNK),
                work=[buffer[: colour.size].view(-1, CHUNK) for buffer in self._work],
                alive=self._alive[: colour.size].view(-1, CHUNK),
                column=torch.empty(colour.size // CHUNK, 1, dtype=dtype, device=self.device),
            )
            for colour, entries, steps, duals in zip(
                colours, self._entries, self._steps, self._duals, strict=True
            )
        ]

    @torch.no_grad()
    def step(
        self, optimizer: Optimizer, steps: Mapping[int, Scalar], ramp: float, taken: float | Tensor
    ) -> None:
        """The proximal step after ``optimizer``'s update, with each parameter's per-entry ``steps``.

        ``steps`` maps each parameter's ``id`` to its step: a tensor shaped like it, or one number for
        all its entries. ``ramp`` scales the L1 strengths (a warm-up); ``taken`` is ``0`` in a step a
        fused optimizer skipped (the weights do not move then, and the state is kept).
        """
        for index, colour in enumerate(self.layout.colours):
            self._colour_step(optimizer, index, colour, steps, ramp, taken)
        for param, mask, l1 in self.layout.uncovered:  # L1 of entries in no unit
            threshold = mask * (ramp * l1) * steps[id(param)]
            if isinstance(taken, Tensor):
                threshold = threshold * taken
            param.sub_(param.clamp(-threshold, threshold))

    def _colour_step(
        self,
        optimizer: Optimizer,
        index: int,
        colour: Colour,
        steps: Mapping[int, Scalar],
        ramp: float,
        taken: float | Tensor,
    ) -> None:
        views = self._chunked[index]
        group_layout.gather_into(colour.placements, colour.params, self._entry_views[index])
        if (padding := self._padding[index]) is not None:
            self._entries[index].index_fill_(0, padding, 0)
        states: list[Tensor] = []  # the crossing parameters' duals, read here and written back below
        if views.duals is not None:
            states = [self._dual_state(optimizer, colour.params[i]) for i in self._dual_places[index]]
            group_layout.gather_into(self._dual_placements[index], states, self._dual_views[index])
        if self.fused:
            self._fused_step(optimizer, index, colour, steps, ramp, taken)
        else:
            self._eager_step(optimizer, index, colour, steps, ramp, taken)
        group_layout.scatter_from(colour.placements, self._entry_views[index], colour.params)
        if views.duals is not None and views.shared is not None:
            group_layout.scatter_from(self._dual_placements[index], self._dual_views[index], states)

    def _fused_step(
        self,
        optimizer: Optimizer,
        index: int,
        colour: Colour,
        steps: Mapping[int, Scalar],
        ramp: float,
        taken: float | Tensor,
    ) -> None:
        """The arithmetic between the gather and the scatter, as compiled functions."""
        views = self._chunked[index]
        self._gather_steps(index, colour, steps, 1.0)
        warm = self._warm(optimizer, colour)
        check = views.entries.device.type in CHECKED_DEVICES
        root = fused_group.colour_step(
            views,
            self._chunk_strengths[index],
            colour.chunk_rows,
            warm,
            count=len(self._strengths[index]),
            sum_dtype=self.sum_dtype,
            ramp=ramp,
            taken=taken if isinstance(taken, Tensor) else None,
            newton_steps=CHECKED_NEWTON_LIMIT if check else NEWTON_STEPS,
            checked=check,
        )
        self._store_roots(optimizer, colour, root, warm, taken)

    def _eager_step(
        self,
        optimizer: Optimizer,
        index: int,
        colour: Colour,
        steps: Mapping[int, Scalar],
        ramp: float,
        taken: float | Tensor,
    ) -> None:
        """The arithmetic between the gather and the scatter, as eager kernels."""
        views = self._chunked[index]
        rows, work = views.entries, views.work
        before = None  # a fused step that may have been skipped: its input, kept
        if isinstance(taken, Tensor):
            if self._before is None:
                self._before = torch.empty_like(self._work[0])
            before = self._before[: colour.size].view(-1, CHUNK).copy_(rows)
        row_steps = self._row_steps(index, colour, steps)
        if row_steps is not None:  # one step per channel: scale a chunk at a time
            if isinstance(taken, Tensor):
                row_steps = row_steps * taken
            step_of = self._per_chunk(index, colour, row_steps)
        else:
            self._gather_steps(index, colour, steps, taken)
            step_of = views.steps
        alive = None
        if views.outside is not None:  # 0 on the entries an earlier unit zeroed: they stay 0 (below)
            alive = torch.ne(rows, 0, out=views.alive).logical_or_(views.outside)
        if views.signed is not None and views.duals is not None:
            # the later units' pull taken out (first - 1), this colour's own given back (+1), in one pass
            rows.add_(torch.mul(views.duals, views.signed, out=work[0]).mul_(step_of))
        if views.l1 is not None and ramp > 0:
            threshold = torch.mul(views.l1, ramp, out=work[0]).mul_(step_of)
            rows.sub_(torch.clamp(rows, min=-threshold, max=threshold, out=work[1]))
        kept = None
        if views.shared is not None and views.duals is not None:  # the entries whose dual this keeps
            keep = views.shared if not isinstance(taken, Tensor) else views.shared & (taken > 0)
            kept = (keep, views.duals)
        if row_steps is not None:
            self._closed_form(index, colour, rows, row_steps, kept)
        else:
            self._newton(optimizer, index, colour, rows, step_of, work, kept, taken)
        if alive is not None:
            rows.mul_(alive)
        if before is not None:  # bit for bit what it was (steps of 0 are not quite the identity in rounding)
            torch.where(torch.as_tensor(taken) > 0, rows, before, out=rows)

    def _dual_state(self, optimizer: Optimizer, param: Tensor) -> Tensor:
        state = optimizer.state[param]
        if DUAL not in state:
            state[DUAL] = torch.zeros_like(param)
        dual: Tensor = state[DUAL]
        return dual

    def _row_steps(self, index: int, colour: Colour, steps: Mapping[int, Scalar]) -> Tensor | None:
        """Each row's step (``sum_dtype``) when every unit's members share one number; else ``None``.

        Made again only when the numbers change (a schedule's step), else taken from the last step.
        """
        values = []
        for unit_index in colour.units:
            shared = {steps[id(member.param)] for member in self.layout.units[unit_index].members}
            value = next(iter(shared))
            if len(shared) != 1 or not isinstance(value, float):
                return None
            values.append(value)
        key = tuple(values)
        cached = self._row_step_cache.get(index)
        if cached is None or cached[0] != key:
            counts = [self.layout.units[unit_index].count for unit_index in colour.units]
            rows = [value for value, count in zip(values, counts, strict=True) for _ in range(count)]
            cached = self._row_step_cache[index] = (
                key,
                torch.tensor(rows, dtype=self.sum_dtype, device=self.device),
            )
        return cached[1]

    def _gather_steps(
        self, index: int, colour: Colour, steps: Mapping[int, Scalar], taken: float | Tensor
    ) -> Tensor:
        buffer = self._steps[index]
        places, tensors, regions = [], [], []
        for place, region in zip(colour.placements, self._step_views[index], strict=True):
            step = steps[id(place.member.param)]
            if isinstance(step, Tensor) and step.dim() > 0:
                places.append(place)
                tensors.append(step)
                regions.append(region)
            else:
                region.fill_(step)
        group_layout.gather_into(places, tensors, regions)
        if isinstance(taken, Tensor):
            buffer.mul_(taken)
        return buffer

    def _row_sums(self, colour: Colour, chunks: Tensor) -> Tensor:
        """Each row's sum of the entries of ``chunks`` (``(chunks, CHUNK)``), in ``sum_dtype``: a sum per
        chunk, then one segmented sum of the chunks of each row (they are consecutive)."""
        partial = chunks.sum(1, dtype=self.sum_dtype)
        sums = torch.segment_reduce(partial, "sum", lengths=colour.row_chunks)
        if self._reduce is not None:
            self._reduce(sums)
        return sums

    def _squared_norms(self, colour: Colour, rows: Tensor, scratch: Tensor) -> Tensor:
        """Each row's ``||x||^2`` (``scratch`` is overwritten)."""
        return self._row_sums(colour, torch.mul(rows, rows, out=scratch))

    def _per_chunk(self, index: int, colour: Colour, values: Tensor) -> Tensor:
        """Per-row ``values`` spread over their chunks: a ``(chunks, 1)`` column (reused)."""
        column = self._chunked[index].column
        torch.index_select(values.to(column.dtype), 0, colour.chunk_rows, out=column.view(-1))
        return column

    def _closed_form(
        self,
        index: int,
        colour: Colour,
        rows: Tensor,
        steps: Tensor,
        kept: tuple[Tensor, Tensor] | None,
    ) -> None:
        """Equal steps in every channel: ``x <- x * max(0, 1 - strength * s / ||x||)``."""
        strengths = self._strengths[index]
        steps = steps.clamp_min(self._floor)
        scratch = self._chunked[index].work[0]
        safe = self._squared_norms(colour, rows, scratch).sqrt_().clamp_min_(torch.finfo(self.sum_dtype).tiny)
        if kept is not None:  # the unit's dual: the pull x / s projected onto the ball of radius strength
            keep, duals = kept
            pull = self._per_chunk(index, colour, torch.minimum(1 / steps, strengths / safe))
            torch.where(keep, rows * pull, duals, out=duals)
        factor = (1 - strengths * steps / safe).clamp_min_(0)
        rows.mul_(self._per_chunk(index, colour, factor))

    def _newton(
        self,
        optimizer: Optimizer,
        index: int,
        colour: Colour,
        rows: Tensor,
        steps: Tensor,
        work: Sequence[Tensor],
        kept: tuple[Tensor, Tensor] | None,
        taken: float | Tensor,
    ) -> None:
        """Per-entry steps: each channel's exact proximal operator in their metric (module docstring)."""
        pulls, scratch, shifted, terms = work
        tiny = torch.finfo(self.sum_dtype).tiny
        strengths = self._chunk_strengths[index]
        torch.mul(steps, strengths, out=pulls).clamp_min_(self._floor)  # strength * s_i
        zero = self._squared_norms(colour, torch.div(rows, pulls, out=scratch), scratch) <= 1
        warm = self._warm(optimizer, colour)
        if warm is None:  # Jensen: the root is at least ||x|| - sum_i x_i^2 * strength * s_i / ||x||^2
            squares = self._squared_norms(colour, rows, scratch)
            pulled = self._row_sums(colour, torch.mul(rows, rows, out=terms).mul_(pulls))
            root = (squares.sqrt() - pulled / squares.clamp_min(tiny)).clamp_min_(0)
        else:  # from above, Newton lands below the root (the function is concave), then rises to it
            root = warm
        check = rows.device.type in CHECKED_DEVICES
        tolerance = 8 * torch.finfo(self.dtype).eps
        for _ in range(CHECKED_NEWTON_LIMIT if check else NEWTON_STEPS):
            torch.add(pulls, self._per_chunk(index, colour, root), out=shifted)
            squared = torch.div(rows, shifted, out=terms).square_()  # (x_i / (nu + strength * s_i))^2
            total = self._row_sums(colour, squared)
            slope = self._row_sums(colour, squared.div_(shifted))
            # nu <- nu - (total^(-1/2) - 1) / (total^(-3/2) * slope), never below 0
            move = (total.pow(1.5) - total) / slope.clamp_min(tiny)
            root = (root + move).clamp_min_(0)
            if check and bool(((move.abs() <= tolerance * root) | zero).all()):
                break
        root = root.masked_fill_(zero, 0.0)
        self._store_roots(optimizer, colour, root, warm, taken)
        root_of = self._per_chunk(index, colour, root)
        torch.add(pulls, root_of, out=shifted)
        if kept is not None:  # the unit's dual: strength * x_i / (nu + strength * s_i)
            keep, duals = kept
            torch.div(rows, shifted, out=terms).mul_(strengths)
            torch.where(keep, terms, duals, out=duals)
        rows.mul_(torch.div(root_of, shifted, out=shifted))  # nu / (nu + pull): exactly 1 for a 0 step

    def _state(self, optimizer: Optimizer, param: Tensor) -> dict[str, Tensor]:
        state: dict[str, Tensor] = (
            optimizer.state[param] if self._own is None else self._own.setdefault(id(param), {})
        )
        return state

    def _warm(self, optimizer: Optimizer, colour: Colour) -> Tensor | None:
        """The colour's channel norms of the last step, from the optimizer's state (``None``: none yet)."""
        stored = []
        for unit_index in colour.units:
            unit = self.layout.units[unit_index]
            norms = self._state(optimizer, unit.members[0].param).get(_norms_key(unit))
            if norms is None or norms.shape != (unit.count,):
                return None
            stored.append(norms)
        warm = torch.cat(stored) if len(stored) > 1 else stored[0]
        return warm if warm.dtype == self.sum_dtype else warm.to(self.sum_dtype)

    def _store_roots(
        self, optimizer: Optimizer, colour: Colour, root: Tensor, warm: Tensor | None, taken: float | Tensor
    ) -> None:
        """Keep ``root`` for the next step; a skipped step keeps the last roots (or none: zeros, as none)."""
        if isinstance(taken, Tensor):
            root = torch.where(taken > 0, root, 0.0 if warm is None else warm)
        self._keep_warm(optimizer, colour, root)

    def _keep_warm(self, optimizer: Optimizer, colour: Colour, root: Tensor) -> None:
        units = [self.layout.units[index] for index in colour.units]
        pieces = torch.split(root, [unit.count for unit in units])
        targets = []
        for unit in units:
            param = unit.members[0].param
            key = _norms_key(unit)
            state = self._state(optimizer, param)
            if key not in state or state[key].shape != (unit.count,):
                state[key] = torch.zeros(unit.count, dtype=root.dtype, device=param.device)
            targets.append(state[key])
        torch._foreach_copy_(targets, list(pieces))


def _norms_key(unit: Coupling) -> str:
    return f"{NORMS}:{unit.name}:{unit.members[0].axis}"
