"""A layer the channel tracer does not know, taught to it with ``register_layer``.

``ChannelMix`` mixes channels with an ``einsum`` (weight ``(out, in)``). Neither the tracer nor
Torch-Pruning knows it: Torch-Pruning takes the ``einsum`` for an element-wise operation, so without a
rule the channels on both of its sides are wrongly taken for one. Registered with its slices and a
Torch-Pruning pruning function written here, as a user would, it splits the channels into the groups
written out below, and ``shrink`` removes a dead channel of its own with the outputs kept.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lightning_reg import Regularizer, shrink
from lightning_reg.structured import layer_rules
from lightning_reg.utilities.checks import InvalidArgumentError

tp = pytest.importorskip("torch_pruning")
INPUTS = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))


class ChannelMix(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.randn(channels_out, channels_in) * 0.3)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("oc,bchw->bohw", self.mix, x)


class ChannelMixPruner(tp.pruner.function.BasePruningFunc):  # type: ignore[misc]
    """Torch-Pruning's view of ``ChannelMix``: how many channels it has, and how to remove some."""

    def prune_out_channels(self, layer: ChannelMix, idxs: list[int]) -> ChannelMix:
        kept = [index for index in range(layer.mix.shape[0]) if index not in set(idxs)]
        layer.mix = nn.Parameter(layer.mix.detach()[kept].clone())
        return layer

    def prune_in_channels(self, layer: ChannelMix, idxs: list[int]) -> ChannelMix:
        kept = [index for index in range(layer.mix.shape[1]) if index not in set(idxs)]
        layer.mix = nn.Parameter(layer.mix.detach()[:, kept].clone())
        return layer

    def get_out_channels(self, layer: ChannelMix) -> int:
        return int(layer.mix.shape[0])

    def get_in_channels(self, layer: ChannelMix) -> int:
        return int(layer.mix.shape[1])


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), ChannelMix(4, 4), nn.Conv2d(4, 2, 1))


def groups(net: nn.Module) -> set[frozenset[tuple[str, int]]]:
    reg = Regularizer(net, group_l1=1e-3, group_by="channels", example_inputs=INPUTS)
    return {
        frozenset((member.name, member.axis) for member in unit.members) for unit in reg.selection.couplings
    }


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry as it is, restored after the test."""
    monkeypatch.setattr(layer_rules, "_RULES", dict(layer_rules._RULES))


def test_without_a_rule_the_channels_on_both_sides_are_taken_for_one(rules: None) -> None:
    assert groups(model()) == {frozenset({("0.weight", 0), ("0.bias", 0), ("2.mix", 1), ("3.weight", 1)})}


def test_a_registered_layer_splits_the_channels_at_it(rules: None) -> None:
    layer_rules.register_layer(
        ChannelMix, lambda layer, out: [(layer.mix, 0 if out else 1)], pruner=ChannelMixPruner()
    )
    assert groups(model()) == {
        frozenset({("0.weight", 0), ("0.bias", 0), ("2.mix", 1)}),  # the convolution's outputs
        frozenset({("2.mix", 0), ("3.weight", 1)}),  # the mix's outputs
    }


def test_shrink_removes_a_dead_channel_of_a_registered_layer(rules: None) -> None:
    layer_rules.register_layer(
        ChannelMix, lambda layer, out: [(layer.mix, 0 if out else 1)], pruner=ChannelMixPruner()
    )
    net = model()
    with torch.no_grad():  # the mix's output channel 1 is dead: its row and the next layer's column
        net[2].mix[1] = 0
        net[3].weight[:, 1] = 0
        expected = net(INPUTS)
    small = shrink(net, example_inputs=INPUTS)
    assert tuple(small[2].mix.shape) == (3, 4)
    assert tuple(small[3].weight.shape) == (2, 3, 1, 1)
    torch.testing.assert_close(small(INPUTS), expected, rtol=0, atol=1e-6)


def test_bad_registrations_are_refused_by_name() -> None:
    with pytest.raises(InvalidArgumentError, match=r"Invalid layer_type: 3 \(expected an nn.Module"):
        layer_rules.register_layer(3, lambda layer, out: [])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"Invalid slices: 'mix' \(expected a callable"):
        layer_rules.register_layer(ChannelMix, "mix")  # type: ignore[arg-type]
