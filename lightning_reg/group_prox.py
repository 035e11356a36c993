"""The proximal step of the group terms and their entries' L1 term, after the optimizer's update.

The term is ``sum_u strength_u * ||w_u|| + sum_i l1_i * |w_i|`` over the units ``u`` of a
:class:`~lightning_reg.group_layout.GroupLayout`, in the metric of the steps ``s_i`` the update applied to
each entry. One unit's proximal operator is exact: soft-thresholding by ``l1_i * s_i``, then
``x_i <- x_i * nu / (nu + strength * s_i)`` with ``nu = ||x||`` the root of
``sum_i (x_i / (nu + strength * s_i))^2 = 1``, or ``0`` when ``||x / s|| <= strength`` (closed form when
the unit's steps are equal).

Units that share entries (a residual block's ``conv2``: its rows in one unit, its input slices in
another) cross, and composing their operators in turn is exact only for nested units. This step keeps,
for each shared entry, the dual variable of its later unit (``optimizer.state[p]["lightning_reg.dual"]``)
and runs one sweep of block-coordinate ascent on the dual of the proximal problem of the sum, warm
started from the last step's (Dykstra's method, as a proximal-gradient step with a warm-started inner
solver): the earlier unit sees its input less the later unit's pull, ``x - s * y``, the later one the
earlier one's output, and keeps its new ``y = strength * x / (nu + strength * s)``. A fixed point of
"update, then this step" satisfies ``grad f(w) + sum_u y_u + l1 * sign(w) = 0`` with each ``y_u`` a
subgradient of its unit's term at ``w``: the minimiser of the summed objective, its zero units included.

The Newton solve for ``nu`` starts from the last step's root of each unit (``"lightning_reg.norms:..."``
in the optimizer's state, so that a resumed run continues bit for bit) or from the lower bound Jensen's
inequality gives, whichever is larger, and rises to the root without overshooting. On the CPU it runs
until the root moves by less than the rounding of the buffers (reading the check is free there); on
accelerators a fixed number of steps, with no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_reg import group_layout
from lightning_reg.couplings import Coupling
from lightning_reg.group_layout import Bucket, Colour, GroupLayout

#: The optimizer-state key of each shared entry's dual variable (that of its later unit).
DUAL = "lightning_reg.dual"
#: The optimizer-state key prefix of each unit's channel norms, the next step's starting point.
NORMS = "lightning_reg.norms"
#: Newton steps where convergence is not checked (a fixed number: no host synchronisation).
NEWTON_STEPS = 10
#: The devices where the solve checks its convergence after each Newton step (reading the check costs
#: nothing on the CPU, where no device runs ahead of the host), and the most steps it takes there.
CHECKED_DEVICES = frozenset({"cpu"})
CHECKED_NEWTON_LIMIT = 50

Scalar = float | Tensor


class GroupProx:
    """Buffers and views for the proximal step of one :class:`GroupLayout`, made once and reused.

    Memory: per colour, a buffer of its entries (each unit-entry once, padded to its bucket's width)
    and one of their steps, one for the dual variables where units cross, and the masks of
    :class:`~lightning_reg.group_layout.Colour`; four work buffers the size of the largest colour.
    """

    def __init__(self, layout: GroupLayout) -> None:
        self.layout = layout
        colours = layout.colours
        device = colours[0].placements[0].member.param.device if colours else torch.device("cpu")
        self.device, dtype = device, layout.dtype
        self.sum_dtype = torch.float32 if device.type == "mps" else torch.float64
        size = max((colour.size for colour in colours), default=0)
        self._work = [torch.empty(size, dtype=dtype, device=device) for _ in range(4)]
        self._alive = torch.empty(size, dtype=torch.bool, device=device)
        self._entries = [torch.zeros(colour.size, dtype=dtype, device=device) for colour in colours]
        self._steps = [torch.ones(colour.size, dtype=dtype, device=device) for colour in colours]
        crossing = {id(param) for param in layout.crossing}
        self._duals = [
            torch.zeros(colour.size, dtype=dtype, device=device)
            if colour.first is not None or colour.later is not None
            else None
            for colour in colours
        ]
        self._entry_views = [group_layout.views(c, b) for c, b in zip(colours, self._entries, strict=True)]
        self._step_views = [group_layout.views(c, b) for c, b in zip(colours, self._steps, strict=True)]
        self._dual_places = [
            [index for index, place in enumerate(colour.placements) if id(place.member.param) in crossing]
            for colour in colours
        ]
        self._dual_views = [
            [views[index] for index in places]
            for views, places in zip(
                (
                    group_layout.views(c, b) if b is not None else []
                    for c, b in zip(colours, self._duals, strict=True)
                ),
                self._dual_places,
                strict=True,
            )
        ]
        self._floor = torch.finfo(dtype).tiny ** 0.5

    @torch.no_grad()
    def step(
        self, optimizer: Optimizer, steps: Mapping[int, Scalar], ramp: float, taken: float | Tensor
    ) -> None:
        """The proximal step after ``optimizer``'s update, with each parameter's per-entry ``steps``.

        ``steps`` maps each parameter's ``id`` to its step: a tensor shaped like it, or one number for
        all its entries. ``ramp`` scales the L1 strengths (a warm-up); ``taken`` is ``0`` in a step a
        fused optimizer skipped (the weights do not move then, and the dual state is kept).
        """
        for index, colour in enumerate(self.layout.colours):
            self._colour_step(optimizer, index, colour, steps, ramp, taken)
        for param, mask, l1 in self.layout.uncovered:  # L1 of entries in no unit
            threshold = mask.to(param.dtype) * (ramp * l1) * steps[id(param)]
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
        entries, duals = self._entries[index], self._duals[index]
        group_layout.gather_into(colour.placements, colour.params, self._entry_views[index])
        row_steps = self._row_steps(colour, steps)
        step_buffer = None if row_steps is not None else self._gather_steps(index, colour, steps, taken)
        if duals is not None:
            states = [self._dual_state(optimizer, colour.params[i]) for i in self._dual_places[index]]
            places = [colour.placements[i] for i in self._dual_places[index]]
            group_layout.gather_into(places, states, self._dual_views[index])
        work = [buffer[: colour.size] for buffer in self._work]
        if colour.first is not None and duals is not None:  # the later units' pull, taken out
            pull = torch.mul(duals, colour.first, out=work[0])
            self._times_steps(colour, pull, row_steps, step_buffer, taken)
            entries.sub_(pull)
        alive = None
        if colour.later is not None and duals is not None:  # this colour's own pull, given back
            # 0 on the entries an earlier unit zeroed: they stay zero in the weights (below)
            alive = torch.ne(entries, 0, out=self._alive[: colour.size]).logical_or_(colour.later == 0)
            pull = torch.mul(duals, colour.later, out=work[0])
            self._times_steps(colour, pull, row_steps, step_buffer, taken)
            entries.add_(pull)
        if colour.l1 is not None and ramp > 0:
            threshold = torch.mul(colour.l1, ramp, out=work[0])
            self._times_steps(colour, threshold, row_steps, step_buffer, taken)
            entries.sub_(torch.clamp(entries, min=-threshold, max=threshold, out=work[1]))
        keep = None
        if colour.later is not None:
            keep = colour.later if not isinstance(taken, Tensor) else colour.later * taken
        for position, bucket in enumerate(colour.buckets):
            rows = bucket.rows_of(entries)
            kept = None if keep is None or duals is None else (bucket.rows_of(keep), bucket.rows_of(duals))
            parts = [bucket.rows_of(buffer) for buffer in work]
            if row_steps is not None:
                self._closed_form(bucket, rows, row_steps[position], taken, kept)
            else:
                assert step_buffer is not None
                self._newton(optimizer, bucket, rows, bucket.rows_of(step_buffer), parts, kept)
        if alive is not None:
            entries.mul_(alive)
        group_layout.scatter_from(colour.placements, self._entry_views[index], colour.params)
        if colour.later is not None and duals is not None:
            states = [self._dual_state(optimizer, colour.params[i]) for i in self._dual_places[index]]
            places = [colour.placements[i] for i in self._dual_places[index]]
            group_layout.scatter_from(places, self._dual_views[index], states)

    def _dual_state(self, optimizer: Optimizer, param: Tensor) -> Tensor:
        state = optimizer.state[param]
        if DUAL not in state:
            state[DUAL] = torch.zeros_like(param)
        dual: Tensor = state[DUAL]
        return dual

    def _row_steps(self, colour: Colour, steps: Mapping[int, Scalar]) -> list[Tensor] | None:
        """Per bucket, each row's step, when every unit's members share one number; else ``None``."""
        per_bucket = []
        for bucket in colour.buckets:
            values = []
            for unit_index in bucket.units:
                unit = self.layout.units[unit_index]
                shared = {steps[id(member.param)] for member in unit.members}
                if len(shared) != 1 or not isinstance(next(iter(shared)), float):
                    return None
                values += [float(next(iter(shared)))] * unit.count
            per_bucket.append(torch.tensor(values, dtype=self.layout.dtype, device=self.device))
        return per_bucket

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

    def _times_steps(
        self,
        colour: Colour,
        values: Tensor,
        row_steps: list[Tensor] | None,
        step_buffer: Tensor | None,
        taken: float | Tensor,
    ) -> None:
        """``values *= s`` entry by entry, in place."""
        if step_buffer is not None:
            values.mul_(step_buffer)
            return
        assert row_steps is not None
        for bucket, rows in zip(colour.buckets, row_steps, strict=True):
            bucket.rows_of(values).mul_(
                rows[:, None] if not isinstance(taken, Tensor) else rows[:, None] * taken
            )

    def _closed_form(
        self,
        bucket: Bucket,
        rows: Tensor,
        steps: Tensor,
        taken: float | Tensor,
        kept: tuple[Tensor, Tensor] | None,
    ) -> None:
        """Equal steps in every channel: ``x <- x * max(0, 1 - strength * s / ||x||)``."""
        if isinstance(taken, Tensor):
            steps = (steps * taken).clamp_min(self._floor)
        strengths = bucket.strengths.to(device=rows.device, dtype=self.sum_dtype)
        norms = torch.linalg.vector_norm(rows, dim=1, dtype=self.sum_dtype)
        safe = norms.clamp_min(torch.finfo(self.sum_dtype).tiny)
        if kept is not None:  # the unit's dual: the pull x / s projected onto the ball of radius strength
            keep, duals = kept
            pull = torch.minimum(1 / steps.to(self.sum_dtype), strengths / safe).to(rows.dtype)
            torch.where(keep > 0, rows * pull[:, None], duals, out=duals)
        factor = (1 - strengths * steps.to(self.sum_dtype) / safe).clamp_min(0)
        rows.mul_(factor.to(rows.dtype)[:, None])

    def _newton(
        self,
        optimizer: Optimizer,
        bucket: Bucket,
        rows: Tensor,
        steps: Tensor,
        work: Sequence[Tensor],
        kept: tuple[Tensor, Tensor] | None,
    ) -> None:
        """Per-entry steps: each channel's exact proximal operator in their metric (module docstring)."""
        pulls, scratch, shifted, terms = work
        dtype, sums = rows.dtype, self.sum_dtype
        strengths = bucket.strengths.to(device=rows.device, dtype=dtype)
        torch.mul(steps, strengths[:, None], out=pulls).clamp_min_(self._floor)  # strength * s_i
        zero = torch.linalg.vector_norm(torch.div(rows, pulls, out=scratch), dim=1, dtype=sums) <= 1
        torch.mul(rows, rows, out=scratch)
        squares = scratch.sum(1, dtype=sums)
        # Jensen: the root is at least ||x|| - sum_i x_i^2 * strength * s_i / ||x||^2.
        pulled = torch.mul(scratch, pulls, out=terms).sum(1, dtype=sums)
        tiny = torch.finfo(sums).tiny
        bound = (squares.sqrt() - pulled / squares.clamp_min(tiny)).clamp_min(0)
        root = (
            bound if (warm := self._warm(optimizer, bucket)) is None else torch.maximum(warm.to(sums), bound)
        )
        check = rows.device.type in CHECKED_DEVICES
        tolerance = 8 * torch.finfo(dtype).eps
        for _ in range(CHECKED_NEWTON_LIMIT if check else NEWTON_STEPS):
            torch.add(pulls, root.to(dtype)[:, None], out=shifted)
            torch.div(rows, shifted, out=terms)  # x_i / (nu + strength * s_i)
            total = torch.linalg.vector_norm(terms, dim=1, dtype=sums).square()
            slope = terms.square_().div_(shifted).sum(1, dtype=sums)
            # nu <- nu - (total^(-1/2) - 1) / (total^(-3/2) * slope), never below the bound
            move = (total.pow(1.5) - total) / slope.clamp_min(tiny)
            root = torch.maximum(root + move, bound)
            if check and bool(((move.abs() <= tolerance * root) | zero).all()):
                break
        root = torch.where(zero, 0.0, root)
        self._keep_warm(optimizer, bucket, root)
        torch.add(pulls, root.to(dtype)[:, None], out=shifted)
        if kept is not None:  # the unit's dual: strength * x_i / (nu + strength * s_i)
            keep, duals = kept
            torch.div(rows, shifted, out=terms).mul_(strengths[:, None])
            torch.where(keep > 0, terms, duals, out=duals)
        rows.mul_(root.to(dtype)[:, None]).div_(shifted)

    def _warm(self, optimizer: Optimizer, bucket: Bucket) -> Tensor | None:
        """The bucket's channel norms of the last step, from the optimizer's state (``None``: none yet)."""
        stored = []
        for unit_index in bucket.units:
            unit = self.layout.units[unit_index]
            norms = optimizer.state[unit.members[0].param].get(_norms_key(unit))
            if norms is None or norms.shape != (unit.count,):
                return None
            stored.append(norms)
        return torch.cat(stored) if len(stored) > 1 else stored[0]

    def _keep_warm(self, optimizer: Optimizer, bucket: Bucket, root: Tensor) -> None:
        units = [self.layout.units[index] for index in bucket.units]
        pieces = torch.split(root, [unit.count for unit in units])
        targets = []
        for unit in units:
            param = unit.members[0].param
            key = _norms_key(unit)
            state = optimizer.state[param]
            if key not in state or state[key].shape != (unit.count,):
                state[key] = torch.zeros(unit.count, dtype=param.dtype, device=param.device)
            targets.append(state[key])
        torch._foreach_copy_(targets, list(pieces))


def _norms_key(unit: Coupling) -> str:
    return f"{NORMS}:{unit.name}:{unit.members[0].axis}"
