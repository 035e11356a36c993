"""Tensor math checked against numpy formulas."""

from __future__ import annotations

import numpy as np
import torch
from helpers import make_net, seed_l1_penalty

from lightning_reg.penalties import STATISTICS_COLUMNS, l1_norm, weight_statistics


def test_l1_norm_is_the_tutorial_loop_to_the_last_bit() -> None:
    model = make_net(hidden=33)
    weights = [p for p in model.parameters() if p.dim() > 1]
    assert torch.equal(l1_norm(weights), seed_l1_penalty(model))


def test_l1_norm_gradient_is_the_sign() -> None:
    w = torch.tensor([[-2.0, 0.0, 3.0]], requires_grad=True)
    l1_norm([w]).backward()
    assert w.grad is not None
    assert w.grad.tolist() == [[-1.0, 0.0, 1.0]]


def test_l1_norm_of_nothing_is_zero() -> None:
    assert l1_norm([]).item() == 0.0


def test_weight_statistics_match_numpy() -> None:
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(30, 20, generator=generator)
    a[::3] = 0.0
    a[1, :5] = 1e-5
    b = torch.randn(4, 4, 3, generator=generator, dtype=torch.float64)
    table = weight_statistics([a, b], near_zero_tol=1e-3)
    assert table.dtype == torch.float64
    assert table.shape == (2, len(STATISTICS_COLUMNS))
    for row, tensor in zip(table.tolist(), (a, b), strict=True):
        values = tensor.numpy().astype(np.float64)
        expected = [
            np.abs(values).sum(),
            np.square(values).sum(),
            float((values == 0).sum()),
            float((np.abs(values) < 1e-3).sum()),
        ]
        np.testing.assert_allclose(row, expected, rtol=1e-12)
    assert table[0, 2].item() == 10 * 20  # the planted zero rows


def test_weight_statistics_need_no_grad_and_change_nothing() -> None:
    w = torch.nn.Parameter(torch.randn(5, 5))
    before = w.detach().clone()
    table = weight_statistics([w], near_zero_tol=0.1)
    assert not table.requires_grad
    assert torch.equal(w.detach(), before)
