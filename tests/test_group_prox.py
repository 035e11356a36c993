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

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from lightning_reg import Regularizer
from lightning_reg.demos.resnet import ResNet
from lightning_reg.optim import group_prox

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


def start(
    build: Build, g: float, l1: float, optimizer: str, lr: float, fused: bool = False, kernels: bool = False
) -> Run:
    """``fused``: Adam's own fused step; ``kernels``: the regularizer's (``Regularizer(fused=True)``)."""
    model, inputs = build()
    reg = Regularizer(
        model,
        group_l1=g,
        l1=l1,
        group_by="channels",
        example_inputs=inputs,
        l1_mode="proximal",
        fused=kernels,
    )
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:  # beta2 = 0.99: Adam's metric settles in a few hundred steps, so a test's run is short
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99), fused=fused or None)
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


_SOLVED: dict[tuple[str, float, float], Array] = {}


def solve(run: Run, quadratic: Quadratic, g: float, l1: float) -> dict[str, Tensor]:
    """The reference minimiser, solved once per model and case (the models and quadratics are seeded)."""
    prob = problem(run, quadratic, g, l1)
    key = (type(run.model).__name__, g, l1)
    if key not in _SOLVED:
        _SOLVED[key] = reference(prob)
    return prob.unflatten(_SOLVED[key])


def land(
    build: Build, g: float, l1: float, optimizer: str, lr: float, steps: int, kernels: bool = False
) -> Landing:
    """Train ``steps`` steps on the quadratic of ``build``'s model: the weights, the minimiser and the
    largest distance between them, printed. ``kernels``: with ``Regularizer(fused=True)``."""
    run = start(build, g, l1, optimizer, lr, kernels=kernels)
    quadratic = Quadratic.of(run.model)
    expected = solve(run, quadratic, g, l1)
    run.steps(quadratic, steps)
    got = run.weights()
    difference = gap(got, expected)
    print(f"{optimizer} lr {lr}, g {g}, l1 {l1}, {steps} steps: max |w - w*| = {difference:.2e}")
    return Landing(run, quadratic, got, expected, difference)


@dataclass
class Landing:
    run: Run
    quadratic: Quadratic
    got: dict[str, Tensor]
    expected: dict[str, Tensor]
    difference: float

    def same_zeros(self) -> bool:
        """The weights' exact zeros are the minimiser's (to the reference solver's 1e-12)."""
        return _same(zeros(self.got, exact=True), zeros(self.expected, exact=False))


def gap(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def zeros(weights: dict[str, Tensor], exact: bool) -> dict[str, Tensor]:
    return {n: (w == 0) if exact else (w.abs() < 1e-12) for n, w in weights.items()}


def dead_units(prob: Problem, flat: Array) -> tuple[int, int]:
    """How many channels of all units are zero, and how many are not."""
    dead = sum(int(np.sum(np.all(np.abs(flat[unit]) < 1e-12, axis=1))) for unit in prob.units)
    return dead, sum(unit.shape[0] for unit in prob.units) - dead


# The MLP's cases: (g, l1). The first has dead and live channels and L1 zeros among live channels; the
# second is the group term alone; the third has no dead channel.
CASES = [(2.0, 0.1), (2.0, 0.0), (0.6, 0.1)]


# -- the reference itself --------------------------------------------------------------------------------


def test_reference_matches_cvxpy() -> None:
    """The dual solver agrees with cvxpy (CLARABEL) on the MLP's first case, to cvxpy's accuracy."""
    cp = pytest.importorskip("cvxpy")
    g, l1 = CASES[0]
    run = start(mlp, g, l1, "sgd", 0.5)
    quadratic = Quadratic.of(run.model)
    prob = problem(run, quadratic, g, l1)
    mine = prob.flatten(solve(run, quadratic, g, l1))[: prob.n]
    x = cp.Variable(prob.n)
    terms = [0.5 * cp.sum(cp.multiply(prob.h[: prob.n], cp.square(x - prob.b[: prob.n])))]
    terms.append(l1 * cp.norm1(x[prob.regularized]))
    for unit in prob.units:
        for channel in unit:
            terms.append(g * cp.norm(x[channel[channel < prob.n]], 2))
    cp.Problem(cp.Minimize(cp.sum(terms))).solve(
        solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    difference = float(np.max(np.abs(mine - x.value)))
    print(f"reference vs cvxpy: {difference:.2e}")
    assert difference < 1e-6


def test_reference_has_dead_and_live_units() -> None:
    """The first case exercises exact zeros: dead channels, live ones, and L1 zeros in live ones."""
    g, l1 = CASES[0]
    run = start(mlp, g, l1, "sgd", 0.5)
    prob = problem(run, Quadratic.of(run.model), g, l1)
    w = prob.flatten(solve(run, Quadratic.of(run.model), g, l1))
    dead, live = dead_units(prob, w)
    alive = np.concatenate(
        [unit[np.any(np.abs(w[unit]) >= 1e-12, axis=1)].reshape(-1) for unit in prob.units]
    )
    live_l1_zeros = np.intersect1d(alive[np.abs(w[alive]) < 1e-12], prob.regularized)
    print(f"dead {dead}, live {live}, L1 zeros in live channels {live_l1_zeros.size}")
    assert dead > 0
    assert live > 0
    assert live_l1_zeros.size > 0


# -- the package's fixed point ---------------------------------------------------------------------------


@pytest.mark.parametrize(("g", "l1"), CASES)
@pytest.mark.parametrize(("lr", "steps"), [(0.5, 300), (0.1, 1500)])
def test_sgd_lands_on_the_minimiser(g: float, l1: float, lr: float, steps: int) -> None:
    """SGD with a constant lr: the weights, their exact zeros and the KKT conditions of ``F``."""
    landed = land(mlp, g, l1, "sgd", lr, steps)
    assert landed.difference < 1e-8
    assert landed.same_zeros()
    residual = kkt_residual(problem(landed.run, landed.quadratic, g, l1), landed.got)
    print(f"  KKT residual {residual:.2e}")
    assert residual < 1e-8


def _same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return all(torch.equal(a[n], b[n]) for n in a)


def kkt_residual(prob: Problem, weights: dict[str, Tensor]) -> float:
    """The largest violation of ``0 in grad f + sum_u dg_u + l1 * d|w|`` at ``weights``.

    Live channels contribute ``g * w_c / ||w_c||``. Regularized entries outside dead channels need
    ``r + l1 * sign(w) = 0`` (``|r| <= l1`` at ``w = 0``), the others ``r = 0``, with ``r`` the gradient
    of ``f`` plus the live channels' terms. A dead channel needs some ``y``, ``||y|| <= g``, with
    ``r + y + l1 * xi = 0``: ``||soft(r, l1)|| <= g``, checked over the channel's entries in no other dead
    channel (a necessary condition; the split of a shared dead entry is not solved for).
    """
    w = prob.flatten(weights)
    n = prob.n
    r = prob.h * (w - prob.b)
    dead_channels = []
    for unit in prob.units:
        norms = np.linalg.norm(w[unit], axis=1)
        for channel, norm in zip(unit, norms, strict=True):
            if norm > 0:
                r[channel] += prob.g * w[channel] / norm
            else:
                dead_channels.append(channel[channel < n])
    r[n] = 0.0
    l1 = np.zeros(n + 1)
    l1[prob.regularized] = prob.l1
    in_dead = np.zeros(n + 1, dtype=np.int64)
    for channel in dead_channels:
        in_dead[channel] += 1
    worst = 0.0
    free = in_dead[:n] == 0
    nonzero = free & (w[:n] != 0)
    worst = max(worst, float(np.max(np.abs(r[:n] + l1[:n] * np.sign(w[:n]))[nonzero], initial=0.0)))
    at_zero = free & (w[:n] == 0)
    worst = max(worst, float(np.max((np.abs(r[:n]) - l1[:n])[at_zero], initial=0.0)))
    for channel in dead_channels:  # necessary only: entries shared with another dead channel left out
        own = channel[in_dead[channel] == 1]
        soft = np.maximum(np.abs(r[own]) - l1[own], 0.0)
        worst = max(worst, float(np.linalg.norm(soft)) - prob.g)
    return worst


@pytest.mark.parametrize(("g", "l1", "kernels"), [(*CASES[0], False), (*CASES[1], False), (*CASES[0], True)])
def test_adam_lands_on_the_minimiser(g: float, l1: float, kernels: bool) -> None:
    """Adam with a decaying lr: its fixed point in its own metric is the same minimiser, zeros included;
    also with the compiled kernels of ``fused=True``."""
    landed = land(mlp, g, l1, "adam", 3e-2, 3000, kernels=kernels)
    assert landed.difference < 1e-10
    assert landed.same_zeros()


def test_on_accelerators_one_newton_step_a_step_lands_on_the_minimiser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The path accelerators take (a fixed number of Newton steps, no convergence check), run here with
    one Newton step per optimizer step: each solve starts from the last step's roots, so the solves
    carry on across steps and Adam still lands on the minimiser, zeros included."""
    monkeypatch.setattr(group_prox, "CHECKED_DEVICES", frozenset())
    monkeypatch.setattr(group_prox, "NEWTON_STEPS", 1)
    landed = land(mlp, *CASES[0], "adam", 3e-2, 3000)
    assert landed.difference < 1e-10
    assert landed.same_zeros()


RESNET_CASE = (3.0, 0.1)  # every channel alive, 1,628 L1 zeros among them


@pytest.mark.parametrize(
    ("optimizer", "lr", "steps", "tolerance"), [("sgd", 0.5, 200, 1e-12), ("adam", 3e-2, 1000, 1e-5)]
)
def test_a_resnets_crossing_units_land_on_the_minimiser(
    optimizer: str, lr: float, steps: int, tolerance: float
) -> None:
    """A traced ResNet: its residual units cross each block's ``conv2``, ``conv1`` and downsample."""
    landed = land(resnet, *RESNET_CASE, optimizer, lr, steps)
    assert landed.difference < tolerance
    assert landed.same_zeros()
    assert sum(int((w == 0).sum()) for w in landed.got.values()) > 1000


def test_the_sequential_scheme_misses_the_minimiser() -> None:
    """Why the duals are there: SGD followed by each unit's operator in turn, no dual state (numpy, here),
    has a fixed point far from the minimiser on the same case the package lands on."""
    g, l1 = CASES[1]
    lr = 0.5
    run = start(mlp, g, l1, "sgd", lr)
    quadratic = Quadratic.of(run.model)
    prob = problem(run, quadratic, g, l1)
    expected = prob.flatten(solve(run, quadratic, g, l1))
    w = prob.flatten({n: p.detach() for n, p in run.model.named_parameters()})
    nus = [np.zeros(unit.shape[0]) for unit in prob.units]
    for _ in range(300):
        w -= lr * prob.h * (w - prob.b)
        w[prob.n] = 0.0
        for k, unit in enumerate(prob.units):
            w[unit], nus[k] = channel_prox(w[unit], np.full(unit.shape, lr), g, nus[k])
    difference = float(np.max(np.abs(w - expected)))
    print(f"sequential, lr {lr}: max |w - w*| = {difference:.2e}")
    assert difference > 1e-3


# -- a skipped step and a resumed run --------------------------------------------------------------------


@pytest.mark.parametrize("kernels", [False, True], ids=["eager", "fused"])
def test_a_step_a_fused_adam_skips_under_a_grad_scaler_changes_nothing(kernels: bool) -> None:
    """An inf gradient makes ``GradScaler`` skip fused Adam's step: the run then goes on bit for bit as
    the run without that step (weights, duals and stored roots untouched by it, a channel of norm 1e-140
    included); also with the compiled kernels of ``Regularizer(fused=True)``."""
    g, l1 = CASES[0]
    runs = [start(mlp, g, l1, "adam", 3e-2, fused=True, kernels=kernels) for _ in range(2)]
    quadratic = Quadratic.of(runs[0].model)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in runs]

    def scaled_step(run: Run, scaler: torch.amp.GradScaler, poison: bool = False) -> None:
        quadratic.set_grads(run.model)
        for param in run.model.parameters():
            assert param.grad is not None
            param.grad = scaler.scale(param.grad)
        if poison:
            next(iter(run.model.parameters())).grad[0, 0] = float("inf")  # type: ignore[index]
        scaler.step(run.optimizer)
        scaler.update()

    for run, scaler in zip(runs, scalers, strict=True):
        for _ in range(20):
            scaled_step(run, scaler)
        with torch.no_grad():  # a live channel of tiny norm: a step of 0 in the arithmetic would move it
            first, second = run.model[0], run.model[2]  # type: ignore[index]
            c = int(first.weight.abs().sum(1).argmax())
            for piece in (first.weight[c], first.bias[c : c + 1], second.weight[:, c]):
                piece.mul_(1e-140)
    before = runs[0].weights()
    state = {key: value.clone() for key, value in _engine_state(runs[0]).items()}
    assert any(key.startswith(DUAL) for key in state)
    assert any(key.startswith(NORMS) for key in state)
    scaled_step(runs[0], scalers[0], poison=True)
    assert scalers[0].get_scale() == 2.0**9  # the step was skipped
    assert _same(runs[0].weights(), before)
    after = _engine_state(runs[0])
    assert all(torch.equal(after[key], value) for key, value in state.items())
    for run, scaler in zip(runs, scalers, strict=True):
        for _ in range(20):
            scaled_step(run, scaler)
    assert _same(runs[0].weights(), runs[1].weights())


def _engine_state(run: Run) -> dict[str, Tensor]:
    """The engine's entries of the optimizer's state, keyed by ``"<key> <parameter index>"``."""
    return {
        f"{key} {index}": value
        for index, param in enumerate(run.model.parameters())
        for key, value in run.optimizer.state[param].items()
        if key.startswith(("lightning_reg.",))
    }


def test_a_resumed_run_continues_bit_for_bit() -> None:
    """Model, optimizer and scheduler state dicts carry the duals and the roots: a run resumed in fresh
    objects matches the uninterrupted one to the last bit."""
    g, l1 = CASES[0]
    whole = start(mlp, g, l1, "adam", 3e-2)
    quadratic = Quadratic.of(whole.model)
    whole.steps(quadratic, 30)
    assert whole.scheduler is not None
    model, optimizer, scheduler = (
        copy.deepcopy(part.state_dict()) for part in (whole.model, whole.optimizer, whole.scheduler)
    )
    whole.steps(quadratic, 30)
    resumed = start(mlp, g, l1, "adam", 3e-2)
    assert resumed.scheduler is not None
    resumed.model.load_state_dict(model)
    resumed.optimizer.load_state_dict(optimizer)
    resumed.scheduler.load_state_dict(scheduler)
    assert any(key.startswith(DUAL) for key in _engine_state(resumed))
    resumed.steps(quadratic, 30)
    assert _same(resumed.weights(), whole.weights())
