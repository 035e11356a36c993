"""LightningCLI with the regularization options in a YAML config, under ``model:``.

    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml
    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml --model.l1=3e-3  # override
    python examples/lightning_cli.py fit --help  # every option, the regularization ones among them

``RegularizedModule`` declares its options (``l1``, ``l2``, ``group_l1``, ``l1_mode``, ``exclude``,
``rules``, ...) as typed keyword arguments of ``__init__``, so LightningCLI offers them next to the
module's own arguments: ``--model.l1``, ``--model.l1_mode`` (checked against its choices by the parser),
or the ``model:`` section of a config file. The optimizer and the scheduler come from the config too
(``optimizer:``, ``lr_scheduler:``); the optimizer that LightningCLI builds is split like one that
``configure_optimizers`` returns: the weight matrices get ``weight_decay=l2``, the biases ``0``, and the
scheduler drives both groups.

The task is synthetic (no download): 3 classes decided by 4 of 20 input features. After ``fit`` the
script prints the options in force, the optimizer's parameter groups, the validation metrics and the
fraction of weights that the proximal L1 step left exactly zero. ``RegularizationMonitor`` (a callback in
the config) logs the ``reg/*`` values to the CSV logger's ``metrics.csv``.
"""

from __future__ import annotations

import warnings

import lightning.pytorch as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multiclass_accuracy

from lightning_reg import RegularizedModule

Batch = tuple[Tensor, Tensor]


class SyntheticData(L.LightningDataModule):
    """Points whose class is the largest of 3 fixed linear scores of their first 4 features.

    Args:
        features: input features; only the first 4 decide the class.
        train_size: training points (the validation split has 2000).
        batch_size: points per training batch.
        seed: seed of the points.
    """

    def __init__(
        self, features: int = 20, train_size: int = 512, batch_size: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        self.features, self.train_size, self.batch_size, self.seed = features, train_size, batch_size, seed

    def _points(self, n: int, generator: torch.Generator) -> TensorDataset:
        x = torch.randn(n, self.features, generator=generator)
        mixing = torch.tensor([[1.0, -1.0, 0.5], [0.5, 1.0, -1.0], [-1.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
        return TensorDataset(x, (x[:, :4] @ mixing).argmax(1))

    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self.train_set = self._points(self.train_size, generator)
        self.val_set = self._points(2000, generator)

    def train_dataloader(self) -> DataLoader[Batch]:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Batch]:
        return DataLoader(self.val_set, batch_size=len(self.val_set))


class Classifier(L.LightningModule):
    """An ordinary MLP classifier; its optimizer comes from the config (``optimizer:``).

    Args:
        features: input features (linked to ``data.features``).
        hidden: width of the two hidden layers.
        classes: outputs.
    """

    def __init__(self, features: int = 20, hidden: int = 64, classes: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.net(x)
        return logits

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log(
            "val_acc", multiclass_accuracy(logits, y, num_classes=self.hparams["classes"], average="micro")
        )


class RegularizedClassifier(RegularizedModule, Classifier):
    """The classifier with the mixin in front: ``--model.l1``, ``--model.l2``, ... join its arguments."""


class CLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.features", "model.features")


def report(cli: LightningCLI) -> None:
    """What the run used and what it gave: the options, the optimizer's groups, the metrics, the zeros."""
    model = cli.model
    assert isinstance(model, RegularizedModule)
    options = model.regularization_options
    print(
        f"regularization (model:): l1={options.l1:g} l2={options.l2:g} l1_mode={options.l1_mode} "
        f"exclude={list(options.exclude)}"
    )
    (optimizer,) = cli.trainer.optimizers
    names = {id(param): name for name, param in model.named_parameters()}
    print(f"optimizer (optimizer:): {type(optimizer).__name__}, param groups:")
    for group in optimizer.param_groups:
        held = ", ".join(names[id(param)] for param in group["params"])
        print(
            f"  {group['name']:<8}  weight_decay={group['weight_decay']:<6g}  lr={group['lr']:<9.3g}  {held}"
        )
    metrics = cli.trainer.callback_metrics
    print(f"validation: val_loss={float(metrics['val_loss']):.4f} val_acc={float(metrics['val_acc']):.3f}")
    stats = model.regularizer.statistics().summary()
    print(f"weights: sparsity={stats['sparsity']:.3f} dead_units={stats['dead_units']:.3f}")
    if cli.trainer.logger is not None and cli.trainer.logger.log_dir is not None:
        print(f"metrics, with the monitor's reg/* values: {cli.trainer.logger.log_dir}/metrics.csv")


def main() -> None:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    cli = CLI(RegularizedClassifier, SyntheticData)
    if cli.subcommand == "fit":
        report(cli)


if __name__ == "__main__":
    main()
