"""The digits demo's data and model: scikit-learn's 8x8 digits and an over-parameterised MLP.

:func:`load_digits_split` gives 200 of the 1797 images for training (20 per class, few enough for the MLP
to memorise them) and the other 1597 for validation, standardized with the training statistics.
:class:`DigitsMLP` is a plain ReLU MLP (64-512-512-512-10, about 560k weights) trained with Adam, full
batch; :class:`RegularizedDigitsMLP` is the same module with the regularization keywords of
:class:`~lightning_reg.module.RegularizedModule`. ``lightning-reg demo`` and ``lightning-reg sweep`` train
them; scikit-learn comes with the ``demo`` extra and is imported only when the data are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multiclass_accuracy
from typing_extensions import override

from lightning_reg.module import RegularizedModule
from lightning_reg.utilities.optional import require

__all__ = [
    "EVAL_SPLITS",
    "LR",
    "TRAIN_SIZE",
    "Batch",
    "DigitsMLP",
    "DigitsSplit",
    "RegularizedDigitsMLP",
    "as_images",
    "load_digits_split",
]

#: Training images: 20 per class (stratified); the remaining 1597 images are the validation split.
TRAIN_SIZE = 200
#: Width and number of hidden layers of the MLP: far more weights than training images.
HIDDEN, DEPTH = 512, 3
#: Adam's learning rate; training is full-batch, one optimizer step per epoch.
LR = 2e-3

#: The evaluation splits, in the order of the validation dataloaders.
EVAL_SPLITS = ("train", "val")

Batch = tuple[Tensor, ...]


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


def _full_batch(x: Tensor, y: Tensor) -> DataLoader[Batch]:
    return DataLoader(TensorDataset(x, y), batch_size=len(x), shuffle=False)


def load_digits_split(train_size: int = TRAIN_SIZE, seed: int = 0) -> DigitsSplit:
    """Load scikit-learn's bundled digits, split them stratified, standardize with training statistics.

    Args:
        train_size: number of training images, stratified by class; the others are the validation split.
        seed: seed of the split.

    Raises:
        ~lightning_reg.MissingDependencyError: scikit-learn is not installed.
    """
    datasets = require("sklearn.datasets", "the demo", "demo")
    model_selection = require("sklearn.model_selection", "the demo", "demo")
    preprocessing = require("sklearn.preprocessing", "the demo", "demo")
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


def as_images(split: DigitsSplit, side: int = 8) -> DigitsSplit:
    """``split`` as ``1 x side x side`` images: the 8x8 digits, upsampled bilinearly when ``side > 8``.

    >>> x = torch.arange(64.0).reshape(1, 64)
    >>> as_images(DigitsSplit(x, torch.zeros(1), x, torch.zeros(1)), side=16).x_train.shape
    torch.Size([1, 1, 16, 16])
    """

    def images(x: Tensor) -> Tensor:
        pixels = x.reshape(-1, 1, 8, 8)
        if side == 8:
            return pixels
        return nn.functional.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False)

    return DigitsSplit(images(split.x_train), split.y_train, images(split.x_val), split.y_val)


class DigitsMLP(L.LightningModule):
    """A plain ReLU MLP classifier trained with Adam; it knows nothing about regularization.

    Args:
        hidden: width of each hidden layer.
        depth: number of hidden layers.
        lr: Adam's learning rate.
        in_features: input size (64 pixels).
        classes: number of classes.

    Example::

        >>> DigitsMLP(hidden=8, depth=2)(torch.zeros(5, 64)).shape
        torch.Size([5, 10])
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
    """:class:`DigitsMLP` with the regularization keywords: the mixin in front of an unchanged module.

    Example::

        >>> model = RegularizedDigitsMLP(hidden=8, depth=1, l1=1e-4, l1_mode="proximal")
        >>> model.regularizer.names
        ['net.0.weight', 'net.2.weight']
    """
