"""Test models, data and the tutorial's formulas, written independently of the package."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import RegularizedModule

Batch = tuple[Tensor, Tensor]


class RecordOps(TorchDispatchMode):
    """Records the name of every operator dispatched while it is active (on a GPU, each is a launch)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A CPU Trainer without progress bar, summary, checkpoints or (unless given) logger."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    options.update(kwargs)
    return L.Trainer(**options)


def regression_data(n: int = 48, features: int = 5, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = x @ torch.randn(features, 1, generator=generator) + 0.1 * torch.randn(n, 1, generator=generator)
    return TensorDataset(x, y)


def loader(dataset: TensorDataset, batch_size: int = 8) -> DataLoader[Batch]:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def make_net(features: int = 5, hidden: int = 16, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.LayerNorm(hidden), nn.Linear(hidden, 1))


def seed_l1_penalty(model: nn.Module) -> Tensor | int:
    """The tutorial's loop, verbatim in substance: sum of |param| over parameters with dim > 1."""
    l1_penalty: Tensor | int = 0
    for param in model.parameters():
        if param.dim() > 1:
            l1_penalty += torch.sum(torch.abs(param))
    return l1_penalty


def seed_param_groups(model: nn.Module, l2: float) -> list[dict[str, Any]]:
    """Weight decay ``l2`` on the parameters with dim > 1, none on the rest."""
    return [
        {"params": [p for p in model.parameters() if p.dim() > 1], "weight_decay": l2},
        {"params": [p for p in model.parameters() if p.dim() <= 1], "weight_decay": 0.0},
    ]


def train_reference(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    l1: float,
    l2: float,
    make_optimizer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
    epochs: int = 1,
) -> nn.Module:
    """Train a copy of ``model`` with the tutorial's recipe: total_loss = loss + l1 * sum|W|, decay l2."""
    model = copy.deepcopy(model)
    groups = seed_param_groups(model, l2)
    optimizer = make_optimizer(groups) if make_optimizer else torch.optim.SGD(groups, lr=0.05)
    batches = list(batches)
    for _ in range(epochs):
        for x, y in batches:
            optimizer.zero_grad()
            original_loss = nn.functional.mse_loss(model(x), y)
            total_loss = original_loss + l1 * seed_l1_penalty(model)
            total_loss.backward()
            optimizer.step()
    return model


class LitRegression(L.LightningModule):
    """An ordinary user's LightningModule: MSE regression, SGD (or Adam)."""

    def __init__(self, features: int = 5, hidden: int = 16, lr: float = 0.05, adam: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = make_net(features, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams["adam"]:
            return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def assert_same_weights(actual: nn.Module, expected: nn.Module) -> None:
    """Bit for bit: every parameter equal."""
    got = dict(actual.named_parameters())
    for name, want in expected.named_parameters():
        assert torch.equal(got[name], want), f"{name} differs: max |diff| {(got[name] - want).abs().max()}"


class RegRegression(RegularizedModule, LitRegression):
    """The user's module with the mixin in front."""


class ManualOptimization:
    """Mixin: the next class's training loss, trained by manual optimization as a user writes it.

    Nothing in the step is about regularization. Put it first: ``class M(ManualOptimization, RegNet)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        optimizer = self.optimizers()  # type: ignore[attr-defined]
        optimizer.zero_grad()
        self.manual_backward(super().training_step(batch, batch_idx))  # type: ignore[misc,attr-defined]
        optimizer.step()
