"""``lightning-reg demo``: L1, L2 and Elastic Net against overfitting, on scikit-learn's digits.

One over-parameterised MLP (64-512-512-512-10, about 560k weights) is trained on 200 of the 1797 8x8
digit images, few enough for it to memorise them, and evaluated on the other 1597. It is trained seven
times, with the same seed, initial weights, data and optimizer (Adam): without regularization, with L2
(weight decay), with L1 and with both (Elastic Net), L1 in the loss; then with L1 and Elastic Net whose
L1 is applied by a proximal step (``l1_mode="proximal"``), and with a proximal group L1 on the rows of the
weight matrices (``group_l1``). Each is built through :class:`~lightning_reg.module.RegularizedModule` as
a user would write it, with a :class:`~lightning_reg.monitor.RegularizationMonitor` writing to a
``CSVLogger``. The table shows how far training accuracy runs ahead of validation accuracy (the gap), the
validation loss, how many of the regularized weights are exactly zero or below ``1e-3``, and how many
units are dead (a row of a weight matrix entirely zero: a unit whose incoming weights are all ``0``).
L1 in the loss, minimised by a gradient method, drives weights towards zero but rarely exactly to it;
the proximal step sets them exactly to zero, and the group term removes whole units. The proximal step
thresholds each weight by its strength times the step Adam has just applied to it (the default
``proximal_threshold="optimizer"``), so its strengths compare with the loss-mode ones.

scikit-learn (the data) and matplotlib (``--plot``) come with the ``demo`` extra and are imported only
when the demo runs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, TextIO

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multiclass_accuracy
from typing_extensions import override

from lightning_reg.module import RegularizedModule
from lightning_reg.monitor import RegularizationMonitor
from lightning_reg.options import GroupBy, L1Mode
from lightning_reg.regularizer import NEAR_ZERO_TOL

INSTALL_HINT = "pip install 'lightning-reg[demo]'"
_PACKAGES = {"sklearn": "scikit-learn"}  # import name -> distribution name, where they differ

#: Training images: 20 per class (stratified); the remaining 1597 images are the validation split.
TRAIN_SIZE = 200
#: Width and number of hidden layers of the MLP: far more weights than training images.
HIDDEN, DEPTH = 512, 3
#: Adam's learning rate; training is full-batch, one optimizer step per epoch.
LR = 2e-3
#: Default number of epochs; every variant fits the training split perfectly well before the end.
EPOCHS = 200
#: Default seed of the split, the initial weights and everything else random.
SEED = 0

# How the strengths were chosen: on log grids (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3 for each, and pairs
# of them for Elastic Net) with this setup (200 training images, 3 x 512 hidden, Adam lr 2e-3, 200
# and 300 epochs), by the train/val accuracy gap averaged over seeds 0-4, measured with the same
# training in a plain PyTorch loop (it gives the demo's numbers for seed 0). At 200 epochs: no
# regularization 0.093 (val acc 0.907, val loss 1.17); L2=1e-3 0.066 (0.934, 0.24); L1=3e-5 0.067
# (0.933, 0.25); both 0.067 (0.933, 0.24), and each of them narrows the gap for every one of the five
# seeds. Weaker strengths help less (L2=1e-4: 0.084, L2=3e-4: 0.071, L1=1e-5: 0.076), stronger ones no
# more (L2=3e-3: 0.069, L1=1e-4: 0.069). With Adam's default lr 1e-3 the unregularized model overfits
# less and the gain is smaller: 0.078 without, 0.066 / 0.070 / 0.066 with L2 / L1 / both.
#: The L2 strength: Adam's ``weight_decay`` on the weight matrices (gradient ``L2_STRENGTH * w``).
L2_STRENGTH = 1e-3
#: The L1 strength: ``L1_STRENGTH * sum|w|`` over the weight matrices, added to the training loss.
L1_STRENGTH = 3e-5

# How the proximal strengths were chosen: the same way (seeds 0-4, 200 epochs, val acc, gap, val loss
# and sparsity), with the demo's own train_variant, on log grids of their own. With the default
# proximal_threshold="optimizer" the threshold of each weight is l1 times the step Adam has just applied
# to that weight's gradient, so the fixed points are the minimisers of "loss + l1 * sum|w|" (+ the group
# term) and the strengths compare with the loss-mode ones. Means over seeds 0-4 at 200 epochs (without
# regularization: gap 0.093, val acc 0.907, val loss 1.17; L1 in the loss at 3e-5: 0.067, 0.933, 0.25):
# - proximal L1 on 1e-5, 3e-5, 1e-4, 3e-4, 1e-3: gap 0.077 / 0.070 / 0.076 / 0.142 / 0.004, val acc
#   0.923 / 0.930 / 0.924 / 0.858 / 0.101, val loss 0.32 / 0.26 / 0.28 / 0.62 / 2.30, sparsity 0.66 /
#   0.85 / 0.95 / 0.98 / 1.00, dead units 0.03 / 0.08 / 0.28 / 0.65 / 1.00 (at 1e-3 every weight is 0:
#   train and val acc 0.10). We take 3e-5, the best gap of the grid and the loss-mode L1's own strength:
#   nearly as good as L1 in the loss, with 85 % of the weights exactly 0 instead of none; it narrows the
#   gap on every seed. 1e-4 gives 95 % zeros for 0.006 more gap.
# - Elastic Net prox, proximal L1 3e-5 with weight decay 3e-4, 1e-3, 3e-3: gap 0.069, 0.069, 0.071, val
#   acc 0.931, 0.931, 0.929, sparsity 0.85, 0.86, 0.85, dead units 0.10, 0.15, 0.28. We keep the L2
#   variant's 1e-3, as the loss-mode Elastic Net keeps its parts' strengths: val loss 0.249, narrower
#   than without on every seed.
# - proximal group L1 on 1e-4, 3e-4, 1e-3, 3e-3, 1e-2 (and 5e-4), over rows (a unit's incoming weights;
#   the output layer's 10 rows are the classes): dead units 0.05 / 0.17 / 0.63 / 0.78 / 1.00 (5e-4:
#   0.36), gap 0.077 / 0.068 / 0.076 / 0.184 / 0.004 (5e-4: 0.070), val acc 0.923 / 0.932 / 0.924 /
#   0.816 / 0.101 (5e-4: 0.930), sparsity 0.08 / 0.23 / 0.65 / 0.79 / 1.00. We take 1e-3, for units
#   visibly removed: the strongest of the grid before accuracy breaks, it narrows the gap on every seed,
#   but less than L1 or L2 (0.076 against 0.067), trading 0.009 of validation accuracy for 63 % of the
#   units; 5e-4 removes 36 % of them at L1 prox's accuracy (gap 0.070).
# At 300 epochs the proximal variants keep pruning at about the same accuracy: L1 prox sparsity 0.92
# (gap 0.070), Elastic Net prox sparsity 0.93, dead units 0.30 (gap 0.069), group L1 prox dead units
# 0.81 (gap 0.078). The strengths tuned for the old rule (proximal_threshold="lr": L1 0.3, group 3)
# zero every weight under the new one (val acc 0.101 on seed 0). The demo's seed 0: gap 0.075, 0.071,
# 0.073 for L1 prox, Elastic Net prox, group L1 prox, against 0.071 for L1 in the loss.
#: The proximal L1 strength: after each step every weight is soft-thresholded by ``PROX_L1_STRENGTH``
#: times the step Adam has just applied to its gradient.
PROX_L1_STRENGTH = 3e-5
#: The proximal group strength: after each step each row takes the proximal step of
#: ``GROUP_L1_STRENGTH * ||row||`` in the metric of Adam's per-weight steps.
GROUP_L1_STRENGTH = 1e-3
#: The groups of ``group_l1`` and of the dead-unit count, for every variant: rows (a unit's inputs).
GROUP_BY: GroupBy = "rows"

#: The monitor's metrics that the figure draws over the training steps.
CURVES = ("reg/l1_norm", "reg/l2_norm")

#: The evaluation splits, in the order of the validation dataloaders.
EVAL_SPLITS = ("train", "val")

Batch = tuple[Tensor, ...]


class Variant(NamedTuple):
    """One row of the demo: a name and the options the model is built with."""

    name: str
    l1: float
    l2: float
    #: ``"loss"`` or ``"proximal"``: how ``l1`` and ``group_l1`` reach the weights.
    l1_mode: L1Mode = "loss"
    group_l1: float = 0.0

    @property
    def slug(self) -> str:
        """The name as a directory name: ``"Elastic Net prox"`` -> ``"elastic_net_prox"``."""
        return self.name.lower().replace(" ", "_")

    @property
    def mode(self) -> str:
        """``l1_mode`` where there is an L1 or group term, else ``"-"``."""
        return self.l1_mode if self.l1 > 0 or self.group_l1 > 0 else "-"


#: The variants the demo trains, in table order. Add a variant here and it is trained, tabled and plotted.
VARIANTS: tuple[Variant, ...] = (
    Variant("none", l1=0.0, l2=0.0),
    Variant("L2", l1=0.0, l2=L2_STRENGTH),
    Variant("L1", l1=L1_STRENGTH, l2=0.0),
    Variant("Elastic Net", l1=L1_STRENGTH, l2=L2_STRENGTH),
    Variant("L1 prox", l1=PROX_L1_STRENGTH, l2=0.0, l1_mode="proximal"),
    Variant("Elastic Net prox", l1=PROX_L1_STRENGTH, l2=L2_STRENGTH, l1_mode="proximal"),
    Variant("Group L1 prox", l1=0.0, l2=0.0, l1_mode="proximal", group_l1=GROUP_L1_STRENGTH),
)


@dataclass(frozen=True)
class VariantResult:
    """What one trained variant scored. Accuracies and losses are measured after the last epoch."""

    variant: Variant
    train_acc: float
    val_acc: float
    val_loss: float
    sparsity: float
    near_zero: float
    #: Fraction of the rows of the regularized weight matrices that are entirely zero (``dead_units``).
    dead_units: float
    seconds: float
    #: ``reg/*`` metrics of the ``RegularizationMonitor``, read back from the CSV log: name -> (step, value).
    curves: Mapping[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)

    @property
    def gap(self) -> float:
        """Training accuracy minus validation accuracy: how much the model overfits."""
        return self.train_acc - self.val_acc


@dataclass(frozen=True)
class DigitsSplit:
    """The standardized digits, split into training and validation tensors."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor

    def train_loader(self) -> DataLoader[Batch]:
        """The training split as one full batch per epoch."""
        return _full_batch(self.x_train, self.y_train)

    def eval_loaders(self) -> list[DataLoader[Batch]]:
        """One full-batch loader per name in :data:`EVAL_SPLITS`."""
        return [_full_batch(self.x_train, self.y_train), _full_batch(self.x_val, self.y_val)]


class MissingDependencyError(ImportError):
    """An optional dependency of the demo is not installed."""


def require(module: str) -> ModuleType:
    """Import an optional dependency, or explain how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = _PACKAGES.get(module.split(".")[0], module.split(".")[0])
        raise MissingDependencyError(
            f"the demo needs {package}, which is not installed: {INSTALL_HINT}"
        ) from error


def _full_batch(x: Tensor, y: Tensor) -> DataLoader[Batch]:
    return DataLoader(TensorDataset(x, y), batch_size=len(x), shuffle=False)


def load_digits_split(train_size: int = TRAIN_SIZE, seed: int = SEED) -> DigitsSplit:
    """Load scikit-learn's bundled digits, split them stratified, standardize with training statistics.

    Raises:
        MissingDependencyError: scikit-learn is not installed.
    """
    datasets = require("sklearn.datasets")
    model_selection = require("sklearn.model_selection")
    preprocessing = require("sklearn.preprocessing")
    x, y = datasets.load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = model_selection.train_test_split(
        x, y, train_size=train_size, stratify=y, random_state=seed
    )
    scaler = preprocessing.StandardScaler().fit(x_train)  # constant pixels keep a scale of 1

    def features(values: Any) -> Tensor:
        return torch.as_tensor(scaler.transform(values), dtype=torch.float32)

    def labels(values: Any) -> Tensor:
        return torch.as_tensor(values, dtype=torch.long)

    return DigitsSplit(features(x_train), labels(y_train), features(x_val), labels(y_val))


class DigitsMLP(L.LightningModule):
    """A plain ReLU MLP classifier trained with Adam; it knows nothing about regularization.

    Args:
        hidden: width of each hidden layer.
        depth: number of hidden layers.
        lr: Adam's learning rate.
        in_features: input size (64 pixels).
        classes: number of classes.
    """

    def __init__(
        self,
        hidden: int = HIDDEN,
        depth: int = DEPTH,
        lr: float = LR,
        in_features: int = 64,
        classes: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)
        self.lr = lr
        self.classes = classes

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("data_loss", loss, on_step=False, on_epoch=True)
        return loss

    @override
    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        logits = self(x)
        split = EVAL_SPLITS[dataloader_idx]
        accuracy = multiclass_accuracy(logits, y, num_classes=self.classes, average="micro")
        self.log(f"{split}_loss", nn.functional.cross_entropy(logits, y), add_dataloader_idx=False)
        self.log(f"{split}_acc", accuracy, add_dataloader_idx=False)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class RegularizedDigitsMLP(RegularizedModule, DigitsMLP):
    """:class:`DigitsMLP` with the regularization keywords: the mixin in front of an unchanged module."""


class ProgressLine(Callback):
    """Our own progress output: one updating line on a terminal, one line per variant otherwise.

    Args:
        label: the text before the epoch counter, e.g. ``"[2/4] L2"``.
        stream: where to write; the line is updated in place only if it is a TTY.
    """

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.interactive = stream.isatty()
        self._width = 0

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interactive:
            self._write(f"{self.label}  epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", end="")

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._width:  # end the updating line where it stopped
            self.stream.write("\n")
            self._width = 0

    def finish(self, text: str) -> None:
        """End the variant's line with ``text``."""
        self._write(f"{self.label}  {text}", end="\n")

    def _write(self, text: str, end: str) -> None:
        if self.interactive:
            text = "\r" + text.ljust(self._width)
            self._width = len(text) - 1 if end == "" else 0
        self.stream.write(text + end)
        self.stream.flush()


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info logs and the warnings that do not apply to the demo, until the exit."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def train_variant(
    variant: Variant,
    data: DigitsSplit,
    *,
    epochs: int,
    seed: int,
    log_dir: str | Path,
    progress: ProgressLine,
) -> VariantResult:
    """Train one variant from the seed's initial weights and measure it after the last epoch.

    Validation runs once, after the last epoch, on both splits (see :data:`EVAL_SPLITS`). The
    ``RegularizationMonitor`` logs ``reg/*`` about 20 times per run to ``log_dir/<variant slug>``.
    """
    L.seed_everything(seed, verbose=False)
    model = RegularizedDigitsMLP(
        l1=variant.l1,
        l2=variant.l2,
        l1_mode=variant.l1_mode,
        group_l1=variant.group_l1,
        group_by=GROUP_BY,
    )
    interval = max(1, epochs // 20)
    logger = CSVLogger(log_dir, name=variant.slug)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=logger,
        callbacks=[RegularizationMonitor(), progress],
        log_every_n_steps=interval,
        check_val_every_n_epoch=epochs,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    trainer.fit(model, data.train_loader(), data.eval_loaders())
    seconds = time.perf_counter() - start
    metrics = trainer.callback_metrics
    curves = read_curves(Path(logger.log_dir) / "metrics.csv", CURVES)
    weights = model.regularizer.statistics(NEAR_ZERO_TOL).summary(penalties=False)
    return VariantResult(
        variant=variant,
        train_acc=float(metrics["train_acc"]),
        val_acc=float(metrics["val_acc"]),
        val_loss=float(metrics["val_loss"]),
        sparsity=weights["sparsity"],
        near_zero=weights["near_zero"],
        dead_units=weights["dead_units"],
        seconds=seconds,
        curves=curves,
    )


def read_curves(metrics_csv: Path, names: Sequence[str]) -> dict[str, tuple[tuple[int, float], ...]]:
    """Read the ``(step, value)`` pairs of each metric in ``names`` from a ``CSVLogger`` file."""
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        name: tuple((int(row["step"]), float(row[name])) for row in rows if row.get(name)) for name in names
    }


def train_all(
    data: DigitsSplit,
    *,
    epochs: int,
    seed: int,
    log_dir: str | Path,
    variants: Sequence[Variant] = VARIANTS,
    stream: TextIO | None = None,
) -> list[VariantResult]:
    """Train every variant in turn, reporting progress to ``stream`` (default: ``sys.stderr``)."""
    stream = sys.stderr if stream is None else stream
    results = []
    with quiet_lightning():
        for index, variant in enumerate(variants, start=1):
            progress = ProgressLine(f"[{index}/{len(variants)}] {variant.name}", stream)
            result = train_variant(
                variant, data, epochs=epochs, seed=seed, log_dir=log_dir, progress=progress
            )
            progress.finish(
                f"{epochs} epochs, {result.seconds:.1f} s: train acc {result.train_acc:.3f}, "
                f"val acc {result.val_acc:.3f}"
            )
            results.append(result)
    return results


def format_table(results: Sequence[VariantResult]) -> str:
    """The results as an aligned text table, one row per variant.

    >>> result = VariantResult(Variant("L2", 0.0, 3e-4), 1.0, 0.875, 0.6123, 0.0, 0.25, 0.0, 3.14)
    >>> print(format_table([result]))
    variant  l1 mode  l1  group l1  l2     train acc  val acc  gap    val loss  sparsity  near-zero
      dead units  seconds
    -------  -------  --  --------  -----  ---------  -------  -----  --------  --------  ---------
      ----------  -------
    L2       -        0   0         3e-04      1.000    0.875  0.125     0.612     0.000      0.250
           0.000      3.1
    """
    header = (
        "variant",
        "l1 mode",
        "l1",
        "group l1",
        "l2",
        "train acc",
        "val acc",
        "gap",
        "val loss",
        "sparsity",
        "near-zero",
        "dead units",
        "seconds",
    )
    rows = [
        (
            result.variant.name,
            result.variant.mode,
            _strength(result.variant.l1),
            _strength(result.variant.group_l1),
            _strength(result.variant.l2),
            f"{result.train_acc:.3f}",
            f"{result.val_acc:.3f}",
            f"{result.gap:.3f}",
            f"{result.val_loss:.3f}",
            f"{result.sparsity:.3f}",
            f"{result.near_zero:.3f}",
            f"{result.dead_units:.3f}",
            f"{result.seconds:.1f}",
        )
        for result in results
    ]
    left = header.index("train acc")  # the text columns before it are left-aligned, the numbers right
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    rule = tuple("-" * width for width in widths)

    def line(cells: Sequence[str]) -> str:
        text = [
            cell.ljust(width) if column < left else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(text).rstrip()

    return "\n".join([line(header), line(rule), *(line(row) for row in rows)])


def _strength(value: float) -> str:
    return "0" if value == 0 else f"{value:.0e}"


def plot_results(results: Sequence[VariantResult], path: str | Path) -> None:
    """Write a PNG figure: accuracies, gap, validation loss, zeros and dead units, the monitor's norms.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    figure_module = require("matplotlib.figure")
    names = [result.variant.name for result in results]
    positions = list(range(len(results)))
    figure = figure_module.Figure(figsize=(16, 8.5), layout="constrained")
    (accuracy, gap, loss), (weights, *norms) = figure.subplots(2, 3)
    _grouped_bars(
        accuracy,
        {"train": [r.train_acc for r in results], "val": [r.val_acc for r in results]},
        "accuracy after training",
    )
    accuracy.set_ylim(0, 1.15)
    _grouped_bars(gap, {"gap": [r.gap for r in results]}, "train acc - val acc (gap): overfitting")
    _grouped_bars(loss, {"val loss": [r.val_loss for r in results]}, "validation loss")
    _grouped_bars(
        weights,
        {
            f"|w| < {NEAR_ZERO_TOL:g}": [r.near_zero for r in results],
            "w == 0": [r.sparsity for r in results],
            "dead units": [r.dead_units for r in results],
        },
        f"fraction of regularized weights; of units (zero {GROUP_BY})",
    )
    weights.set_ylim(0, 1.15)
    for ax in (accuracy, gap, loss, weights):
        ax.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    for ax, name in zip(norms, CURVES, strict=True):
        for result in results:
            curve = result.curves.get(name, ())
            ax.plot(
                [step for step, _ in curve],
                [value for _, value in curve],
                label=result.variant.name,
                linestyle="--" if result.variant.l1_mode == "proximal" else "-",
            )
        ax.set_title(f"{name}, logged by RegularizationMonitor")
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    figure.suptitle("Same MLP, seed, initial weights and data; only the regularization differs")
    figure.savefig(path, format="png", dpi=100)


def _grouped_bars(ax: Any, series: Mapping[str, Sequence[float]], title: str) -> None:
    """Draw one group of bars per variant, one bar per series, labelled with its value."""
    width = 0.8 / len(series)
    narrow = len(series) > 2  # vertical labels, or they overlap
    for index, (label, values) in enumerate(series.items()):
        offset = (index - (len(series) - 1) / 2) * width
        bars = ax.bar([x + offset for x in range(len(values))], values, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90 if narrow else 0, padding=2)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(loc="upper left", fontsize=8, ncols=len(series))


def describe_setup(data: DigitsSplit, epochs: int, seed: int) -> str:
    """One line naming the data, the model and the training."""
    layers = "-".join(str(size) for size in [data.x_train.shape[1], *[HIDDEN] * DEPTH, 10])
    return (
        f"digits: {len(data.y_train)} training / {len(data.y_val)} validation images; "
        f"MLP {layers}; Adam lr {LR:g}, full batch, {epochs} epochs; seed {seed}"
    )


def parse_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**32 - 1, got {text!r}")
    return value


def parse_png_path(text: str) -> Path:
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"cannot write {text!r}: directory {str(path.parent)!r} does not exist"
        )
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its ``lightning-reg demo`` subcommand parser."""
    parser.description = (
        f"Train one over-parameterised MLP on {TRAIN_SIZE} of scikit-learn's digits {len(VARIANTS)} times: "
        "without regularization, with L2, L1 and Elastic Net (L1 in the loss), with L1 and Elastic Net by "
        "proximal steps and with a proximal group L1; print train/validation accuracy, their gap, "
        "validation loss, weight sparsity and dead units."
    )
    parser.add_argument(
        "--epochs",
        type=parse_positive_int,
        default=EPOCHS,
        help=f"full-batch epochs per variant (default {EPOCHS})",
    )
    parser.add_argument(
        "--seed", type=parse_seed, default=SEED, help=f"seed of the split and the weights (default {SEED})"
    )
    parser.add_argument("--plot", type=parse_png_path, metavar="PATH", help="also write a PNG figure to PATH")
    parser.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="keep the CSV logs (RegularizationMonitor's reg/* metrics) in DIR (default: a temporary "
        "directory, deleted at the end)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo with the options parsed by :func:`add_arguments`; return the exit status."""
    try:
        if args.plot is not None:
            require("matplotlib.figure")
        data = load_digits_split(TRAIN_SIZE, args.seed)
    except MissingDependencyError as error:
        print(f"lightning-reg demo: {error}", file=sys.stderr)
        return 1
    keep_logs = args.log_dir is not None
    log_dirs: contextlib.AbstractContextManager[str] = (
        contextlib.nullcontext(str(args.log_dir))
        if keep_logs
        else tempfile.TemporaryDirectory(prefix="lightning-reg-demo-")
    )
    with log_dirs as log_dir:
        results = train_all(data, epochs=args.epochs, seed=args.seed, log_dir=log_dir)
    print(describe_setup(data, args.epochs, args.seed))
    print()
    print(format_table(results))
    print()
    print(
        "gap = train acc - val acc; sparsity: fraction of the regularized weights exactly 0; near-zero: "
        f"|w| < {NEAR_ZERO_TOL:g};\ndead units: fraction of their {GROUP_BY} (a unit's incoming weights) "
        "entirely 0.\n"
        "L1 in the loss, trained by gradient steps, pushes weights towards 0 (near-zero) but rarely exactly "
        "to 0.\nl1_mode 'proximal' soft-thresholds them after each Adam step by l1 times the step Adam "
        "applied to each weight:\nexact zeros (sparsity), at strengths that compare with the loss-mode "
        "ones; group l1 zeroes whole rows (dead units)."
    )
    if args.plot is not None:
        plot_results(results, args.plot)
        print(f"figure: {args.plot}")
    if keep_logs:
        print(f"CSV logs (reg/* metrics per step): {args.log_dir}/<variant>/version_*/metrics.csv")
    return 0
