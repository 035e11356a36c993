"""``shrink``: the smaller copy computes what the original computes, with the parameters counted by hand.

Every expected width, parameter count and folded bias is worked out here from the zeros the test plants,
not read back from ``shrink``'s result.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence

import lightning.pytorch as L
import pytest
import torch
from architectures import (
    CLASSES,
    HEAD,
    RESNET_UNITS,
    Unit,
    bert,
    bert_inputs,
    bert_units,
    dead,
    image_data,
    images,
    logits,
    params_of,
    resnet,
    vit,
    vit_inputs,
    vit_units,
    weaken,
    zero,
)
from helpers import Batch, loader, quiet_trainer, regression_data
from torch import Tensor, nn
from torch.nn.utils import prune
from torch.utils.data import TensorDataset

from lightning_reg import RegularizedModule, Regularizer
from lightning_reg.structured.shrink import shrink

DTYPE = torch.float64


def mlp(*sizes: int, activation: Callable[[], nn.Module] = nn.Tanh, bias: bool = True) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation()`` between them, in float64."""
    torch.manual_seed(0)
    children: list[nn.Module] = []
    for index, (features, width) in enumerate(itertools.pairwise(sizes)):
        if index:
            children.append(activation())
        children.append(nn.Linear(features, width, bias=bias, dtype=DTYPE))
    return nn.Sequential(*children)


def linear_count(*sizes: int, bias: bool = True) -> int:
    """Parameters of Linear layers of the given sizes, by the formula ``in * out + out``."""
    return sum(i * o + (o if bias else 0) for i, o in itertools.pairwise(sizes))


def count(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def inputs(features: int, n: int = 64) -> Tensor:
    return torch.randn(n, features, dtype=DTYPE, generator=torch.Generator().manual_seed(1))


def assert_same_outputs(small: nn.Module, original: nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(small(x), original(x), rtol=0, atol=1e-12)


def test_units_that_feed_nothing_are_dropped() -> None:
    net = mlp(6, 8, 3, activation=nn.ReLU)
    with torch.no_grad():
        net[2].weight[:, [1, 5]] = 0.0
    kept = [0, 2, 3, 4, 6, 7]
    small = shrink(net)
    assert small[0].weight.shape == (6, 6)
    assert small[2].weight.shape == (3, 6)
    assert torch.equal(small[0].weight, net[0].weight[kept])
    assert torch.equal(small[0].bias, net[0].bias[kept])
    assert torch.equal(small[2].weight, net[2].weight[:, kept])
    assert torch.equal(small[2].bias, net[2].bias)
    assert count(small) == count(net) - 2 * (6 + 1) - 2 * 3
    # Close, not bitwise: the matrix products' blocking changes with their sizes (1 ulp apart here).
    assert_same_outputs(small, net, inputs(6))


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


@pytest.mark.parametrize(
    ("activation", "formula"),
    [(nn.Tanh, torch.tanh), (nn.Sigmoid, lambda x: 1 / (1 + torch.exp(-x))), (nn.GELU, gelu)],
)
def test_units_that_receive_nothing_are_folded_into_the_next_bias(
    activation: Callable[[], nn.Module], formula: Callable[[Tensor], Tensor]
) -> None:
    net = mlp(6, 8, 3, activation=activation)
    with torch.no_grad():
        net[0].bias.copy_(torch.linspace(-1.5, 2.0, 8))
        net[0].weight[[0, 3]] = 0.0
    small = shrink(net)
    dead, kept = [0, 3], [1, 2, 4, 5, 6, 7]
    expected_bias = net[2].bias + net[2].weight[:, dead] @ formula(net[0].bias[dead])
    torch.testing.assert_close(small[2].bias, expected_bias, rtol=0, atol=1e-15)
    assert torch.equal(small[2].weight, net[2].weight[:, kept])
    assert count(small) == count(net) - 2 * (6 + 1) - 2 * 3
    assert_same_outputs(small, net, inputs(6))


def test_both_kinds_in_a_deep_net_with_dropout() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(5, 7, dtype=DTYPE),
        nn.Tanh(),
        nn.Linear(7, 6, dtype=DTYPE),
        nn.Dropout(0.3),
        nn.GELU(),
        nn.Linear(6, 4, dtype=DTYPE),
        nn.Sigmoid(),
        nn.Linear(4, 2, dtype=DTYPE),
    ).eval()
    with torch.no_grad():
        net[2].weight[:, 2] = 0.0  # hidden layer 1: unit 2 feeds nothing
        net[0].weight[5] = 0.0  # ... unit 5 is the constant tanh(b[5])
        net[2].weight[0] = 0.0  # hidden layer 2: unit 0 is the constant gelu(b[0])
        net[5].weight[:, 4] = 0.0  # ... unit 4 feeds nothing
        net[5].weight[1] = 0.0  # hidden layer 3: unit 1 is the constant sigmoid(b[1])
    small = shrink(net)
    assert [type(child) for child in small] == [type(child) for child in net]
    assert [small[index].weight.shape for index in (0, 2, 5, 7)] == [(5, 5), (4, 5), (3, 4), (2, 3)]
    assert count(net) == linear_count(5, 7, 6, 4, 2)
    assert count(small) == linear_count(5, 5, 4, 3, 2)
    assert_same_outputs(small, net, inputs(5))


def test_removals_cascade_both_ways() -> None:
    net = mlp(4, 3, 3, 2)
    with torch.no_grad():
        net[0].weight[0] = 0.0  # unit 0 of hidden layer 1 is a constant ...
        net[2].weight[1, 1:] = 0.0  # ... the only input of unit 1 of hidden layer 2: a constant once folded
        net[4].weight[:, 2] = 0.0  # unit 2 of hidden layer 2 feeds nothing ...
        net[2].weight[:2, 2] = 0.0  # ... and is the only unit fed by unit 2 of hidden layer 1
    small = shrink(net)
    assert [small[index].weight.shape for index in (0, 2, 4)] == [(1, 4), (1, 1), (2, 1)]
    assert count(small) == linear_count(4, 1, 1, 2)
    assert_same_outputs(small, net, inputs(4))


@pytest.mark.parametrize(("activation", "value"), [(nn.Sigmoid, 0.5), (nn.ReLU, 0.0)])
def test_a_layer_without_bias(activation: Callable[[], nn.Module], value: float) -> None:
    net = mlp(4, 5, 3, activation=activation, bias=False)
    with torch.no_grad():
        net[0].weight[2] = 0.0  # unit 2 outputs act(0) = value
    small = shrink(net)
    assert small[0].bias is None
    removed = 4 + 3
    if value:
        assert small[2].bias is not None, "a bias is created to hold the constant"
        torch.testing.assert_close(small[2].bias, value * net[2].weight[:, 2], rtol=0, atol=0)
        removed -= 3
    else:
        assert small[2].bias is None, "no bias is created for a zero constant"
    assert count(small) == count(net) - removed
    assert_same_outputs(small, net, inputs(4))


def test_nothing_to_remove_gives_an_equal_copy() -> None:
    net = mlp(4, 6, 5, 2)
    small = shrink(net)
    assert small is not net
    assert repr(small) == repr(net)
    for (name, got), (_, want) in zip(small.state_dict().items(), net.state_dict().items(), strict=True):
        assert torch.equal(got, want), name
        assert got.data_ptr() != want.data_ptr(), f"{name} is shared with the original"
    x = inputs(4)
    with torch.no_grad():
        assert torch.equal(small(x), net(x))


@pytest.mark.parametrize("survivors", [0, 1])
def test_a_layer_may_shrink_to_width_zero_or_one(survivors: int) -> None:
    net = mlp(4, 5, 3, 2)
    with torch.no_grad():
        net[0].weight[survivors:] = 0.0
    small = shrink(net)
    if survivors:
        assert [small[index].weight.shape for index in (0, 2, 4)] == [(1, 4), (3, 1), (2, 3)]
        assert count(small) == linear_count(4, 1, 3, 2)
    else:  # the whole net is a constant: both hidden layers go, the last bias holds it
        assert [small[index].weight.shape for index in (0, 2, 4)] == [(0, 4), (0, 0), (2, 0)]
        assert count(small) == 2
        b0, b2 = net[0].bias, net[2].bias
        constant = net[4].bias + net[4].weight @ torch.tanh(b2 + net[2].weight @ torch.tanh(b0))
        torch.testing.assert_close(small[4].bias, constant, rtol=0, atol=1e-15)
    assert_same_outputs(small, net, inputs(4))


def test_the_original_is_unchanged() -> None:
    net = mlp(5, 7, 6, 2)
    with torch.no_grad():
        net[0].weight[1] = 0.0
        net[2].weight[:, 3] = 0.0
        net[4].weight[:, 0] = 0.0
    before = copy.deepcopy(net.state_dict())
    text = repr(net)
    small = shrink(net)
    assert count(small) < count(net)
    assert repr(net) == text
    after = net.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    shared = {p.data_ptr() for p in net.parameters()} & {p.data_ptr() for p in small.parameters()}
    assert not shared


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_device_and_requires_grad_are_kept(dtype: torch.dtype, device: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 6, dtype=dtype, device=device),
        nn.Sigmoid(),
        nn.Linear(6, 5, bias=False, dtype=dtype, device=device),
        nn.ReLU(),
        nn.Linear(5, 2, dtype=dtype, device=device),
    )
    net[0].bias.requires_grad_(False)
    net[4].weight.requires_grad_(False)
    with torch.no_grad():
        net[0].weight[3] = 0.0  # sigmoid(b[3]) folds into net[2], which gets a bias
        net[4].weight[:, 1] = 0.0
    small = shrink(net)
    assert small[2].bias is not None
    wanted = dict(net.named_parameters()) | {"2.bias": net[2].weight}  # a new bias follows its weight
    got = dict(small.named_parameters())
    assert got.keys() == wanted.keys()
    for name, param in got.items():
        assert isinstance(param, nn.Parameter)
        assert (param.dtype, param.device, param.requires_grad) == (
            wanted[name].dtype,
            wanted[name].device,
            wanted[name].requires_grad,
        ), name
    assert count(small) == (4 * 5 + 5) + (5 * 4 + 4) + (4 * 2 + 2)  # widths 5 and 4, net[2] with a bias
    x = inputs(4).to(dtype=dtype, device=device)
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x))


class Regression(L.LightningModule):
    """A two-hidden-layer MLP regression in float64, trained by SGD."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = mlp(5, 12, 12, 1)
        self.net[3] = nn.Sigmoid()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


class RegRegression(RegularizedModule, Regression):
    pass


def test_shrinks_what_proximal_group_l1_zeroed_in_training() -> None:
    data = TensorDataset(*(tensor.to(DTYPE) for tensor in regression_data().tensors))
    model = RegRegression(group_l1=0.3, l1_mode="proximal", group_by="rows", exclude=["net.4.*"])
    quiet_trainer(max_epochs=10).fit(model, loader(data))
    net = model.net
    dead = [int((net[index].weight == 0).all(dim=1).sum()) for index in (0, 2)]
    assert all(dead), f"group L1 should have zeroed rows of both hidden layers, zeroed {dead}"
    feeds_nothing = [int((net[index].weight == 0).all(dim=0).sum()) for index in (2, 4)]
    assert feeds_nothing == [0, 0], "rows only: every unit still feeds the next layer"
    small = shrink(net)
    widths = (12 - dead[0], 12 - dead[1])
    assert [small[index].weight.shape for index in (0, 2, 4)] == [
        (widths[0], 5),
        widths[::-1],
        (1, widths[1]),
    ]
    assert count(small) == linear_count(5, *widths, 1) < count(net)
    assert_same_outputs(small, net, inputs(5))
    assert_same_outputs(small, net, data.tensors[0])


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_channels(dims: int) -> None:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    torch.manual_seed(0)
    net = nn.Sequential(
        conv(3, 6, 3, padding=1, dtype=DTYPE), nn.ReLU(), conv(6, 4, 3, padding=1, dtype=DTYPE)
    )
    with torch.no_grad():
        net[0].weight[1] = 0.0
        net[0].bias[1] = 0.0  # channel 1 is relu(0) = 0 everywhere
        net[0].weight[2] = 0.0
        net[0].bias[2] = -0.5  # channel 2 is relu(-0.5) = 0 everywhere
        net[0].weight[3] = 0.0
        net[0].bias[3] = 0.5  # channel 3 is 0.5 inside, but net[2] pads it with 0: kept
        net[2].weight[:, 4] = 0.0  # channel 4 feeds nothing
    small = shrink(net)
    kept = [0, 3, 5]
    kernel = 3**dims
    assert small[0].weight.shape == (3, 3) + (3,) * dims
    assert small[2].weight.shape == (4, 3) + (3,) * dims
    assert (small[0].out_channels, small[2].in_channels) == (3, 3)
    assert torch.equal(small[0].weight, net[0].weight[kept])
    assert torch.equal(small[2].weight, net[2].weight[:, kept])
    assert torch.equal(small[2].bias, net[2].bias)
    assert count(small) == count(net) - 3 * (3 * kernel + 1) - 3 * (4 * kernel)
    x = torch.randn((2, 3) + (5,) * dims, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    assert_same_outputs(small, net, x)


class Scale(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 2 * x


def pruned() -> nn.Sequential:
    net = mlp(4, 4, 2)
    prune.l1_unstructured(net[0], "weight", amount=0.5)
    return net


def shared() -> nn.Sequential:
    layer = nn.Linear(4, 4)
    return nn.Sequential(layer, nn.ReLU(), layer)


REFUSED: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "layer_norm": (
        lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)),
        "child 1 (LayerNorm)",
    ),
    "batch_norm": (
        lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)),
        "child 1 (BatchNorm1d)",
    ),
    "softmax": (
        lambda: nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1), nn.Linear(4, 2)),
        "child 1 (Softmax)",
    ),
    "nested": (
        lambda: nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU()), nn.Linear(4, 2)),
        "child 1 (Sequential)",
    ),
    "custom": (lambda: nn.Sequential(nn.Linear(4, 4), Scale(), nn.Linear(4, 2)), "child 1 (Scale)"),
    "not_sequential": (lambda: nn.Linear(4, 2), "Invalid module: a Linear"),
    "mismatch": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(4, 2)),
        "child 0 (Linear) has 5 outputs but child 2 (Linear) takes 4 inputs",
    ),
    "flatten": (
        lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)),
        "child 2 (Flatten) of the nn.Sequential; shrink does not cross",
    ),
    "mixed": (
        lambda: nn.Sequential(nn.Conv1d(1, 2, 3), nn.Linear(4, 2)),
        "mix of child 0 (Conv1d) and child 1 (Linear)",
    ),
    "groups": (
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Conv2d(4, 1, 3)),
        "child 0 (Conv2d) with groups=2",
    ),
    "pruned": (pruned, "child 0 (Linear): it holds weight_mask, weight_orig"),
    "shared": (shared, "child 2 (Linear): it shares its module or parameters with child 0"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refusals_name_the_child_and_what_is_accepted(case: str) -> None:
    make, message = REFUSED[case]
    module = make()
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        shrink(module)
    if case not in ("mismatch", "shared"):
        assert "shrink accepts an nn.Sequential of nn.Linear layers" in str(info.value)
        assert "Tanh" in str(info.value)


# -- traced models: shrink(model, example_inputs) ------------------------------------------------------------


def snapshot_state(model: nn.Module) -> dict[str, Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def assert_state_unchanged(model: nn.Module, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} of the original changed"


def resnet_count(stream: Sequence[int], hidden: Mapping[str, int]) -> int:
    """Parameters of ``architectures.resnet()`` with these widths, from its layers' shapes: ``stream`` the
    4 stages' widths, ``hidden`` each block's hidden width (``layer1.0``, ``layer1.1``, ``layer2.0``, ...)."""
    s1, s2, s3, s4 = stream
    total = 3 * s1 * 9 + 2 * s1  # stem: 3x3 conv from RGB, BN
    for block in ("layer1.0", "layer1.1"):  # conv1, bn1, conv2, bn2; no downsample
        h = hidden[block]
        total += s1 * h * 9 + 2 * h + h * s1 * 9 + 2 * s1
    for block, (before, after) in {"layer2.0": (s1, s2), "layer3.0": (s2, s3), "layer4.0": (s3, s4)}.items():
        h = hidden[block]
        total += before * h * 9 + 2 * h + h * after * 9 + 2 * after + before * after + 2 * after  # + 1x1, BN
    return total + s4 * CLASSES + CLASSES  # fc


FULL_HIDDEN = {"layer1.0": 4, "layer1.1": 4, "layer2.0": 8, "layer3.0": 16, "layer4.0": 32}


def warmed_resnet() -> nn.Module:
    """``resnet()`` whose BN running statistics are no longer 0 and 1 (a few forward passes in training)."""
    model = resnet()
    with torch.no_grad():
        for seed in range(3):
            model(images(8, seed=10 + seed))
    return model.eval()


def test_count_formula_is_the_full_resnets() -> None:
    assert resnet_count((4, 8, 16, 32), FULL_HIDDEN) == count(resnet())


def test_traced_shrink_removes_dead_resnet_units_with_every_slice() -> None:
    model = warmed_resnet()
    params = params_of(model)
    killed = {
        "layer1.0.conv1": [1, 3],
        "conv1": [2],
        "layer2.0.conv1": [0, 3, 5],
        "layer3.0.conv1": list(range(16)),
    }
    killed["layer4.0.downsample.0"] = [5, 6, 30]
    for unit in RESNET_UNITS:
        zero(params, unit, killed.get(unit.name, []))
    before = snapshot_state(model)
    x = images(4, seed=7)
    small = shrink(model, images())
    assert_state_unchanged(model, before)
    # layer3.0's hidden layer keeps one (zero) channel: no layer of width 0
    hidden = {**FULL_HIDDEN, "layer1.0": 2, "layer2.0": 5, "layer3.0": 1}
    assert count(small) == resnet_count((3, 8, 16, 29), hidden)
    assert (
        small.conv1.out_channels
        == small.layer1[1].conv1.in_channels
        == small.layer2[0].conv1.in_channels
        == 3
    )
    assert small.layer2[0].downsample[0].in_channels == 3
    assert small.fc.in_features == 29
    assert small.layer1[0].conv1.out_channels == small.layer1[0].conv2.in_channels == 2
    # the kept slices are the original's, BN running statistics included
    kept = [0, 1, 3]
    torch.testing.assert_close(small.bn1.running_mean, model.bn1.running_mean[kept], rtol=0, atol=0)
    torch.testing.assert_close(
        small.layer1[0].conv2.weight, model.layer1[0].conv2.weight[kept][:, [0, 2]], rtol=0, atol=0
    )
    keep4 = [c for c in range(32) if c not in (5, 6, 30)]
    torch.testing.assert_close(small.fc.weight, model.fc.weight[:, keep4], rtol=0, atol=0)
    assert not small.training
    assert not model.training
    with torch.no_grad():
        # Fewer (zero) terms in each sum, blocked differently: equal to float64 rounding.
        torch.testing.assert_close(small(x), model(x), rtol=1e-12, atol=1e-12)


def test_shrink_removes_what_a_few_proximal_steps_killed() -> None:
    model = resnet()
    params = params_of(model)
    weak = {"layer1.1.conv1": [0, 2], "conv1": [3], "layer3.0.downsample.0": [4, 9]}
    for unit in RESNET_UNITS:
        weaken(params, unit, weak.get(unit.name, []), 0.01)
    reg = Regularizer(model, group_l1=0.2, group_by="channels", l1_mode="proximal", example_inputs=images())
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(sgd)
    for x, y in loader(image_data(16), batch_size=8):
        sgd.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        sgd.step()
    assert {unit.name: dead(params, unit) for unit in RESNET_UNITS if dead(params, unit)} == weak
    model.eval()
    small = shrink(model, images())
    assert count(small) == resnet_count((3, 8, 14, 32), {**FULL_HIDDEN, "layer1.1": 2})
    x = images(4, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-12, atol=1e-12)


def transformer_count(model: nn.Module, units: list[Unit], removed: Mapping[str, int]) -> int:
    """The model's parameters less ``removed[u]`` channels of each unit ``u``: every slice of a channel,
    entries counted from the slices' shapes; the units here share no parameter."""
    params = params_of(model)
    return count(model) - sum(removed.get(unit.name, 0) * unit.size(params) for unit in units)


@pytest.mark.parametrize("case", ["bert", "vit"])
def test_traced_shrink_removes_dead_heads_and_mlp_units_of_transformers(case: str) -> None:
    build, inputs, units, other = {
        "bert": (bert, bert_inputs, bert_units(), bert_inputs(3, length=6, seed=4)),
        "vit": (vit, vit_inputs, vit_units(), vit_inputs(3, seed=4)),
    }[case]
    model = build().eval()
    params = params_of(model)
    heads, mlp_layer1 = units[0], units[3]  # layer 0's attention, layer 1's MLP
    assert heads.width == HEAD
    assert mlp_layer1.count == 32
    zero(params, heads, [1])
    zero(params, mlp_layer1, [3, 7, 20])
    before = snapshot_state(model)
    small = shrink(model, inputs())
    assert_state_unchanged(model, before)
    # one head of 3 x (8 x 16 + 8) rows and biases and 16 x 8 output columns; 3 MLP units of 16 + 1 + 16
    assert heads.size(params) == 3 * (8 * 16 + 8) + 16 * 8 == 536
    assert mlp_layer1.size(params) == 16 + 1 + 16
    assert (
        count(small)
        == transformer_count(model, units, {heads.name: 1, mlp_layer1.name: 3})
        == count(model) - 536 - 99
    )
    small_params = params_of(small)
    for name, axis in heads.slices:  # head 0's rows and columns stay, in order
        torch.testing.assert_close(small_params[name], params[name].narrow(axis, 0, HEAD), rtol=0, atol=0)
    with torch.no_grad():  # on the example and on other inputs (another length for BERT)
        for given in (inputs(), other):
            torch.testing.assert_close(logits(small, given), logits(model, given), rtol=1e-12, atol=1e-12)


class ChannelSoftmax(nn.Module):
    """A softmax across channels between two convolutions: a dead channel still adds ``exp(0)`` to the
    other channels' denominator, so removing it changes the outputs, though the tracer treats the
    softmax as element-wise."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.second(torch.softmax(self.first(x), dim=1))
        return result


def test_a_copy_whose_outputs_change_is_refused_and_the_original_kept() -> None:
    model = ChannelSoftmax()
    with torch.no_grad():
        model.first.weight[2] = 0.0
        model.first.bias[2] = 0.0
        model.second.weight[:, 2] = 0.0
    before = snapshot_state(model)
    with pytest.raises(ValueError, match="Cannot shrink ChannelSoftmax: without its dead units its outputs"):
        shrink(model, torch.randn(2, 3, 5, 5))
    assert_state_unchanged(model, before)


def test_a_sequential_needs_no_example_and_the_tracer_removes_the_same_unit() -> None:
    net = mlp(6, 8, 3, activation=nn.ReLU)
    with torch.no_grad():  # unit 5 dead in every slice: what group_by="channels" leaves
        net[0].weight[5] = 0.0
        net[0].bias[5] = 0.0
        net[2].weight[:, 5] = 0.0
    plain, traced = shrink(net), shrink(net, inputs(6))
    for small in (plain, traced):
        assert [type(child) for child in small] == [type(child) for child in net]
        assert small[0].weight.shape == (7, 6)
        assert small[2].weight.shape == (3, 7)
        assert count(small) == linear_count(6, 7, 3)
        assert_same_outputs(small, net, inputs(6))
