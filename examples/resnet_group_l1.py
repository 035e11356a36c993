"""A ResNet-18 trained with proximal group L1 over coupled channels, then shrunk to the channels it kept.

    python examples/resnet_group_l1.py             # width 16, 6 epochs (about a minute on 2 CPU cores)
    python examples/resnet_group_l1.py --quick     # width 8, 4 epochs
    python examples/resnet_group_l1.py --width 64  # torchvision's widths (slow on a CPU)

Needs the ``structured`` extra (Torch-Pruning traces the channels) and scikit-learn (the ``demo`` extra,
for its bundled digits): ``pip install 'lightning-reg[structured,demo]'``.

``group_by="channels"`` groups every slice of a channel together: a convolution's output row, its
BatchNorm scale, shift and running statistics, the next convolutions' input slices and, along a residual
stream, every tensor that adds into that channel. With ``l1_mode="proximal"`` each group is
block-soft-thresholded after every optimizer step, so whole channels become exactly zero.
``shrink(model, example_inputs)`` then returns a copy without them, with the same outputs in eval mode.

The network is torchvision's ``resnet18`` with a 3x3 stride-1 stem and no max pooling, for the 8x8
images of scikit-learn's digits. With ``--width 64`` (torchvision's widths) torchvision's own model is used
when torchvision imports, its stem replaced. Otherwise, and at the narrower default widths that keep the
example fast on a CPU, it is ``lightning_reg.demos.resnet.ResNet``: the same network, module names and
initialisation, written out in the package because torchvision's PyPI wheels do not import beside a
CPU build of torch. Lightning trains it with ``RegularizedModule``, which traces the channels on the
module's ``example_input_array``.

``BatchNormRecalibration`` recomputes the BatchNorm statistics from training batches at the end of
``fit``: under group L1 the running averages lag behind the shrinking convolutions, and eval-mode
accuracy would be understated (0.941 instead of 0.972 at the default strength before it was added).

The script prints the parameters before and after shrinking, the fraction of convolution channels
removed, the largest difference between the two models' outputs in eval mode, and both accuracies.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import BatchNormRecalibration, RegularizedModule, shrink
from lightning_reg.demos import as_images, load_digits_split
from lightning_reg.demos.resnet import ResNet

TORCHVISION_WIDTH = 64


def resnet18(width: int, classes: int = 10) -> tuple[nn.Module, str]:
    """ResNet-18 for 1-channel 8x8 images (3x3 stride-1 stem, no max pooling), and where it came from."""
    if width == TORCHVISION_WIDTH:
        try:
            from torchvision.models import resnet18 as torchvision_resnet18
        except (ImportError, OSError, RuntimeError):  # missing, or built for another torch
            pass
        else:
            model = torchvision_resnet18(num_classes=classes)  # random weights: nothing is downloaded
            model.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            model.maxpool = nn.Identity()
            return model, "torchvision.models.resnet18"
    model = ResNet(num_classes=classes, width=width, in_channels=1, small_stem=True)
    return model, "lightning_reg.demos.resnet.ResNet"


class Classifier(L.LightningModule):
    """An ordinary image classifier: cross-entropy, Adam with a one-cycle learning-rate schedule."""

    def __init__(self, net: nn.Module, example: Tensor, lr: float = 1e-2) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.example_input_array = example  # what group_by="channels" traces the network on

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.net(x)
        return logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        steps = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class RegularizedClassifier(RegularizedModule, Classifier):
    """The same classifier with the mixin in front."""


def count(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def channels(model: nn.Module) -> int:
    """The output channels of every convolution."""
    return sum(module.out_channels for module in model.modules() if isinstance(module, nn.Conv2d))


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="width 8 and 4 epochs")
    parser.add_argument("--width", type=int, default=None, help="channels of the first stage (default 16)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train (default 6)")
    parser.add_argument("--group-l1", type=float, default=3e-2, help="strength of the group term")
    args = parser.parse_args(argv)
    width = args.width or (8 if args.quick else 16)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    data = as_images(load_digits_split(train_size=1200))
    torch.manual_seed(0)
    net, source = resnet18(width)
    model = RegularizedClassifier(
        net=net, example=data.x_train[:2], group_l1=args.group_l1, group_by="channels", l1_mode="proximal"
    )
    trainer = L.Trainer(
        max_epochs=args.epochs or (4 if args.quick else 6),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # group L1 shrinks the convolutions in front of each BatchNorm for free; their running statistics
        # lag behind: recompute them from 20 training batches when fit ends, so that eval mode is honest
        callbacks=[BatchNormRecalibration(num_batches=20)],
    )
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=64, shuffle=True)
    trainer.fit(model, loader)

    net.eval()  # shrink checks the copy's outputs in eval mode; BatchNorm then uses its running statistics
    small = shrink(net, example_inputs=data.x_train[:2])
    with torch.no_grad():
        difference = float((small(data.x_val) - net(data.x_val)).abs().max())
    units = sum(coupling.count for coupling in model.regularizer.selection.couplings)
    dead = model.regularizer.statistics().summary()["dead_units"]
    before, after = channels(net), channels(small)
    print(f"{source}, width {width}, on 8x8 digits (1200 training, {len(data.x_val)} validation images)")
    print(
        f"proximal group L1 {args.group_l1:g} over {units} coupled channels (group_by='channels'); "
        f"{trainer.global_step} Adam steps"
    )
    print(f"dead coupled channels (the regularizer's dead_units): {dead:.1%}")
    print(f"parameters: {count(net):,} -> {count(small):,} ({count(small) / count(net):.1%} kept)")
    print(f"convolution channels: {before} -> {after} ({1 - after / before:.1%} removed)")
    print(f"largest output difference in eval mode, shrunk vs original: {difference:.2e}")
    print(
        f"validation accuracy: {accuracy(net, data.x_val, data.y_val):.3f} original, "
        f"{accuracy(small, data.x_val, data.y_val):.3f} shrunk"
    )


if __name__ == "__main__":
    main()
