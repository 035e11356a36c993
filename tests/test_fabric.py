"""A Regularizer attached to Fabric's optimizer wrapper acts on the optimizer inside it.

Fabric's wrapper subclasses the optimizer's class and reads its attributes through ``__getattr__``: groups
assigned to the wrapper never reached the optimizer that steps (L2 was silently dropped), and the
proximal step refused the wrapper's class. The oracles are the seed's recipe run by hand.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from lightning.fabric import Fabric
from torch import Tensor, nn

from lightning_reg import Regularizer

L1, L2, LR, STEPS = 1e-2, 5e-2, 0.05, 12


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))


def data() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(48, 6, generator=generator)
    return x, x[:, :1] - 2 * x[:, 1:2]


def weights_and_biases(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    return [p for p in model.parameters() if p.dim() > 1], [p for p in model.parameters() if p.dim() == 1]


def fabric_run(make_optimizer: Callable[[nn.Module], torch.optim.Optimizer], **options: object) -> nn.Module:
    """Fabric set up first, the regularizer attached to the wrapper it returns."""
    model = net()
    regularizer = Regularizer(model, **options)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fabric's notes on the CPU accelerator
        fabric = Fabric(accelerator="cpu", devices=1)
        wrapped_model, wrapped_optimizer = fabric.setup(model, make_optimizer(model))
    regularizer.attach(wrapped_optimizer)
    x, y = data()
    for _ in range(STEPS):
        wrapped_optimizer.zero_grad()
        fabric.backward(nn.functional.mse_loss(wrapped_model(x), y) + regularizer.penalty())
        wrapped_optimizer.step()
    return model


def test_l2_attached_to_the_wrapper_decays_the_weights_of_the_optimizer_that_steps() -> None:
    model = fabric_run(lambda m: torch.optim.Adam(m.parameters(), lr=LR), l1=L1, l2=L2)

    reference = net()  # the seed: weight_decay on the weight matrices, L1 of them in the loss
    weights, biases = weights_and_biases(reference)
    optimizer = torch.optim.Adam(
        [{"params": weights, "weight_decay": L2}, {"params": biases, "weight_decay": 0.0}], lr=LR
    )
    x, y = data()
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(reference(x), y) + L1 * sum(w.abs().sum() for w in weights)
        loss.backward()
        optimizer.step()
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("threshold", ["optimizer", "lr"])
def test_the_proximal_step_through_the_wrapper_soft_thresholds_after_each_update(threshold: str) -> None:
    model = fabric_run(
        lambda m: torch.optim.SGD(m.parameters(), lr=LR),
        l1=L1,
        l1_mode="proximal",
        proximal_threshold=threshold,
    )

    reference = net()  # plain SGD, then w <- sign(w) max(|w| - lr l1, 0) on the weight matrices
    weights, _ = weights_and_biases(reference)
    optimizer = torch.optim.SGD(reference.parameters(), lr=LR)
    x, y = data()
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(reference(x), y).backward()
        optimizer.step()
        with torch.no_grad():
            for w in weights:
                w.copy_(w.sign() * (w.abs() - LR * L1).clamp(min=0))
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert sum(int((w == 0).sum()) for w in weights) > 0  # the threshold did make zeros


def test_lightnings_wrapper_and_the_optimizer_inside_show_the_same_split_groups() -> None:
    """Lightning's wrapper reads the groups of the optimizer inside, which the regularizer split."""
    from lightning.pytorch.core.optimizer import LightningOptimizer

    model = net()
    weights, biases = weights_and_biases(model)
    inner = torch.optim.Adam(model.parameters(), lr=LR)
    wrapper = LightningOptimizer(inner)
    scheduler = torch.optim.lr_scheduler.StepLR(wrapper, step_size=1, gamma=0.5)  # built on the wrapper
    Regularizer(model, l2=L2).attach(wrapper, [scheduler])
    assert scheduler.base_lrs == [LR, LR]  # one per group after the split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": no step needed here
        scheduler.step()
    assert [g["lr"] for g in inner.param_groups] == [LR / 2, LR / 2]
    for optimizer in (inner, wrapper):
        groups = [
            (g["name"], g["weight_decay"], [id(p) for p in g["params"]]) for g in optimizer.param_groups
        ]
        assert groups == [
            ("decay", L2, [id(w) for w in weights]),
            ("no_decay", 0.0, [id(b) for b in biases]),
        ]
