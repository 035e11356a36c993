"""Tracing coupled units: the tracer's couplings against the units written by hand from each architecture,
the units it must leave out, attention heads, and the refusals.

The expected membership (which parameter, along which axis, which positions make up channel ``c``, and how
many channels) is in :mod:`architectures`, read off each model's ``forward``; nothing here is read back
from the tracer to build an expectation.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
import torch
from architectures import (
    HEAD,
    RESNET_PRODUCERS,
    RESNET_UNITS,
    LitResNet,
    Unit,
    bert,
    bert_inputs,
    bert_units,
    image_data,
    images,
    resnet,
    vit,
    vit_inputs,
    vit_units,
)
from helpers import fit
from torch import Tensor, nn

from lightning_reg import RegularizedModule, Regularizer
from lightning_reg.functional.couplings import Coupling
from lightning_reg.structured.channels import TracedCoupling, UntraceableModelError, trace
from lightning_reg.utilities.checks import InvalidArgumentError


def membership(coupling: Coupling) -> dict[tuple[str, int], tuple[list[int], list[int]]]:
    """``(name, axis)`` of each member to its positions and their channels, as lists."""
    return {
        (member.name, member.axis): (member.positions.tolist(), member.channels.tolist())
        for member in coupling.members
    }


def expected_membership(unit: Unit) -> dict[tuple[str, int], tuple[list[int], list[int]]]:
    """Each slice covers ``count * width`` positions; position ``i`` is channel ``i // width``."""
    positions = list(range(unit.count * unit.width))
    return {slice_: (positions, [i // unit.width for i in positions]) for slice_ in unit.slices}


def by_name(couplings: tuple[TracedCoupling, ...]) -> dict[str, TracedCoupling]:
    named = {traced.coupling.name: traced for traced in couplings}
    assert len(named) == len(couplings), "unit names are unique: they are the monitor's metric names"
    return named


def assert_traced_as_written(
    couplings: tuple[TracedCoupling, ...], units: list[Unit], producers: dict[str, set[str]] | None = None
) -> None:
    traced = by_name(couplings)
    assert sorted(traced) == sorted(unit.name for unit in units)
    for unit in units:
        coupling = traced[unit.name].coupling
        assert coupling.count == unit.count, unit.name
        assert membership(coupling) == expected_membership(unit), unit.name
        if producers is not None:
            assert set(traced[unit.name].producers) == producers[unit.name], unit.name


def test_resnet_units_are_the_hand_written_ones() -> None:
    model = resnet()
    tracing = trace(model, images())
    assert_traced_as_written(tracing.couplings, list(RESNET_UNITS), RESNET_PRODUCERS)
    # every conv and BN parameter is in some unit; fc's bias and rows are the outputs
    members = {member.name for traced in tracing.couplings for member in traced.coupling.members}
    assert members == {name for name, _ in model.named_parameters()} - {"fc.bias"}
    assert tracing.left_out == (("fc", "its channels reach the model's outputs"),)
    assert tracing.unknown == ()


def test_the_tracer_leaves_every_module_in_its_training_mode() -> None:
    model = resnet()
    model.train()
    model.layer2.eval()
    modes = {name: module.training for name, module in model.named_modules()}
    trace(model, images())
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert modes["layer2.0.bn1"] is False
    assert modes["layer1.0.bn1"] is True


def left_out_for(tracing: Any, reason: str) -> list[str]:
    return [name for name, why in tracing.left_out if reason in why]


@pytest.mark.parametrize(
    ("build", "inputs", "units", "embeddings"),
    [
        (bert, bert_inputs, bert_units, "bert.embeddings.word_embeddings.weight"),
        (vit, vit_inputs, vit_units, "vit.embeddings.patch_embeddings.projection.weight"),
    ],
    ids=["bert", "vit"],
)
def test_transformer_units_are_mlp_hidden_units_and_whole_heads(
    build: Any, inputs: Any, units: Any, embeddings: str
) -> None:
    model = build()
    tracing = trace(model, inputs())
    assert_traced_as_written(tracing.couplings, units())
    heads = [traced for traced in tracing.couplings if traced.coupling.count == 2]
    assert len(heads) == 2, "one head unit per layer"
    for traced in heads:
        # one group per head: head h stands for the attention's rows h * HEAD ... (h + 1) * HEAD - 1
        assert traced.roots == (tuple(range(HEAD)), tuple(range(HEAD, 2 * HEAD)))
    # The residual stream passes through LayerNorm, and the classifier's rows are the logits: neither is a
    # unit, so no coupling holds the embeddings, a LayerNorm or the classifier's rows.
    assert left_out_for(tracing, "LayerNorm"), tracing.left_out
    assert left_out_for(tracing, "outputs") == ["classifier"]
    assert tracing.unknown == ()
    slices = {
        (member.name, member.axis) for traced in tracing.couplings for member in traced.coupling.members
    }
    names = {name for name, _ in slices}
    assert embeddings not in names
    assert not [
        name for name in names if "LayerNorm" in name or "layernorm" in name or "norm" in name.split(".")[-2]
    ]
    assert ("classifier.weight", 0) not in slices
    assert "classifier.bias" not in names


# -- refusals ---------------------------------------------------------------------------------------------


def test_channels_without_example_inputs_names_the_argument() -> None:
    with pytest.raises(
        InvalidArgumentError, match=r"^Invalid example_inputs: None \(expected what the model"
    ):
        Regularizer(resnet(), group_l1=1e-3, group_by="channels")


class DataDependent(nn.Module):
    """A forward the tracer cannot run: it needs a keyword the example inputs do not give."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: Tensor, *, scale: Tensor) -> Tensor:
        result: Tensor = self.second(torch.relu(self.first(x)) * scale)
        return result


def test_a_model_the_tracer_cannot_run_is_refused_at_construction() -> None:
    with pytest.raises(UntraceableModelError, match="cannot trace the channels of DataDependent") as error:
        Regularizer(DataDependent(), group_l1=1e-3, group_by="channels", example_inputs=torch.zeros(2, 4))
    assert "scale" in str(error.value), "the message carries the model's own error"
    assert 'group by "rows" or "columns"' in str(error.value)
    with pytest.raises(UntraceableModelError, match="on the example inputs"):  # inputs of the wrong shape
        Regularizer(resnet(), group_l1=1e-3, group_by="channels", example_inputs=torch.zeros(2, 5, 8, 8))


class NoExample(RegularizedModule, LitResNet):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.example_input_array = None


def test_a_module_without_example_input_array_is_refused_before_training() -> None:
    model = NoExample(group_l1=1e-3, group_by="channels", l1_mode="proximal")
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    with pytest.raises(
        ValueError,
        match=re.escape(
            "NoExample(group_by='channels') traces the model on self.example_input_array, which is None"
        ),
    ):
        fit(model, epochs=1, data=image_data(), batch_size=8)
    assert model.trainer.global_step == 0
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), f"{name} changed: training ran"


def test_producers_with_different_group_l1_are_refused() -> None:
    # Stage 1's stream is written by the stem and by both blocks' conv2: a rule gives one of them another
    # group_l1, so the unit would have two strengths.
    rules = {"layer1.1.conv2.weight": {"group_l1": 2e-3}}
    with pytest.raises(
        ValueError, match=r"^Invalid rules: the coupled channels of 'conv1' are written by"
    ) as error:
        Regularizer(resnet(), group_l1=1e-3, group_by="channels", rules=rules, example_inputs=images())
    for written in ("'conv1.weight' (group_l1=0.001)", "'layer1.0.conv2.weight' (group_l1=0.001)"):
        assert written in str(error.value)
    assert "'layer1.1.conv2.weight' (group_l1=0.002)" in str(error.value)
    # one group_l1 for all three is accepted
    rules = {"conv1.weight": {"group_l1": 2e-3}, "layer1.*.conv2.weight": {"group_l1": 2e-3}}
    Regularizer(resnet(), group_l1=1e-3, group_by="channels", rules=rules, example_inputs=images())


def test_an_optimizer_holding_part_of_a_unit_is_refused_at_attach_under_proximal() -> None:
    model = resnet()
    reg = Regularizer(model, group_l1=1e-3, group_by="channels", l1_mode="proximal", example_inputs=images())
    without_bn = [param for name, param in model.named_parameters() if name != "layer2.0.bn1.weight"]
    with pytest.raises(
        ValueError, match=re.escape("coupled unit 'layer2.0.conv1' but not 'layer2.0.bn1.weight'")
    ):
        reg.attach(torch.optim.SGD(without_bn, lr=0.1))
    # The BN parameters in a second optimizer: the first holds part of every unit.
    bn = [param for name, param in model.named_parameters() if ".bn" in name or "bn1" in name]
    convs = [param for name, param in model.named_parameters() if all(param is not p for p in bn)]
    with pytest.raises(ValueError, match="Give all of the unit's parameters to one optimizer"):
        reg.attach(torch.optim.SGD(convs, lr=0.1))
    reg.attach(torch.optim.SGD(model.parameters(), lr=0.1))  # all of it: accepted
    # In the loss mode a unit may be split: its term reaches each member through the optimizer holding it.
    loss = Regularizer(model, group_l1=1e-3, group_by="channels", example_inputs=images())
    loss.attach(torch.optim.SGD(convs, lr=0.1), penalty_as_gradient=True)


class WithUnknownLayers(nn.Module):
    """A grouped convolution, which the coupling does not know how to slice, between two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.last = nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.last(torch.relu(self.grouped(torch.relu(self.first(x)))))
        return result


def test_units_through_a_layer_the_coupling_cannot_slice_are_left_out_with_a_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = Regularizer(
            WithUnknownLayers(), group_l1=1e-3, group_by="channels", example_inputs=torch.zeros(1, 3, 6, 6)
        )
    ours = [str(w.message) for w in caught if "are not grouped" in str(w.message)]
    assert len(ours) == 1, ours
    assert "a grouped convolution (2 groups)" in ours[0]
    assert reg.selection.couplings == ()
