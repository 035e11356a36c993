"""Per-parameter strengths from ``rules``, each against its formula written out in the test.

The reference loops below are the tutorial's, with each parameter's own strengths: ``loss + sum_p l1_p *
sum|p|``, SGD groups with each parameter's ``weight_decay`` built by hand, the textbook soft threshold.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    Batch,
    Manual,
    RegRegression,
    Scheduled,
    assert_same_weights,
    fit,
    loader,
    make_net,
    regression_data,
)
from torch import Tensor, nn

from lightning_reg import Regularizer
from lightning_reg.optim.param_groups import decay_names, split_optimizer
from lightning_reg.selection import Strengths, select_parameters

L1, L2, LR = 3e-3, 2e-2, 0.05
A, B = 4e-2, 0.3  # the rules' strengths, far from the module-wide ones
#: make_net's parameters: net.0 Linear(5, 16), net.2 LayerNorm(16), net.3 Linear(16, 1).
RULES = {"net.0.*": {"l1": A}, "net.3.bias": {"l2": B}}


def by_name(net: nn.Module) -> dict[str, nn.Parameter]:
    return dict(net.named_parameters())


def expected_strengths(net: nn.Module) -> dict[nn.Parameter, tuple[float, float]]:
    """RULES with l1=L1, l2=L2 written out by hand: ``(l1_p, l2_p)`` of each regularized parameter."""
    p = by_name(net)
    return {
        p["0.weight"]: (A, L2),  # rule net.0.*: its l1, the module-wide l2
        p["0.bias"]: (A, L2),  # 1-D, opted in by the rule
        p["3.weight"]: (L1, L2),  # no rule: dim > 1, module-wide values
        p["3.bias"]: (L1, B),  # rule net.3.bias: its l2, the module-wide l1
    }


def by_hand(
    step: Callable[[nn.Module, torch.optim.Optimizer, Batch], None],
    groups: Callable[[nn.Module], list[dict[str, Any]]],
    *,
    epochs: int = 2,
    momentum: float = 0.0,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> nn.Module:
    net = make_net()
    optimizer = torch.optim.SGD(groups(net), lr=LR, momentum=momentum)
    schedule = scheduler(optimizer) if scheduler else None
    for _ in range(epochs):
        for batch in loader(regression_data()):
            step(net, optimizer, batch)
            if schedule is not None:
                schedule.step()
    return net


def hand_groups(net: nn.Module) -> list[dict[str, Any]]:
    """SGD groups with each parameter's own weight decay (RULES), LayerNorm's without."""
    p = by_name(net)
    return [
        {"params": [p["0.weight"], p["0.bias"], p["3.weight"]], "weight_decay": L2},
        {"params": [p["3.bias"]], "weight_decay": B},
        {"params": [p["2.weight"], p["2.bias"]], "weight_decay": 0.0},
    ]


def l1_step(net: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    x, y = batch
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(net(x), y)
    for param, (l1, _) in expected_strengths(net).items():
        loss = loss + l1 * torch.sum(torch.abs(param))
    loss.backward()
    optimizer.step()


# --- training runs against the loops written out ---------------------------------------------------


def test_loss_mode_l1_and_weight_decay_use_each_parameters_strengths() -> None:
    model = RegRegression(l1=L1, l2=L2, rules=RULES)
    trainer = fit(model)
    assert_same_weights(model.net, by_hand(l1_step, hand_groups))
    (optimizer,) = trainer.optimizers
    p = by_name(model.net)
    assert [(g["name"], g["weight_decay"], g["params"]) for g in optimizer.param_groups] == [
        ("decay", L2, [p["0.weight"], p["0.bias"], p["3.weight"]]),
        (f"decay/{B!r}", B, [p["3.bias"]]),
        ("no_decay", 0.0, [p["2.weight"], p["2.bias"]]),
    ]


def test_the_rules_change_the_result() -> None:
    """Guards the test above: the module-wide strengths alone train to other weights."""
    plain = RegRegression(l1=L1, l2=L2)
    fit(plain)
    with pytest.raises(AssertionError):
        assert_same_weights(plain.net, by_hand(l1_step, hand_groups))


def test_a_scheduler_drives_every_per_strength_group() -> None:
    model = Scheduled(l1=L1, l2=L2, lr=LR, rules=RULES)
    trainer = fit(model)
    (optimizer,) = trainer.optimizers
    assert [g["name"] for g in optimizer.param_groups] == ["decay", f"decay/{B!r}", "no_decay"]
    steps = 12  # 6 batches x 2 epochs
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [LR * 0.5 ** (steps // 2)] * 3, rel=1e-12
    )
    expected = by_hand(
        l1_step,
        hand_groups,
        momentum=0.9,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    )
    assert_same_weights(model.net, expected)


def test_lambda_lr_drives_every_group_of_a_split_with_several_decays() -> None:
    net, twin = make_net(), make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)
    twin_scheduler = torch.optim.lr_scheduler.LambdaLR(twin_optimizer, lambda epoch: 0.9**epoch)
    w = by_name(net)
    regularized = [w["0.weight"], w["0.bias"], w["3.weight"]]
    split_optimizer(optimizer, regularized, 0.01, [scheduler], decays=[0.01, 0.5, 0.0])
    assert [(g["name"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("decay", 0.01),
        ("decay/0.5", 0.5),
        ("no_decay", 0.0),
    ]
    for _ in range(5):
        optimizer.step()
        twin_optimizer.step()
        scheduler.step()
        twin_scheduler.step()
        assert [g["lr"] for g in optimizer.param_groups] == [twin_optimizer.param_groups[0]["lr"]] * 3


def test_proximal_thresholds_are_each_parameters_own() -> None:
    rules = {"net.0.weight": {"l1": 0.5}, "net.3.*": {"l1": 2.0}}
    model = RegRegression(l1=0.1, l1_mode="proximal", rules=rules)
    fit(model)

    def step(net: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
        x, y = batch
        optimizer.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()
        p = by_name(net)
        with torch.no_grad():  # the textbook soft threshold, w <- sign(w) * max(|w| - lr * l1_p, 0)
            for name, l1 in (("0.weight", 0.5), ("3.weight", 2.0), ("3.bias", 2.0)):  # 0.bias: not in W
                w = p[name]
                w.copy_(torch.sign(w) * torch.clamp(torch.abs(w) - LR * l1, min=0.0))

    def groups(net: nn.Module) -> list[dict[str, Any]]:
        return [{"params": list(net.parameters())}]

    assert_same_weights(model.net, by_hand(step, groups))
    assert int((model.net[3].weight == 0).sum()) >= 8  # the strongest threshold: exact zeros
    assert torch.all(model.net[0].bias != 0)  # 1-D, no rule: not thresholded


def test_proximal_group_shrink_uses_each_parameters_group_l1() -> None:
    rules = {"0.weight": {"group_l1": 0.2}, "3.bias": {"group_l1": 0.1}}
    reg_net = make_net()
    reg = Regularizer(reg_net, l1_mode="proximal", group_l1=0.05, rules=rules)
    optimizer = torch.optim.SGD(reg.param_groups(), lr=LR)
    reg.attach(optimizer)
    net = make_net()
    plain = torch.optim.SGD(net.parameters(), lr=LR)
    for x, y in loader(regression_data()):
        for model, opt in ((reg_net, optimizer), (net, plain)):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        with torch.no_grad():  # w_g <- w_g * max(0, 1 - lr * group_l1_p / ||w_g||), rows
            for w, strength in ((net[0].weight, 0.2), (net[3].weight, 0.05), (net[3].bias, 0.1)):
                rows = w.reshape(w.shape[0], -1)
                norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
                rows.mul_(torch.clamp(1 - LR * strength / norms, min=0.0))
    for name, want in net.named_parameters():
        torch.testing.assert_close(by_name(reg_net)[name], want, rtol=1e-6, atol=1e-7, msg=name)


def test_manual_optimization_adds_each_parameters_gradient() -> None:
    """Manual optimization: the loss-mode terms arrive as gradients, each with its own strength."""
    model = Manual(l1=L1, l2=L2, rules=RULES)
    fit(model)
    assert_same_weights(model.net, by_hand(l1_step, hand_groups))


def test_loss_mode_l2_and_decoupled_decay_use_each_parameters_l2() -> None:
    rules = {"0.*": {"l2": 0.5}, "3.weight": {"l2": 0.0}}
    l2_of = {"0.weight": 0.5, "0.bias": 0.5, "3.weight": 0.0}  # 3.bias: dim 1, no rule: not in W
    for mode in ("loss", "decoupled"):
        reg_net, net = make_net(), make_net()
        reg = Regularizer(reg_net, l2=L2, l2_mode=mode, rules=rules)
        optimizer = torch.optim.SGD(reg.param_groups(), lr=LR)
        reg.attach(optimizer)
        reference = torch.optim.SGD(net.parameters(), lr=LR)
        for x, y in loader(regression_data()):
            optimizer.zero_grad()
            (nn.functional.mse_loss(reg_net(x), y) + reg.penalty()).backward()
            optimizer.step()
            reference.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            p = by_name(net)
            if mode == "loss":
                for name, l2 in l2_of.items():
                    loss = loss + l2 / 2 * torch.sum(p[name] * p[name])
            loss.backward()
            if mode == "decoupled":
                with torch.no_grad():
                    for name, l2 in l2_of.items():
                        p[name].mul_(1 - LR * l2)
            reference.step()
        if mode == "loss":  # the loss sums the terms in another order: equal to rounding
            for name, want in net.named_parameters():
                torch.testing.assert_close(by_name(reg_net)[name], want, rtol=1e-6, atol=0.0, msg=name)
        else:
            assert_same_weights(reg_net, net)


# --- which parameter gets which strength -----------------------------------------------------------


def strengths_of(net: nn.Module, **kwargs: Any) -> dict[str, tuple[float, float, float]]:
    chosen = select_parameters(net, **kwargs)
    return {
        name: (s.l1, s.l2, s.group_l1)
        for (name, _), s in zip(chosen.regularized, chosen.strengths, strict=True)
    }


def test_the_first_matching_rule_wins_and_omitted_keys_fall_back() -> None:
    rules = {"3.bias": {"l1": 1.0}, "3.*": {"l1": 2.0, "l2": 3.0}, "*": {"group_l1": 4.0}}
    got = strengths_of(make_net(), rules=rules, defaults=Strengths(l1=0.1, l2=0.2, group_l1=0.3))
    assert got == {
        "0.weight": (0.1, 0.2, 4.0),
        "0.bias": (0.1, 0.2, 4.0),
        "2.weight": (0.1, 0.2, 4.0),
        "2.bias": (0.1, 0.2, 4.0),
        "3.weight": (2.0, 3.0, 0.3),
        "3.bias": (1.0, 0.2, 0.3),  # "3.*" also matches, but "3.bias" comes first
    }


def test_without_rules_the_strengths_are_the_module_wide_ones() -> None:
    got = strengths_of(make_net(), defaults=Strengths(l1=0.1, l2=0.2, group_l1=0.3))
    assert got == {"0.weight": (0.1, 0.2, 0.3), "3.weight": (0.1, 0.2, 0.3)}


def test_exclude_and_no_weight_decay_beat_rules() -> None:
    class Declares(nn.Sequential):
        def no_weight_decay(self) -> set[str]:
            return {"0.bias"}

    net = Declares(*make_net())
    chosen = select_parameters(net, exclude=["3.*"], rules={"*": {"l1": 1.0}})
    assert [name for name, _ in chosen.regularized] == ["0.weight", "2.weight", "2.bias"]
    assert [strength.l1 for strength in chosen.strengths] == [1.0, 1.0, 1.0]  # the rule's, not the default 0
    assert chosen.unmatched_rules == ()


def test_a_tied_parameter_is_matched_by_any_of_its_names_and_counted_once() -> None:
    net = nn.Module()
    net.encoder = nn.Embedding(7, 5)
    net.decoder = nn.Linear(5, 7, bias=False)
    net.decoder.weight = net.encoder.weight
    assert strengths_of(net, rules={"decoder.*": {"l1": 1.0}}) == {"encoder.weight": (1.0, 0.0, 0.0)}


def test_rules_select_only_trainable_floating_point_parameters() -> None:
    net = make_net()
    net[0].bias.requires_grad_(False)
    net.register_parameter("steps", nn.Parameter(torch.zeros(3, dtype=torch.complex64)))  # not floating
    chosen = select_parameters(net, rules={"*bias": {"l1": 1.0}, "steps": {"l1": 1.0}})
    assert [name for name, _ in chosen.regularized] == ["0.weight", "2.bias", "3.weight", "3.bias"]


def test_decay_group_names() -> None:
    assert decay_names([0.1, 0.1], 0.1) == {0.1: "decay"}
    assert decay_names([0.0, 0.0], 0.0) == {0.0: "decay"}  # l2 == 0, as without rules
    assert decay_names([0.0], 0.1) == {0.0: "no_decay"}  # a rule's l2=0 does not decay
    assert decay_names([0.3, 0.1, 0.0, 0.2], 0.1) == {
        0.1: "decay",
        0.3: "decay/0.3",
        0.2: "decay/0.2",
        0.0: "no_decay",
    }
    assert decay_names([0.0, 0.3], 0.0) == {0.3: "decay", 0.0: "no_decay"}  # one decay: plain "decay"


def test_param_groups_put_a_rules_zero_l2_in_no_decay() -> None:
    net = make_net()
    reg = Regularizer(net, l2=L2, rules={"0.*": {"l2": 0.5}, "3.weight": {"l2": 0.0}})
    groups = reg.param_groups()
    assert [(g["name"], g["weight_decay"], g["params"]) for g in groups] == [
        ("decay", 0.5, [net[0].weight, net[0].bias]),  # the one l2 that decays: "decay"
        ("no_decay", 0.0, [net[2].weight, net[2].bias, net[3].bias, net[3].weight]),
    ]


# --- the terms and the statistics, against their formulas -------------------------------------------


def test_a_bias_opted_in_by_a_rule_gets_the_penalty_gradient() -> None:
    net = make_net()
    reg = Regularizer(net, rules={"3.bias": {"l1": A}})
    assert reg.names == ["0.weight", "3.weight", "3.bias"]
    reg.penalty().backward()
    assert torch.equal(net[3].bias.grad, A * torch.sign(net[3].bias.detach()))
    assert net[0].weight.grad is None  # l1 == 0 for the others: no term, no gradient
    assert net[0].bias.grad is None


def test_the_penalty_and_statistics_are_sums_of_each_parameters_terms() -> None:
    net = make_net()
    with torch.no_grad():
        net[0].bias[:3] = 0.0
    rules = {"0.*": {"l1": A, "group_l1": 0.2}, "3.bias": {"l2": B}}
    reg = Regularizer(net, l1=L1, l2=L2, group_l1=0.05, l1_mode="loss", l2_mode="loss", rules=rules)
    reg.global_step = 1
    p = by_name(net)
    own = {  # (l1_p, l2_p, group_l1_p)
        "0.weight": (A, L2, 0.2),
        "0.bias": (A, L2, 0.2),
        "3.weight": (L1, L2, 0.05),
        "3.bias": (L1, B, 0.05),
    }
    w = {name: p[name].detach().double().numpy() for name in own}
    rows = {name: np.sqrt(np.square(a.reshape(a.shape[0], -1)).sum(axis=1)) for name, a in w.items()}
    l1_penalty = sum(own[n][0] * np.abs(a).sum() for n, a in w.items())
    l2_penalty = sum(own[n][1] / 2 * np.square(a).sum() for n, a in w.items())
    group_penalty = sum(own[n][2] * rows[n].sum() for n, a in w.items())
    assert reg.penalty().item() == pytest.approx(l1_penalty + l2_penalty + group_penalty, rel=1e-6)

    values = reg.statistics().summary()
    assert values["l1_penalty"] == pytest.approx(l1_penalty, rel=1e-12)
    assert values["l2_penalty"] == pytest.approx(l2_penalty, rel=1e-12)
    assert values["group_l1_penalty"] == pytest.approx(group_penalty, rel=1e-12)
    assert values["l1_strength"] == L1
    numel = sum(a.size for a in w.values())
    assert values["sparsity"] == 3 / numel
    assert values["dead_units"] == 3 / (16 + 16 + 1 + 1)  # a 1-D parameter's groups are its entries


def test_the_warm_up_ramps_every_parameters_l1() -> None:
    net = make_net()
    reg = Regularizer(net, l1=L1, l1_warmup_steps=4, rules={"3.*": {"l1": A}})
    p = by_name(net)
    for step in range(6):
        reg.global_step = step
        ramp = min(1.0, (step + 1) / 4)
        want = ramp * (
            L1 * torch.sum(torch.abs(p["0.weight"]))
            + A * sum(torch.sum(torch.abs(p[n])) for n in ("3.weight", "3.bias"))
        )
        assert reg.penalty().item() == pytest.approx(want.item(), rel=1e-6)
        summary = reg.statistics().summary()
        assert summary["l1_strength"] == L1 * ramp
        assert summary["l1_penalty"] == pytest.approx(want.item(), rel=1e-6)


def test_a_prepared_penalty_is_used_per_strength_and_a_stale_one_is_not() -> None:
    net = make_net()
    reg = Regularizer(net, l1=L1, rules={"3.*": {"l1": A}})
    p = by_name(net)

    def formula() -> Tensor:
        return L1 * torch.sum(torch.abs(p["0.weight"])) + A * (
            torch.sum(torch.abs(p["3.weight"])) + torch.sum(torch.abs(p["3.bias"]))
        )

    reg.prepare_penalty()
    assert reg.penalty().item() == pytest.approx(formula().item(), rel=1e-6)
    reg.prepare_penalty()
    with torch.no_grad():
        p["3.bias"].mul_(5.0)  # after prepare_penalty, before penalty
    assert reg.penalty().item() == pytest.approx(formula().item(), rel=1e-6)


def test_rules_that_restate_the_module_wide_strengths_change_nothing() -> None:
    """Zero strengths opt the LayerNorm in to no effect; the weights' rule restates l1 and l2."""
    rules = {"net.2.*": {"l1": 0.0, "l2": 0.0}, "*.weight": {"l1": L1, "l2": L2}}
    same = RegRegression(l1=L1, l2=L2, rules=rules)
    plain = RegRegression(l1=L1, l2=L2)
    fit(same, epochs=1)
    fit(plain, epochs=1)
    assert_same_weights(same.net, plain.net)


# --- refused before training, and warned about --------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"*.bias": {"l1": -1.0}}, r"^Invalid rules\['\*\.bias'\]\['l1'\]: -1\.0 \(expected a finite number"),
        ({"*.bias": {"l2": math.nan}}, r"^Invalid rules\['\*\.bias'\]\['l2'\]: nan"),
        ({"*.bias": {"group_l1": "big"}}, r"^Invalid rules\['\*\.bias'\]\['group_l1'\]: 'big'"),
        ({"*.bias": {"decay": 0.1}}, r"^Invalid rules\['\*\.bias'\]: unknown key 'decay' \(expected keys"),
        ({"*.bias": 0.1}, r"^Invalid rules\['\*\.bias'\]: 0\.1 \(expected a dict"),
        ({"": {"l1": 0.1}}, r"^Invalid rules: pattern '' \(expected non-empty glob strings\)"),
        ({3: {"l1": 0.1}}, r"^Invalid rules: pattern 3"),
        ("net.*", r"^Invalid rules: 'net\.\*' \(expected a dict of glob patterns"),
    ],
)
def test_bad_rules_are_refused_by_name_at_construction(rules: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegRegression(rules=rules)
    with pytest.raises(ValueError, match=message):
        Regularizer(make_net(), rules=rules)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"group_by": "columns", "rules": {"net.3.bias": {"group_l1": 0.1}}},
            r"^Invalid rules\['net\.3\.bias'\]: it selects 'net\.3\.bias', a 1-D parameter, and "
            r"rules\['net\.3\.bias'\]\['group_l1'\] gives it group_l1=0\.1, but a 1-D parameter has no "
            r"columns for group_by='columns'",
        ),
        (
            {"group_by": "columns", "group_l1": 0.2, "rules": {"*.bias": {"l1": 0.1}}},
            r"^Invalid rules\['\*\.bias'\]: it selects 'net\.0\.bias', a 1-D parameter, and the module-wide "
            r"group_l1, which rules\['\*\.bias'\] keeps, gives it group_l1=0\.2",
        ),
        (
            {"rules": {"scale": {"group_l1": 0.1}}},
            r"^Invalid rules\['scale'\]: it selects 'scale', a 0-D parameter, .* has no groups",
        ),
    ],
)
def test_a_group_term_on_a_parameter_without_groups_is_refused_before_training(
    options: dict[str, Any], message: str
) -> None:
    model = RegRegression(**options)
    model.scale = nn.Parameter(torch.tensor(1.0))
    before = copy.deepcopy(model.net)
    with pytest.raises(ValueError, match=message):
        fit(model, epochs=1)
    assert_same_weights(model.net, before)


def test_a_1d_parameter_grouped_by_rows_has_its_entries_as_groups() -> None:
    net = make_net()
    reg = Regularizer(net, rules={"3.bias": {"group_l1": 0.5}})
    assert reg.penalty().item() == pytest.approx(0.5 * abs(net[3].bias.item()), rel=1e-6)


def test_a_rule_that_matches_nothing_warns() -> None:
    with pytest.warns(
        UserWarning, match=r"rules pattern 'net\.9\.\*' matches no trainable parameter of RegRegression"
    ):
        fit(RegRegression(l1=L1, rules={"net.9.*": {"l1": 1.0}}), epochs=1)


def test_rules_survive_a_checkpoint(tmp_path: Any) -> None:
    model = RegRegression(l1=L1, l2=L2, rules=RULES)
    assert model.hparams["rules"] == RULES
    trainer = fit(model, epochs=1)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = RegRegression.load_from_checkpoint(tmp_path / "model.ckpt")
    assert restored.regularization_options == model.regularization_options
    assert restored.regularizer.strengths == model.regularizer.strengths
    assert torch.load(tmp_path / "model.ckpt", weights_only=True)["hyper_parameters"]["rules"] == RULES


def test_rules_that_match_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        Regularizer(make_net(), rules={"0.*": {"l1": 1.0}})
