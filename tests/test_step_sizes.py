"""Step sizes checked against torch.optim's real ``step()``, entry by entry, and against the update rules.

Each case runs a few real steps with random gradients (so that the second moments differ per entry),
then writes into the optimizer's state the first-moment buffers that a gradient ``G`` kept constant
would leave (computed here from torch's documented update, not by the package), and takes one more
real step with ``G``. That step must move every entry by ``-s * G``, with ``s`` the package's
``step_size`` read after it, and ``s`` must be the formula of the update rule written out below.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from helpers import RegRegression, loader, quiet_trainer, regression_data
from torch import Tensor, nn, optim
from torch.optim import Optimizer

from lightning_reg import RegularizationOptions, RegularizedModule, Regularizer
from lightning_reg.optim.step_sizes import StepSize, check_supported, step_size

State = MutableMapping[str, Any]
Group = dict[str, Any]
#: Writes the steady first-moment buffers for the gradient ``grad`` into ``state`` and returns the
#: step per unit of gradient that the next update must apply, from the state before that update.
Rule = Callable[[State, Group, Tensor], Tensor]
LR2 = 0.003  # the learning rate of the second parameter group, in every case


def count(state: State) -> float:
    """The step number of the update about to run (torch increments ``step`` first)."""
    return float(state["step"]) + 1


def sgd_rule(state: State, group: Group, grad: Tensor) -> Tensor:
    """``buf <- m * buf + (1 - d) * G`` settles at ``(1 - d) G / (1 - m)``; Nesterov steps by
    ``G + m * buf``."""
    lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
    if momentum == 0:
        return torch.full_like(grad, lr)
    buffer = (1 - dampening) * grad / (1 - momentum)
    state["momentum_buffer"].copy_(buffer)
    if group["nesterov"]:
        return torch.full_like(grad, lr * (1 + momentum * (1 - dampening) / (1 - momentum)))
    return torch.full_like(grad, lr * (1 - dampening) / (1 - momentum))


def second_moment(state: State, group: Group, grad: Tensor) -> Tensor:
    """``v <- beta2 * v + (1 - beta2) * G^2``."""
    beta2 = group["betas"][1]
    return beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad


def adam_rule(state: State, group: Group, grad: Tensor) -> Tensor:
    """``lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)`` at ``m = G``; ``max(v)`` under amsgrad."""
    beta1, beta2 = group["betas"]
    t = count(state)
    second = second_moment(state, group, grad)
    if group["amsgrad"]:
        second = torch.maximum(state["max_exp_avg_sq"], second)
    state["exp_avg"].copy_(grad)
    return group["lr"] / (1 - beta1**t) / ((second / (1 - beta2**t)).sqrt() + group["eps"])


def nadam_rule(state: State, group: Group, grad: Tensor) -> Tensor:
    """``lr * ((1 - mu_t) / (1 - prod_t) * G + mu_{t+1} / (1 - prod_t * mu_{t+1}) * m) / denom``, at
    ``m = G``."""
    beta1, beta2 = group["betas"]
    t, decay = count(state), group["momentum_decay"]
    mu = beta1 * (1 - 0.5 * 0.96 ** (t * decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * decay))
    product = float(state["mu_product"] * mu)  # torch keeps the product in the dtype of its step count
    coefficient = (1 - mu) / (1 - product) + mu_next / (1 - product * mu_next)
    second = second_moment(state, group, grad)
    state["exp_avg"].copy_(grad)
    return group["lr"] * coefficient / ((second / (1 - beta2**t)).sqrt() + group["eps"])


def radam_rule(state: State, group: Group, grad: Tensor) -> Tensor:
    """``lr / (1 - beta1^t)``, times ``rect * sqrt(1 - beta2^t) / (sqrt(v) + eps)`` once ``rho_t > 5``."""
    beta1, beta2 = group["betas"]
    t = count(state)
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    second = second_moment(state, group, grad)
    state["exp_avg"].copy_(grad)
    plain = group["lr"] / (1 - beta1**t)
    if rho <= 5:
        return torch.full_like(grad, plain)
    rect = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    return plain * rect * math.sqrt(1 - beta2**t) / (second.sqrt() + group["eps"])


def adamax_rule(state: State, group: Group, grad: Tensor) -> Tensor:
    """``lr / (1 - beta1^t) * m / u`` at ``m = G``, with ``u <- max(beta2 * u, |G| + eps)``."""
    beta1, beta2 = group["betas"]
    norm = torch.maximum(beta2 * state["exp_inf"], grad.abs() + group["eps"])
    state["exp_avg"].copy_(grad)
    return group["lr"] / (1 - beta1 ** count(state)) / norm


def rmsprop_rule(state: State, group: Group, grad: Tensor) -> Tensor:
    """``lr / (sqrt(E[G^2] - E[G]^2 if centered) + eps)``; momentum ``buf <- m buf + G / avg`` settles at
    ``G / (avg (1 - m))``."""
    alpha, momentum = group["alpha"], group["momentum"]
    variance = alpha * state["square_avg"] + (1 - alpha) * grad * grad
    if group["centered"]:
        mean = alpha * state["grad_avg"] + (1 - alpha) * grad
        variance = variance - mean * mean
    avg = variance.sqrt() + group["eps"]
    if momentum == 0:
        return group["lr"] / avg
    state["momentum_buffer"].copy_(grad / (avg * (1 - momentum)))
    return group["lr"] / ((1 - momentum) * avg)


def adagrad_rule(state: State, group: Group, grad: Tensor) -> Tensor:
    """``lr / (1 + (t - 1) * lr_decay) / (sqrt(sum + G^2) + eps)``."""
    total = state["sum"] + grad * grad
    return group["lr"] / (1 + (count(state) - 1) * group["lr_decay"]) / (total.sqrt() + group["eps"])


@dataclass(frozen=True)
class Case:
    """An optimizer, its rule, the real steps before the checked one, and how it applies weight decay."""

    id: str
    make: Callable[[list[Group]], Optimizer]
    rule: Rule
    steps: int = 4
    decoupled: bool = False  # weight decay as ``w <- (1 - lr * wd) * w`` before the update
    adaptive: bool = True  # the step differs per entry


CASES = [
    Case("sgd", lambda p: optim.SGD(p, lr=0.1), sgd_rule, adaptive=False),
    Case("sgd-momentum", lambda p: optim.SGD(p, lr=0.1, momentum=0.9), sgd_rule, adaptive=False),
    Case(
        "sgd-dampening",
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.3),
        sgd_rule,
        adaptive=False,
    ),
    Case(
        "sgd-nesterov",
        lambda p: optim.SGD(p, lr=0.1, momentum=0.8, nesterov=True),
        sgd_rule,
        adaptive=False,
    ),
    Case(
        "sgd-momentum-decay",
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
        sgd_rule,
        adaptive=False,
    ),
    Case(
        "sgd-foreach",
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.3, foreach=True),
        sgd_rule,
        adaptive=False,
    ),
    Case("sgd-fused", lambda p: optim.SGD(p, lr=0.1, fused=True), sgd_rule, adaptive=False),
    Case(
        "sgd-fused-nesterov",
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, fused=True),
        sgd_rule,
        adaptive=False,
    ),
    Case("adam", lambda p: optim.Adam(p, lr=0.01), adam_rule),
    Case("adam-eps", lambda p: optim.Adam(p, lr=0.01, eps=0.05), adam_rule),
    Case("adam-amsgrad", lambda p: optim.Adam(p, lr=0.01, betas=(0.8, 0.6), amsgrad=True), adam_rule),
    Case("adam-decay", lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1, eps=0.01), adam_rule),
    Case("adam-foreach", lambda p: optim.Adam(p, lr=0.01, eps=0.01, foreach=True), adam_rule),
    Case(
        "adam-foreach-amsgrad",
        lambda p: optim.Adam(p, lr=0.01, betas=(0.8, 0.6), amsgrad=True, foreach=True),
        adam_rule,
    ),
    Case("adam-fused", lambda p: optim.Adam(p, lr=0.01, eps=0.01, fused=True), adam_rule),
    Case(
        "adam-fused-amsgrad",
        lambda p: optim.Adam(p, lr=0.01, betas=(0.8, 0.6), amsgrad=True, fused=True),
        adam_rule,
    ),
    Case("adamw-no-decay", lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.0), adam_rule),
    Case("adamw", lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.5), adam_rule, decoupled=True),
    Case(
        "adamw-amsgrad",
        lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.5, betas=(0.8, 0.6), amsgrad=True),
        adam_rule,
        decoupled=True,
    ),
    Case(
        "adamw-foreach",
        lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.5, foreach=True),
        adam_rule,
        decoupled=True,
    ),
    Case(
        "adamw-fused",
        lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.5, eps=0.01, fused=True),
        adam_rule,
        decoupled=True,
    ),
    Case("nadam", lambda p: optim.NAdam(p, lr=0.01), nadam_rule),
    Case(
        "nadam-decoupled",
        lambda p: optim.NAdam(p, lr=0.01, weight_decay=0.5, decoupled_weight_decay=True, eps=0.01),
        nadam_rule,
        decoupled=True,
    ),
    Case("nadam-decay", lambda p: optim.NAdam(p, lr=0.01, weight_decay=0.1, momentum_decay=0.01), nadam_rule),
    Case("nadam-foreach", lambda p: optim.NAdam(p, lr=0.01, eps=0.01, foreach=True), nadam_rule),
    # with the default beta2, rho_t <= 5 up to t = 5: the checked step is t = 3, then t = 30
    Case("radam-unrectified", lambda p: optim.RAdam(p, lr=0.01), radam_rule, steps=2, adaptive=False),
    Case("radam", lambda p: optim.RAdam(p, lr=0.01, eps=0.01), radam_rule, steps=29),
    Case(
        "radam-decoupled",
        lambda p: optim.RAdam(p, lr=0.01, weight_decay=0.5, decoupled_weight_decay=True),
        radam_rule,
        steps=29,
        decoupled=True,
    ),
    Case("radam-foreach", lambda p: optim.RAdam(p, lr=0.01, foreach=True), radam_rule, steps=29),
    Case("adamax", lambda p: optim.Adamax(p, lr=0.01), adamax_rule),
    Case("adamax-decay", lambda p: optim.Adamax(p, lr=0.01, betas=(0.9, 0.5), weight_decay=0.1), adamax_rule),
    Case("adamax-foreach", lambda p: optim.Adamax(p, lr=0.01, betas=(0.9, 0.5), foreach=True), adamax_rule),
    Case("rmsprop", lambda p: optim.RMSprop(p, lr=0.01), rmsprop_rule),
    Case("rmsprop-momentum", lambda p: optim.RMSprop(p, lr=0.01, momentum=0.9), rmsprop_rule),
    Case("rmsprop-centered", lambda p: optim.RMSprop(p, lr=0.01, alpha=0.6, centered=True), rmsprop_rule),
    Case(
        "rmsprop-centered-momentum",
        lambda p: optim.RMSprop(p, lr=0.01, alpha=0.6, centered=True, momentum=0.7, eps=0.01),
        rmsprop_rule,
    ),
    Case("rmsprop-decay", lambda p: optim.RMSprop(p, lr=0.01, weight_decay=0.1, momentum=0.5), rmsprop_rule),
    Case(
        "rmsprop-foreach",
        lambda p: optim.RMSprop(p, lr=0.01, alpha=0.6, centered=True, momentum=0.7, foreach=True),
        rmsprop_rule,
    ),
    Case("adagrad", lambda p: optim.Adagrad(p, lr=0.1, lr_decay=0.2), adagrad_rule),
    Case(
        "adagrad-decay",
        lambda p: optim.Adagrad(p, lr=0.1, lr_decay=0.2, weight_decay=0.1, initial_accumulator_value=0.3),
        adagrad_rule,
    ),
    Case(
        "adagrad-foreach",
        lambda p: optim.Adagrad(p, lr=0.1, lr_decay=0.2, eps=0.01, foreach=True),
        adagrad_rule,
    ),
    Case(
        "adagrad-fused", lambda p: optim.Adagrad(p, lr=0.1, lr_decay=0.2, eps=0.01, fused=True), adagrad_rule
    ),
]


def snapshot(state: State) -> dict[str, Any]:
    return {key: value.clone() if isinstance(value, Tensor) else value for key, value in state.items()}


def assert_unchanged(state: State, before: dict[str, Any]) -> None:
    assert state.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(state[key], value) if isinstance(value, Tensor) else state[key] == value, key


def per_entry(size: StepSize, like: Tensor) -> Tensor:
    """The step of every entry as a float64 tensor shaped like ``like``."""
    return torch.as_tensor(size.per_entry(), dtype=torch.float64).expand(like.shape)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_the_step_size_is_the_step_the_optimizer_takes_at_steady_state(case: Case) -> None:
    """One real step from the steady state moves every entry by ``-step_size * G``, the rule's step."""
    generator = torch.Generator().manual_seed(12)
    weight = nn.Parameter(torch.randn(6, 5, dtype=torch.float64, generator=generator))
    conv = nn.Parameter(torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=generator))
    params = [weight, conv]
    optimizer = case.make([{"params": [weight]}, {"params": [conv], "lr": LR2}])
    # each entry's gradients have their own magnitude, from 0.05 to 20 times the others'
    magnitudes = [
        torch.exp(1.5 * torch.randn(p.shape, dtype=torch.float64, generator=generator)) for p in params
    ]

    def gradients() -> list[Tensor]:
        return [m * torch.randn(m.shape, dtype=torch.float64, generator=generator) for m in magnitudes]

    for _ in range(case.steps):
        for param, grad in zip(params, gradients(), strict=True):
            param.grad = grad
        optimizer.step()

    grads = gradients()
    groups = optimizer.param_groups
    before = [param.detach().clone() for param in params]
    seen, expected = [], []  # the gradient each update sees (coupled decay added), the rule's steps
    for param, grad, group in zip(params, grads, groups, strict=True):
        decay = group["weight_decay"]
        seen.append(grad + decay * param.detach() if decay and not case.decoupled else grad)
        expected.append(case.rule(optimizer.state[param], group, seen[-1]))
        param.grad = grad.clone()
    optimizer.step()

    states = [snapshot(optimizer.state[param]) for param in params]
    entries = len(optimizer.state)
    for index, (param, group) in enumerate(zip(params, groups, strict=True)):
        size = step_size(optimizer, group, param)
        steps = per_entry(size, param)
        shrink = 1 - group["lr"] * group["weight_decay"] if case.decoupled else 1.0
        move = param.detach() - shrink * before[index]
        torch.testing.assert_close(move, -steps * seen[index], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(steps, expected[index], rtol=1e-12, atol=0)
        # the case tests something: adaptive steps differ per entry, the others do not
        assert (steps.std().item() > 1e-3 * steps.mean().item()) == case.adaptive
        assert_unchanged(optimizer.state[param], states[index])  # step_size only reads the state
    assert len(optimizer.state) == entries
    assert not math.isclose(expected[0].mean().item(), expected[1].mean().item())  # the groups differ
    if optimizer.param_groups[0].get("amsgrad"):  # ... and the max of v is not v itself
        state = optimizer.state[weight]
        assert (state["max_exp_avg_sq"] > state["exp_avg_sq"]).any()


def test_radam_cases_are_on_both_sides_of_the_rectification() -> None:
    """The checked steps of the RAdam cases, t = 3 and t = 30, fall where rho_t <= 5 and where it is > 5."""
    beta2 = 0.999
    rho_inf = 2 / (1 - beta2) - 1

    def rho(t: int) -> float:
        return rho_inf - 2 * t * beta2**t / (1 - beta2**t)

    assert rho(3) <= rho(5) <= 5 < rho(6) < rho(30)


def test_sgd_step_size_is_the_learning_rate_and_needs_no_state() -> None:
    """Plain SGD: ``lr``, without a denominator, even for a parameter that never took a step."""
    weight = nn.Parameter(torch.ones(3, 2))
    optimizer = optim.SGD([weight], lr=0.25)
    assert step_size(optimizer, optimizer.param_groups[0], weight) == StepSize(0.25, None)
    assert len(optimizer.state) == 0  # reading did not create an entry


def test_every_rule_reads_only_the_state_it_is_given() -> None:
    """Calling ``step_size`` for every parameter adds no entry to ``optimizer.state`` and changes none."""
    weights = [nn.Parameter(torch.randn(4, 3)) for _ in range(2)]
    for case in CASES:
        optimizer = case.make([{"params": weights}])
        weights[0].grad, weights[1].grad = torch.ones(4, 3), None  # the second takes no step
        optimizer.step()
        before = {param: snapshot(state) for param, state in optimizer.state.items()}
        step_size(optimizer, optimizer.param_groups[0], weights[0])
        assert optimizer.state.keys() == before.keys(), case.id
        for param, state in before.items():
            assert_unchanged(optimizer.state[param], state)


class MyAdam(torch.optim.Adam):
    """A user's subclass: it may change the update, so its step sizes are not known."""


REFUSED: list[Callable[[list[Tensor]], Optimizer]] = [
    lambda p: optim.LBFGS(p),
    lambda p: optim.ASGD(p),
    lambda p: optim.Rprop(p),
    lambda p: MyAdam(p),
]


@pytest.mark.parametrize("make", REFUSED, ids=["LBFGS", "ASGD", "Rprop", "MyAdam"])
def test_check_supported_refuses_other_optimizers_naming_them(
    make: Callable[[list[Tensor]], Optimizer],
) -> None:
    optimizer = make([nn.Parameter(torch.zeros(2, 2))])
    name = type(optimizer).__name__
    with pytest.raises(ValueError, match=rf"\b{name}\b.*proximal_threshold='lr'"):
        check_supported(optimizer)


def test_check_supported_accepts_every_supported_optimizer() -> None:
    for case in CASES:
        check_supported(case.make([{"params": [nn.Parameter(torch.zeros(2, 2))]}]))


class CountingRegression(L.LightningModule):
    """Linear regression trained by LBFGS; counts its training steps."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 1)
        self.training_steps = 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.training_steps += 1
        x, y = batch
        return nn.functional.mse_loss(self.linear(x), y)

    def configure_optimizers(self) -> Optimizer:
        return optim.LBFGS(self.parameters(), lr=0.5, max_iter=5)


class RegCounting(RegularizedModule, CountingRegression):
    pass


def test_an_unsupported_optimizer_fails_before_the_first_training_step() -> None:
    """LBFGS with proximal L1 and the default threshold: ``fit`` raises before any training step."""
    model = RegCounting(l1=0.05, l1_mode="proximal")
    with pytest.raises(ValueError, match=r"LBFGS.*proximal_threshold='lr'"):
        quiet_trainer(max_steps=3).fit(model, loader(regression_data(), batch_size=48))
    assert model.training_steps == 0


def test_the_lr_threshold_trains_with_any_optimizer() -> None:
    """The same LBFGS with ``proximal_threshold="lr"`` trains; its threshold ``lr * l1 = 5`` zeroes ``W``."""
    model = RegCounting(l1=10.0, l1_mode="proximal", proximal_threshold="lr")
    bias = model.linear.bias.detach().clone()
    quiet_trainer(max_steps=3).fit(model, loader(regression_data(), batch_size=48))
    assert model.training_steps > 0
    assert (model.linear.weight == 0).all()
    assert not torch.equal(model.linear.bias, bias)  # the bias trains, unregularized


@pytest.mark.parametrize("value", ["adam", None, "LR", 1.0], ids=repr)
def test_a_bad_proximal_threshold_is_refused_at_construction(value: Any) -> None:
    message = rf"Invalid proximal_threshold: {re.escape(repr(value))} \(expected one of 'optimizer', 'lr'\)"
    with pytest.raises(ValueError, match=message):
        RegRegression(l1=0.1, l1_mode="proximal", proximal_threshold=value)
    with pytest.raises(ValueError, match=message):
        Regularizer(nn.Linear(2, 2), proximal_threshold=value)
    with pytest.raises(ValueError, match=message):
        RegularizationOptions(proximal_threshold=value)


def test_proximal_threshold_is_saved_and_survives_a_checkpoint(tmp_path: Any) -> None:
    model = RegRegression(l1=0.01, l1_mode="proximal", proximal_threshold="lr")
    assert model.hparams["proximal_threshold"] == "lr"
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(model, loader(regression_data()))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = RegRegression.load_from_checkpoint(tmp_path / "model.ckpt")
    assert restored.regularization_options.proximal_threshold == "lr"
    assert restored.regularizer.options.proximal_threshold == "lr"
    saved = torch.load(tmp_path / "model.ckpt", weights_only=True)["hyper_parameters"]
    assert saved["proximal_threshold"] == "lr"
    assert RegRegression(l1=0.01).hparams["proximal_threshold"] == "optimizer"  # the default
