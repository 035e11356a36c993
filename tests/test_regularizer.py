"""The plain-PyTorch engine in the tutorial's own bare training loop."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    RecordOps,
    assert_same_weights,
    loader,
    make_net,
    regression_data,
    seed_l1_penalty,
    train_reference,
)
from torch import nn

from lightning_reg import Regularizer
from lightning_reg.optim import group_prox
from lightning_reg.optim.step_updates import UnheldParametersWarning

L1, L2 = 3e-3, 2e-2


def train_with_regularizer(
    net: nn.Module, *, l1: float, l2: float, optimizer_cls: Any = torch.optim.SGD, **opt: Any
) -> nn.Module:
    reg = Regularizer(net, l1=l1, l2=l2)
    optimizer = optimizer_cls(reg.param_groups(), **opt)
    for x, y in loader(regression_data()):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(net(x), y) + reg.penalty()
        loss.backward()
        optimizer.step()
    return net


@pytest.mark.parametrize(
    ("optimizer_cls", "options"),
    [
        (torch.optim.SGD, {"lr": 0.05}),
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
        (torch.optim.Adam, {"lr": 0.01}),
        (torch.optim.RMSprop, {"lr": 0.01}),
    ],
)
def test_a_bare_loop_trains_exactly_like_the_recipe(optimizer_cls: Any, options: dict[str, Any]) -> None:
    trained = train_with_regularizer(make_net(), l1=L1, l2=L2, optimizer_cls=optimizer_cls, **options)
    expected = train_reference(
        make_net(),
        loader(regression_data()),
        l1=L1,
        l2=L2,
        make_optimizer=lambda groups: optimizer_cls(groups, **options),
    )
    assert_same_weights(trained, expected)


def test_penalty_is_l1_times_the_tutorial_sum() -> None:
    net = make_net()
    assert torch.equal(Regularizer(net, l1=L1).penalty(), L1 * seed_l1_penalty(net))


def test_penalty_without_l1_is_a_constant_zero() -> None:
    penalty = Regularizer(make_net(), l2=L2).penalty()
    assert penalty.item() == 0.0
    assert not penalty.requires_grad


def test_param_groups_cover_every_trainable_parameter_once() -> None:
    net = make_net()
    groups = Regularizer(net, l2=L2, exclude=["3.*"]).param_groups()
    assert [(g["name"], g["weight_decay"]) for g in groups] == [("decay", L2), ("no_decay", 0.0)]
    assert groups[0]["params"] == [net[0].weight]
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in net.parameters())


def test_statistics_summary_matches_formulas() -> None:
    net = make_net(hidden=40)
    with torch.no_grad():
        net[0].weight[:10] = 0.0
        net[3].weight[0, :4] = 1e-4
    reg = Regularizer(net, l1=L1, l2=L2)
    values = reg.statistics(near_zero_tol=1e-3).summary(per_parameter=True)
    w = [p.detach().double().numpy() for p in (net[0].weight, net[3].weight)]
    flat = np.concatenate([a.ravel() for a in w])
    expected = {
        "l1_norm": np.abs(flat).sum(),
        "l2_norm": math.sqrt(np.square(flat).sum()),
        "sparsity": 10 * 5 / flat.size,
        "near_zero": (10 * 5 + 4 + int((np.abs(flat) < 1e-3).sum()) - 54) / flat.size,
        "l1_penalty": L1 * np.abs(flat).sum(),
        "l2_penalty": L2 / 2 * np.square(flat).sum(),
        "dead_units": 10 / (40 + 1),
        "group_l1_penalty": 0.0,
        "l1_strength": L1,
        "sparsity/0.weight": 10 * 5 / w[0].size,
        "sparsity/3.weight": 0.0,
        "l1_norm/0.weight": np.abs(w[0]).sum(),
        "l1_norm/3.weight": np.abs(w[1]).sum(),
        "dead_units/0.weight": 10 / 40,
        "dead_units/3.weight": 0.0,
    }
    assert values.keys() == expected.keys()
    for key, want in expected.items():
        assert values[key] == pytest.approx(want, rel=1e-12, abs=1e-15), key


def test_statistics_without_penalties_omit_them() -> None:
    summary = Regularizer(make_net()).statistics().summary(penalties=False)
    assert sorted(summary) == ["dead_units", "l1_norm", "l2_norm", "near_zero", "sparsity"]


def test_unmatched_exclude_warns_with_example_names() -> None:
    with pytest.warns(
        UserWarning, match=r"'head\.\*' matches no trainable parameter of Sequential.*'0.weight'"
    ):
        Regularizer(make_net(), exclude=["head.*"])


def test_a_strength_that_regularizes_no_parameter_warns_naming_it() -> None:
    biases_only = nn.Sequential(nn.LayerNorm(4), nn.LayerNorm(4))  # every parameter has dim 1
    with pytest.warns(UserWarning, match=r"l1=0\.1 regularizes no parameter of Sequential.*0\.weight \(4,\)"):
        Regularizer(biases_only, l1=0.1)
    with pytest.warns(UserWarning, match=r"l2=0\.01 regularizes no parameter of Sequential"):
        Regularizer(make_net(), l2=0.01, exclude=["*"])
    with warnings.catch_warnings():  # nothing asked, nothing to warn of
        warnings.simplefilter("error")
        Regularizer(biases_only)


def test_attaching_an_optimizer_that_holds_none_of_the_weights_warns() -> None:
    net, other = make_net(), make_net()
    reg = Regularizer(net, l1=0.1, l1_mode="proximal")
    with pytest.warns(UnheldParametersWarning, match=r"SGD optimizer\(s\) hold none of the 2 regularized"):
        reg.attach(torch.optim.SGD(other.parameters(), lr=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.attach(torch.optim.SGD(net.parameters(), lr=0.1))


def test_matching_excludes_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Regularizer(make_net(), exclude=["*.bias"])


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("l1", -0.5), ("l2", float("nan")), ("l1", float("-inf")), ("l2", "1e-3"), ("exclude", "bias")],
)
def test_bad_input_names_the_argument_and_the_value(keyword: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^Invalid {keyword}: ") as error:
        Regularizer(make_net(), **{keyword: value})
    assert repr(value) in str(error.value)


@pytest.mark.parametrize(
    "options",
    [
        {"l1": L1, "l2": L2},
        {"l1": L1, "l2": L2, "l1_mode": "proximal", "group_l1": L1},
        {"l1": L1, "l2": L2, "l2_mode": "decoupled", "group_l1": L1},
    ],
    ids=["loss-and-weight-decay", "proximal", "decoupled"],
)
def test_a_regularized_step_reads_nothing_back_to_the_host(
    options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``.item()`` / ``_local_scalar_dense``: on an accelerator each would stall the host (the group
    step's convergence check, which reads on the CPU only, runs as on an accelerator)."""
    monkeypatch.setattr(group_prox, "CHECKED_DEVICES", frozenset())
    net = make_net()
    reg = Regularizer(net, **options)
    optimizer = torch.optim.SGD(reg.param_groups(), lr=0.05)
    reg.attach(optimizer)
    x, y = regression_data().tensors
    with RecordOps() as recorder:
        for _ in range(2):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(net(x), y) + reg.penalty()
            loss.backward()
            optimizer.step()
    assert len(recorder.ops) > 50  # the recorder saw the step's work ...
    assert not [op for op in recorder.ops if "_local_scalar_dense" in op or "item" in op]


def test_a_prepared_penalty_is_the_tutorials_and_a_stale_one_is_not_used() -> None:
    net = make_net()
    reg = Regularizer(net, l1=L1)
    reg.prepare_penalty()
    assert torch.equal(reg.penalty(), L1 * seed_l1_penalty(net))
    reg.prepare_penalty()
    with torch.no_grad():
        net[0].weight.mul_(2.0)  # after prepare_penalty, before penalty
    assert torch.equal(reg.penalty(), L1 * seed_l1_penalty(net))


class RecordScalarReads(RecordOps):
    """Also keeps each tensor that ``.item()`` (``_local_scalar_dense``) reads back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[torch.Tensor] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if "_local_scalar_dense" in str(func):
            self.read.append(args[0])
        return super().__torch_dispatch__(func, types, args, kwargs)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.Adam(params, lr=0.01),
        lambda params: torch.optim.RMSprop(params, lr=0.01, momentum=0.5, centered=True),
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    ],
    ids=["adam", "rmsprop", "sgd-momentum"],
)
def test_the_optimizer_aware_proximal_step_reads_only_the_cpu_step_counts(
    make_optimizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step sizes come from the optimizer's state on the weights' device; the only numbers read on
    the host are the step counts that torch.optim itself keeps on the CPU (and reads) for that reason.

    The group step's Newton solve checks its convergence on the CPU only, where reading costs nothing:
    here it runs as on an accelerator, a fixed number of steps."""
    monkeypatch.setattr(group_prox, "CHECKED_DEVICES", frozenset())
    net = make_net()
    reg = Regularizer(net, l1=L1, group_l1=L1, l1_mode="proximal")
    optimizer = make_optimizer(reg.param_groups())
    x, y = regression_data().tensors
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()
    reg.proximal_step(optimizer)  # the first lays out the group step's units, once
    with RecordScalarReads() as recorder:
        reg.proximal_step(optimizer)
    assert len(recorder.ops) > 10  # the recorder saw the step's work ...
    steps = [state["step"] for state in optimizer.state.values() if "step" in state]
    assert all(any(read is step for step in steps) for read in recorder.read)  # ... and no other read
