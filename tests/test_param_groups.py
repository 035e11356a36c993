"""Splitting an optimizer's groups, and the LR schedulers bound to it, against an unsplit twin."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import SGD, Optimizer
from torch.optim import lr_scheduler as sched

from lightning_reg.optim.param_groups import decay_groups, split_optimizer

WD = 0.02


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def weights(net: nn.Sequential) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.dim() > 1]


def one_group(net: nn.Sequential) -> Optimizer:
    return SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)


def two_groups(net: nn.Sequential) -> Optimizer:
    return SGD(
        [{"params": net[0].parameters()}, {"params": net[2].parameters(), "lr": 0.01, "name": "head"}],
        lr=0.1,
        momentum=0.9,
    )


SCHEDULERS: dict[str, Callable[[Optimizer], Any]] = {
    "StepLR": lambda o: sched.StepLR(o, step_size=2, gamma=0.5),
    "LambdaLR": lambda o: sched.LambdaLR(o, lambda epoch: 0.9**epoch),
    "MultiplicativeLR": lambda o: sched.MultiplicativeLR(o, lambda epoch: 0.95),
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=0.5, total_steps=20),
    "CyclicLR": lambda o: sched.CyclicLR(o, base_lr=0.01, max_lr=0.2, step_size_up=3),
    "CosineAnnealingWarmRestarts": lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=3),
    "PolynomialLR": lambda o: sched.PolynomialLR(o, total_iters=8, power=2.0),
    "ReduceLROnPlateau": lambda o: sched.ReduceLROnPlateau(o, patience=0, factor=0.5),
    "SequentialLR": lambda o: sched.SequentialLR(
        o, [sched.LinearLR(o, start_factor=0.2, total_iters=3), sched.ExponentialLR(o, 0.8)], milestones=[3]
    ),
    "ChainedScheduler": lambda o: sched.ChainedScheduler(
        [sched.ConstantLR(o, factor=0.5, total_iters=4), sched.ExponentialLR(o, 0.9)]
    ),
}


def step(scheduler: Any, epoch: int) -> None:
    if isinstance(scheduler, sched.ReduceLROnPlateau):
        scheduler.step(float(epoch))  # a worsening metric: reduce every step
    else:
        scheduler.step()


@pytest.mark.parametrize("build", [one_group, two_groups], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_schedulers_drive_every_split_group_like_the_unsplit_optimizer(
    kind: str, build: Callable[[nn.Sequential], Optimizer]
) -> None:
    net = model()
    twin_net = copy.deepcopy(net)
    optimizer, twin = build(net), build(twin_net)
    scheduler, twin_scheduler = SCHEDULERS[kind](optimizer), SCHEDULERS[kind](twin)
    origin_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}

    split_optimizer(optimizer, weights(net), WD, [scheduler])

    assert len(optimizer.param_groups) == 2 * len(twin.param_groups)
    origins = [origin_of[id(group["params"][0])] for group in optimizer.param_groups]
    for epoch in range(12):
        optimizer.step()
        twin.step()
        step(scheduler, epoch)
        step(twin_scheduler, epoch)
        for group, origin in zip(optimizer.param_groups, origins, strict=True):
            assert group["lr"] == twin.param_groups[origin]["lr"], f"{kind}, epoch {epoch}"
            assert group["momentum"] == twin.param_groups[origin]["momentum"]
    assert scheduler.get_last_lr() == [twin.param_groups[o]["lr"] for o in origins]


def test_groups_are_named_and_keep_their_hyperparameters() -> None:
    net = model()
    optimizer = two_groups(net)
    split_optimizer(optimizer, weights(net), WD)
    summary = [(g["name"], g["weight_decay"], g["lr"], g["momentum"]) for g in optimizer.param_groups]
    assert summary == [
        ("pg1/decay", WD, 0.1, 0.9),
        ("pg1/no_decay", 0.0, 0.1, 0.9),
        ("head/decay", WD, 0.01, 0.9),
        ("head/no_decay", 0.0, 0.01, 0.9),
    ]
    assert [g["params"] for g in optimizer.param_groups] == [
        [net[0].weight],
        [net[0].bias],
        [net[2].weight],
        [net[2].bias],
    ]


def test_a_group_with_only_one_kind_of_parameter_is_not_split() -> None:
    net = model()
    optimizer = SGD([{"params": [net[0].bias]}, {"params": [net[2].weight]}], lr=0.1)
    split_optimizer(optimizer, weights(net), WD)
    assert [(g["name"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("pg1/no_decay", 0.0),
        ("pg2/decay", WD),
    ]


def test_splitting_is_idempotent_and_respects_prebuilt_groups() -> None:
    net = model()
    others = [p for p in net.parameters() if p.dim() <= 1]
    optimizer = SGD(decay_groups(weights(net), others, WD), lr=0.1)
    before = copy.deepcopy(optimizer.param_groups)
    split_optimizer(optimizer, weights(net), WD)
    split_optimizer(optimizer, weights(net), WD)
    assert [(g["name"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups] == [
        (g["name"], g["weight_decay"], len(g["params"])) for g in before
    ]


def test_an_optimizer_without_weight_decay_is_refused() -> None:
    net = model()
    with pytest.raises(ValueError, match=r"Invalid l2: 0.02: Rprop has no weight_decay"):
        split_optimizer(torch.optim.Rprop(net.parameters()), weights(net), WD)


def test_a_different_weight_decay_is_refused_and_the_same_one_accepted() -> None:
    net = model()
    with pytest.raises(ValueError, match=r"SGD param group 0 already has weight_decay=0.5"):
        split_optimizer(SGD(net.parameters(), lr=0.1, weight_decay=0.5), weights(net), WD)
    same = SGD(net.parameters(), lr=0.1, weight_decay=WD)
    split_optimizer(same, weights(net), WD)
    assert [g["weight_decay"] for g in same.param_groups] == [WD, 0.0]


def test_decay_groups_drop_empty_groups() -> None:
    net = model()
    assert [g["name"] for g in decay_groups(weights(net), [], WD)] == ["decay"]
