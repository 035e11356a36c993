"""The modes ``l1_mode`` and ``l2_mode``, checked against scikit-learn and torch's AdamW.

Proximal L1 and group L1, decoupled and loss-mode L2: a one-layer linear LightningModule is trained full
batch in float64 with SGD on ``0.5 * mean squared error`` (scikit-learn's ``1/(2n)`` scaling), at a step of
``1/L`` (``L``: the largest eigenvalue of the loss's Hessian), until the proximal gradient iteration has
converged; its weights must be scikit-learn's coefficients, with the same exact zeros and an unpenalised
intercept equal to scikit-learn's.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from helpers import (
    LinearRegression,
    ManualOptimization,
    N,
    P,
    assert_lands_on,
    design,
    fit,
    loss_gradient,
    step_size,
    weights,
)
from sklearn.linear_model import ElasticNet, Lasso, MultiTaskLasso, Ridge
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_reg import RegularizedModule

TOL = 1e-8  # what the tests ask for; the issue asks for 1e-5 or better


class RegLinear(RegularizedModule, LinearRegression):
    pass


def fit_arrays(
    model: L.LightningModule, x: np.ndarray, y: np.ndarray, steps: int, batches: int = 1, **kw: Any
) -> None:
    """``steps`` epochs over ``x, y`` in ``batches`` equal batches (one: full batch), logging every step."""
    data = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    fit(model, steps, data=data, batch_size=len(x) // batches, log_every_n_steps=1, **kw)


def test_proximal_l1_lands_on_lasso() -> None:
    x, y = design()
    alpha = 0.15
    model = RegLinear(lr=step_size(x), l1=alpha, l1_mode="proximal")
    fit_arrays(model, x, y, steps=400)
    lasso = Lasso(alpha=alpha, tol=1e-14, max_iter=100_000).fit(x, y.ravel())
    assert_lands_on(model, lasso.coef_, lasso.intercept_, tol=TOL)
    assert 0 < (lasso.coef_ == 0).sum() < P, "the test needs some zeros and some non-zeros"
    # KKT: g + alpha * sign(w) = 0 where w != 0, |g| <= alpha where w == 0
    g, (w, _) = loss_gradient(model, x, y).ravel(), weights(model)
    w = w.ravel()
    np.testing.assert_allclose(g[w != 0] + alpha * np.sign(w[w != 0]), 0, atol=1e-10)
    assert np.all(np.abs(g[w == 0]) <= alpha + 1e-12)


def test_proximal_elastic_net_lands_on_elastic_net() -> None:
    x, y = design(seed=1)
    alpha, rho = 0.3, 0.6
    l1, l2 = alpha * rho, alpha * (1 - rho)
    model = RegLinear(lr=step_size(x, l2), l1=l1, l2=l2, l1_mode="proximal")
    fit_arrays(model, x, y, steps=400)
    enet = ElasticNet(alpha=alpha, l1_ratio=rho, tol=1e-14, max_iter=100_000).fit(x, y.ravel())
    assert_lands_on(model, enet.coef_, enet.intercept_, tol=TOL)
    assert 0 < (enet.coef_ == 0).sum() < P


def test_proximal_group_l1_by_columns_lands_on_multitask_lasso() -> None:
    x, y = design(outputs=3, seed=2)
    alpha = 0.4
    model = RegLinear(outputs=3, lr=step_size(x), group_l1=alpha, group_by="columns", l1_mode="proximal")
    fit_arrays(model, x, y, steps=500)
    mtl = MultiTaskLasso(alpha=alpha, tol=1e-14, max_iter=100_000).fit(x, y)
    assert_lands_on(model, mtl.coef_, mtl.intercept_, tol=TOL)
    dead = np.all(mtl.coef_ == 0, axis=0)
    assert 0 < dead.sum() < P, "the test needs dead and live input units"
    # KKT per feature group j: g_j + alpha * w_j / ||w_j|| = 0 if w_j != 0, ||g_j|| <= alpha if w_j == 0
    g, (w, _) = loss_gradient(model, x, y), weights(model)
    norms = np.linalg.norm(w, axis=0)
    live = norms > 0
    np.testing.assert_allclose(g[:, live] + alpha * w[:, live] / norms[live], 0, atol=1e-10)
    assert np.all(np.linalg.norm(g[:, ~live], axis=0) <= alpha + 1e-12)


def test_loss_mode_l2_with_lbfgs_lands_on_ridge() -> None:
    """LBFGS has no weight_decay: l2_mode="loss" puts l2/2 * sum(w^2) in the loss instead."""
    x, y = design(seed=3)
    l2 = 0.05
    model = RegLinear(optimizer="lbfgs", l2=l2, l2_mode="loss")
    fit_arrays(model, x, y, steps=3)
    # Ridge minimises ||y - Xw||^2 + alpha ||w||^2; ours is 1/(2n) ||y - Xw||^2 + l2/2 ||w||^2: alpha = n * l2
    ridge = Ridge(alpha=N * l2, tol=1e-14, solver="cholesky").fit(x, y.ravel())
    weight, bias = weights(model)
    np.testing.assert_allclose(weight.ravel(), ridge.coef_, atol=TOL)
    np.testing.assert_allclose(bias, [ridge.intercept_], atol=TOL)


def test_loss_mode_l2_equals_weight_decay_with_sgd() -> None:
    x, y = design(seed=4)
    in_loss, as_decay = RegLinear(l2=0.3, l2_mode="loss"), RegLinear(l2=0.3)
    fit_arrays(in_loss, x, y, steps=20)
    fit_arrays(as_decay, x, y, steps=20)
    np.testing.assert_allclose(weights(in_loss)[0], weights(as_decay)[0], rtol=1e-12)


class Trajectory(L.Callback):
    def __init__(self) -> None:
        self.weights: list[Tensor] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.weights.append(pl_module.linear.weight.detach().clone())


def test_adam_with_decoupled_l2_is_adamw_step_for_step() -> None:
    x, y = design(seed=5)
    lr, l2 = 0.05, 0.2
    model, trajectory = RegLinear(optimizer="adam", lr=lr, l2=l2, l2_mode="decoupled"), Trajectory()
    fit_arrays(model, x, y, steps=25, callbacks=[trajectory])

    reference = LinearRegression(optimizer="adam", lr=lr)
    adamw = torch.optim.AdamW(
        [
            {"params": [reference.linear.weight], "weight_decay": l2},
            {"params": [reference.linear.bias], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for step, expected in enumerate(trajectory.weights):
        adamw.zero_grad()
        reference.training_step((xt, yt), 0).backward()
        adamw.step()
        assert torch.equal(reference.linear.weight, expected), f"step {step}"
    assert len(trajectory.weights) == 25


def test_decoupled_mode_refuses_an_optimizer_that_decays_itself() -> None:
    class OwnDecay(RegLinear):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=0.01)

    with pytest.raises(
        ValueError, match=r"AdamW param group 0 has weight_decay=0.01, but l2_mode='decoupled'"
    ):
        fit_arrays(OwnDecay(l2=0.1, l2_mode="decoupled"), *design(), steps=1)


def test_the_proximal_step_runs_per_optimizer_step_not_per_micro_batch() -> None:
    """Two micro-batches of half the data, accumulated, are one full-batch step: one threshold."""
    x, y = design(seed=6)
    alpha, lr = 0.15, step_size(x)
    full, accumulated = (
        RegLinear(lr=lr, l1=alpha, l1_mode="proximal"),
        RegLinear(lr=lr, l1=alpha, l1_mode="proximal"),
    )
    fit_arrays(full, x, y, steps=30)
    fit_arrays(accumulated, x, y, steps=30, batches=2, accumulate_grad_batches=2)
    np.testing.assert_allclose(weights(accumulated)[0], weights(full)[0], atol=1e-12)
    assert np.array_equal(weights(accumulated)[0] == 0, weights(full)[0] == 0)


def test_proximal_mode_keeps_the_penalty_out_of_the_loss() -> None:
    x, y = design()
    model = RegLinear(l1=0.5, group_l1=0.5, l1_mode="proximal")
    with torch.no_grad():
        model.linear.weight.fill_(1.0)
    batch = (torch.as_tensor(x), torch.as_tensor(y))
    assert torch.equal(model.training_step(batch, 0), LinearRegression.training_step(model, batch, 0))


def test_loss_mode_group_l1_adds_its_term() -> None:
    x, y = design()
    model = RegLinear(outputs=1, group_l1=0.5, group_by="columns", l2=0.2, l2_mode="loss")
    with torch.no_grad():
        model.linear.weight.copy_(torch.arange(1.0, P + 1, dtype=torch.float64))
    batch = (torch.as_tensor(x), torch.as_tensor(y))
    plain = LinearRegression.training_step(model, batch, 0)
    w = np.arange(1.0, P + 1)
    expected = (
        plain.item() + 0.5 * np.abs(w).sum() + 0.2 / 2 * np.square(w).sum()
    )  # 1 output: |w_j| per column
    assert model.training_step(batch, 0).item() == pytest.approx(expected, rel=1e-14)


class ManualRegLinear(ManualOptimization, RegLinear):
    pass


def test_proximal_and_decoupled_modes_work_with_manual_optimization() -> None:
    x, y = design(seed=7)
    options = {"lr": step_size(x), "l1": 0.1, "l2": 0.05, "l1_mode": "proximal", "l2_mode": "decoupled"}
    manual, automatic = ManualRegLinear(**options), RegLinear(**options)
    fit_arrays(manual, x, y, steps=15)
    fit_arrays(automatic, x, y, steps=15)
    assert torch.equal(manual.linear.weight, automatic.linear.weight)
    assert (manual.linear.weight == 0).any()


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("l1_mode", "prox"), ("l2_mode", "adamw"), ("group_by", "cols"), ("group_l1", -1.0), ("l1_mode", None)],
)
def test_bad_modes_are_refused_at_construction(keyword: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^Invalid {keyword}: ") as error:
        RegLinear(**{keyword: value})
    assert repr(value) in str(error.value)
