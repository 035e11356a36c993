"""The math of couplings (``lightning_reg.functional.couplings``) against formulas written channel by channel
here.

One coupling of three channels is built by hand from four parameters: ``a`` whose rows come in pairs (a
head of two rows per channel), ``b`` one entry per channel (a BatchNorm scale), ``c`` whose columns come
in pairs (the output projection's columns of a head) and ``d`` of which only the odd columns belong to
the channels (the others belong to no channel and must never move). Channel ``k`` is::

    a[2k:2k+2, :], b[k], c[:, 2k:2k+2], d[:, 2k+1]
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from architectures import metric_prox
from torch import Tensor, nn

from lightning_reg.functional.couplings import (
    Coupling,
    Member,
    channel_norms,
    coupled_l1_norm,
    coupled_statistics,
)
from lightning_reg.functional.group_layout import build
from lightning_reg.optim.group_prox import GroupProx

DTYPE = torch.float64
COUNT = 3
OUTSIDE = [0, 2, 4, 6]  # d's columns that belong to no channel
#: group strengths of the metric prox: channel k dies when ||z_k / s_k|| <= g (69, 208 and 277 here)
STRENGTHS = (3.0, 100.0, 300.0)


def parameters(seed: int = 0) -> dict[str, nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"a": (6, 4), "b": (3,), "c": (5, 6), "d": (4, 7)}
    return {
        name: nn.Parameter(torch.randn(shape, dtype=DTYPE, generator=generator))
        for name, shape in shapes.items()
    }


def long(values: list[int]) -> Tensor:
    return torch.tensor(values, dtype=torch.long)


def coupling_of(p: dict[str, nn.Parameter]) -> Coupling:
    pairs = long([0, 0, 1, 1, 2, 2])
    return Coupling(
        "unit",
        COUNT,
        (
            Member("a", p["a"], 0, long(list(range(6))), pairs),
            Member("b", p["b"], 0, long([0, 1, 2]), long([0, 1, 2])),
            Member("c", p["c"], 1, long(list(range(6))), pairs),
            Member("d", p["d"], 1, long([1, 3, 5]), long([0, 1, 2])),
        ),
    )


def pieces(p: dict[str, Tensor], k: int) -> list[Tensor]:
    """Channel ``k``'s slices, written from the module docstring."""
    return [
        p["a"][2 * k : 2 * k + 2, :],
        p["b"][k : k + 1],
        p["c"][:, 2 * k : 2 * k + 2],
        p["d"][:, 2 * k + 1],
    ]


def norms_by_hand(p: dict[str, Tensor]) -> Tensor:
    return torch.stack(
        [torch.sqrt(sum(piece.square().sum() for piece in pieces(p, k))) for k in range(COUNT)]
    )


def test_identity_is_whole_axis_in_order() -> None:
    p = parameters()
    members = coupling_of(p).members
    assert [member.identity for member in members] == [False, True, False, False]
    assert Coupling.along("a", p["a"], 1).members[0].identity


def test_channel_norms_and_the_group_term_are_the_formula() -> None:
    p = parameters()
    coupling = coupling_of(p)
    torch.testing.assert_close(channel_norms(coupling), norms_by_hand(p), rtol=1e-15, atol=0)
    other = Coupling.along("d", p["d"], 0)  # d's rows, a second coupling
    expected = norms_by_hand(p).sum() + torch.linalg.norm(p["d"], dim=1).sum()
    torch.testing.assert_close(coupled_l1_norm([coupling, other]), expected, rtol=1e-15, atol=0)


def test_the_group_term_gradient_is_autograd_of_the_formula_and_zero_at_a_dead_channel() -> None:
    p = parameters()
    with torch.no_grad():
        for piece in pieces(p, 1):
            piece.zero_()
    coupling = coupling_of(p)
    got = torch.autograd.grad(coupled_l1_norm([coupling]), list(p.values()))
    # the formula's gradient w_c / ||w_c|| on the live channels; 0 (the subgradient the package picks) on
    # channel 1, where autograd of the formula gives NaN; nothing on d's columns of no channel
    live = sum(torch.sqrt(sum(piece.square().sum() for piece in pieces(p, k))) for k in (0, 2))
    assert isinstance(live, Tensor)
    want = torch.autograd.grad(live, list(p.values()))
    for name, g, w in zip(p, got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-14, atol=1e-300, msg=name)
    assert torch.equal(got[3][:, OUTSIDE], torch.zeros(4, 4, dtype=DTYPE))
    for piece in pieces(dict(zip(p, got, strict=True)), 1):
        assert torch.equal(piece, torch.zeros_like(piece))


def test_statistics_are_the_norm_sum_and_the_dead_count() -> None:
    p = parameters()
    with torch.no_grad():
        for piece in pieces(p, 2):
            piece.zero_()
        p["d"][:, OUTSIDE] = 5.0  # entries of no channel: in no count
    [[total, dead]] = coupled_statistics([coupling_of(p)]).tolist()
    assert total == pytest.approx(float(norms_by_hand(p).sum().detach()), rel=1e-15)
    assert dead == 1


def shrink(coupling: Coupling, strength: float, steps: float | list[Tensor]) -> None:
    """The package's proximal step of ``strength * sum_c ||w_c||`` on ``coupling`` alone (no L1, no
    other unit), with one step for every entry (``float``) or one per entry of each member's parameter."""
    params = [member.param for member in coupling.members]
    per_param = [steps] * len(params) if isinstance(steps, float) else steps
    engine = GroupProx(build([coupling], [strength], {}))
    optimizer = torch.optim.SGD(params, lr=1.0)  # holds the engine's state
    engine.step(optimizer, {id(p): s for p, s in zip(params, per_param, strict=True)}, ramp=0.0, taken=1.0)


def snapshot(p: dict[str, nn.Parameter]) -> dict[str, Tensor]:
    return {name: param.detach().clone() for name, param in p.items()}


def test_block_soft_threshold_is_the_formula() -> None:
    p = parameters()
    before = snapshot(p)
    norms = norms_by_hand(before)
    threshold = float(norms.sort().values[1]) * 1.001  # kills the two smallest channels, keeps the third
    shrink(coupling_of(p), threshold, 1.0)
    expected = snapshot(p)
    expected.update({name: value.clone() for name, value in before.items()})
    for k in range(COUNT):
        factor = max(0.0, 1 - threshold / float(norms[k]))
        for piece in pieces(expected, k):
            piece.mul_(factor)
    for name in p:
        # the norms are summed in another order here: equal to rounding, not bitwise
        torch.testing.assert_close(p[name].detach(), expected[name], rtol=1e-14, atol=0, msg=name)
    alive = [k for k in range(COUNT) if float(norms[k]) > threshold]
    assert len(alive) == 1
    for k in set(range(COUNT)) - set(alive):
        assert all(bool((piece == 0).all()) for piece in pieces(p, k)), "every slice of a dead channel is 0"
    assert torch.equal(p["d"][:, OUTSIDE], before["d"][:, OUTSIDE]), "entries of no channel never move"


def steps_of(p: dict[str, nn.Parameter], seed: int = 3) -> dict[str, Tensor]:
    """A positive step per entry, spread over three orders of magnitude (Adam's are)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: 10 ** (3 * torch.rand(param.shape, dtype=DTYPE, generator=generator) - 2)
        for name, param in p.items()
    }


def prox_by_hand(p: dict[str, Tensor], steps: dict[str, Tensor], strength: float) -> dict[str, Tensor]:
    """Each channel solved on its own by bisection (:func:`architectures.metric_prox`)."""
    result = {name: value.clone() for name, value in p.items()}
    for k in range(COUNT):
        z = np.concatenate([piece.numpy().ravel() for piece in pieces(p, k)])
        s = np.concatenate([piece.numpy().ravel() for piece in pieces(steps, k)])
        x = metric_prox(z, s, strength)
        start = 0
        for piece in pieces(result, k):
            piece.copy_(torch.from_numpy(x[start : start + piece.numel()].reshape(piece.shape)))
            start += piece.numel()
    return result


@pytest.mark.parametrize("strength", STRENGTHS)
def test_the_metric_prox_is_the_bisection_solution_channel_by_channel(strength: float) -> None:
    p = parameters()
    before = snapshot(p)
    steps = steps_of(p)
    shrink(coupling_of(p), strength, [steps[name] for name in p])
    expected = prox_by_hand(before, steps, strength)
    for name in p:
        torch.testing.assert_close(p[name].detach(), expected[name], rtol=1e-6, atol=1e-12, msg=name)
        assert torch.equal(p[name] == 0, expected[name] == 0), f"{name}: the same exact zeros"
    assert torch.equal(p["d"][:, OUTSIDE], before["d"][:, OUTSIDE]), "entries of no channel never move"
    # KKT of min sum (x - z)^2 / (2 s) + g ||x||: (x - z) / s + g x / ||x|| = 0 on a live channel,
    # ||z / s|| <= g on a dead one
    for k in range(COUNT):
        x = torch.cat([piece.detach().ravel() for piece in pieces(p, k)])
        z = torch.cat([piece.ravel() for piece in pieces(before, k)])
        s = torch.cat([piece.ravel() for piece in pieces(steps, k)])
        if bool((x == 0).all()):
            assert float(torch.linalg.norm(z / s)) <= strength
        else:
            residual = (x - z) / s + strength * x / torch.linalg.norm(x)
            assert float(residual.abs().max()) < 1e-8 * float((z / s).abs().max())


def test_the_cases_span_dead_and_live_channels() -> None:
    """The strengths above are chosen so that the metric prox keeps some channels and kills others."""
    p, steps = snapshot(parameters()), steps_of(parameters())
    live = {g: [bool(prox_by_hand(p, steps, g)["b"][k] != 0) for k in range(COUNT)] for g in STRENGTHS}
    assert live[3.0] == [True] * COUNT
    assert live[300.0] == [False] * COUNT
    assert live[100.0] == [True, False, True]


def test_with_one_step_for_every_entry_the_metric_prox_is_the_block_soft_threshold() -> None:
    """Steps given per entry but all equal (the Newton solve) give block soft-thresholding's formula."""
    p = parameters()
    before = snapshot(p)
    norms = norms_by_hand(before)
    shrink(coupling_of(p), 2.0, [torch.full_like(param, 0.5) for param in p.values()])
    expected = {name: value.clone() for name, value in before.items()}
    for k in range(COUNT):
        for piece in pieces(expected, k):
            piece.mul_(max(0.0, 1 - 2.0 * 0.5 / float(norms[k])))
    for name in p:
        torch.testing.assert_close(p[name].detach(), expected[name], rtol=1e-12, atol=1e-15, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_metric_prox_with_zero_steps_moves_nothing(dtype: torch.dtype) -> None:
    """A step of 0 (lr 0 at the start of a warm-up, a skipped fused step): no NaN, nothing moves."""
    conv = nn.Parameter(torch.tensor([[3.0, -4.0], [0.0, 0.0]], dtype=dtype))
    scale = nn.Parameter(torch.tensor([2.0, 0.0], dtype=dtype))
    both = torch.arange(2)
    coupling = Coupling("c", 2, (Member("conv", conv, 0, both, both), Member("bn", scale, 0, both, both)))
    before = [conv.detach().clone(), scale.detach().clone()]
    shrink(coupling, 10.0, [torch.zeros_like(conv), torch.zeros_like(scale)])
    assert torch.equal(conv, before[0])
    assert torch.equal(scale, before[1])
