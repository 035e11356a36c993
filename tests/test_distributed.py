"""Two real processes on the CPU (gloo), DDP or FSDP2, end where one process fed both ranks' batches ends."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from architectures import (
    BN_MLP_UNIT,
    adam_steps,
    bn_mlp,
    channel_norms,
    dead,
    group_term,
    metric_prox,
    metric_prox_,
    params_of,
)
from distributed_run import BATCH_SIZE, CHANNEL_CONFIGS, CONFIGS, EPOCHS, WORLD_SIZE
from helpers import make_net, regression_data, seed_l1_penalty, seed_param_groups
from torch import nn

LR = 0.05  # LitRegression's learning rate, for SGD and for Adam


@pytest.fixture(scope="module", params=["ddp", "fsdp2"])
def results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(request.param)
    script = Path(__file__).with_name("distributed_run.py")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(script), str(out), request.param]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def union_batches() -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per step, each rank's batch: rank r holds samples r, r + 2, ..., in batches of BATCH_SIZE."""
    x, y = regression_data().tensors
    shards = [(x[rank::WORLD_SIZE], y[rank::WORLD_SIZE]) for rank in range(WORLD_SIZE)]
    steps = len(shards[0][0]) // BATCH_SIZE
    return [
        [
            (sx[k * BATCH_SIZE : (k + 1) * BATCH_SIZE], sy[k * BATCH_SIZE : (k + 1) * BATCH_SIZE])
            for sx, sy in shards
        ]
        for k in range(steps)
    ] * EPOCHS


def group_norms(w: torch.Tensor) -> torch.Tensor:
    """Column norms (group_by="columns")."""
    return torch.sqrt(torch.sum(w * w, dim=0))


def adam_threshold(optimizer: torch.optim.Optimizer, w: torch.Tensor, l1: float) -> torch.Tensor:
    """``l1`` times Adam's step per unit of gradient at ``exp_avg = g``, from torch's update rule."""
    [group], state = optimizer.param_groups, optimizer.state[w]
    beta1, beta2 = group["betas"]
    t = float(state["step"])
    denominator = state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t) + group["eps"]
    threshold: torch.Tensor = l1 * group["lr"] / (1 - beta1**t) / denominator
    return threshold


def one_process_reference(options: dict[str, Any]) -> nn.Module:
    """The recipe by hand on one process; DDP and FSDP average the ranks' gradients, so the losses are.

    With ``adam``, torch's Adam (no groups: ``l2`` is 0 there) and the soft threshold at Adam's step.
    """
    net = make_net()
    l1, l2, group_l1 = options.get("l1", 0.0), options.get("l2", 0.0), options.get("group_l1", 0.0)
    proximal = options.get("l1_mode") == "proximal"
    l2_mode = options.get("l2_mode", "weight_decay")
    adam = options.get("adam", False)
    optimizer: torch.optim.Optimizer = (
        torch.optim.Adam(net.parameters(), lr=LR)
        if adam
        else torch.optim.SGD(seed_param_groups(net, l2 if l2_mode == "weight_decay" else 0.0), lr=LR)
    )
    weights = [p for p in net.parameters() if p.dim() > 1]
    for per_rank in union_batches():
        optimizer.zero_grad()
        loss = sum(nn.functional.mse_loss(net(x), y) for x, y in per_rank) / WORLD_SIZE
        if not proximal:
            loss = loss + l1 * seed_l1_penalty(net) + group_l1 * sum(group_norms(w).sum() for w in weights)
        if l2_mode == "loss":
            loss = loss + l2 / 2 * sum(torch.sum(w * w) for w in weights)
        loss.backward()
        with torch.no_grad():
            for w in weights if l2_mode == "decoupled" else []:
                w.mul_(1 - LR * l2)
        optimizer.step()
        with torch.no_grad():
            for w in weights if proximal else []:
                threshold = adam_threshold(optimizer, w, l1) if adam else LR * l1
                w.copy_(torch.sign(w) * torch.clamp(w.abs() - threshold, min=0))
                if group_l1 > 0 and adam:  # each column in Adam's metric, by bisection
                    steps = adam_threshold(optimizer, w, 1.0).double().numpy()
                    for c in range(w.shape[1]):
                        z = w[:, c].double().numpy()
                        w[:, c] = torch.from_numpy(metric_prox(z, steps[:, c], group_l1)).to(w.dtype)
                elif group_l1 > 0:
                    w.mul_(torch.clamp(1 - LR * group_l1 / group_norms(w), min=0))
    return net


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_one_process_on_the_union_of_batches(results: Path, name: str) -> None:
    trained = torch.load(results / f"{name}.pt", weights_only=True)
    expected = one_process_reference(CONFIGS[name])
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(trained[key], value, rtol=1e-5, atol=1e-6)
    if name in ("proximal", "adam_proximal"):
        assert (trained["0.weight"] == 0).any(), "the proximal run must have exact zeros"
        assert torch.equal(trained["0.weight"] == 0, expected.state_dict()["0.weight"] == 0)
    if name in ("group_proximal", "adam_group_proximal"):
        dead = (trained["0.weight"] == 0).all(dim=0).sum() + (trained["3.weight"] == 0).all(dim=0).sum()
        assert 0 < dead < 5 + 16, "the group run must have dead and live input units"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_monitor_reports_replicated_weights_once(results: Path, name: str) -> None:
    with open(results / name / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("reg/l1_norm")]
    steps_per_epoch = len(union_batches()) // EPOCHS
    assert [int(row["step"]) for row in rows] == list(range(EPOCHS * steps_per_epoch)), (
        "one row per step, rank 0 only"
    )
    trained = torch.load(results / f"{name}.pt", weights_only=True)
    flat = np.concatenate([trained[k].double().numpy().ravel() for k in ("0.weight", "3.weight")])
    assert float(rows[-1]["reg/l1_norm"]) == pytest.approx(np.abs(flat).sum(), rel=1e-9)
    assert float(rows[-1]["reg/sparsity"]) == pytest.approx((flat == 0).mean(), abs=1e-12)


def channels_reference(options: dict[str, Any]) -> nn.Module:
    """bn_mlp trained on one process: the group term over its unit in the loss, or Adam's step followed by
    the unit's proximal operator in Adam's metric, solved per channel by bisection."""
    net = bn_mlp()
    params = params_of(net)
    strength, adam = options["group_l1"], options.get("adam", False)
    optimizer = (
        torch.optim.Adam(net.parameters(), lr=LR) if adam else torch.optim.SGD(net.parameters(), lr=LR)
    )
    for per_rank in union_batches():
        optimizer.zero_grad()
        # each rank's BatchNorm normalizes its own batch: one forward per rank's batch
        loss = sum(nn.functional.mse_loss(net(x), y) for x, y in per_rank) / WORLD_SIZE
        if options.get("l1_mode") != "proximal":
            loss = loss + group_term(params, [BN_MLP_UNIT], strength).float()
        loss.backward()
        optimizer.step()
        if options.get("l1_mode") == "proximal":
            steps = {name: adam_steps(optimizer, param) for name, param in params.items()}
            metric_prox_(params, steps, BN_MLP_UNIT, strength)
    return net


@pytest.mark.parametrize("name", sorted(CHANNEL_CONFIGS))
def test_channels_under_ddp_match_one_process(
    request: pytest.FixtureRequest, results: Path, name: str
) -> None:
    if request.node.callspec.params["results"] != "ddp":
        pytest.skip("group_by='channels' needs whole tensors: FSDP2's shards are refused")
    trained = torch.load(results / f"{name}.pt", weights_only=True)
    expected = channels_reference(CHANNEL_CONFIGS[name])
    for key, value in params_of(expected).items():  # parameters: the ranks' BN running statistics differ
        torch.testing.assert_close(trained[key], value.detach(), rtol=1e-5, atol=1e-6)
    final = {key: trained[key].double() for key in params_of(expected)}
    deaths = dead(final, BN_MLP_UNIT)
    if name == "channels_adam_proximal":
        assert 0 < len(deaths) < 16, "the proximal run must have dead and live channels"
        assert deaths == dead(params_of(expected), BN_MLP_UNIT)
    with open(results / name / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("reg/dead_units")]
    assert len(rows) == len(union_batches()), "one row per step, rank 0 only"
    # the unit counted once, not once per rank
    assert float(rows[-1]["reg/dead_units"]) == len(deaths) / 16
    want = CHANNEL_CONFIGS[name]["group_l1"] * float(channel_norms(final, BN_MLP_UNIT).sum())
    assert float(rows[-1]["reg/group_l1_penalty"]) == pytest.approx(want, rel=1e-5)
