"""Small real architectures for ``group_by="channels"``, their coupled units written out by hand, and the
formulas over those units.

- A torchvision-style ResNet (:class:`lightning_reg.demos.resnet.ResNet`: BasicBlocks, BatchNorm,
  downsample shortcuts) with stages of 1 and 2 blocks, and Hugging Face BERT and ViT from small configs
  (never downloaded), each with example inputs.
- Their units as the architecture defines them, read off its ``forward`` by hand, not from the tracer:
  which slice of which parameter belongs to channel ``c`` of each unit.
- The formulas the tests compare the package with: channel norms, the group term, the block soft
  threshold of plain SGD and the proximal operator in the optimizer's diagonal metric, solved per channel
  by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_reg.demos.resnet import ResNet

DTYPE = torch.float64  # every model here runs in float64: the comparisons are to rounding
LAYERS = (2, 1, 1, 1)  # stage 1 has two blocks: the residual stream crosses a block boundary
WIDTH = 4  # stage widths 4, 8, 16, 32
CLASSES = 3
IMAGE = 8  # 8x8 images; the small stem keeps them 8x8 in stage 1


# -- models and inputs ---------------------------------------------------------------------------------


def resnet(seed: int = 0) -> ResNet:
    """``ResNet(layers=(2, 1, 1, 1), width=4)`` with the small stem, in float64."""
    torch.manual_seed(seed)
    return ResNet(layers=LAYERS, num_classes=CLASSES, width=WIDTH, small_stem=True).to(DTYPE)


def images(n: int = 2, seed: int = 1) -> Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))


def image_data(n: int = 16, seed: int = 2) -> TensorDataset:
    """``n`` random images with random labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, IMAGE, IMAGE, dtype=DTYPE, generator=generator)
    return TensorDataset(x, torch.randint(0, CLASSES, (n,), generator=generator))


BERT_CONFIG: dict[str, Any] = {
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 16,
    "num_labels": 3,
}
VIT_CONFIG: dict[str, Any] = {
    "image_size": 16,
    "patch_size": 4,
    "num_channels": 3,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "num_labels": 3,
}
HEAD = 8  # hidden_size / num_attention_heads, in both


def bert(seed: int = 0) -> nn.Module:
    """``BertForSequenceClassification`` from :data:`BERT_CONFIG`, random weights, float64."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**BERT_CONFIG)).to(DTYPE)


def bert_inputs(n: int = 2, length: int = 8, seed: int = 1) -> dict[str, Tensor]:
    """Keyword inputs: token ids and an attention mask that hides the last two tokens of the first row."""
    ids = torch.randint(
        0, BERT_CONFIG["vocab_size"], (n, length), generator=torch.Generator().manual_seed(seed)
    )
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def vit(seed: int = 0) -> nn.Module:
    """``ViTForImageClassification`` from :data:`VIT_CONFIG`, random weights, float64."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**VIT_CONFIG)).to(DTYPE)


def vit_inputs(n: int = 2, seed: int = 1) -> Tensor:
    size = VIT_CONFIG["image_size"]
    return torch.randn(n, 3, size, size, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, inputs: Any) -> Tensor:
    """The model's output (its logits for the Hugging Face models), called as the tracer calls it."""
    output = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    result: Tensor = output if isinstance(output, Tensor) else output.logits
    return result


# -- the units, by hand ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """``count`` channels; channel ``c`` is ``narrow(axis, c * width, width)`` of each ``(name, axis)``.

    ``width`` is 1 for a convolution's or linear layer's channel, the head size for an attention head.
    """

    name: str
    count: int
    slices: tuple[tuple[str, int], ...]
    width: int = 1

    def pieces(self, params: dict[str, Tensor], channel: int) -> list[Tensor]:
        """Every slice of ``channel``: views into the parameters (writable under ``no_grad``)."""
        return [params[name].narrow(axis, channel * self.width, self.width) for name, axis in self.slices]

    def names(self) -> set[str]:
        """The parameters it has slices of."""
        return {name for name, _ in self.slices}

    def size(self, params: dict[str, Tensor]) -> int:
        """Entries per channel, over all slices."""
        return sum(
            params[name].numel() // params[name].shape[axis] * self.width for name, axis in self.slices
        )


def prefixed(units: Iterable[Unit], prefix: str) -> list[Unit]:
    """The same units inside a module that holds the model as ``prefix`` (``"net."``)."""
    return [
        Unit(prefix + unit.name, unit.count, tuple((prefix + n, a) for n, a in unit.slices), unit.width)
        for unit in units
    ]


def _bn(name: str) -> tuple[tuple[str, int], ...]:
    """A BatchNorm's scale and shift, along their only axis."""
    return ((f"{name}.weight", 0), (f"{name}.bias", 0))


def _inner(block: str, planes: int) -> Unit:
    """A BasicBlock's hidden channels: conv1's output row, bn1, conv2's input slice."""
    return Unit(
        f"{block}.conv1",
        planes,
        ((f"{block}.conv1.weight", 0), *_bn(f"{block}.bn1"), (f"{block}.conv2.weight", 1)),
    )


#: ``resnet()``'s units. A residual stream is named by the layer the tracer starts it from: the stem's
#: convolution in stage 1, the downsample convolution in the other stages.
RESNET_UNITS: tuple[Unit, ...] = (
    _inner("layer1.0", 4),
    _inner("layer1.1", 4),
    _inner("layer2.0", 8),
    _inner("layer3.0", 16),
    _inner("layer4.0", 32),
    # Stage 1's stream: the stem, both blocks' outputs (no downsample: same width), read by every conv
    # that takes the stream: both blocks' conv1 and stage 2's conv1 and downsample.
    Unit(
        "conv1",
        4,
        (
            ("conv1.weight", 0),
            *_bn("bn1"),
            ("layer1.0.conv2.weight", 0),
            *_bn("layer1.0.bn2"),
            ("layer1.1.conv2.weight", 0),
            *_bn("layer1.1.bn2"),
            ("layer1.0.conv1.weight", 1),
            ("layer1.1.conv1.weight", 1),
            ("layer2.0.conv1.weight", 1),
            ("layer2.0.downsample.0.weight", 1),
        ),
    ),
    *(
        Unit(
            f"layer{stage}.0.downsample.0",
            WIDTH * 2 ** (stage - 1),
            (
                (f"layer{stage}.0.downsample.0.weight", 0),
                *_bn(f"layer{stage}.0.downsample.1"),
                (f"layer{stage}.0.conv2.weight", 0),
                *_bn(f"layer{stage}.0.bn2"),
                *(
                    ((f"layer{stage + 1}.0.conv1.weight", 1), (f"layer{stage + 1}.0.downsample.0.weight", 1))
                    if stage < 4
                    else (("fc.weight", 1),)  # stage 4's stream is pooled into fc's columns
                ),
            ),
        )
        for stage in (2, 3, 4)
    ),
)
#: The weights (``dim() > 1``) that write into each unit: what ``exclude`` and ``rules`` act through.
RESNET_PRODUCERS: dict[str, set[str]] = {
    **{
        f"{block}.conv1": {f"{block}.conv1.weight"}
        for block in ("layer1.0", "layer1.1", "layer2.0", "layer3.0", "layer4.0")
    },
    "conv1": {"conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight"},
    **{
        f"layer{s}.0.downsample.0": {f"layer{s}.0.downsample.0.weight", f"layer{s}.0.conv2.weight"}
        for s in (2, 3, 4)
    },
}


def _mlp(name: str, into: str, out: str, count: int) -> Unit:
    """A transformer MLP's hidden units: ``into``'s row and bias entry, ``out``'s input column."""
    return Unit(name, count, ((f"{into}.weight", 0), (f"{into}.bias", 0), (f"{out}.weight", 1)))


def _heads(name: str, projections: Sequence[str], out: str) -> Unit:
    """One group per head: its rows of the query, key and value projections and biases, and the output
    projection's columns."""
    rows = tuple((f"{p}.{kind}", 0) for p in projections for kind in ("weight", "bias"))
    return Unit(name, 2, (*rows, (f"{out}.weight", 1)), width=HEAD)


def bert_units() -> list[Unit]:
    units: list[Unit] = []
    for layer in range(2):
        block = f"bert.encoder.layer.{layer}"
        self_attention = f"{block}.attention.self"
        units.append(
            _heads(
                self_attention,
                [f"{self_attention}.{p}" for p in ("query", "key", "value")],
                f"{block}.attention.output.dense",
            )
        )
        units.append(
            _mlp(f"{block}.intermediate.dense", f"{block}.intermediate.dense", f"{block}.output.dense", 32)
        )
    # The pooler's tanh(0) = 0: a dead pooler unit feeds the classifier nothing.
    units.append(_mlp("bert.pooler.dense", "bert.pooler.dense", "classifier", 16))
    return units


def vit_units() -> list[Unit]:
    units: list[Unit] = []
    for layer in range(2):
        block = f"vit.layers.{layer}"
        attention = f"{block}.attention"
        units.append(
            _heads(
                attention, [f"{attention}.{p}" for p in ("q_proj", "k_proj", "v_proj")], f"{attention}.o_proj"
            )
        )
        units.append(_mlp(f"{block}.mlp.fc1", f"{block}.mlp.fc1", f"{block}.mlp.fc2", 32))
    return units


# -- formulas over units -----------------------------------------------------------------------------------


def params_of(model: nn.Module) -> dict[str, Tensor]:
    return dict(model.named_parameters())


def channel_norms(params: dict[str, Tensor], unit: Unit) -> Tensor:
    """``||w_c||`` of each channel: the square root of the sum of squares of all its slices."""
    return torch.stack(
        [torch.sqrt(sum(piece.square().sum() for piece in unit.pieces(params, c))) for c in range(unit.count)]
    )


def group_term(
    params: dict[str, Tensor], units: Iterable[Unit], strengths: dict[str, float] | float
) -> Tensor:
    """``sum_u g_u * sum_c ||w_c||``, differentiable (no channel here is exactly zero)."""
    total = torch.zeros((), dtype=DTYPE)
    for unit in units:
        strength = strengths if isinstance(strengths, float) else strengths[unit.name]
        total = total + strength * channel_norms(params, unit).sum()
    return total


def dead(params: dict[str, Tensor], unit: Unit) -> list[int]:
    """The channels whose every slice is exactly zero."""
    return [c for c in range(unit.count) if all(bool((p == 0).all()) for p in unit.pieces(params, c))]


@torch.no_grad()
def weaken(params: dict[str, Tensor], unit: Unit, channels: Iterable[int], factor: float) -> None:
    """Multiply every slice of ``channels`` by ``factor``: channels a few proximal steps will remove."""
    for c in channels:
        for piece in unit.pieces(params, c):
            piece.mul_(factor)


@torch.no_grad()
def zero(params: dict[str, Tensor], unit: Unit, channels: Iterable[int]) -> None:
    weaken(params, unit, channels, 0.0)


@torch.no_grad()
def block_soft_threshold(params: dict[str, Tensor], unit: Unit, threshold: float) -> None:
    """Plain SGD's proximal step, channel by channel: ``w_c <- w_c * max(0, 1 - threshold / ||w_c||)``."""
    for c in range(unit.count):
        pieces = unit.pieces(params, c)
        norm = math.sqrt(sum(float(piece.square().sum()) for piece in pieces))
        factor = max(0.0, 1 - threshold / norm) if norm > 0 else 0.0
        for piece in pieces:
            piece.mul_(factor)


def adam_steps(optimizer: torch.optim.Optimizer, param: Tensor) -> Tensor:
    """The step Adam applies per unit of gradient, per entry, from its state after a step:
    ``s = lr / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)`` (torch's update ``w -= s * m``)."""
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    state = optimizer.state[param]
    beta1, beta2 = group["betas"]
    t = float(state["step"])
    steps: Tensor = (
        group["lr"] / (1 - beta1**t) / ((state["exp_avg_sq"] / (1 - beta2**t)).sqrt() + group["eps"])
    )
    return steps


def metric_prox(z: np.ndarray, s: np.ndarray, strength: float) -> np.ndarray:
    """``argmin_x sum_i (x_i - z_i)^2 / (2 s_i) + strength * ||x||`` for one channel, by bisection.

    Zero when ``||z / s|| <= strength``; else ``x_i = z_i * nu / (nu + strength * s_i)`` with ``nu = ||x||``
    the root of ``sum_i (z_i / (nu + strength * s_i))^2 = 1``, which decreases in ``nu`` from above 1
    at ``nu = 0`` to below 1 at ``nu = ||z||``.
    """
    pull = strength * s
    if np.linalg.norm(z / pull) <= 1:
        return np.zeros_like(z)
    low, high = 0.0, float(np.linalg.norm(z))
    for _ in range(100):  # the bracket shrinks to 2^-100 of ||z||: below float64 rounding
        middle = (low + high) / 2
        if np.sum((z / (middle + pull)) ** 2) > 1:
            low = middle
        else:
            high = middle
    nu = (low + high) / 2
    result: np.ndarray = z * nu / (nu + pull)
    return result


@torch.no_grad()
def metric_prox_(params: dict[str, Tensor], steps: dict[str, Tensor], unit: Unit, strength: float) -> None:
    """:func:`metric_prox` applied to each channel of ``unit`` independently, in place."""
    for c in range(unit.count):
        pieces = unit.pieces(params, c)
        step_pieces = [steps[name].narrow(axis, c * unit.width, unit.width) for name, axis in unit.slices]
        z = np.concatenate([piece.detach().numpy().ravel() for piece in pieces])
        s = np.concatenate([piece.detach().numpy().ravel() for piece in step_pieces])
        x = metric_prox(z, s, strength)
        start = 0
        for piece in pieces:
            piece.copy_(torch.from_numpy(x[start : start + piece.numel()].reshape(piece.shape)))
            start += piece.numel()


# -- a LightningModule over the ResNet ----------------------------------------------------------------------


class LitResNet(L.LightningModule):
    """An ordinary classifier over :func:`resnet`: cross-entropy, SGD or Adam on every parameter."""

    def __init__(self, lr: float = 0.1, adam: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = resnet(seed)
        self.example_input_array = images()

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.net(x)
        return result

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams["adam"]:
            return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def bn_mlp(seed: int = 0) -> nn.Sequential:
    """``Linear(5, 16)``, ``BatchNorm1d``, ``Tanh``, ``Linear(16, 1)``: one coupled unit of 16 channels
    (``0.weight`` rows, ``0.bias``, ``1.weight``, ``1.bias``, ``3.weight`` columns), float32."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))


BN_MLP_UNIT = Unit("0", 16, (("0.weight", 0), ("0.bias", 0), ("1.weight", 0), ("1.bias", 0), ("3.weight", 1)))


# -- the group step over units that cross, by hand -----------------------------------------------------------


def colour_order(units: Sequence[Unit]) -> list[Unit]:
    """``units`` in the order the group step runs them: each takes the least colour that no earlier unit
    sharing a parameter with it has, and the colours run one after the other."""
    colours: dict[str, int] = {}
    for unit in units:
        taken = {colours[other.name] for other in units[: units.index(unit)] if unit.names() & other.names()}
        colours[unit.name] = next(value for value in range(len(units) + 1) if value not in taken)
    return sorted(units, key=lambda unit: colours[unit.name])


class CrossingSweep:
    """Dykstra's sweep over units that cross, one per optimizer step, written from its definition.

    The units run in :func:`colour_order`, each channel's exact proximal operator (:func:`metric_prox`)
    in turn. Where two units share a parameter (a residual block's ``conv2``: its rows in one unit, its
    input slices in another), the dual variable of the later one is kept from step to step: the earlier
    unit sees ``x - s * y``, the later one ``x' = x + s * y`` and keeps ``y = (x' - prox(x')) / s``;
    the weights take ``prox(x')`` where the earlier unit left the entry non-zero, ``0`` where it did not.
    """

    def __init__(self, units: Sequence[Unit], strengths: dict[str, float]) -> None:
        self.units = colour_order(units)
        self.strengths = strengths
        holders: dict[str, list[str]] = {}
        for unit in self.units:
            for name, _ in unit.slices:
                holders.setdefault(name, []).append(unit.name)
        self.first = {name: held[0] for name, held in holders.items() if len(held) == 2}
        self.duals: dict[str, Tensor] = {}

    @torch.no_grad()
    def __call__(self, params: dict[str, Tensor], steps: dict[str, Tensor] | float) -> None:
        for unit in self.units:
            for c in range(unit.count):
                inputs, step_pieces, alive = [], [], []
                for name, axis in unit.slices:
                    piece = params[name].narrow(axis, c * unit.width, unit.width)
                    step = (
                        torch.full_like(piece, steps)
                        if isinstance(steps, float)
                        else steps[name].narrow(axis, c * unit.width, unit.width)
                    )
                    x = piece.clone()
                    alive.append(torch.ones_like(x))
                    if name in self.first:
                        dual = self.duals.setdefault(name, torch.zeros_like(params[name]))
                        dual_piece = dual.narrow(axis, c * unit.width, unit.width)
                        if self.first[name] == unit.name:
                            x -= step * dual_piece
                        else:
                            alive[-1] = (x != 0).to(x.dtype)
                            x += step * dual_piece
                    inputs.append(x)
                    step_pieces.append(step)
                z = np.concatenate([x.numpy().ravel() for x in inputs])
                s = np.concatenate([step.numpy().ravel() for step in step_pieces])
                out = metric_prox(z, s, self.strengths[unit.name])
                start = 0
                for (name, axis), x, step, kept in zip(unit.slices, inputs, step_pieces, alive, strict=True):
                    piece = params[name].narrow(axis, c * unit.width, unit.width)
                    result = torch.from_numpy(out[start : start + x.numel()].reshape(x.shape))
                    start += x.numel()
                    if name in self.first and self.first[name] != unit.name:
                        self.duals[name].narrow(axis, c * unit.width, unit.width).copy_((x - result) / step)
                    piece.copy_(result * kept)
