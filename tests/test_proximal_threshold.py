"""Proximal L1 that honours the optimizer (``proximal_threshold="optimizer"``), end to end in ``Trainer.fit``.

First, full-batch float64 fits under a cosine schedule stepped every step land on scikit-learn's Lasso,
ElasticNet and MultiTaskLasso, with the same exact zeros, for every supported optimizer; ``"lr"`` still
does for plain SGD and misses for Adam. Then the features that worked with the proximal mode, each
against a loop written here: torch's own ``Adam`` step, then ``w <- sign(w) * max(|w| - t, 0)`` with ``t``
``l1`` times the step Adam applies per unit of gradient at steady state (``exp_avg = g``), written from
torch's update rule ``w -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    Batch,
    LinearRegression,
    Manual,
    RegRegression,
    Scheduled,
    assert_lands_on,
    assert_same_weights,
    design,
    fit,
    fit_straight_and_resumed,
    fused_adamw_under_a_grad_scaler,
    loader,
    loss_gradient,
    make_net,
    regression_data,
    soft_threshold,
    step_size,
    weights,
)
from lightning.pytorch.plugins.precision import MixedPrecision
from sklearn.linear_model import ElasticNet, Lasso, MultiTaskLasso
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_reg import RegularizedModule

TOL = 1e-6  # what the issue asks for; the runs below reach 1e-8 or better
KKT_TOL = 1e-6

# -- Part 1: full-batch runs against scikit-learn ------------------------------------------------------


class FullBatch(Dataset[Batch]):
    """The whole data set as one batch, ``steps`` times: one epoch of ``steps`` full-batch steps."""

    def __init__(self, x: np.ndarray, y: np.ndarray, steps: int) -> None:
        self.x, self.y, self.steps = torch.as_tensor(x), torch.as_tensor(y), steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> Batch:
        return self.x, self.y


class CosineLinear(LinearRegression):
    """The linear model, trained by ``torch.optim.<kind>(**options)`` under a cosine schedule down to 0."""

    def __init__(self, kind: str, options: dict[str, Any], steps: int, outputs: int = 1) -> None:
        super().__init__(outputs=outputs)
        self.kind, self.options, self.steps = kind, options, steps

    def configure_optimizers(self) -> Any:
        optimizer = getattr(torch.optim, self.kind)(self.parameters(), **self.options)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


class RegCosine(RegularizedModule, CosineLinear):
    pass


def fit_full_batch(
    x: np.ndarray, y: np.ndarray, kind: str, options: dict[str, Any], steps: int, **regularization: Any
) -> RegCosine:
    model = RegCosine(kind=kind, options=options, steps=steps, outputs=y.shape[1], **regularization)
    fit(model, epochs=1, data=FullBatch(x, y, steps), batch_size=None)
    assert model.trainer.global_step == steps
    return model


def distance(model: RegCosine, coef: np.ndarray, intercept: Any) -> float:
    weight, bias = weights(model)
    return float(
        max(np.abs(weight - coef.reshape(weight.shape)).max(), np.abs(bias - np.ravel(intercept)).max())
    )


ALPHA = 0.15  # Lasso's alpha: 4 of the 8 coefficients are exactly 0

# (torch.optim class, its options, steps): each lr chosen so that the run settles well inside TOL.
LASSO_CASES = {
    "adam": ("Adam", {"lr": 0.3}, 400),
    "adam-amsgrad": ("Adam", {"lr": 0.5, "amsgrad": True}, 400),
    "adamw": ("AdamW", {"lr": 0.3, "weight_decay": 0.0}, 400),
    "rmsprop": ("RMSprop", {"lr": 0.1}, 400),
    # alpha=0.9: the square average settles in tens of steps; with 0.99 this takes thousands of steps
    "rmsprop-momentum": ("RMSprop", {"lr": 0.01, "momentum": 0.9, "alpha": 0.9}, 800),
    "adagrad": ("Adagrad", {"lr": 1.0}, 400),
    "sgd-momentum": ("SGD", {"lr": 0.1, "momentum": 0.9}, 400),
    "sgd-nesterov": ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, 400),
    "nadam": ("NAdam", {"lr": 0.2}, 400),
    "radam": ("RAdam", {"lr": 0.5}, 400),
    "adamax": ("Adamax", {"lr": 0.3}, 600),
}


@pytest.fixture(scope="module")
def lasso() -> tuple[np.ndarray, np.ndarray, Lasso]:
    x, y = design()
    fitted = Lasso(alpha=ALPHA, tol=1e-14, max_iter=100_000).fit(x, y.ravel())
    assert 0 < (fitted.coef_ == 0).sum() < len(fitted.coef_), "the test needs some zeros and some non-zeros"
    return x, y, fitted


@pytest.mark.parametrize(("kind", "options", "steps"), list(LASSO_CASES.values()), ids=list(LASSO_CASES))
def test_proximal_l1_lands_on_lasso_with_each_optimizer(
    lasso: tuple[np.ndarray, np.ndarray, Lasso], kind: str, options: dict[str, Any], steps: int
) -> None:
    x, y, fitted = lasso
    model = fit_full_batch(x, y, kind, options, steps, l1=ALPHA, l1_mode="proximal")
    assert_lands_on(model, fitted.coef_, fitted.intercept_, tol=TOL)
    # KKT of 0.5 * mse + alpha * |w|: g + alpha * sign(w) = 0 where w != 0, |g| <= alpha where w == 0
    g, w = loss_gradient(model, x, y).ravel(), weights(model)[0].ravel()
    np.testing.assert_allclose(g[w != 0] + ALPHA * np.sign(w[w != 0]), 0, atol=KKT_TOL)
    assert np.all(np.abs(g[w == 0]) <= ALPHA + KKT_TOL)


# fused=True: one case per form of the optimizer's step (Adam's root, Adamax's none, RAdam's switch to the
# rectified step, SGD's uniform step); every case compiles its own kernel.
FUSED_CASES = ["adam", "adamax", "radam", "sgd-momentum"]


@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_proximal_l1_lands_on_lasso(lasso: tuple[np.ndarray, np.ndarray, Lasso], case: str) -> None:
    """The compiled kernels of ``fused=True`` land on the Lasso too, with its exact zeros."""
    x, y, fitted = lasso
    kind, options, steps = LASSO_CASES[case]
    model = fit_full_batch(x, y, kind, options, steps, l1=ALPHA, l1_mode="proximal", fused=True)
    assert_lands_on(model, fitted.coef_, fitted.intercept_, tol=TOL)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_proximal_l1_with_adam_and_weight_decay_lands_on_elastic_net(fused: bool) -> None:
    """Adam's own weight decay adds ``l2 * w`` to the gradient: the smooth part of the Elastic Net."""
    x, y = design(seed=1)
    alpha, rho = 0.3, 0.6
    l1, l2 = alpha * rho, alpha * (1 - rho)
    model = fit_full_batch(x, y, "Adam", {"lr": 0.3}, 400, l1=l1, l2=l2, l1_mode="proximal", fused=fused)
    assert model.trainer.optimizers[0].param_groups[0]["weight_decay"] == l2  # the "decay" group
    enet = ElasticNet(alpha=alpha, l1_ratio=rho, tol=1e-14, max_iter=100_000).fit(x, y.ravel())
    assert 0 < (enet.coef_ == 0).sum() < len(enet.coef_)
    assert_lands_on(model, enet.coef_, enet.intercept_, tol=TOL)
    g, w = loss_gradient(model, x, y).ravel(), weights(model)[0].ravel()
    live = w != 0
    np.testing.assert_allclose(g[live] + l2 * w[live] + l1 * np.sign(w[live]), 0, atol=KKT_TOL)
    assert np.all(np.abs(g[~live]) <= l1 + KKT_TOL)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_proximal_group_l1_with_adam_lands_on_multitask_lasso(fused: bool) -> None:
    """The group step is the proximal operator in Adam's metric: every column shrinks along its own steps."""
    x, y = design(outputs=3, seed=2)
    alpha = 0.4
    model = fit_full_batch(
        x, y, "Adam", {"lr": 0.3}, 400, group_l1=alpha, group_by="columns", l1_mode="proximal", fused=fused
    )
    mtl = MultiTaskLasso(alpha=alpha, tol=1e-14, max_iter=100_000).fit(x, y)
    dead = np.all(mtl.coef_ == 0, axis=0)
    assert 0 < dead.sum() < len(dead), "the test needs dead and live input units"
    assert_lands_on(model, mtl.coef_, mtl.intercept_, tol=TOL)
    # KKT per feature j: g_j + alpha * w_j / ||w_j|| = 0 if w_j != 0, ||g_j|| <= alpha if w_j == 0
    g, w = loss_gradient(model, x, y), weights(model)[0]
    norms = np.linalg.norm(w, axis=0)
    live = norms > 0
    np.testing.assert_allclose(g[:, live] + alpha * w[:, live] / norms[live], 0, atol=KKT_TOL)
    assert np.all(np.linalg.norm(g[:, ~live], axis=0) <= alpha + KKT_TOL)


def test_the_lr_threshold_still_lands_on_lasso_with_plain_sgd(
    lasso: tuple[np.ndarray, np.ndarray, Lasso],
) -> None:
    x, y, fitted = lasso
    model = fit_full_batch(
        x, y, "SGD", {"lr": 1.9 * step_size(x)}, 400, l1=ALPHA, l1_mode="proximal", proximal_threshold="lr"
    )
    assert_lands_on(model, fitted.coef_, fitted.intercept_, tol=TOL)


def test_the_lr_threshold_misses_lasso_with_adam(lasso: tuple[np.ndarray, np.ndarray, Lasso]) -> None:
    """The defect of the issue: with Adam, ``lr * l1`` solves another problem than the Lasso."""
    x, y, fitted = lasso
    plain = fit_full_batch(
        x, y, "Adam", {"lr": 0.3}, 400, l1=ALPHA, l1_mode="proximal", proximal_threshold="lr"
    )
    assert distance(plain, fitted.coef_, fitted.intercept_) > 1e-2


# -- Part 2: the features of the proximal mode, against torch's Adam step by hand --------------------------

LR, L1, EPOCHS = 0.05, 0.1, 2  # 6 steps an epoch; at L1 = 0.1 about a third of net.0.weight ends at 0
# EPOCHS is also fit's default: ``fit(model)`` trains as long as ``by_hand()``.


def adam_threshold(optimizer: torch.optim.Optimizer, param: Tensor, l1: float) -> Tensor:
    """``l1`` times the step torch's Adam/AdamW update applies per unit of gradient when ``exp_avg = g``."""
    [group] = [group for group in optimizer.param_groups if any(p is param for p in group["params"])]
    state = optimizer.state[param]
    beta1, beta2 = group["betas"]
    t = float(state["step"])
    v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
    denominator = v.sqrt() / math.sqrt(1 - beta2**t) + group["eps"]
    threshold: Tensor = l1 * (group["lr"] / (1 - beta1**t)) / denominator
    return threshold


def by_hand(
    l1_of: Callable[[int], dict[str, float]] = lambda step: {"0.weight": L1, "3.weight": L1},
    *,
    epochs: int = EPOCHS,
    batch_size: int = 8,
    accumulate: int = 1,
    clip: float | None = None,
    adam_options: dict[str, Any] | None = None,
    gamma: float | None = None,
    clipped: list[bool] | None = None,
) -> nn.Module:
    """torch's Adam on make_net, then each named weight's soft threshold at ``adam_threshold(l1_of(step))``.

    ``accumulate`` micro-batches of ``batch_size`` make one step (each loss divided by their number, as
    Lightning does); ``clip`` clips the gradient norm before the step; ``gamma`` decays the lr per epoch.
    """
    net = make_net()
    params = dict(net.named_parameters())
    optimizer = torch.optim.Adam(net.parameters(), lr=LR, **(adam_options or {}))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma) if gamma else None
    step = 0
    for _ in range(epochs):
        batches = list(loader(regression_data(), batch_size=batch_size))
        for start in range(0, len(batches), accumulate):
            optimizer.zero_grad()
            for x, y in batches[start : start + accumulate]:
                (nn.functional.mse_loss(net(x), y) / accumulate).backward()
            if clip is not None:
                norm = nn.utils.clip_grad_norm_(list(net.parameters()), clip)
                if clipped is not None:
                    clipped.append(float(norm) > clip)
            optimizer.step()
            with torch.no_grad():
                for name, l1 in l1_of(step).items():
                    soft_threshold(params[name], adam_threshold(optimizer, params[name], l1))
            step += 1
        if scheduler is not None:
            scheduler.step()
    return net


def assert_close_weights(actual: nn.Module, expected: nn.Module) -> None:
    """Equal up to rounding (the package computes the same threshold in other steps), with the same zeros.

    The reference must have zeros and non-zeros in ``net.0.weight``, or the comparison would be vacuous.
    """
    got = dict(actual.named_parameters())
    for name, want in expected.named_parameters():
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(got[name] == 0, want == 0), f"{name}: the same exact zeros"
    first = dict(expected.named_parameters())["0.weight"]
    assert 0 < int((first == 0).sum()) < first.numel(), "the test needs zeros and non-zeros"


class AdamNet(RegRegression):
    """The user's module with ``torch.optim.Adam(lr=LR, **adam_options)``."""

    def __init__(self, adam_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(adam=True, lr=LR, **kwargs)
        self.adam_options = dict(adam_options or {})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=LR, **self.adam_options)


def test_the_per_entry_threshold_is_adams_step_and_differs_from_lr() -> None:
    model = AdamNet(l1=L1, l1_mode="proximal")
    fit(model)
    expected = by_hand()
    assert_close_weights(model.net, expected)
    plain = AdamNet(l1=L1, l1_mode="proximal", proximal_threshold="lr")
    fit(plain)
    with torch.no_grad():
        difference = plain.net[0].weight - dict(expected.named_parameters())["0.weight"]
    assert float(difference.abs().max()) > 1e-2, "the two rules must differ"


WARMUP = 8  # the ramp ends inside the second epoch


def test_the_warm_up_ramps_the_per_entry_threshold() -> None:
    model = AdamNet(l1=L1, l1_mode="proximal", l1_warmup_steps=WARMUP)
    fit(model)

    def ramped(step: int) -> dict[str, float]:
        strength = L1 * min(1.0, (step + 1) / WARMUP)
        return {"0.weight": strength, "3.weight": strength}

    assert_close_weights(model.net, by_hand(ramped))


def test_rules_give_each_parameter_its_own_per_entry_threshold() -> None:
    """``net.3.*`` opts the 1-D bias in: it is thresholded by Adam's step too."""
    rules = {"net.0.weight": {"l1": 0.05}, "net.3.*": {"l1": 0.3}}
    model = AdamNet(l1=L1, l1_mode="proximal", rules=rules)
    fit(model)
    expected = by_hand(lambda step: {"0.weight": 0.05, "3.weight": 0.3, "3.bias": 0.3})
    assert_close_weights(model.net, expected)
    assert int((model.net[0].bias == 0).sum()) == 0, "1-D, no rule: not thresholded"


def test_accumulated_micro_batches_get_one_threshold_per_optimizer_step() -> None:
    model = AdamNet(l1=L1, l1_mode="proximal")
    fit(model, batch_size=4, accumulate_grad_batches=2)
    assert model.trainer.global_step == 6 * EPOCHS
    assert_close_weights(model.net, by_hand(batch_size=4, accumulate=2))


def test_clipped_gradients_give_the_threshold_of_the_clipped_step() -> None:
    """Adam reads the clipped gradient into ``v``: the threshold follows it (norms are 5 to 25 here)."""
    model = AdamNet(l1=L1, l1_mode="proximal")
    fit(model, gradient_clip_val=10.0)
    clipped: list[bool] = []
    expected = by_hand(clip=10.0, clipped=clipped)
    assert 0 < sum(clipped) < len(clipped), "the test needs clipped and unclipped steps"
    assert_close_weights(model.net, expected)


def test_manual_optimization_thresholds_after_each_step() -> None:
    model = Manual(adam=True, lr=LR, l1=L1, l1_mode="proximal")  # AdamNet's optimizer: Adam(lr=LR)
    fit(model)
    assert_close_weights(model.net, by_hand())


@pytest.mark.parametrize("flag", ["foreach", "fused"])
def test_foreach_and_fused_adam_get_the_same_threshold(flag: str) -> None:
    model = AdamNet(l1=L1, l1_mode="proximal", adam_options={flag: True})
    fit(model)
    assert_close_weights(model.net, by_hand(adam_options={flag: True}))


def test_resuming_continues_bit_for_bit_with_adams_state_and_schedule(tmp_path: Path) -> None:
    straight, resumed, _ = fit_straight_and_resumed(
        lambda: Scheduled(adam=True, lr=LR, l1=L1, l1_mode="proximal"), tmp_path / "half.ckpt"
    )
    assert_same_weights(resumed, straight)
    assert_close_weights(resumed.net, by_hand(epochs=4, gamma=0.7))


def test_steps_a_grad_scaler_skips_get_no_threshold_and_taken_ones_adams() -> None:
    """init_scale 2**20 overflows float16 at first: the fused optimizer skips those steps, the prox too."""
    options: dict[str, Any] = {"l1": L1, "l2": 0.1, "l1_mode": "proximal", "l2_mode": "decoupled"}
    model = AdamNet(adam_options={"fused": True}, **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=3)
    fit(model, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    expected, skipped = fused_adamw_under_a_grad_scaler(
        LR, 0.1, lambda optimizer, w: adam_threshold(optimizer, w, L1), epochs=EPOCHS
    )
    assert 0 < skipped < 6 * EPOCHS, "the test needs skipped and taken steps"
    assert_close_weights(model.net, expected)
