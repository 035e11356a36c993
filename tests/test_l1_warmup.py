"""The L1 warm-up: ``l1 * min(1, (s + 1) / l1_warmup_steps)`` at optimizer step ``s``, in Trainer.fit."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    RegRegression,
    assert_same_weights,
    fit,
    loader,
    make_net,
    regression_data,
    seed_l1_penalty,
    seed_param_groups,
)
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_reg import RegularizationMonitor, RegularizationOptions, Regularizer

L1, L2, WARMUP, EPOCHS = 3e-3, 2e-2, 8, 2  # 6 steps an epoch: the ramp ends inside the second epoch


def ramp(step: int, l1: float = L1) -> float:
    return l1 * min(1.0, (step + 1) / WARMUP)


def by_hand(*, proximal: bool, l1: float) -> nn.Module:
    """The recipe with the strength of each step written out; the prox as the textbook formula."""
    net = make_net()
    optimizer = torch.optim.SGD(seed_param_groups(net, L2), lr=0.05)
    weights = [param for param in net.parameters() if param.dim() > 1]
    step = 0
    for _ in range(EPOCHS):
        for x, y in loader(regression_data()):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            if not proximal:
                loss = loss + ramp(step, l1) * seed_l1_penalty(net)
            loss.backward()
            optimizer.step()
            if proximal:
                with torch.no_grad():
                    for w in weights:
                        w.copy_(torch.sign(w) * torch.clamp(w.abs() - 0.05 * ramp(step, l1), min=0))
            step += 1
    return net


@pytest.mark.parametrize(("l1_mode", "l1"), [("loss", L1), ("proximal", 0.5)])
def test_each_step_uses_the_ramped_strength(l1_mode: str, l1: float) -> None:
    model = RegRegression(l1=l1, l2=L2, l1_mode=l1_mode, l1_warmup_steps=WARMUP)
    fit(model, EPOCHS)
    assert_same_weights(model.net, by_hand(proximal=l1_mode == "proximal", l1=l1))


def test_the_ramp_changes_training() -> None:
    """Guard: without the ramp the weights differ, so the test above is not vacuous."""
    model = RegRegression(l1=0.5, l2=L2, l1_mode="proximal")
    fit(model, EPOCHS)
    assert not torch.equal(model.net[0].weight, by_hand(proximal=True, l1=0.5)[0].weight)


def test_the_monitor_logs_the_strength_in_force(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    model = RegRegression(l1=L1, l2=L2, l1_warmup_steps=WARMUP)
    monitor = RegularizationMonitor(log_every_n_steps=1)
    fit(model, EPOCHS, logger=logger, callbacks=[monitor])
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("reg/l1_strength")]
    assert [int(row["step"]) for row in rows] == list(range(6 * EPOCHS))
    for row in rows:
        step = int(row["step"])
        assert float(row["reg/l1_strength"]) == pytest.approx(ramp(step), rel=1e-12)
    weights = [param.detach().double() for param in model.parameters() if param.dim() > 1]
    final = float(rows[-1]["reg/l1_penalty"])
    assert final == pytest.approx(L1 * sum(w.abs().sum().item() for w in weights), rel=1e-12)


def test_the_engine_reads_the_step_it_is_given() -> None:
    net = make_net()
    reg = Regularizer(net, l1=L1, l1_warmup_steps=WARMUP)
    for step in (0, 3, WARMUP - 1, 50):
        reg.global_step = step
        assert torch.equal(reg.penalty(), ramp(step) * seed_l1_penalty(net))


@pytest.mark.parametrize("value", [-1, 2.5, True, "3", None])
def test_a_bad_warm_up_is_refused_by_name(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^Invalid l1_warmup_steps: "):
        RegularizationOptions(l1=L1, l1_warmup_steps=value)


def test_a_bare_loop_resumes_its_warm_up_from_the_state_dict() -> None:
    reg = Regularizer(nn.Linear(3, 3), l1=L1, l1_warmup_steps=WARMUP)
    reg.global_step = 5
    saved = reg.state_dict()
    resumed = Regularizer(nn.Linear(3, 3), l1=L1, l1_warmup_steps=WARMUP)
    resumed.load_state_dict(saved)
    assert saved == {"global_step": 5}
    assert resumed.l1_now == pytest.approx(ramp(5), rel=1e-15)
    with pytest.raises(ValueError, match=r"Invalid state\['global_step'\]: -1"):
        resumed.load_state_dict({"global_step": -1})


def test_the_old_name_of_the_step_count_still_works_with_a_warning() -> None:
    reg = Regularizer(nn.Linear(3, 3), l1=L1, l1_warmup_steps=WARMUP)
    with pytest.warns(FutureWarning, match="Regularizer.step is deprecated .* Regularizer.global_step"):
        reg.step = 3
    with pytest.warns(FutureWarning):
        assert reg.step == reg.global_step == 3
