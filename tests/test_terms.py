"""The terms: one class per mode, found through a registry; a new mode is one class plus registration."""

from __future__ import annotations

import pytest
import torch
from helpers import loader, make_net, regression_data
from torch import nn
from torch.optim import Optimizer

from lightning_reg import InvalidArgumentError, Regularizer, options
from lightning_reg.terms import base
from lightning_reg.terms.base import Hooks, L2Term, register, registered

L2, LR = 2e-2, 0.05


@pytest.mark.parametrize("option", options.MODE_OPTIONS)
def test_every_declared_mode_has_terms_and_every_registered_mode_is_declared(option: str) -> None:
    assert sorted(registered(option)) == sorted(options.mode_choices(option))
    assert all(registered(option).values())


def test_registering_an_undeclared_mode_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgumentError, match=r"Invalid mode: 'gradient' \(expected a declared value"):
        register("l2_mode", "gradient")
    with pytest.raises(InvalidArgumentError, match=r"Invalid option: 'l3_mode'"):
        register("l3_mode", "loss")


@pytest.fixture
def gradient_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mode of this test's own, ``l2_mode="gradient"``: ``l2 * w`` added to the gradient right before
    the update, without touching the optimizer's groups. Declaring the value and registering the class is
    all it takes; both are undone after the test."""
    monkeypatch.setattr(options, "L2_MODES", (*options.L2_MODES, "gradient"))
    monkeypatch.setitem(base._REGISTRY["l2_mode"], "gradient", [])

    @register("l2_mode", "gradient")
    class L2InGradient(L2Term):
        def hooks(self, optimizer: Optimizer) -> Hooks:
            return Hooks([self.add], []) if self.active else Hooks([], [])

        @torch.no_grad()
        def add(self, optimizer: Optimizer) -> None:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is not None and self.selection.is_regularized(param):
                        strength = self.selection.strength_of(param).l2
                        param.grad.add_(param, alpha=strength)


def test_a_mode_added_as_one_class_plus_registration_trains_as_its_formula(gradient_mode: None) -> None:
    """The new mode's run equals SGD's own weight decay (``grad += wd * w`` inside its step) on the
    weights ``dim > 1`` alone, bit for bit, and its groups are left as built."""
    net, reference = make_net(), make_net()
    reg = Regularizer(net, l2=L2, l2_mode="gradient")  # type: ignore[arg-type]
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    reg.attach(optimizer)
    assert len(optimizer.param_groups) == 1
    weights = [param for param in reference.parameters() if param.dim() > 1]
    others = [param for param in reference.parameters() if param.dim() <= 1]
    expected = torch.optim.SGD(
        [{"params": weights, "weight_decay": L2}, {"params": others, "weight_decay": 0.0}], lr=LR
    )
    for x, y in loader(regression_data()):
        for model, opt in ((net, optimizer), (reference, expected)):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for actual, wanted in zip(net.parameters(), reference.parameters(), strict=True):
        assert torch.equal(actual, wanted)


def test_the_new_mode_refuses_an_optimizer_that_decays_the_weights_itself(gradient_mode: None) -> None:
    net = make_net()
    reg = Regularizer(net, l2=L2, l2_mode="gradient")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="l2_mode='gradient'"):
        reg.attach(torch.optim.SGD(net.parameters(), lr=LR, weight_decay=1e-3))


def test_an_attach_refused_leaves_the_optimizer_as_built() -> None:
    """Every mode's refusal comes before any mode changes the optimizer: here the proximal step refuses
    Adadelta (its step sizes are unknown), and the weight-decay split that comes with l2 has not happened."""
    net = make_net()
    reg = Regularizer(net, l1=1e-3, l2=L2, l1_mode="proximal")
    optimizer = torch.optim.Adadelta(net.parameters(), lr=LR)
    with pytest.raises(ValueError, match="Invalid optimizer for proximal_threshold='optimizer': Adadelta"):
        reg.attach(optimizer)
    assert [group["params"] for group in optimizer.param_groups] == [list(net.parameters())]
    reg.attach(torch.optim.Adam(net.parameters(), lr=LR))  # the same regularizer splits a supported one


@pytest.mark.parametrize("mode", options.L2_MODES)
def test_asked_l2_that_rules_zero_everywhere_still_refuses_the_optimizers_own_decay(mode: str) -> None:
    """Every L2 mode owns the decay once ``l2`` is asked: with every weight's ``l2`` set to ``0`` by a
    rule, an optimizer that decays the weights itself is still refused, not left to decay them."""
    net = make_net()
    reg = Regularizer(net, l2=L2, rules={"*": {"l2": 0.0}}, l2_mode=mode)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"(param group 0 |already )has weight_decay=0.1"):
        reg.attach(torch.optim.SGD(net.parameters(), lr=LR, weight_decay=0.1))
