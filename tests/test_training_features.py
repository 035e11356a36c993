"""Exact under Lightning's training features: accumulation, clipping, mixed precision, resuming.

Each test trains with the feature through ``Trainer.fit`` and compares with the tutorial's recipe
(``total_loss = loss + l1 * sum|W|``, ``weight_decay = l2`` on ``W``) applied by hand with the same feature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from helpers import (
    Manual,
    RegRegression,
    Scheduled,
    assert_same_weights,
    fit,
    fit_straight_and_resumed,
    fused_adamw_under_a_grad_scaler,
    loader,
    make_net,
    quiet_trainer,
    regression_data,
    seed_l1_penalty,
    seed_param_groups,
    train_reference,
)
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import Tensor, nn

L1, L2 = 3e-3, 2e-2


def recipe_step(net: nn.Module, x: Tensor, y: Tensor, l1: float = L1) -> Tensor:
    return nn.functional.mse_loss(net(x), y) + l1 * seed_l1_penalty(net)


def test_accumulated_micro_batches_equal_one_large_batch() -> None:
    model = RegRegression(l1=L1, l2=L2)
    fit(model, batch_size=4, accumulate_grad_batches=2)
    expected = make_net()
    optimizer = torch.optim.SGD(seed_param_groups(expected, L2), lr=0.05)
    for _ in range(2):
        for x, y in loader(regression_data(), batch_size=8):
            optimizer.zero_grad()
            recipe_step(expected, x, y).backward()
            optimizer.step()
    for got, want in zip(model.net.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_the_penalty_gradient_is_clipped_with_the_rest() -> None:
    model = RegRegression(l1=0.05, l2=L2)
    fit(model, gradient_clip_val=0.1)
    expected = make_net()
    optimizer = torch.optim.SGD(seed_param_groups(expected, L2), lr=0.05)
    clipped = 0
    for _ in range(2):
        for x, y in loader(regression_data()):
            optimizer.zero_grad()
            recipe_step(expected, x, y, l1=0.05).backward()
            params = [p for group in optimizer.param_groups for p in group["params"]]  # Lightning's order
            clipped += float(nn.utils.clip_grad_norm_(params, 0.1)) > 0.1
            optimizer.step()
    assert clipped > 0, "the test must clip"
    assert_same_weights(model.net, expected)


def reference_mixed(
    dtype: torch.dtype, scaler: torch.amp.GradScaler | None, l1_mode: str = "loss"
) -> nn.Module:
    expected = make_net()
    optimizer = torch.optim.SGD(seed_param_groups(expected, L2), lr=0.05)
    for _ in range(2):
        for x, y in loader(regression_data()):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=dtype):
                total = (
                    recipe_step(expected, x, y)
                    if l1_mode == "loss"
                    else nn.functional.mse_loss(expected(x), y)
                )
            if scaler is None:
                total.backward()
                optimizer.step()
                continue
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
    return expected


def test_bf16_mixed_precision_keeps_the_penalty() -> None:
    model = RegRegression(l1=L1, l2=L2)
    fit(model, precision="bf16-mixed")
    assert_same_weights(model.net, reference_mixed(torch.bfloat16, scaler=None))


def scaled_trainer(**kwargs: Any) -> L.Trainer:
    """16-mixed with a GradScaler on the CPU: the loss is scaled before backward, unscaled before the step."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    return quiet_trainer(max_epochs=2, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], **kwargs)


def test_a_grad_scaler_neither_loses_nor_doubles_the_penalty() -> None:
    model = RegRegression(l1=L1, l2=L2)
    scaled_trainer().fit(model, loader(regression_data()))
    reference = reference_mixed(
        torch.float16, torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    )
    assert_same_weights(model.net, reference)


def test_manual_optimization_under_a_grad_scaler_adds_the_unscaled_penalty_gradient() -> None:
    model = Manual(l1=L1, l2=L2)
    scaled_trainer().fit(model, loader(regression_data()))
    reference = reference_mixed(
        torch.float16, torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    )
    for got, want in zip(model.net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "options",
    [
        {"l1": L1, "l2": L2},
        {"l1": 0.5, "l2": L2, "l1_mode": "proximal", "l2_mode": "decoupled", "group_l1": 0.05},
        {"l1": L1, "l2": L2, "l1_warmup_steps": 15},  # 6 steps an epoch: the ramp spans the resume point
    ],
    ids=["loss-and-weight-decay", "proximal-and-decoupled", "l1-warm-up"],
)
def test_resuming_from_a_checkpoint_continues_bit_for_bit(tmp_path: Path, options: dict[str, Any]) -> None:
    straight, resumed, resume = fit_straight_and_resumed(
        lambda: Scheduled(adam=True, lr=0.01, **options), tmp_path / "half.ckpt"
    )
    assert_same_weights(resumed, straight)
    assert resume.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.7**4)


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    model = Scheduled(adam=True, lr=0.01, l1=0.5, l2=L2, l1_mode="proximal", exclude=["net.3.*"])
    trainer = fit(model, epochs=1)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["l1_mode"] == "proximal"
    [optimizer_state] = checkpoint["optimizer_states"]
    assert [group["name"] for group in optimizer_state["param_groups"]] == ["decay", "no_decay"]


def test_a_torch_compiled_module_is_regularized_exactly() -> None:
    """``trainer.fit(torch.compile(model))``: Lightning unwraps the module and compiles its forward."""
    model = RegRegression(l1=L1, l2=L2)
    compiled = torch.compile(model, backend="eager")  # the compiler does not matter here; eager is quick
    fit(compiled)  # type: ignore[arg-type]
    assert_same_weights(
        model.net, train_reference(make_net(), loader(regression_data()), l1=L1, l2=L2, epochs=2)
    )


class CompiledInside(RegRegression):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = torch.compile(self.net, backend="eager")  # type: ignore[assignment]


def test_a_module_with_a_compiled_submodule_is_regularized_exactly() -> None:

    model = CompiledInside(l1=L1, l2=L2, exclude=["net._orig_mod.3.*"])
    fit(model)
    assert model.regularizer.names == ["net._orig_mod.0.weight"]
    expected = make_net()
    optimizer = torch.optim.SGD(
        [
            {"params": [expected[0].weight], "weight_decay": L2},
            {"params": [p for n, p in expected.named_parameters() if n != "0.weight"], "weight_decay": 0.0},
        ],
        lr=0.05,
    )
    for _ in range(2):
        for x, y in loader(regression_data()):
            optimizer.zero_grad()
            (nn.functional.mse_loss(expected(x), y) + L1 * expected[0].weight.abs().sum()).backward()
            optimizer.step()
    assert_same_weights(model.net._orig_mod, expected)


class FusedManual(Manual):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01, fused=True)


def test_a_fused_optimizer_that_unscales_inside_its_step_gets_a_scaled_penalty_gradient() -> None:
    """GradScaler leaves a fused optimizer's gradients scaled; the added penalty gradient must be too."""
    model = FusedManual(l1=L1)
    scaled_trainer().fit(model, loader(regression_data()))
    expected = make_net()
    optimizer = torch.optim.Adam(expected.parameters(), lr=0.01, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    for _ in range(2):
        for x, y in loader(regression_data()):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                total = recipe_step(expected, x, y)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
    assert_same_weights(model.net, expected)


class FusedAdam(RegRegression):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01, fused=True)


def test_steps_a_fused_optimizer_skips_for_inf_gradients_skip_decay_and_threshold() -> None:
    """init_scale 2**20 overflows float16 at first: GradScaler has the fused optimizer skip those steps."""
    options = {
        "l1": 0.5,
        "l2": 0.1,
        "l1_mode": "proximal",
        "l2_mode": "decoupled",
        "proximal_threshold": "lr",
    }
    model = FusedAdam(**options)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=3)
    fit(model, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    expected, skipped = fused_adamw_under_a_grad_scaler(0.01, 0.1, lambda optimizer, w: 0.01 * 0.5)
    assert 0 < skipped < 12, "the test needs skipped and taken steps"
    assert_same_weights(model.net, expected)
