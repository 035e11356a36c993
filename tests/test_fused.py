"""``fused=True``: the option, its refusal where inductor cannot work, the seed's recipe and the decoupled
decay by hand, and no recompiles from step to step.

The fits against scikit-learn (Lasso, Elastic Net, multi-task Lasso) with ``fused=True`` are in
``test_proximal_threshold.py``, the coupled units against the reference minimiser in
``test_group_prox.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import RegRegression
from torch import Tensor, nn
from torch._dynamo.utils import counters

from lightning_reg import Regularizer
from lightning_reg.functional import fused
from lightning_reg.utilities.checks import InvalidArgumentError

L1, L2, LR = 1e-2, 1e-2, 0.05


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()  # the kernels compile again (from inductor's cache), and are counted
    counters.clear()


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def data() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(48, 6, generator=generator), torch.randn(48, 3, generator=generator)


def test_fused_is_validated_and_saved_with_the_options() -> None:
    with pytest.raises(InvalidArgumentError, match=r"Invalid fused: 'yes' \(expected True or False\)"):
        Regularizer(mlp(), fused="yes")  # type: ignore[arg-type]
    model = RegRegression(l1=L1, fused=True)
    assert model.hparams["fused"] is True
    assert model.regularizer.options.fused is True


def test_without_a_cpp_compiler_fused_is_refused_at_construction() -> None:
    """Inductor finds no C++ compiler (its configured one does not run): the error names the option and the
    fix, before anything trains."""
    from torch._inductor import config

    fused._has_cpp_compiler.cache_clear()
    try:
        refused = pytest.raises(InvalidArgumentError, match=r"Invalid fused: True .*apt-get install g\+\+")
        with config.patch({"cpp.cxx": (None, "/nonexistent/g++")}), refused:
            Regularizer(mlp(), l1=L1, fused=True)
        Regularizer(mlp(), l1=L1)  # fused=False needs no compiler
    finally:
        fused._has_cpp_compiler.cache_clear()


class Loop:
    """A bare training loop, full batch, its lr decaying every step (the kernels' scalars change)."""

    def __init__(self, fused_kernels: bool, adam: bool = False, **options: Any) -> None:
        self.model = mlp()
        self.reg = Regularizer(self.model, fused=fused_kernels, **options)
        groups = self.reg.param_groups()
        self.optimizer = torch.optim.Adam(groups, lr=LR) if adam else torch.optim.SGD(groups, lr=LR)
        self.schedule = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=0.97)
        self.reg.attach(self.optimizer, [self.schedule])

    def run(self, steps: range) -> Loop:
        x, y = data()
        for step in steps:
            self.reg.global_step = step
            self.optimizer.zero_grad()
            (nn.functional.mse_loss(self.model(x), y) + self.reg.penalty()).backward()
            self.optimizer.step()
            self.schedule.step()
        return self


def test_the_default_modes_fused_train_the_seeds_recipe() -> None:
    """L1 in the loss and L2 as SGD's weight decay, run by hand as the tutorial writes it."""
    model = Loop(True, l1=L1, l2=L2).run(range(15)).model
    by_hand = mlp()
    weights = [p for p in by_hand.parameters() if p.dim() > 1]
    others = [p for p in by_hand.parameters() if p.dim() <= 1]
    groups = [{"params": weights, "weight_decay": L2}, {"params": others, "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=LR)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.97)
    x, y = data()
    for _ in range(15):
        optimizer.zero_grad()
        l1_penalty = sum(torch.sum(torch.abs(p)) for p in weights)
        (nn.functional.mse_loss(by_hand(x), y) + L1 * l1_penalty).backward()
        optimizer.step()
        schedule.step()
    for got, expected in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_the_decoupled_decay_fused_is_adams_update_after_the_decay_by_hand() -> None:
    """``w <- w * (1 - lr * l2)`` before each Adam update, with the lr of that step."""
    model = Loop(True, adam=True, l2=0.5, l2_mode="decoupled").run(range(15)).model
    by_hand = mlp()
    weights = [p for p in by_hand.parameters() if p.dim() > 1]
    optimizer = torch.optim.Adam(by_hand.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.97)
    x, y = data()
    for _ in range(15):
        optimizer.zero_grad()
        nn.functional.mse_loss(by_hand(x), y).backward()
        with torch.no_grad():
            for weight in weights:
                weight.mul_(1 - optimizer.param_groups[0]["lr"] * 0.5)
        optimizer.step()
        schedule.step()
    for got, expected in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_the_proximal_step_fused_is_adams_threshold_by_hand() -> None:
    """Adam's update, then ``w <- sign(w) * max(|w| - t, 0)`` with Adam's step as the threshold:
    ``t = l1 * lr / (1 - beta1^t) / (sqrt(v_hat) + eps)``."""
    l1 = 0.05
    model = Loop(True, adam=True, l1=l1, l1_mode="proximal").run(range(15)).model
    by_hand = mlp()
    weights = [p for p in by_hand.parameters() if p.dim() > 1]
    optimizer = torch.optim.Adam(by_hand.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.97)
    (beta1, beta2), eps = optimizer.param_groups[0]["betas"], optimizer.param_groups[0]["eps"]
    x, y = data()
    for t in range(1, 16):
        optimizer.zero_grad()
        nn.functional.mse_loss(by_hand(x), y).backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        with torch.no_grad():
            for weight in weights:
                v_hat = optimizer.state[weight]["exp_avg_sq"] / (1 - beta2**t)
                threshold = l1 * lr / (1 - beta1**t) / (v_hat.sqrt() + eps)
                weight.copy_(torch.sign(weight) * torch.clamp(weight.abs() - threshold, min=0))
        schedule.step()
    zeros = 0
    for got, expected in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert torch.equal(got == 0, expected == 0)
        zeros += int((got == 0).sum())
    assert zeros > 10


@pytest.mark.parametrize(
    "options",
    [
        {"l1": L1, "l2": L2},
        {"l1": L1, "l1_mode": "proximal", "l1_warmup_steps": 10},
        {"l1": L1, "l1_mode": "proximal", "proximal_threshold": "lr"},
        {"l2": L2, "l2_mode": "decoupled"},
        {"group_l1": 0.05, "l1": L1, "l1_mode": "proximal"},
    ],
    ids=["loss", "proximal-warmup", "proximal-lr", "decoupled", "rows-proximal"],
)
def test_nothing_recompiles_from_step_to_step(options: dict[str, Any]) -> None:
    """The lr decays and the warm-up ramps at every step: each kernel compiles once, in the first two
    steps (the group solve's first step starts without stored roots), and never again."""
    loop = Loop(True, adam=True, **options).run(range(2))
    compiled = counters["stats"]["unique_graphs"]
    assert compiled >= 1
    loop.run(range(2, 14))
    assert counters["stats"]["unique_graphs"] == compiled
