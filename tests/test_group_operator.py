"""The group engine's operator on one weight's rows or columns, against formulas written here.

Each test builds the engine (:class:`~lightning_reg.optim.group_prox.GroupProx`) on the groups of one tensor
(:meth:`~lightning_reg.functional.couplings.Coupling.along`) and runs one step with given steps ``s``: block
soft-thresholding when ``s`` is one number, the proximal operator in the metric of ``s`` (Newton's
method) when it is a tensor, and with ``l1`` the sparse group lasso's operator. The references are the
closed form, bisection and the KKT conditions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from lightning_reg.functional.couplings import Coupling
from lightning_reg.functional.group_layout import build
from lightning_reg.optim import group_prox
from lightning_reg.optim.group_prox import GroupProx


def shrink(w: Tensor, strength: float, steps: float | Tensor, group_by: str, l1: float = 0.0) -> None:
    """One step of the engine on ``w``'s rows or columns, in place (``l1``: the entries' L1 term too)."""
    unit = Coupling.along("w", w, 0 if group_by == "rows" else 1)
    engine = GroupProx(build([unit], [strength], {id(w): l1} if l1 else {}))
    engine.step(torch.optim.SGD([w], lr=1.0), {id(w): steps}, ramp=1.0, taken=1.0)


def fixed_newton_steps(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """The accelerators' path: ``count`` Newton steps, no convergence check."""
    monkeypatch.setattr(group_prox, "CHECKED_DEVICES", frozenset())
    monkeypatch.setattr(group_prox, "NEWTON_STEPS", count)


def test_the_group_step_with_one_step_is_the_block_formula() -> None:
    generator = torch.Generator().manual_seed(4)
    w = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    w[2] = 0.0
    t = 1.8
    for group_by, axis in (("rows", 0), ("columns", 1)):
        values = w.clone()
        a = values.numpy().copy()
        norms = np.linalg.norm(a, axis=1 - axis, keepdims=True)
        with np.errstate(divide="ignore"):
            factor = np.where(norms > 0, np.maximum(0.0, 1 - t / norms), 0.0)
        shrink(values, t, 1.0, group_by)
        np.testing.assert_allclose(values.numpy(), a * factor, rtol=1e-14, atol=0)
        dead = (np.abs(values.numpy()).sum(axis=1 - axis) == 0).sum()
        assert dead == (norms.ravel() <= t).sum() >= 1


def as_groups(values: np.ndarray, group_by: str) -> np.ndarray:
    """One row per group: slices along axis 0 (rows) or axis 1 (columns), flattened."""
    axis = 0 if group_by == "rows" else 1
    return np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)


def metric_group_prox(z: np.ndarray, s: np.ndarray, lam: float) -> np.ndarray:
    """``argmin_x sum_i (x_i - z_i)^2 / (2 s_i) + lam * ||x||`` for one group, by bisection.

    Stationarity, ``(x_i - z_i) / s_i + lam * x_i / ||x|| = 0``, gives ``x_i = z_i nu / (nu + lam s_i)``
    with ``nu = ||x||`` the root in ``(0, ||z||)`` of the decreasing ``sum_i (z_i / (nu + lam s_i))^2 - 1``;
    ``x = 0`` is optimal when ``0`` is in the subdifferential there, ``||z / s|| <= lam``.
    """
    if np.linalg.norm(z / s) <= lam:
        return np.zeros_like(z)
    low, high = 0.0, float(np.linalg.norm(z))
    while True:
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if np.sum(np.square(z / (middle + lam * s))) > 1:
            low = middle
        else:
            high = middle
    return z * middle / (middle + lam * s)


def metric_case(
    shape: tuple[int, ...], group_by: str, decades: float, seed: int = 7
) -> tuple[np.ndarray, np.ndarray, float]:
    """Weights ``z``, steps ``s`` spread over ``decades`` within each group, and a strength that zeroes
    about half the groups, none within 20% of its threshold ``||z_g / s_g||``; one group of zeros."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape)
    s = 1e-3 * 10 ** rng.uniform(0, decades, shape)
    axis = 0 if group_by == "rows" else 1
    moved = np.moveaxis(z, axis, 0)  # a view: scaling a group of it scales z
    ratios = np.linalg.norm(as_groups(z / s, group_by), axis=1)
    lam = float(np.median(ratios))
    for index, ratio in enumerate(ratios):
        if abs(ratio / lam - 1) < 0.2:
            moved[index] *= 0.7 if ratio < lam else 1.4
    moved[1] = 0.0
    return z, s, lam


GROUPED_SHAPES = pytest.mark.parametrize("shape", [(9, 7), (6, 5, 3, 3)], ids=["2d", "conv"])
GROUP_BY = pytest.mark.parametrize("group_by", ["rows", "columns"])


@GROUPED_SHAPES
@GROUP_BY
@pytest.mark.parametrize("decades", [0.0, 2.0, 6.0], ids=["equal-steps", "1e2", "1e6"])
def test_the_group_step_is_the_proximal_operator_in_the_metric(
    shape: tuple[int, ...], group_by: str, decades: float
) -> None:
    """Each group is the bisection solution of its problem, satisfies its KKT conditions, and is zero
    exactly when ``||z / s|| <= lam``."""
    z, s, lam = metric_case(shape, group_by, decades)
    w = torch.tensor(z)
    shrink(w, lam, torch.tensor(s), group_by)
    x = as_groups(w.numpy(), group_by)
    zs, ss = as_groups(z, group_by), as_groups(s, group_by)
    expected = np.stack([metric_group_prox(zg, sg, lam) for zg, sg in zip(zs, ss, strict=True)])
    np.testing.assert_allclose(x, expected, rtol=1e-10, atol=1e-14)
    zero = np.linalg.norm(zs / ss, axis=1) <= lam
    assert np.array_equal((x == 0).all(axis=1), zero)
    assert 2 <= zero.sum() < len(zero) - 1  # both kinds of groups, the planted group of zeros among them
    kept = x[~zero]
    norms = np.linalg.norm(kept, axis=1, keepdims=True)
    residual = (kept - zs[~zero]) / ss[~zero] + lam * kept / norms  # the gradient of the objective
    assert np.abs(residual).max() <= 1e-9 * lam
    assert np.isfinite(x).all()


@GROUPED_SHAPES
@GROUP_BY
def test_the_group_step_with_equal_steps_is_the_closed_form(
    shape: tuple[int, ...], group_by: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one step ``s`` per group: ``w * max(0, 1 - lam * s / ||w||)``, from the start of the iteration."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal(shape)
    axis = 0 if group_by == "rows" else 1
    per_group = 10 ** rng.uniform(-3, 0, shape[axis])
    s = np.empty(shape)
    np.moveaxis(s, axis, 0)[...] = per_group.reshape((-1,) + (1,) * (len(shape) - 1))
    lam = 0.5 * float(np.median(np.linalg.norm(as_groups(z, group_by), axis=1) / per_group))
    norms = np.linalg.norm(as_groups(z, group_by), axis=1)
    factor = np.maximum(0.0, 1 - lam * per_group / norms)
    expected = as_groups(z, group_by) * factor[:, None]
    # the start, ``||z|| - sum_i z_i^2 lam s_i / ||z||^2``, is the root itself when the steps are equal
    for newton_steps in (0, 1, group_prox.NEWTON_STEPS):
        fixed_newton_steps(monkeypatch, newton_steps)
        w = torch.tensor(z)
        shrink(w, lam, torch.tensor(s), group_by)
        np.testing.assert_allclose(as_groups(w.numpy(), group_by), expected, rtol=1e-13, atol=1e-15)
    assert 0 < (factor == 0).sum() < len(factor)


@GROUP_BY
def test_the_group_step_rises_to_the_root_without_overshooting(
    group_by: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After any number of Newton steps every entry is between ``0`` and its value at the solution, and
    never smaller than after fewer steps: the iteration starts below the root and rises monotonically."""
    z, s, lam = metric_case((6, 5, 3, 3), group_by, decades=6.0, seed=11)
    expected = np.stack(
        [
            metric_group_prox(zg, sg, lam)
            for zg, sg in zip(as_groups(z, group_by), as_groups(s, group_by), strict=True)
        ]
    )
    previous = np.zeros_like(expected)
    for newton_steps in range(group_prox.NEWTON_STEPS + 1):
        fixed_newton_steps(monkeypatch, newton_steps)
        w = torch.tensor(z)
        shrink(w, lam, torch.tensor(s), group_by)
        x = np.abs(as_groups(w.numpy(), group_by))
        assert (x <= np.abs(expected) * (1 + 1e-12)).all(), newton_steps
        assert (x >= previous * (1 - 1e-12)).all(), newton_steps
        previous = x
    np.testing.assert_allclose(previous, np.abs(expected), rtol=1e-10, atol=1e-14)


@GROUPED_SHAPES
@GROUP_BY
def test_the_group_step_with_l1_is_the_sparse_group_lasso_prox(shape: tuple[int, ...], group_by: str) -> None:
    """Soft-thresholding by ``l1 * s`` and then the group operator solve ``min sum (x - z)^2 / (2 s) +
    l1 * |x|_1 + lam * sum_g ||x_g||``: the result satisfies that problem's KKT conditions."""
    z, s, _ = metric_case(shape, group_by, decades=3.0, seed=5)
    zs, ss = as_groups(z, group_by), as_groups(s, group_by)
    l1 = float(np.median(np.abs(z / s)))  # zeroes about half the entries by itself
    shrunk = np.sign(zs / ss) * np.maximum(np.abs(zs / ss) - l1, 0)  # z / s, then the box [-l1, l1]
    ranked = np.sort(np.linalg.norm(shrunk, axis=1))
    lam = float(ranked[len(ranked) // 2 - 1 : len(ranked) // 2 + 1].mean())  # between two groups' thresholds
    w = torch.tensor(z)
    shrink(w, lam, torch.tensor(s), group_by, l1=l1)
    x = as_groups(w.numpy(), group_by)
    zero_group = (x == 0).all(axis=1)
    # a group is zero iff some v in l1 * [-1, 1]^n has ||z / s - v|| <= lam: the shrunk z / s is the closest
    assert np.array_equal(zero_group, np.linalg.norm(shrunk, axis=1) <= lam)
    kept, z_kept, s_kept = x[~zero_group], zs[~zero_group], ss[~zero_group]
    norms = np.linalg.norm(kept, axis=1, keepdims=True)
    gradient = (kept - z_kept) / s_kept + lam * kept / norms  # of the smooth part, where x_i != 0
    nonzero = kept != 0
    assert np.abs(gradient + l1 * np.sign(kept))[nonzero].max() <= 1e-9 * (l1 + lam)
    assert (np.abs(z_kept / s_kept)[~nonzero] <= l1).all()  # 0 in the subdifferential of the zeros
    # every part of the conditions is exercised: zero groups, zeros and survivors within kept groups
    assert 0 < zero_group.sum() < len(zero_group)
    assert nonzero.any()
    assert (~nonzero).any()
    assert (np.abs(shrunk[zero_group]) > 0).any()  # the group step zeroed entries the L1 step kept


def test_the_group_step_converges_in_its_newton_steps_on_hard_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of 40 entries whose steps span 6 decades, just above their zero threshold (``||z / s||``
    from ``(1 + 1e-6) lam`` to ``11 lam``): the accelerators' fixed number of Newton steps, from the
    first step's start (no earlier root), reaches the solution."""
    fixed_newton_steps(monkeypatch, group_prox.NEWTON_STEPS)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 40))
    s = 1e-3 * 10 ** rng.uniform(0, 6, z.shape)
    margin = 10 ** rng.uniform(-6, 1, len(z))
    z *= ((1 + margin) / np.linalg.norm(z / s, axis=1))[:, None]  # ||z_g / s_g|| = 1 + margin, lam = 1
    expected = np.stack([metric_group_prox(zg, sg, 1.0) for zg, sg in zip(z, s, strict=True)])
    assert (expected != 0).all()
    w = torch.tensor(z)
    shrink(w, 1.0, torch.tensor(s), "rows")
    np.testing.assert_allclose(w.numpy(), expected, rtol=2e-9, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_group_step_with_zero_steps_moves_nothing(dtype: torch.dtype) -> None:
    """A step of 0 (lr 0 at the start of a warm-up, a skipped fused step): no NaN, nothing moves."""
    weights = torch.tensor([[3.0, -4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=dtype)
    before = weights.clone()
    steps = torch.zeros_like(weights)
    steps[2, 1] = 0.5  # a group whose entries took different steps, one of them 0
    shrink(weights, 10.0, steps, "rows")
    assert torch.equal(weights[:2], before[:2])  # a live group and a dead one, both unmoved
    assert weights[2, 0] == before[2, 0]  # the entry whose step is 0 keeps its value
    assert not torch.isnan(weights).any()
