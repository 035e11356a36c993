"""``torch.compile`` around the package: no recompiles, and the weights of the eager run.

Dynamo's ``eager`` backend keeps these tests fast: it traces and guards as inductor does (recompiles
come from the guards), and runs the captured graphs with the same kernels as eager PyTorch.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers import RegRegression, loader, quiet_trainer, regression_data
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch._dynamo.utils import counters

from lightning_reg import RegularizationMonitor, Regularizer


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


class Traced(RegRegression):
    """The user's module with an example input, for ``group_by="channels"``."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.example_input_array = torch.zeros(2, 5)


def fit(
    compiled: bool, steps: int = 12, backend: str = "eager", part: bool = False, **options: Any
) -> Tensor:
    """``steps`` steps of ``Trainer.fit`` with Adam; the trained weights, flat. Compiled: the module,
    or with ``part`` only its network (a compiled submodule)."""
    torch.manual_seed(0)
    model = Traced(adam=True, **options)
    target: L.LightningModule = model
    if compiled and part:
        model.net = torch.compile(model.net, backend=backend)  # type: ignore[assignment]
    elif compiled:
        target = torch.compile(model, backend=backend)  # type: ignore[assignment]
    quiet_trainer(max_steps=steps).fit(target, loader(regression_data()))
    return torch.cat([param.detach().flatten() for param in model.parameters()])


@pytest.mark.parametrize(
    "options",
    [{"l1": 1e-3, "l2": 1e-2}, {"l1": 1e-2, "l1_mode": "proximal"}, {"l2": 1e-2, "l2_mode": "decoupled"}],
    ids=["loss", "proximal", "decoupled"],
)
def test_a_compiled_module_compiles_once_and_trains_the_eager_weights(options: dict[str, Any]) -> None:
    """The mixin's work around ``training_step`` runs eagerly: Dynamo guards on none of it (it once
    recompiled at every step, on the Trainer's step count) and the weights are the eager run's, bit
    for bit."""
    eager = fit(False, **options)
    compiled = fit(True, **options)
    assert counters["stats"]["unique_graphs"] == 1
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize(
    "options",
    [
        {"activity_l1": {"net.1": 1e-2}},
        {"group_l1": 1e-2, "group_by": "channels"},
        {"group_l1": 1e-2, "group_by": "channels", "l1_mode": "proximal"},
    ],
    ids=["activity", "channels-loss", "channels-proximal"],
)
def test_compiled_activity_and_channel_modes_add_no_graph_after_the_first_steps(
    options: dict[str, Any],
) -> None:
    """The activity capture and the coupled units: the eager run's weights, bit for bit, and as many
    graphs after 12 steps as after 4 (the tracing of the example input at set-up adds its own)."""
    fit(True, steps=4, **options)
    after_four = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    counters.clear()
    compiled = fit(True, steps=12, **options)
    assert counters["stats"]["unique_graphs"] == after_four
    assert torch.equal(compiled, fit(False, steps=12, **options))


def test_a_compiled_submodule_trains_the_eager_weights() -> None:
    """``model.net = torch.compile(model.net)``: one graph, the eager run's weights bit for bit."""
    compiled = fit(True, part=True, l1=0.3, l1_mode="proximal")
    assert counters["stats"]["unique_graphs"] == 1
    assert torch.equal(compiled, fit(False, l1=0.3, l1_mode="proximal"))


def test_with_inductor_the_weights_are_eagers_to_float_tolerance_with_the_same_zeros() -> None:
    """The real backend (C++ kernels on the CPU) on the proximal step: inductor's arithmetic differs in
    the last bits, the zeros do not."""
    compiled = fit(True, backend="inductor", l1=0.3, l1_mode="proximal")
    eager = fit(False, l1=0.3, l1_mode="proximal")
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    assert torch.equal(compiled == 0, eager == 0)
    assert int((eager == 0).sum()) > 10


@pytest.mark.parametrize("fused", [False, True], ids=["eager-hooks", "fused-hooks"])
def test_a_compiled_optimizer_step_with_the_proximal_hooks_compiles_once(fused: bool) -> None:
    """``torch.compile(opt.step)`` with the proximal step attached: one graph over 30 steps (the hooks
    run eagerly; traced, their per-parameter state reads were guards that failed at every step), and
    the eager run's weights with the same zeros (1,692 of 4,096). Compiled Adam differs from eager Adam
    by about 1e-5 on its own here, so the weights are compared to 5e-5. Traced, the hooks once read
    the first weight's Adam state for every weight: weights off by 0.38 and 2,053 zeros. With
    ``fused=True`` the hooks run their own compiled kernel (one more graph, compiled once) inside the
    compiled step."""

    def run(compiled: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(32, 32) for _ in range(4)])  # equal shapes: no shape guard helps
        regularizer = Regularizer(model, l1=3e-4, l1_mode="proximal", fused=fused and compiled)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        regularizer.attach(optimizer)
        step = torch.compile(optimizer.step, backend="eager") if compiled else optimizer.step
        data = torch.Generator().manual_seed(1)
        x, y = torch.randn(64, 32, generator=data), torch.randn(64, 32, generator=data)
        for _ in range(30):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()  # type: ignore[no-untyped-call]
            step()
        return torch.cat([param.detach().flatten() for param in model.parameters()])

    eager, compiled = run(False), run(True)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=5e-5)
    assert torch.equal(compiled == 0, eager == 0)
    assert 100 < int((eager == 0).sum()) < 4 * 32 * 32 - 100  # zeros and live weights
    assert counters["stats"]["unique_graphs"] == (2 if fused else 1)


def test_the_monitor_logs_from_a_compiled_module_without_adding_graphs(tmp_path: Path) -> None:
    """``RegularizationMonitor`` reads the weights in its own hooks, outside the compiled step: the
    same logged values as the eager run, and as many graphs after 12 steps as after 4."""

    def logged(compiled: bool, steps: int) -> list[dict[str, str]]:
        torch.manual_seed(0)
        model = Traced(adam=True, l1=1e-2, l1_mode="proximal")
        logger = CSVLogger(tmp_path, name=f"{compiled}-{steps}")
        trainer = quiet_trainer(
            max_steps=steps, logger=logger, callbacks=[RegularizationMonitor(log_every_n_steps=1)]
        )
        target = torch.compile(model, backend="eager") if compiled else model
        trainer.fit(target, loader(regression_data()))  # type: ignore[arg-type]
        with open(Path(logger.log_dir) / "metrics.csv") as handle:
            return [row for row in csv.DictReader(handle) if row.get("reg/l1_norm")]

    logged(True, 4)
    after_four = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    counters.clear()
    compiled = logged(True, 12)
    assert counters["stats"]["unique_graphs"] == after_four
    assert compiled == logged(False, 12)
    assert len(compiled) == 12
