"""Structured sparsity that pays off: a ResNet-18 trained with proximal group L1 over coupled channels.

    .venv/bin/python benchmarks/structured.py            # ResNet-18 (width 32) on digits, 4 strengths
    .venv/bin/python benchmarks/structured.py --quick    # a smoke run

scikit-learn's 8x8 digits (1200 training images, 597 validation, standardized) are upsampled to 16x16
and fed to torchvision's ResNet-18 (:mod:`lightning_reg.demos.resnet`, a 3x3 stem for small images).
Each strength trains the same initial network with Adam and ``Regularizer(group_l1=g,
group_by="channels", l1_mode="proximal")``: block soft-thresholding of every coupled unit (a block's
inner channels, each residual stream's channels) after every step, by ``g`` times Adam's step. The
network's BatchNorm statistics are recomputed from the training images
(:func:`lightning_reg.recalibrate_batchnorm`: under group L1 the running averages lag behind the
shrinking convolutions, and eval-mode accuracy would be understated), the network is shrunk
(:func:`lightning_reg.shrink` with example inputs), and the table gives, for each strength and for the
unregularized baseline (``0``):

- validation accuracy before and after shrinking (equal: shrinking changes no output), and after
  ``--finetune`` epochs of plain Adam (one cycle at a tenth of the learning rate) on the shrunk copy,
  the usual last step of structured pruning;
- the fraction of channels removed (over every coupled unit);
- parameters and MACs (multiply-accumulates, per image; Torch-Pruning's ``count_ops_and_params``);
- CPU latency of the original and of the shrunk model (median of ``--repeats`` calls, eval mode, one
  batch of ``--batch`` images at 16x16 and at 64x64), and the speed-up, measured in one process, one
  after the other, so that a noisy machine slows both alike.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_reg import Regularizer, recalibrate_batchnorm, shrink
from lightning_reg.demos import DigitsSplit, as_images, load_digits_split
from lightning_reg.demos.resnet import ResNet
from lightning_reg.structured.channels import trace
from lightning_reg.utilities.optional import require


def train(
    model: nn.Module, data: DigitsSplit, strength: float, epochs: int, batch: int, lr: float
) -> nn.Module:
    """Adam with proximal group L1 over the coupled channels (plain Adam at ``strength == 0``)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if strength > 0:
        regularizer = Regularizer(
            model, group_l1=strength, group_by="channels", l1_mode="proximal", example_inputs=data.x_train[:2]
        )
        regularizer.attach(optimizer)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * -(-len(data.x_train) // batch)
    )
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(data.x_train), generator=generator)
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            optimizer.zero_grad()
            F.cross_entropy(model(data.x_train[index]), data.y_train[index]).backward()
            optimizer.step()
            schedule.step()
    return model


def training_batches(data: DigitsSplit, batch: int) -> list[Tensor]:
    """The training images in batches, in order: what the BatchNorm statistics are recomputed from."""
    return list(data.x_train.split(batch))


@torch.no_grad()
def accuracy(model: nn.Module, data: DigitsSplit) -> float:
    model.eval()
    return float((model(data.x_val).argmax(1) == data.y_val).float().mean())


@torch.inference_mode()
def latencies(models: list[nn.Module], x: Tensor, repeats: int) -> list[float]:
    """Median seconds of one forward pass of each model on ``x``, the models run in turn each round."""
    times: list[list[float]] = [[] for _ in models]
    for model in models:
        model.eval()
        model(x)  # warm-up
    for _ in range(repeats):
        for model, measured in zip(models, times, strict=True):
            start = time.perf_counter()
            model(x)
            measured.append(time.perf_counter() - start)
    return [statistics.median(measured) for measured in times]


def channel_count(model: nn.Module, example: Tensor) -> int:
    """Channels over every coupled unit of ``model`` (what group L1 may remove)."""
    return sum(traced.coupling.count for traced in trace(model, example).couplings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 3e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--finetune", type=int, default=5, help="epochs of plain Adam on the shrunk copy")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.strengths, args.width, args.epochs, args.finetune, args.repeats = [0.0, 1e-2], 4, 1, 1, 2
    tp = require("torch_pruning", "benchmarks/structured.py", "structured")
    data = as_images(load_digits_split(train_size=1200), side=16)
    torch.manual_seed(0)
    initial = ResNet(num_classes=10, width=args.width, in_channels=1, small_stem=True)
    example = data.x_train[:2]
    channels = channel_count(initial, example)
    print(
        f"ResNet-18 (width {args.width}, 3x3 stem) on digits at 16x16: {len(data.x_train)} training / "
        f"{len(data.x_val)} validation images; Adam lr {args.lr} (one cycle), batch {args.batch}, "
        f"{args.epochs} epochs; proximal group L1 over {channels} coupled channels; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; latency: median of {args.repeats}, "
        f"batch of {args.batch}"
    )
    header = (
        f"{'group_l1':>8s}  {'acc':>6s}  {'acc shrunk':>10s}  {'tuned':>6s}  {'removed':>7s}  "
        f"{'params':>13s}  {'MMACs':>13s}  {'ms 16x16':>15s}  {'x':>5s}  {'ms 64x64':>17s}  {'x':>5s}  "
        f"{'train s':>7s}"
    )
    print(header)
    print("-" * len(header))
    for strength in args.strengths:
        start = time.perf_counter()
        model = train(copy.deepcopy(initial), data, strength, args.epochs, args.batch, args.lr)
        seconds = time.perf_counter() - start
        recalibrate_batchnorm(model, training_batches(data, args.batch))  # honest eval-mode statistics
        small = shrink(model, example_inputs=example)
        shrunk_accuracy = accuracy(small, data)
        if strength > 0 and args.finetune:
            train(small, data, 0.0, args.finetune, args.batch, args.lr / 10)
            recalibrate_batchnorm(small, training_batches(data, args.batch))
        removed = 1 - channel_count(small, example) / channels
        ops, params = tp.utils.count_ops_and_params(model, example[:1])
        small_ops, small_params = tp.utils.count_ops_and_params(small, example[:1])
        x16 = data.x_val[: args.batch]
        x64 = F.interpolate(x16, size=(64, 64), mode="bilinear", align_corners=False)
        ms16 = [t * 1e3 for t in latencies([model, small], x16, args.repeats)]
        ms64 = [t * 1e3 for t in latencies([model, small], x64, args.repeats)]
        print(
            f"{strength:8.0e}  {accuracy(model, data):6.3f}  {shrunk_accuracy:10.3f}  "
            f"{accuracy(small, data):6.3f}  {removed:7.1%}  "
            f"{params / 1e6:5.2f}M->{small_params / 1e6:5.2f}M  {ops / 1e6:5.1f}->{small_ops / 1e6:6.1f}  "
            f"{ms16[0]:6.1f}->{ms16[1]:6.1f}  {ms16[0] / ms16[1]:5.2f}  {ms64[0]:7.1f}->{ms64[1]:7.1f}  "
            f"{ms64[0] / ms64[1]:5.2f}  {seconds:7.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
