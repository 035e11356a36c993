"""The deferred L1 term against the tutorial's ``loss + l1 * sum|W|`` through plain autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from lightning_reg.functional.deferred import l1_term

L1 = 0.0123


def make_model(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def batch(dtype: torch.dtype = torch.float64, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, 4, generator=generator, dtype=dtype), torch.randn(
        6, 3, generator=generator, dtype=dtype
    )


def weights(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.dim() > 1]


def tutorial_loop(params: list[nn.Parameter]) -> Tensor:
    return sum(torch.sum(torch.abs(p)) for p in params)  # type: ignore[return-value]


def deferred_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return nn.functional.mse_loss(model(x), y) + l1_term(weights(model), L1)


def reference_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return nn.functional.mse_loss(model(x), y) + L1 * tutorial_loop(weights(model))


def grad_of(param: Tensor) -> Tensor:
    assert param.grad is not None
    return param.grad


def assert_same_grads(actual: nn.Module, expected: nn.Module) -> None:
    """Bit for bit, every parameter's ``.grad``, biases included."""
    for (name, got), want in zip(actual.named_parameters(), expected.parameters(), strict=True):
        diff = (grad_of(got) - grad_of(want)).abs().max()
        assert torch.equal(grad_of(got), grad_of(want)), f"{name}: max |diff| {diff}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_is_strength_times_the_tutorial_loop_to_the_last_bit(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    model[0].weight.data[0, 0] = 0.0
    value = l1_term(weights(model), L1)
    assert value.requires_grad
    assert torch.equal(value.detach(), L1 * tutorial_loop(weights(model)).detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_gives_the_gradients_of_the_tutorial_loss_to_the_last_bit(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    model[2].weight.data[1, 3] = 0.0  # sign 0: the data gradient alone
    reference = copy.deepcopy(model)
    x, y = batch(dtype)
    deferred_loss(model, x, y).backward()
    reference_loss(reference, x, y).backward()
    assert_same_grads(model, reference)


def test_accumulating_two_backward_passes_matches_the_tutorial() -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    for seed in (1, 2):
        x, y = batch(seed=seed)
        deferred_loss(model, x, y).backward()
        reference_loss(reference, x, y).backward()
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(grad_of(got), grad_of(want), rtol=1e-12, atol=1e-15)
    # ... and the penalty counts twice: the difference from the data gradients alone is 2 * l1 * sign(w).
    data_only = copy.deepcopy(reference)
    data_only.zero_grad(set_to_none=True)
    for seed in (1, 2):
        x, y = batch(seed=seed)
        nn.functional.mse_loss(data_only(x), y).backward()
    for got, data, w in zip(weights(model), weights(data_only), weights(reference), strict=True):
        torch.testing.assert_close(
            grad_of(got) - grad_of(data), 2 * L1 * torch.sign(w.detach()), rtol=1e-9, atol=1e-15
        )


def test_autograd_grad_returns_the_penalized_gradients_and_leaves_grad_alone() -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    x, y = batch()
    got = torch.autograd.grad(deferred_loss(model, x, y), weights(model))
    want = torch.autograd.grad(reference_loss(reference, x, y), weights(reference))
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert all(p.grad is None for p in model.parameters())


def test_autograd_grad_of_the_term_alone_is_strength_times_sign() -> None:
    model = make_model()
    got = torch.autograd.grad(l1_term(weights(model), L1), weights(model))
    for g, w in zip(got, weights(model), strict=True):
        assert torch.equal(g, L1 * torch.sign(w.detach()))
    assert all(p.grad is None for p in model.parameters())


def test_backward_with_inputs_fills_only_those_inputs() -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    x, y = batch()
    deferred_loss(model, x, y).backward(inputs=[model[2].weight])
    reference_loss(reference, x, y).backward(inputs=[reference[2].weight])
    assert torch.equal(grad_of(model[2].weight), grad_of(reference[2].weight))
    others = [p for name, p in model.named_parameters() if name != "2.weight"]
    assert all(p.grad is None for p in others)


def test_a_weight_the_data_loss_does_not_reach_gets_the_penalty_gradient_alone() -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    unused = nn.Linear(3, 5).double()
    x, y = batch()
    loss = nn.functional.mse_loss(model(x), y) + l1_term([*weights(model), unused.weight], L1)
    loss.backward()
    assert unused.weight.grad is not None
    assert torch.equal(unused.weight.grad, L1 * torch.sign(unused.weight.detach()))
    assert unused.bias.grad is None
    # ... and the weights the data loss does reach still get the tutorial's gradients.
    reference_loss(reference, x, y).backward()
    for got, want in zip(weights(model), weights(reference), strict=True):
        assert torch.equal(grad_of(got), grad_of(want))


def test_retain_graph_and_a_second_backward_count_the_penalty_twice() -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    x, y = batch()
    loss, want = deferred_loss(model, x, y), reference_loss(reference, x, y)
    loss.backward(retain_graph=True)
    want.backward(retain_graph=True)
    assert_same_grads(model, reference)  # after the first pass, bit for bit
    loss.backward()
    want.backward()
    for got, expected in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(grad_of(got), grad_of(expected), rtol=1e-12, atol=1e-15)


def test_changing_a_weight_in_place_before_backward_is_an_error() -> None:
    model = make_model()
    loss = l1_term(weights(model), L1)  # the term alone: only its saved tensors can notice
    with torch.no_grad():
        model[0].weight.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_loss_scale_reaches_the_penalty_gradient(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    reference = copy.deepcopy(model)
    x, y = batch(dtype)
    (3.0 * deferred_loss(model, x, y)).backward()
    (3.0 * reference_loss(reference, x, y)).backward()
    assert_same_grads(model, reference)


def test_the_loss_scale_alone_scales_the_penalty_gradient() -> None:
    model = make_model()
    (0.25 * l1_term(weights(model), L1)).backward()
    for w in weights(model):
        assert w.grad is not None
        assert torch.equal(w.grad, torch.sign(w.detach()) * (0.25 * L1))


def test_under_bfloat16_autocast_the_gradients_are_the_tutorials() -> None:
    model = make_model(torch.float32)
    reference = copy.deepcopy(model)
    x, y = batch(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = deferred_loss(model, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = reference_loss(reference, x, y)
    assert loss.dtype == want.dtype
    assert torch.equal(loss.detach(), want.detach())
    loss.backward()
    want.backward()
    assert_same_grads(model, reference)


def overwrite_grad_at_end_of_backward(weight: nn.Parameter) -> None:
    """As DistributedDataParallel does: a hook queues a callback that writes the gradient it saw to .grad."""
    engine = torch.autograd.Variable._execution_engine  # type: ignore[attr-defined]

    def hook(grad: Tensor) -> Tensor:
        seen = grad.detach().clone()

        def write() -> None:
            assert weight.grad is not None
            weight.grad.copy_(seen)

        engine.queue_callback(write)
        return grad

    weight.register_hook(hook)


def test_the_penalty_is_added_after_callbacks_queued_during_backward() -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    for net in (model, reference):
        for w in weights(net):
            overwrite_grad_at_end_of_backward(w)
    x, y = batch()
    deferred_loss(model, x, y).backward()
    reference_loss(reference, x, y).backward()
    assert_same_grads(model, reference)
