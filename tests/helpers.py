"""Test models, data, trainers and the tutorial's formulas, written independently of the package.

Sections: the regression data and models every test module trains (``RegRegression`` and its
``Scheduled`` and ``Manual`` variants), ``fit``, the tutorial's recipe run by hand, and the linear
model checked against scikit-learn.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset, TensorDataset

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


# -- data, models and trainers -------------------------------------------------------------------------


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


def loader(dataset: Dataset[Any], batch_size: int | None = 8) -> DataLoader[Batch]:
    """``dataset`` in order, ``batch_size`` items a batch (``None``: each item is a batch)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def fit(
    model: L.LightningModule,
    epochs: int = 2,
    *,
    data: Dataset[Any] | None = None,
    batch_size: int | None = 8,
    **trainer_kwargs: Any,
) -> L.Trainer:
    """Train ``model`` for ``epochs`` on ``loader(data, batch_size)``; the trainer it ran under.

    Args:
        model: what ``Trainer.fit`` trains.
        epochs: the trainer's ``max_epochs``.
        data: the training set; ``regression_data()`` (6 batches of 8) unless given.
        batch_size: as for :func:`loader`.
        trainer_kwargs: for :func:`quiet_trainer` (``logger``, ``callbacks``, ``plugins``, ...).
    """
    trainer = quiet_trainer(max_epochs=epochs, **trainer_kwargs)
    trainer.fit(model, loader(regression_data() if data is None else data, batch_size=batch_size))
    return trainer


def fit_straight_and_resumed(
    make_model: Callable[[], L.LightningModule],
    checkpoint: Path,
    epochs: int = 4,
    data: Dataset[Any] | None = None,
) -> tuple[L.LightningModule, L.LightningModule, L.Trainer]:
    """``make_model()`` trained ``epochs`` straight, and half of them, saved and resumed from ``checkpoint``.

    Returns the straight model, the resumed one and the trainer that resumed it (a fresh one, reading
    the checkpoint with ``weights_only=True``). ``data``: as for :func:`fit`.
    """
    data = regression_data() if data is None else data
    straight = make_model()
    fit(straight, epochs=epochs, data=data)
    fit(make_model(), epochs=epochs // 2, data=data).save_checkpoint(checkpoint)
    resumed = make_model()
    resume = quiet_trainer(max_epochs=epochs)
    resume.fit(resumed, loader(data), ckpt_path=checkpoint, weights_only=True)
    return straight, resumed, resume


def make_net(features: int = 5, hidden: int = 16, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.LayerNorm(hidden), nn.Linear(hidden, 1))


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


class RegRegression(RegularizedModule, LitRegression):
    """The user's module with the mixin in front."""


class Scheduled(RegRegression):
    """The user's module whose ``configure_optimizers`` returns its optimizer and a ``StepLR`` on it.

    SGD (momentum 0.9) halved every 2 optimizer steps (``interval="step"``), or with ``adam=True``
    Adam times 0.7 every epoch; ``lr`` is the optimizer's, as in ``LitRegression``.
    """

    def configure_optimizers(self) -> Any:
        lr = self.hparams["lr"]
        if self.hparams["adam"]:
            adam = torch.optim.Adam(self.parameters(), lr=lr)
            return [adam], [torch.optim.lr_scheduler.StepLR(adam, step_size=1, gamma=0.7)]
        optimizer = torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


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


class Manual(ManualOptimization, RegRegression):
    """The user's module under manual optimization: nothing about regularization in the step."""


def assert_same_weights(actual: nn.Module, expected: nn.Module) -> None:
    """Bit for bit: every parameter equal."""
    got = dict(actual.named_parameters())
    for name, want in expected.named_parameters():
        assert torch.equal(got[name], want), f"{name} differs: max |diff| {(got[name] - want).abs().max()}"


# -- the tutorial's recipe, by hand ----------------------------------------------------------------------


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


def soft_threshold(w: Tensor, threshold: Tensor | float) -> None:
    """In place, the textbook soft threshold ``sign(w) * max(|w| - t, 0)``, entry by entry."""
    w.copy_(torch.sign(w) * torch.clamp(w.abs() - threshold, min=0))


def fused_adamw_under_a_grad_scaler(
    lr: float,
    l2: float,
    threshold: Callable[[torch.optim.Optimizer, Tensor], Tensor | float],
    epochs: int = 2,
) -> tuple[nn.Module, int]:
    """make_net trained by fused AdamW (decay ``l2`` on W) in float16 autocast under a CPU GradScaler.

    The scaler starts at 2**20, which overflows float16 at first, so that it skips some steps; after each
    step it takes, every W is soft-thresholded at ``threshold(optimizer, w)``. Returns the net and the
    number of steps skipped.
    """
    net = make_net()
    groups = seed_param_groups(net, l2)
    weights = groups[0]["params"]  # W: dim > 1
    adamw = torch.optim.AdamW(groups, lr=lr, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=3)
    skipped = 0
    for _ in range(epochs):
        for x, y in loader(regression_data()):
            adamw.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.mse_loss(net(x), y)
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            scaler.step(adamw)
            scaler.update()
            if scaler.get_scale() < scale:  # the step was skipped
                skipped += 1
                continue
            with torch.no_grad():
                for w in weights:
                    soft_threshold(w, threshold(adamw, w))
    return net, skipped


# -- a linear model against scikit-learn -----------------------------------------------------------------

N, P = 150, 8  # design(): samples and features


def design(outputs: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``N x P`` correlated features and ``outputs`` targets of which features 0, 1, 4 and 7 are the cause."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, P)) + 0.3 * rng.standard_normal((N, 1))  # correlated features
    coef = np.zeros((P, outputs))
    coef[[0, 1, 4, 7]] = rng.standard_normal((4, outputs)) * 2
    y = x @ coef + 0.5 + 0.3 * rng.standard_normal((N, outputs))
    return x, y


def step_size(x: np.ndarray, l2: float = 0.0) -> float:
    """1 / L for 0.5 * mean squared error of an affine model (the intercept included)."""
    augmented = np.hstack([x, np.ones((len(x), 1))])
    return 1.0 / (np.linalg.eigvalsh(augmented.T @ augmented / len(x)).max() + l2)


class LinearRegression(L.LightningModule):
    """What a user would write: a linear layer, 0.5 * squared error summed over outputs, mean over samples."""

    def __init__(self, features: int = P, outputs: int = 1, lr: float = 0.1, optimizer: str = "sgd") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = nn.Linear(features, outputs, dtype=torch.float64)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return 0.5 * (self.linear(x) - y).square().sum(dim=1).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        lr, kind = self.hparams["lr"], self.hparams["optimizer"]
        if kind == "lbfgs":
            return torch.optim.LBFGS(
                self.parameters(),
                max_iter=100,
                tolerance_grad=1e-14,
                tolerance_change=0,
                line_search_fn="strong_wolfe",
            )
        if kind == "adam":
            return torch.optim.Adam(self.parameters(), lr=lr)
        return torch.optim.SGD(self.parameters(), lr=lr)


def weights(model: LinearRegression) -> tuple[np.ndarray, np.ndarray]:
    return model.linear.weight.detach().numpy(), model.linear.bias.detach().numpy()


def assert_lands_on(model: LinearRegression, coef: np.ndarray, intercept: Any, *, tol: float) -> None:
    """Weights and bias within ``tol`` of scikit-learn's ``coef`` and ``intercept``, with the same zeros."""
    weight, bias = weights(model)
    np.testing.assert_allclose(weight, coef.reshape(weight.shape), atol=tol, rtol=0)
    np.testing.assert_allclose(bias, np.ravel(intercept), atol=tol, rtol=0)
    assert np.array_equal(weight == 0, coef.reshape(weight.shape) == 0), "the same exact zeros"


def loss_gradient(model: LinearRegression, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d/dW of 0.5 * mean squared error at the trained weights (outputs x features)."""
    weight, bias = weights(model)
    gradient: np.ndarray = (x @ weight.T + bias - y).T @ x / len(x)
    return gradient
