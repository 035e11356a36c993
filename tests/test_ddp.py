"""Two real DDP processes on the CPU (gloo) end where one process fed both ranks' batches ends."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_run import BATCH_SIZE, CONFIGS, EPOCHS, WORLD_SIZE
from helpers import make_net, regression_data, seed_l1_penalty, seed_param_groups
from torch import nn

LR = 0.05  # LitRegression's SGD learning rate


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    script = Path(__file__).with_name("ddp_run.py")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
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


def one_process_reference(options: dict[str, float | str]) -> nn.Module:
    """The recipe by hand on one process; DDP averages the ranks' gradients, so the losses are averaged."""
    net = make_net()
    l1, l2 = float(options["l1"]), float(options["l2"])
    proximal = options.get("l1_mode") == "proximal"
    decoupled = options.get("l2_mode") == "decoupled"
    optimizer = torch.optim.SGD(seed_param_groups(net, 0.0 if decoupled else l2), lr=LR)
    weights = [p for p in net.parameters() if p.dim() > 1]
    for per_rank in union_batches():
        optimizer.zero_grad()
        loss = sum(nn.functional.mse_loss(net(x), y) for x, y in per_rank) / WORLD_SIZE
        if not proximal:
            loss = loss + l1 * seed_l1_penalty(net)
        loss.backward()
        with torch.no_grad():
            for w in weights if decoupled else []:
                w.mul_(1 - LR * l2)
        optimizer.step()
        with torch.no_grad():
            for w in weights if proximal else []:
                w.copy_(torch.sign(w) * torch.clamp(w.abs() - LR * l1, min=0))
    return net


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ddp_matches_one_process_on_the_union_of_batches(ddp_results: Path, name: str) -> None:
    trained = torch.load(ddp_results / f"{name}.pt", weights_only=True)
    expected = one_process_reference(CONFIGS[name])
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(trained[key], value, rtol=1e-5, atol=1e-6)
    if name == "proximal":
        assert (trained["0.weight"] == 0).any(), "the proximal run must have exact zeros"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_monitor_reports_replicated_weights_once(ddp_results: Path, name: str) -> None:
    with open(ddp_results / name / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("reg/l1_norm")]
    steps_per_epoch = len(union_batches()) // EPOCHS
    assert [int(row["step"]) for row in rows] == list(range(EPOCHS * steps_per_epoch)), (
        "one row per step, rank 0 only"
    )
    trained = torch.load(ddp_results / f"{name}.pt", weights_only=True)
    flat = np.concatenate([trained[k].double().numpy().ravel() for k in ("0.weight", "3.weight")])
    assert float(rows[-1]["reg/l1_norm"]) == pytest.approx(np.abs(flat).sum(), rel=1e-9)
    assert float(rows[-1]["reg/sparsity"]) == pytest.approx((flat == 0).mean(), abs=1e-12)
