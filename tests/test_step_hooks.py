"""Hooks around an optimizer's update: several regularizers on one optimizer, replacing, detaching."""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from torch import Tensor, nn

from lightning_reg import RegularizedModule, Regularizer
from lightning_reg.optim.step_hooks import attach, owners

LR = 0.1
L1 = (2.0, 1.5)  # the first layer's strength, the second's: large enough to zero entries in one step


def two_layers() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def soft_threshold(z: Tensor, threshold: float) -> Tensor:
    """``sign(z) * max(|z| - threshold, 0)``, written out."""
    return torch.sign(z) * torch.clamp(z.abs() - threshold, min=0.0)


def one_sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """One step on a fixed batch; returns each parameter after plain SGD's own step from the same point."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    reference = copy.deepcopy(model)
    for net in (model, reference):
        net.zero_grad()
        net(x).pow(2).mean().backward()
    torch.optim.SGD(reference.parameters(), lr=LR).step()
    optimizer.step()
    return {name: param.detach() for name, param in reference.named_parameters()}


def test_two_regularizers_on_one_optimizer_each_act_on_their_own_layer() -> None:
    """The defect: the second attach used to remove the first one's hooks (only layer 2 got zeros)."""
    model = two_layers()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    first = Regularizer(model[0], l1=L1[0], l1_mode="proximal")
    second = Regularizer(model[2], l1=L1[1], l1_mode="proximal")
    first.attach(optimizer)
    second.attach(optimizer)
    plain = one_sgd_step(model, optimizer)
    for name, strength in (("0.weight", L1[0]), ("2.weight", L1[1])):
        expected = soft_threshold(plain[name], LR * strength)
        assert torch.equal(dict(model.named_parameters())[name], expected), name
        assert (expected == 0).any(), name  # the threshold bites,
        assert (expected != 0).any(), name  # but not everywhere
    for name in ("0.bias", "2.bias"):
        assert torch.equal(dict(model.named_parameters())[name], plain[name])


def test_a_decoupled_and_a_proximal_regularizer_share_one_optimizer() -> None:
    model = two_layers()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    decay = 0.3
    Regularizer(model[0], l2=decay, l2_mode="decoupled").attach(optimizer)
    Regularizer(model[2], l1=L1[1], l1_mode="proximal").attach(optimizer)
    w0 = model[0].weight.detach().clone()
    plain = one_sgd_step(model, optimizer)
    # Decoupled decay scales w before the update: w * (1 - lr * l2) - lr * g.
    assert torch.equal(model[0].weight, w0 * (1 - LR * decay) + (plain["0.weight"] - w0))
    assert torch.equal(model[2].weight, soft_threshold(plain["2.weight"], LR * L1[1]))


def test_attaching_the_same_regularizer_again_replaces_its_hooks() -> None:
    model = two_layers()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    regularizer = Regularizer(model, l1=L1[1], l1_mode="proximal")
    regularizer.attach(optimizer)
    regularizer.attach(optimizer)
    assert owners(optimizer) == [regularizer]
    plain = one_sgd_step(model, optimizer)
    assert torch.equal(model[2].weight, soft_threshold(plain["2.weight"], LR * L1[1]))  # once, not twice


@pytest.mark.parametrize("how", ["handle", "context", "detach (deprecated)"])
def test_the_handle_attach_returns_removes_the_hooks(how: str) -> None:
    model = two_layers()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    regularizer = Regularizer(model, l1=L1[0], l1_mode="proximal")
    handle = regularizer.attach(optimizer)
    assert owners(optimizer) == [regularizer]
    if how == "handle":
        handle.remove()
        handle.remove()  # a second time: nothing left to remove
    elif how == "context":
        with regularizer.attach(optimizer):
            assert owners(optimizer) == [regularizer]
    else:
        with pytest.warns(FutureWarning, match=r"Regularizer.detach\(\) is deprecated .* handle.remove\(\)"):
            regularizer.detach()
    assert owners(optimizer) == []
    plain = one_sgd_step(model, optimizer)
    for name, param in model.named_parameters():
        assert torch.equal(param, plain[name]), name


def test_two_regularizers_of_one_parameter_are_refused() -> None:
    model = two_layers()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    Regularizer(model, l1=L1[0], l1_mode="proximal").attach(optimizer)
    with pytest.raises(ValueError, match=r"another Regularizer .* regularizes '2.weight' too"):
        Regularizer(model, exclude=["0.*"], l1=L1[1], l1_mode="proximal").attach(optimizer)


def test_a_second_regularizer_may_not_split_the_groups_for_weight_decay() -> None:
    model = two_layers()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    Regularizer(model[0], l2=0.1).attach(optimizer)
    groups = copy.deepcopy(
        [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    )
    with pytest.raises(ValueError, match=r"splitting its groups for weight decay .* would move"):
        Regularizer(model[2], l2=0.1).attach(optimizer)
    assert [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups] == groups


def test_owners_are_listed_in_the_order_their_hooks_were_installed() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=LR)
    calls: list[str] = []
    attach(optimizer, "a", before=[lambda _: calls.append("a")], after=[])
    attach(optimizer, "b", before=[lambda _: calls.append("b")], after=[lambda _: calls.append("b after")])
    attach(optimizer, "a", before=[], after=[lambda _: calls.append("a after")])
    optimizer.step()
    assert calls == ["b", "b after", "a after"]
    assert owners(optimizer) == ["b", "a"]


class CachedOptimizer(RegularizedModule, L.LightningModule):
    """A module whose ``configure_optimizers`` returns the same optimizer each time it is called."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.net = two_layers()
        self._optimizer = torch.optim.SGD(self.parameters(), lr=LR)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self._optimizer


def test_a_module_configuring_its_optimizers_again_leaves_one_regularizer_attached() -> None:
    module = CachedOptimizer(l1=L1[1], l1_mode="proximal")
    optimizer = module.configure_optimizers()
    first = module.regularizer
    assert module.configure_optimizers() is optimizer
    assert owners(optimizer) == [module.regularizer]
    assert module.regularizer is not first
    plain = one_sgd_step(module.net, optimizer)
    assert torch.equal(module.net[2].weight, soft_threshold(plain["2.weight"], LR * L1[1]))  # once
