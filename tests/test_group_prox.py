"""The proximal group step of crossing units lands on the minimiser of the summed objective.

The objective is a separable quadratic over *all* of a model's parameters plus the penalty,

    F(w) = f(w) + l1 * sum_{i in regularized} |w_i| + g * sum_u sum_c ||w_{u,c}||,
    f(w) = 1/2 * sum_i h_i * (w_i - b_i)^2,   h_i > 0,

with ``u`` the coupled units of ``group_by="channels"`` (``reg.selection.couplings``) and ``w_{u,c}`` the
entries of channel ``c`` of unit ``u``. In a chain MLP the units cross (``2.weight``: its rows in one
unit, its columns in another), as in a ResNet block's ``conv2``, so composing the units' operators in
turn does not give the minimiser: the engine keeps a dual variable per shared entry.

The minimiser of ``F`` is the proximal operator of the penalty at ``b`` in the metric ``diag(1 / h)``.
The tests compute it here, independently of the package: block-coordinate ascent on the dual (one
block per unit, whose channels are disjoint, and one for the L1 term; Dykstra's method) run to
convergence in numpy, each unit's operator solved by Newton's method on its channel norm. Only the
units' membership is read from the package (structure); cvxpy cross-checks the solver once.

Checked against that reference, with ``p.grad = h * (w - b)`` set by hand before each step:

- the fixed point of SGD (two constant learning rates) and of Adam (a decaying learning rate),
- its exact zeros: dead units and L1 zeros, with the case made to have both dead and live ones,
- the KKT conditions at the package's weights,
- a small traced ResNet (its residual units cross each block's ``conv2``),
- that the sequential scheme (unit after unit, no duals) misses it: why the duals are there,
- that a step a fused optimizer skips under ``GradScaler`` moves neither weights nor the engine's state,
- that a run resumed from state dicts continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from lightning_reg import Regularizer
from lightning_reg.demos.resnet import ResNet

Array = NDArray[np.float64]
DTYPE = torch.float64
DUAL = "lightning_reg.dual"  # the engine's optimizer-state keys (module docstring of group_prox)
NORMS = "lightning_reg.norms"


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    saved = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    yield
    torch.set_default_dtype(saved)


# -- models, the quadratic and the package's runs -------------------------------------------------------


def mlp() -> tuple[nn.Module, Tensor]:
    """The chain MLP whose units ``'0'`` and ``'2'`` cross at ``2.weight``, with example inputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    return model.to(DTYPE), torch.randn(2, 6, dtype=DTYPE)


def resnet() -> tuple[nn.Module, Tensor]:
    """A small ResNet (one block per stage, widths 4 to 32) on 1x8x8 images."""
    torch.manual_seed(0)
    model = ResNet(layers=(1, 1, 1, 1), num_classes=3, width=4, in_channels=1, small_stem=True)
    return model.to(DTYPE), torch.randn(2, 1, 8, 8, dtype=DTYPE)


Build = Callable[[], tuple[nn.Module, Tensor]]


@dataclass
class Quadratic:
    """``f(w) = 1/2 sum h (w - b)^2`` over every parameter, by name."""

    h: dict[str, Tensor]
    b: dict[str, Tensor]

    @classmethod
    def of(cls, model: nn.Module, seed: int = 1, spread: float = 1.0) -> Quadratic:
        gen = torch.Generator().manual_seed(seed)
        params = dict(model.named_parameters())
        h = {n: torch.rand(p.shape, generator=gen, dtype=DTYPE) + 0.5 for n, p in params.items()}
        b = {n: spread * torch.randn(p.shape, generator=gen, dtype=DTYPE) for n, p in params.items()}
        return cls(h, b)

    def set_grads(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            param.grad = self.h[name] * (param.detach() - self.b[name])


@dataclass
class Run:
    model: nn.Module
    reg: Regularizer
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None

    def weights(self) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def steps(self, quadratic: Quadratic, count: int) -> None:
        for _ in range(count):
            quadratic.set_grads(self.model)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()


def decay(step: int) -> float:
    return float(1 / (1 + step / 200) ** 0.6)


def start(build: Build, g: float, l1: float, optimizer: str, lr: float, fused: bool = False) -> Run:
    model, inputs = build()
    reg = Regularizer(
        model, group_l1=g, l1=l1, group_by="channels", example_inputs=inputs, l1_mode="proximal"
    )
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    reg.attach(opt)
    return Run(model, reg, opt, scheduler)


# -- the reference: the prox of the penalty at b in the metric diag(1 / h), by dual block ascent ------


@dataclass
class Problem:
    """The flattened problem: entry ``i`` of the vector is an entry of one parameter.

    ``units[k]`` is a ``(count, width)`` matrix of entry indices, channel by channel, padded with the
    index ``n`` of a dummy entry that stays ``0`` (``b = 0``, ``h = 1``, in no L1 term).
    """

    names: list[str]
    shapes: list[torch.Size]
    h: Array  # length n + 1 (the dummy last)
    b: Array
    regularized: NDArray[np.int64]  # indices of the L1 entries
    units: list[NDArray[np.int64]]
    g: float
    l1: float

    @property
    def n(self) -> int:
        return len(self.h) - 1

    def flatten(self, values: dict[str, Tensor]) -> Array:
        flat = np.concatenate([values[name].detach().reshape(-1).numpy() for name in self.names])
        return np.append(flat, 0.0)

    def unflatten(self, flat: Array) -> dict[str, Tensor]:
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = int(np.prod(shape)) if len(shape) else 1
            out[name] = torch.from_numpy(flat[offset : offset + size].copy()).reshape(shape)
            offset += size
        return out


def problem(run: Run, quadratic: Quadratic, g: float, l1: float) -> Problem:
    """The problem of ``run``'s model: the units' channels from ``reg.selection.couplings``."""
    params = dict(run.model.named_parameters())
    names = list(params)
    offsets, offset = {}, 0
    for name in names:
        offsets[name] = offset
        offset += params[name].numel()
    n = offset
    index = {name: torch.arange(p.numel()).reshape(p.shape) + offsets[name] for name, p in params.items()}
    assert all(strength == g for strength in run.reg.selection.coupling_strengths)
    units = []
    for coupling in run.reg.selection.couplings:
        channels: list[list[int]] = [[] for _ in range(coupling.count)]
        for member in coupling.members:
            for position, channel in zip(member.positions.tolist(), member.channels.tolist(), strict=True):
                channels[channel] += index[member.name].select(member.axis, position).reshape(-1).tolist()
        assert all(len(set(c)) == len(c) for c in channels)  # no entry twice in a channel
        width = max(len(c) for c in channels)
        units.append(np.array([c + [n] * (width - len(c)) for c in channels], dtype=np.int64))
    regularized = np.concatenate(
        [index[name].reshape(-1).numpy() for name, _ in run.reg.selection.regularized]
    )
    prob = Problem(
        names, [params[n].shape for n in names], np.zeros(0), np.zeros(0), regularized, units, g, l1
    )
    prob.h = prob.flatten(quadratic.h)
    prob.h[-1] = 1.0
    prob.b = prob.flatten(quadratic.b)
    return prob


def channel_prox(v: Array, s: Array, g: float, warm: Array) -> tuple[Array, Array]:
    """Row by row, ``argmin_x 1/2 sum (x - v)^2 / s + g ||x||``: ``x = v * nu / (nu + g s)``.

    ``nu`` is the root of ``S(nu) = sum (v / (nu + g s))^2 = 1`` (``0`` when ``S(0) <= 1``); ``S`` is
    convex and decreasing, so Newton's method from below rises to it monotonically. Returns ``x`` and
    ``nu``.
    """
    gs = g * s
    alive = np.sum((v / gs) ** 2, axis=1) > 1
    nu = np.where(alive, warm, 0.0)
    for _ in range(200):
        shifted = nu[:, None] + gs
        total = np.sum((v / shifted) ** 2, axis=1)
        slope = -2 * np.sum(v**2 / shifted**3, axis=1)
        new = np.where(alive, np.maximum(nu - (total - 1) / np.minimum(slope, -1e-300), 0.0), 0.0)
        if np.all(np.abs(new - nu) <= 1e-16 * new):
            nu = new
            break
        nu = new
    return v * nu[:, None] / (nu[:, None] + gs), nu


def reference(prob: Problem, sweeps: int = 20000) -> Array:
    """The minimiser of ``F``, by block-coordinate ascent on the dual, keeping the primal ``w``.

    A block's step: ``v = w + y / h`` (its own pull given back), ``w <- prox(v)``, ``y <- h (v - w)``.
    Stops when ten sweeps in a row move no entry by more than ``4e-16`` (relative); fails after ``sweeps``.
    """
    h, b = prob.h, prob.b
    w = b.copy()
    y = [np.zeros(unit.shape) for unit in prob.units]
    nus = [np.zeros(unit.shape[0]) for unit in prob.units]
    z = np.zeros(len(prob.regularized))
    reg, thresholds = prob.regularized, prob.l1 / h[prob.regularized]
    quiet = 0
    for _ in range(sweeps):
        before = w.copy()
        for k, unit in enumerate(prob.units):
            v = w[unit] + y[k] / h[unit]
            x, nus[k] = channel_prox(v, 1 / h[unit], prob.g, nus[k])
            y[k] = h[unit] * (v - x)
            w[unit] = x
            w[prob.n] = 0.0
        if prob.l1 > 0:
            v = w[reg] + z / h[reg]
            w[reg] = np.sign(v) * np.maximum(np.abs(v) - thresholds, 0.0)
            z = h[reg] * (v - w[reg])
        quiet = quiet + 1 if np.max(np.abs(w - before)) <= 4e-16 * max(1.0, float(np.max(np.abs(w)))) else 0
        if quiet == 10:  # rounding's flicker only, ten sweeps in a row
            break
    else:
        raise AssertionError("the reference solver did not converge")
    return w


def solve(run: Run, quadratic: Quadratic, g: float, l1: float) -> dict[str, Tensor]:
    return problem(run, quadratic, g, l1).unflatten(reference(problem(run, quadratic, g, l1)))


def gap(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def zeros(weights: dict[str, Tensor], exact: bool) -> dict[str, Tensor]:
    return {n: (w == 0) if exact else (w.abs() < 1e-12) for n, w in weights.items()}


def dead_units(prob: Problem, flat: Array) -> tuple[int, int]:
    """How many channels of all units are zero, and how many are not."""
    dead = sum(int(np.sum(np.all(np.abs(flat[unit]) < 1e-12, axis=1))) for unit in prob.units)
    return dead, sum(unit.shape[0] for unit in prob.units) - dead


# The MLP's cases: (g, l1). The first has dead channels in both crossing units and L1 zeros among
# live channels; the second is the group term alone; the third has no dead channel.
CASES = [(0.6, 0.1), (0.8, 0.0), (0.2, 0.05)]


# -- the reference itself --------------------------------------------------------------------------------


def test_reference_matches_cvxpy() -> None:
    """The dual solver agrees with cvxpy (CLARABEL) on the MLP's first case, to cvxpy's accuracy."""
    cp = pytest.importorskip("cvxpy")
    g, l1 = CASES[0]
    run = start(mlp, g, l1, "sgd", 0.5)
    prob = problem(run, Quadratic.of(run.model), g, l1)
    mine = reference(prob)[: prob.n]
    x = cp.Variable(prob.n)
    terms = [0.5 * cp.sum(cp.multiply(prob.h[: prob.n], cp.square(x - prob.b[: prob.n])))]
    terms.append(l1 * cp.norm1(x[prob.regularized]))
    for unit in prob.units:
        for channel in unit:
            terms.append(g * cp.norm(x[channel[channel < prob.n]], 2))
    cp.Problem(cp.Minimize(cp.sum(terms))).solve(solver="CLARABEL")
    difference = float(np.max(np.abs(mine - x.value)))
    print(f"reference vs cvxpy: {difference:.2e}")
    assert difference < 1e-6
