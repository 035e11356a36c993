"""``group_by="channels"`` in training: real ``Trainer.fit`` runs and bare loops, each against the formula
over the units written by hand in :mod:`architectures`.

- the loss-mode term ``g * sum_c ||w_c||`` and its gradient, which reaches every member (BatchNorm scale
  and shift, biases, consumers' input slices);
- the proximal step: plain SGD's block soft threshold ``w_c <- w_c * max(0, 1 - lr * g / ||w_c||)``, and
  Adam's proximal operator in its diagonal metric (``proximal_threshold="optimizer"``), solved per
  channel by bisection; a dead channel is zero in every slice;
- the warm-up (it ramps ``l1`` only), manual optimization with two optimizers, resuming, the monitor's
  coupled counts, and the rule for ``exclude``, ``rules``, ``no_weight_decay()`` and frozen members.

Overlapping units (a block's conv2 is the input slice of its hidden unit and the output row of its
stream) are shrunk one after the other; the references take that order from the package's list of
couplings, and compute everything else themselves.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from architectures import (
    RESNET_UNITS,
    CrossingSweep,
    LitResNet,
    Unit,
    adam_steps,
    bert,
    bert_inputs,
    bert_units,
    block_soft_threshold,
    channel_norms,
    colour_order,
    dead,
    group_term,
    image_data,
    images,
    logits,
    params_of,
    prefixed,
    resnet,
    weaken,
)
from helpers import assert_same_weights, fit, fit_straight_and_resumed, loader
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

from lightning_reg import RegularizationMonitor, RegularizedModule, Regularizer

G, LR = 0.2, 0.1  # group strength and SGD's learning rate of the Trainer runs
UNITS = {unit.name: unit for unit in RESNET_UNITS}
#: The channels the tests weaken (x 0.01) so that a few proximal steps remove them: a block's hidden unit,
#: the stage-1 stream (through both blocks and into stage 2), stage 4's stream (into fc's columns).
PLANTED = {"layer1.0.conv1": [1], "conv1": [2], "layer2.0.conv1": [0, 3], "layer4.0.downsample.0": [5]}


def plant(params: dict[str, Tensor], units: Iterable[Unit], factor: float = 0.01) -> None:
    for unit in units:
        base = unit.name.removeprefix("net.")
        weaken(params, unit, PLANTED.get(base, []), factor)


def in_package_order(units: Iterable[Unit], reg: Regularizer) -> list[Unit]:
    """``units`` in the order the package shrinks its couplings (the one thing read from it)."""
    named = {unit.name: unit for unit in units}
    order = [coupling.name for coupling in reg.selection.couplings]
    assert sorted(order) == sorted(named), "the package regularizes exactly the hand-written units"
    return [named[name] for name in order]


def cross_entropy(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def batches(n: int = 16) -> list[tuple[Tensor, Tensor]]:
    return list(loader(image_data(n), batch_size=8))


class RegResNet(RegularizedModule, LitResNet):
    pass


def planted_module(**options: Any) -> RegResNet:
    model = RegResNet(**options)
    plant(params_of(model), prefixed(RESNET_UNITS, "net."))
    return model


# -- the loss-mode term ------------------------------------------------------------------------------------


def test_the_loss_term_and_its_gradient_are_the_formula_on_every_member() -> None:
    model = resnet()
    reg = Regularizer(model, group_l1=G, group_by="channels", example_inputs=images())
    params = params_of(model)
    term, want = reg.penalty(), group_term(params, RESNET_UNITS, G)
    torch.testing.assert_close(term, want, rtol=1e-14, atol=0)
    names = list(params)
    got = torch.autograd.grad(term, list(params.values()), allow_unused=True)
    expected = torch.autograd.grad(want, list(params.values()), allow_unused=True)
    for name, g, w in zip(names, got, expected, strict=True):
        if name == "fc.bias":  # in no unit
            assert g is None
            assert w is None
            continue
        assert g is not None, name
        assert w is not None, name
        torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-17, msg=name)
    # the BN parameters get their part: 1 / ||w_c|| of a scale of 1
    bn_grad = dict(zip(names, got, strict=True))["layer1.0.bn1.weight"]
    assert bn_grad is not None
    assert bool((bn_grad > 0).all())


def by_hand(
    make: Callable[[], nn.Module],
    units: list[Unit],
    data: list[tuple[Tensor, Tensor]],
    *,
    epochs: int,
    loss_term: Callable[[dict[str, Tensor]], Tensor] | None = None,
    after_step: Callable[[dict[str, Tensor]], None] | None = None,
) -> nn.Module:
    """SGD(lr=LR) on every parameter, the loss ``cross_entropy + loss_term``, ``after_step`` after each
    update."""
    model = make()
    model.train()
    params = params_of(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(epochs):
        for batch in data:
            optimizer.zero_grad()
            loss = cross_entropy(model, batch)
            if loss_term is not None:
                loss = loss + loss_term(params)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(params)
    return model


def planted_resnet() -> nn.Module:
    model = resnet()
    plant(params_of(model), RESNET_UNITS)
    return model


def assert_close_weights(actual: nn.Module, expected: nn.Module, rtol: float, prefix: str = "net.") -> None:
    got = params_of(actual)
    for name, want in params_of(expected).items():
        torch.testing.assert_close(
            got[prefix + name].detach(),
            want.detach(),
            rtol=rtol,
            atol=rtol * 1e-3,
            msg=lambda m, name=name: f"{name}: {m}",
        )
        assert torch.equal(got[prefix + name] == 0, want == 0), f"{name}: the same exact zeros"


def test_the_loss_term_in_trainer_fit_is_sgd_on_the_formula() -> None:
    model = planted_module(group_l1=G, group_by="channels")
    fit(model, epochs=2, data=image_data(), batch_size=8)
    reference = by_hand(
        planted_resnet,
        list(RESNET_UNITS),
        batches(),
        epochs=2,
        loss_term=lambda p: group_term(p, RESNET_UNITS, G),
    )
    # The same operations in another order (the norms' sums): equal to rounding, over 4 steps.
    assert_close_weights(model, reference, rtol=1e-12)


# -- proximal SGD in Trainer.fit, with the monitor ----------------------------------------------------------


def read_csv(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


class Snapshots(L.Callback):
    """The parameters after every optimizer step, keyed by ``global_step``."""

    def __init__(self) -> None:
        self.params: dict[int, dict[str, Tensor]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.params[trainer.global_step] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


@pytest.fixture(scope="module")
def proximal_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[RegResNet, Snapshots, list[dict[str, str]]]:
    """3 epochs (6 steps) of proximal SGD with channels, planted weak channels, a CSV log of every step."""
    model = planted_module(group_l1=G, group_by="channels", l1_mode="proximal", lr=LR)
    logger, snapshots = CSVLogger(tmp_path_factory.mktemp("proximal")), Snapshots()
    monitor = RegularizationMonitor(log_every_n_steps=1, per_layer=True)
    fit(
        model,
        epochs=3,
        data=image_data(),
        batch_size=8,
        logger=logger,
        callbacks=[monitor, snapshots],
        log_every_n_steps=1,
    )
    return model, snapshots, [row for row in read_csv(logger) if row.get("reg/dead_units")]


def test_proximal_sgd_is_dykstras_sweep_over_the_crossing_units(proximal_run: Any) -> None:
    model, _, _ = proximal_run
    order = in_package_order(prefixed(RESNET_UNITS, "net."), model.regularizer)
    ordered = [UNITS[unit.name.removeprefix("net.")] for unit in order]
    sweep = CrossingSweep(ordered, {unit.name: G for unit in ordered})
    assert sweep.first, "the ResNet's units cross"

    def shrink(params: dict[str, Tensor]) -> None:
        sweep(params, LR)

    reference = by_hand(planted_resnet, ordered, batches(), epochs=3, after_step=shrink)
    # The same formulas, the channels' squares summed in another order: equal to rounding.
    assert_close_weights(model, reference, rtol=1e-12)


def test_dead_channels_are_zero_in_every_slice_and_only_the_planted_ones_die(proximal_run: Any) -> None:
    model, _, _ = proximal_run
    params = params_of(model)
    for unit in prefixed(RESNET_UNITS, "net."):
        producer, axis = unit.slices[0]  # each unit's first slice is its producing conv's output rows
        rows_zero = [c for c in range(unit.count) if bool((params[producer].select(axis, c) == 0).all())]
        # a conv row that died took its BN scale and shift and every consumer's input slice with it
        assert dead(params, unit) == rows_zero, unit.name
        assert rows_zero == PLANTED.get(unit.name.removeprefix("net."), []), unit.name


def test_the_monitor_counts_coupled_units_at_every_step(proximal_run: Any) -> None:
    _, snapshots, rows = proximal_run
    assert [int(row["step"]) for row in rows] == list(range(6))
    units = prefixed(RESNET_UNITS, "net.")
    total = sum(unit.count for unit in units)  # 124 channels
    assert total == 4 + 4 + 4 + 8 + 16 + 32 + 8 + 16 + 32
    for row in rows:
        params = snapshots.params[int(row["step"]) + 1]
        deaths = {unit.name: len(dead(params, unit)) for unit in units}
        assert float(row["reg/dead_units"]) == pytest.approx(sum(deaths.values()) / total, abs=1e-15)
        norms = sum(float(channel_norms(params, unit).sum()) for unit in units)
        assert float(row["reg/group_l1_penalty"]) == pytest.approx(G * norms, rel=1e-12)
        for unit in units:  # named by the producing layer
            assert float(row[f"reg/dead_units/{unit.name}"]) == deaths[unit.name] / unit.count, unit.name
    planted = sum(len(channels) for channels in PLANTED.values())
    assert float(rows[-1]["reg/dead_units"]) == pytest.approx(planted / total, abs=1e-15)
    assert planted == 5


# -- Adam: the proximal operator in the optimizer's metric -------------------------------------------------


def bert_batches() -> list[tuple[dict[str, Tensor], Tensor]]:
    generator = torch.Generator().manual_seed(5)
    return [(bert_inputs(4, seed=seed), torch.randint(0, 3, (4,), generator=generator)) for seed in (1, 2, 3)]


BERT_PLANTED = {"bert.encoder.layer.0.attention.self": [1], "bert.encoder.layer.1.intermediate.dense": [3, 7]}


def planted_bert() -> nn.Module:
    model = bert().eval()  # no dropout: the two copies see the same function
    params = params_of(model)
    for unit in bert_units():
        weaken(params, unit, BERT_PLANTED.get(unit.name, []), 0.01)
    return model


#: model, units, example inputs, batches, the channels planted, the group strength. Adam's first steps are
#: ``lr / |g|`` per entry, huge where the gradient is tiny (most of BERT's 0.02-scale weights at init): a
#: strength that kills only the planted channels there is 1e-6.
CASES: dict[str, tuple[Callable[[], nn.Module], list[Unit], Any, Any, dict[str, list[int]], float]] = {
    "resnet": (planted_resnet, list(RESNET_UNITS), images, lambda: batches(24), PLANTED, 1e-2),
    "bert": (planted_bert, bert_units(), bert_inputs, bert_batches, BERT_PLANTED, 1e-6),
}


@pytest.mark.parametrize("case", list(CASES))
def test_adam_proximal_is_dykstras_sweep_in_adams_metric(case: str) -> None:
    make, units, example, data, planted, strength = CASES[case]
    lr = 1e-2
    model, reference = make(), make()
    reg = Regularizer(
        model, group_l1=strength, group_by="channels", l1_mode="proximal", example_inputs=example()
    )
    adam, reference_adam = (
        torch.optim.Adam(model.parameters(), lr=lr),
        torch.optim.Adam(reference.parameters(), lr=lr),
    )
    reg.attach(adam)
    ordered = in_package_order(units, reg)
    sweep = CrossingSweep(ordered, {unit.name: strength for unit in ordered})
    params = params_of(reference)
    for inputs, labels in data():
        for net, optimizer in ((model, adam), (reference, reference_adam)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(logits(net, inputs), labels).backward()
            optimizer.step()
        steps = {
            name: adam_steps(reference_adam, param)
            for name, param in params.items()
            if param.grad is not None
        }
        sweep(params, steps)
        got = params_of(model)
        for name, want in params.items():
            torch.testing.assert_close(got[name].detach(), want.detach(), rtol=1e-6, atol=1e-9, msg=name)
            assert torch.equal(got[name] == 0, want == 0), f"{name}: the same exact zeros"
    deaths = {unit.name: dead(params_of(model), unit) for unit in units}
    assert {name: channels for name, channels in deaths.items() if channels} == planted


# -- the warm-up ramps l1 only ------------------------------------------------------------------------------


def weights_l1(model: nn.Module) -> Tensor:
    """``sum|w|`` over the weights with ``dim() > 1``: the default rule's W."""
    return sum(param.abs().sum() for param in model.parameters() if param.dim() > 1)  # type: ignore[return-value]


def test_the_warmup_ramps_l1_and_never_group_l1() -> None:
    # options.py: "ramp the L1 strength up over this many optimizer steps: at step s (from 0) it is
    # l1 * min(1, (s + 1) / l1_warmup_steps)"; group_l1 is not ramped.
    l1, steps = 1e-3, 4
    model = resnet()
    reg = Regularizer(
        model, l1=l1, group_l1=G, group_by="channels", l1_warmup_steps=steps, example_inputs=images()
    )
    params = params_of(model)
    for step in (0, 1, 3, 7):
        reg.global_step = step
        want = min(1, (step + 1) / steps) * l1 * weights_l1(model) + group_term(params, RESNET_UNITS, G)
        torch.testing.assert_close(reg.penalty(), want, rtol=1e-13, atol=0)


def test_the_first_proximal_step_of_a_warmup_shrinks_units_by_the_whole_group_l1() -> None:
    l1, steps = 1e-2, 10
    model, reference = planted_resnet(), planted_resnet()
    reg = Regularizer(
        model,
        l1=l1,
        group_l1=G,
        group_by="channels",
        l1_mode="proximal",
        l1_warmup_steps=steps,
        example_inputs=images(),
    )
    sgd, reference_sgd = (
        torch.optim.SGD(model.parameters(), lr=LR),
        torch.optim.SGD(reference.parameters(), lr=LR),
    )
    reg.attach(sgd)
    reg.global_step = 0
    batch = batches()[0]
    for net, optimizer in ((model, sgd), (reference, reference_sgd)):
        cross_entropy(net, batch).backward()
        optimizer.step()
    params = params_of(reference)
    with torch.no_grad():  # sparse group lasso: the L1 soft threshold (ramped: 1 / 10), then the units
        for param in params.values():
            if param.dim() > 1:
                param.copy_(torch.sign(param) * torch.clamp(param.abs() - LR * l1 / steps, min=0))
    for unit in colour_order(in_package_order(RESNET_UNITS, reg)):  # no dual state yet: one after another
        block_soft_threshold(params, unit, LR * G)
    assert_close_weights(model, reference, rtol=1e-13, prefix="")
    assert sum(len(dead(params_of(model), unit)) for unit in RESNET_UNITS) > 0


# -- manual optimization, two optimizers ---------------------------------------------------------------------

MANUAL_ADAM_LR = 1e-2


class TwoOptimizers(RegResNet):
    """Manual optimization as a user writes it: SGD for the weights, Adam for the 1-D parameters (the BN
    scales and shifts, fc's bias); nothing about regularization in the step."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        first, second = self.optimizers()
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(super().training_step(batch, batch_idx))
        first.step()
        second.step()

    def configure_optimizers(self) -> Any:
        weights = [p for p in self.parameters() if p.dim() > 1]
        vectors = [p for p in self.parameters() if p.dim() == 1]
        return [torch.optim.SGD(weights, lr=LR), torch.optim.Adam(vectors, lr=MANUAL_ADAM_LR)]


def test_manual_optimization_gives_every_member_its_gradient_through_its_optimizer() -> None:
    """The term's gradient is added right before each ``opt.step()``, at the weights as they are then
    (module.py): Adam's BN parameters get theirs after SGD has moved the convolutions of their units."""
    model = TwoOptimizers(group_l1=G, group_by="channels")
    plant(params_of(model), prefixed(RESNET_UNITS, "net."))
    fit(model, epochs=2, data=image_data(), batch_size=8)
    reference = planted_resnet()
    reference.train()
    params = params_of(reference)
    weights = [p for p in reference.parameters() if p.dim() > 1]
    vectors = [p for p in reference.parameters() if p.dim() == 1]
    sgd, adam = torch.optim.SGD(weights, lr=LR), torch.optim.Adam(vectors, lr=MANUAL_ADAM_LR)
    for _ in range(2):
        for batch in batches():
            sgd.zero_grad()
            adam.zero_grad()
            cross_entropy(reference, batch).backward()
            for optimizer, held in ((sgd, weights), (adam, vectors)):
                term = group_term(params, RESNET_UNITS, G)
                for param, gradient in zip(
                    held, torch.autograd.grad(term, held, allow_unused=True), strict=True
                ):
                    if gradient is not None:  # fc.bias is in no unit
                        param.grad += gradient
                optimizer.step()
    assert_close_weights(model, reference, rtol=1e-10)


# -- resume --------------------------------------------------------------------------------------------------


def test_resumed_adam_proximal_run_is_bitwise_the_straight_one(tmp_path: Path) -> None:
    def make() -> RegResNet:
        return planted_module(group_l1=1e-2, group_by="channels", l1_mode="proximal", adam=True, lr=1e-2)

    straight, resumed, trainer = fit_straight_and_resumed(make, tmp_path / "half.ckpt", data=image_data())
    assert trainer.global_step == straight.trainer.global_step == 8
    assert_same_weights(resumed, straight)
    assert sum(len(dead(params_of(straight), unit)) for unit in prefixed(RESNET_UNITS, "net.")) > 0


# -- statistics of heads -------------------------------------------------------------------------------------


def test_statistics_name_heads_by_their_attention_module_and_mlp_units_by_their_layer() -> None:
    model = planted_bert()
    params = params_of(model)
    for unit in bert_units():  # kill the planted channels outright
        weaken(params, unit, BERT_PLANTED.get(unit.name, []), 0.0)
    reg = Regularizer(model, group_l1=G, group_by="channels", example_inputs=bert_inputs())
    values = reg.statistics().summary(per_parameter=True)
    units = bert_units()
    for unit in units:
        assert values[f"dead_units/{unit.name}"] == len(BERT_PLANTED.get(unit.name, [])) / unit.count
    assert values["dead_units/bert.encoder.layer.0.attention.self"] == 0.5  # one head of two
    total = sum(unit.count for unit in units)
    assert values["dead_units"] == pytest.approx(3 / total, abs=1e-15)
    assert values["group_l1_penalty"] == pytest.approx(
        float(group_term(params, units, G).detach()), rel=1e-13
    )


# -- the rule for exclude, rules, no_weight_decay() and frozen members --------------------------------------


def units_except(*names: str) -> list[Unit]:
    return [unit for unit in RESNET_UNITS if unit.name not in names]


def regularized_units(model: nn.Module, **options: Any) -> tuple[Regularizer, list[str]]:
    reg = Regularizer(model, group_l1=G, group_by="channels", example_inputs=images(), **options)
    return reg, sorted(coupling.name for coupling in reg.selection.couplings)


@pytest.mark.parametrize(
    ("exclude", "dropped"),
    [
        (["layer1.0.conv1.weight"], ["layer1.0.conv1"]),  # a block's only producer
        (["layer1.1.conv2.weight"], ["conv1"]),  # one of the three convs writing stage 1's stream
        (["layer4.*"], ["layer4.0.conv1", "layer4.0.downsample.0"]),
    ],
)
def test_excluding_a_producer_drops_its_unit(exclude: list[str], dropped: list[str]) -> None:
    model = resnet()
    reg, names = regularized_units(model, exclude=exclude)
    kept = units_except(*dropped)
    assert names == sorted(unit.name for unit in kept)
    torch.testing.assert_close(reg.penalty(), group_term(params_of(model), kept, G), rtol=1e-14, atol=0)


def test_excluding_bn_parameters_keeps_them_in_their_units_groups() -> None:
    model = resnet()
    reg, names = regularized_units(model, exclude=["*bn*", "*downsample.1.*"])
    assert names == sorted(UNITS)
    params = params_of(model)
    term = reg.penalty()
    torch.testing.assert_close(term, group_term(params, RESNET_UNITS, G), rtol=1e-14, atol=0)
    (gradient,) = torch.autograd.grad(term, [params["layer1.0.bn1.weight"]])
    assert bool((gradient != 0).all()), "the excluded BN scale is still in its unit's term"


def test_rules_give_a_unit_its_producers_group_l1() -> None:
    model = resnet()
    strengths = {name: G for name in UNITS} | {"layer2.0.conv1": 3 * G, "layer3.0.downsample.0": 0.5 * G}
    rules = {
        "layer2.0.conv1.weight": {"group_l1": 3 * G},
        # both producers of stage 3's stream
        "layer3.0.downsample.0.weight": {"group_l1": 0.5 * G},
        "layer3.0.conv2.weight": {"group_l1": 0.5 * G},
    }
    reg, _ = regularized_units(model, rules=rules)
    params = params_of(model)
    torch.testing.assert_close(reg.penalty(), group_term(params, RESNET_UNITS, strengths), rtol=1e-14, atol=0)
    summary = reg.statistics().summary()
    assert summary["group_l1_penalty"] == pytest.approx(
        float(group_term(params, RESNET_UNITS, strengths).detach()), rel=1e-13
    )


class DeclaresNoDecay(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = resnet()

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.net(x)
        return result

    def no_weight_decay(self) -> set[str]:
        return {"net.layer3.0.conv1.weight"}


def test_no_weight_decay_drops_a_unit_and_a_frozen_member_drops_its_unit() -> None:
    _, names = regularized_units(DeclaresNoDecay())
    assert names == sorted("net." + unit.name for unit in units_except("layer3.0.conv1"))
    model = resnet()
    model.layer2[0].downsample[1].bias.requires_grad_(False)  # a member of stage 2's stream
    _, names = regularized_units(model)
    assert names == sorted(unit.name for unit in units_except("layer2.0.downsample.0"))


def test_zero_group_l1_from_a_rule_leaves_a_unit_alone_in_the_proximal_step() -> None:
    model, reference = planted_resnet(), planted_resnet()
    rules = {"layer1.0.conv1.weight": {"group_l1": 0.0}}
    reg = Regularizer(
        model, group_l1=G, group_by="channels", l1_mode="proximal", rules=rules, example_inputs=images()
    )
    sgd, reference_sgd = (
        torch.optim.SGD(model.parameters(), lr=LR),
        torch.optim.SGD(reference.parameters(), lr=LR),
    )
    reg.attach(sgd)
    kept = [unit for unit in in_package_order(RESNET_UNITS, reg) if unit.name != "layer1.0.conv1"]
    sweep = CrossingSweep(kept, {unit.name: G for unit in kept})
    for batch in batches():
        for net, optimizer in ((model, sgd), (reference, reference_sgd)):
            optimizer.zero_grad()
            cross_entropy(net, batch).backward()
            optimizer.step()
        sweep(params_of(reference), LR)
    assert_close_weights(model, reference, rtol=1e-13, prefix="")
    assert dead(params_of(model), UNITS["layer1.0.conv1"]) == []
    assert math.isclose(reg.statistics().summary(per_parameter=True)["dead_units/layer2.0.conv1"], 2 / 8)
