"""Tensor math checked against numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_net, seed_l1_penalty

from lightning_reg.functional.couplings import Coupling, coupled_l1_norm, coupled_statistics
from lightning_reg.functional.penalties import STATISTICS_COLUMNS, l1_norm, squared_norm, weight_statistics


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


def test_the_statistics_of_rows_and_columns_match_numpy() -> None:
    """Rows and columns are one-member couplings: their norms' sum and dead groups, as numpy has them."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(30, 20, generator=generator)
    a[::3] = 0.0
    b = torch.randn(4, 4, 3, generator=generator, dtype=torch.float64)
    for axis in (0, 1):
        table = coupled_statistics([Coupling.along("a", a, axis), Coupling.along("b", b, axis)])
        for row, tensor in zip(table.tolist(), (a, b), strict=True):
            values = tensor.numpy().astype(np.float64)
            groups = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
            norms = np.sqrt(np.square(groups).sum(axis=1))
            np.testing.assert_allclose(row, [norms.sum(), float((norms == 0).sum())], rtol=1e-12)
    assert coupled_statistics([Coupling.along("a", a, 0)])[0, 1].item() == 10  # the planted dead rows


def test_weight_statistics_need_no_grad_and_change_nothing() -> None:
    w = torch.nn.Parameter(torch.randn(5, 5))
    before = w.detach().clone()
    table = weight_statistics([w], near_zero_tol=0.1)
    assert not table.requires_grad
    assert torch.equal(w.detach(), before)


def test_squared_norm_and_the_group_term_of_rows_and_columns_match_numpy() -> None:
    generator = torch.Generator().manual_seed(2)
    weights = [torch.randn(4, 6, generator=generator), torch.randn(3, 2, 5, generator=generator)]
    arrays = [w.double().numpy() for w in weights]
    assert squared_norm(weights).item() == pytest.approx(sum(np.square(a).sum() for a in arrays), rel=1e-6)
    for axis in (0, 1):  # rows, columns
        expected = sum(
            np.sqrt(np.square(np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)).sum(axis=1)).sum()
            for a in arrays
        )
        units = [Coupling.along(f"w{i}", w, axis) for i, w in enumerate(weights)]
        assert coupled_l1_norm(units).item() == pytest.approx(expected, rel=1e-6)


def test_group_l1_gradient_is_finite_at_zero_groups() -> None:
    w = torch.zeros(3, 4)
    w[0] = torch.tensor([3.0, 0.0, 4.0, 0.0])
    w.requires_grad_(True)
    coupled_l1_norm([Coupling.along("w", w, 0)]).backward()
    assert w.grad is not None
    assert torch.isfinite(w.grad).all()
    assert w.grad[0].tolist() == pytest.approx([0.6, 0.0, 0.8, 0.0])
    assert w.grad[1:].abs().sum().item() == 0.0
