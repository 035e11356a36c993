"""The per-step kernels, both forms, checked against the formulas they implement."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from helpers import RecordOps
from torch import Tensor

from lightning_reg.functional import kernels

FORMS = pytest.mark.parametrize("multi_tensor", [False, True], ids=["loop", "foreach"])
# The default bucket size (one bucket per dtype run), and one small enough to split runs into several.
BUCKETS = pytest.mark.parametrize("bucket_numel", [None, 8], ids=["default-buckets", "small-buckets"])


def mixed_tensors(seed: int = 0) -> list[Tensor]:
    """Different shapes, an exact zero, a 1-element tensor, float32 and float64 interleaved."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 3, generator=generator)
    a[1, 2] = 0.0
    b = torch.randn(1, generator=generator)
    c = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    c[0, 0, 0] = 0.0
    d = torch.randn(7, generator=generator, dtype=torch.float64)
    e = torch.randn(3, 3, generator=generator)
    return [a, b, c, d, e]


def set_buckets(monkeypatch: pytest.MonkeyPatch, bucket_numel: int | None) -> None:
    if bucket_numel is not None:
        monkeypatch.setattr(kernels, "BUCKET_NUMEL", bucket_numel)


def test_prefer_multi_tensor_is_false_on_cpu_and_for_nothing() -> None:
    assert kernels.prefer_multi_tensor([torch.zeros(3), torch.zeros(2, 2, dtype=torch.float64)]) is False
    assert kernels.prefer_multi_tensor([]) is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefer_multi_tensor_on_cuda_only_when_all_are() -> None:
    assert kernels.prefer_multi_tensor([torch.zeros(3, device="cuda")]) is True
    assert kernels.prefer_multi_tensor([torch.zeros(3, device="cuda"), torch.zeros(3)]) is False


@pytest.mark.parametrize("bucket_numel", [1, 8, 40, 1 << 22])
def test_bucket_indices_partition_in_order_by_dtype_within_capacity(
    monkeypatch: pytest.MonkeyPatch, bucket_numel: int
) -> None:
    monkeypatch.setattr(kernels, "BUCKET_NUMEL", bucket_numel)
    params = [*mixed_tensors(), torch.zeros(2, 2), torch.zeros(25, dtype=torch.float64), torch.zeros(3)]
    capacity = max(bucket_numel, 30)  # 30: the largest tensor
    buckets = list(kernels._bucket_indices(params))
    assert [index for bucket in buckets for index in bucket] == list(range(len(params)))
    for bucket in buckets:
        assert bucket
        assert len({(params[i].device, params[i].dtype) for i in bucket}) == 1
        assert sum(params[i].numel() for i in bucket) <= capacity
    # A bucket ends only where the next tensor has another dtype or would not fit.
    for bucket, following in itertools.pairwise(buckets):
        first, after = params[bucket[0]], params[following[0]]
        assert first.dtype != after.dtype or sum(params[i].numel() for i in bucket) + after.numel() > capacity
    # Five runs of one dtype; the float64 run of 30 + 7 entries is split when it does not fit.
    assert len(buckets) == (5 if capacity >= 37 else 6)


def test_bucket_indices_give_a_tensor_larger_than_a_bucket_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "BUCKET_NUMEL", 4)
    params = [torch.zeros(3), torch.zeros(10), torch.zeros(2), torch.zeros(1)]
    buckets = list(kernels._bucket_indices(params))
    assert [index for bucket in buckets for index in bucket] == [0, 1, 2, 3]
    assert all(sum(params[i].numel() for i in bucket) <= 10 for bucket in buckets)


def test_abs_sum_loop_is_the_tutorial_loop_to_the_last_bit() -> None:
    params = mixed_tensors()
    expected = sum(torch.sum(torch.abs(p)) for p in params)
    total = kernels.abs_sum(params, multi_tensor=False)
    assert total.dtype == torch.float64
    assert torch.equal(total, expected)


@BUCKETS
def test_abs_sum_foreach_is_the_sum_within_rounding(
    monkeypatch: pytest.MonkeyPatch, bucket_numel: int | None
) -> None:
    set_buckets(monkeypatch, bucket_numel)
    params = mixed_tensors(1)
    expected = sum(float(p.double().abs().sum()) for p in params)
    total = kernels.abs_sum(params, multi_tensor=True)
    assert total.dtype == torch.float64
    assert total.item() == pytest.approx(expected, rel=1e-6)


@FORMS
@BUCKETS
def test_abs_sum_float32_is_close_to_float64(
    monkeypatch: pytest.MonkeyPatch, multi_tensor: bool, bucket_numel: int | None
) -> None:
    set_buckets(monkeypatch, bucket_numel)
    generator = torch.Generator().manual_seed(2)
    params = [torch.randn(shape, generator=generator) for shape in [(6, 5), (1,), (4, 2, 3), (9,)]]
    expected = sum(float(p.double().abs().sum()) for p in params)
    total = kernels.abs_sum(params, multi_tensor=multi_tensor)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(expected, rel=1e-6)


@FORMS
def test_abs_sum_of_nothing_is_zero(multi_tensor: bool) -> None:
    assert kernels.abs_sum([], multi_tensor=multi_tensor).item() == 0.0


@FORMS
def test_abs_sum_records_no_history(multi_tensor: bool) -> None:
    w = torch.tensor([[1.0, -2.0]], requires_grad=True)
    total = kernels.abs_sum([w], multi_tensor=multi_tensor)
    assert not total.requires_grad
    assert total.item() == 3.0


@FORMS
@BUCKETS
@pytest.mark.parametrize("factor_dtype", [torch.float32, torch.float64])
def test_add_scaled_sign_is_grad_plus_sign_times_factor_to_the_last_bit(
    monkeypatch: pytest.MonkeyPatch, multi_tensor: bool, bucket_numel: int | None, factor_dtype: torch.dtype
) -> None:
    set_buckets(monkeypatch, bucket_numel)
    params = mixed_tensors(3)
    grads = mixed_tensors(4)
    before = [g.clone() for g in grads]
    factor = torch.tensor(0.37, dtype=factor_dtype)
    kernels.add_scaled_sign_(grads, params, factor, multi_tensor=multi_tensor)
    for grad, g0, w in zip(grads, before, params, strict=True):
        expected = g0 + torch.sign(w) * factor
        assert grad.dtype == w.dtype
        assert torch.equal(grad, expected)
    # Where w is exactly zero, the gradient is left as it was.
    assert grads[0][1, 2] == before[0][1, 2]
    assert grads[2][0, 0, 0] == before[2][0, 0, 0]


@FORMS
def test_add_scaled_sign_of_nothing_does_nothing(multi_tensor: bool) -> None:
    kernels.add_scaled_sign_([], [], torch.tensor(1.0), multi_tensor=multi_tensor)


@FORMS
@BUCKETS
@pytest.mark.parametrize("factor", [0.9, -1.5, torch.tensor(0.9)], ids=["float", "negative", "tensor"])
def test_scale_is_w_times_factor_to_the_last_bit(
    monkeypatch: pytest.MonkeyPatch, multi_tensor: bool, bucket_numel: int | None, factor: float | Tensor
) -> None:
    set_buckets(monkeypatch, bucket_numel)
    params = mixed_tensors(5)
    expected = [w * factor for w in params]
    kernels.scale_(params, factor, multi_tensor=multi_tensor)
    for w, want in zip(params, expected, strict=True):
        assert w.dtype == want.dtype
        assert torch.equal(w, want)


@FORMS
def test_scale_leaves_parameters_leaves(multi_tensor: bool) -> None:
    w = torch.nn.Parameter(torch.tensor([2.0, -4.0]))
    kernels.scale_([w], 0.5, multi_tensor=multi_tensor)
    assert w.grad_fn is None
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0]))


def textbook_soft_threshold(w: Tensor, t: float | Tensor) -> Tensor:
    return torch.sign(w) * torch.clamp(w.abs() - t, min=0)


@FORMS
@BUCKETS
@pytest.mark.parametrize("as_tensor", [False, True], ids=["float-t", "tensor-t"])
def test_soft_threshold_is_the_textbook_formula_to_the_last_bit(
    monkeypatch: pytest.MonkeyPatch, multi_tensor: bool, bucket_numel: int | None, as_tensor: bool
) -> None:
    set_buckets(monkeypatch, bucket_numel)
    flat = torch.randn(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    flat[17] = 0.0
    shapes = [(10, 20), (300,), (5, 5, 4), (1,), (3, 133)]
    params, start = [], 0
    for shape in shapes:
        count = torch.Size(shape).numel()
        params.append(flat[start : start + count].reshape(shape).clone())
        start += count
    assert start == 1000
    t: float | Tensor = torch.tensor(0.7, dtype=torch.float64) if as_tensor else 0.7
    expected = [textbook_soft_threshold(w, t) for w in params]
    kernels.soft_threshold_(params, t, multi_tensor=multi_tensor)
    for w, want in zip(params, expected, strict=True):
        assert torch.equal(w, want)
    zeros = sum(int((w == 0).sum()) for w in params)
    assert zeros == sum(int((want == 0).sum()) for want in expected) > 400


@FORMS
@BUCKETS
@pytest.mark.parametrize("as_tensor", [False, True], ids=["float-t", "tensor-t"])
def test_soft_threshold_of_mixed_dtypes_is_the_textbook_formula(
    monkeypatch: pytest.MonkeyPatch, multi_tensor: bool, bucket_numel: int | None, as_tensor: bool
) -> None:
    set_buckets(monkeypatch, bucket_numel)
    params = mixed_tensors(6)
    t: float | Tensor = torch.tensor(0.5) if as_tensor else 0.5
    expected = [textbook_soft_threshold(w, t) for w in params]
    kernels.soft_threshold_(params, t, multi_tensor=multi_tensor)
    for w, want in zip(params, expected, strict=True):
        assert w.dtype == want.dtype
        assert torch.equal(w, want)
    assert all((w == 0).any() for w in params[:1] + params[2:4])


@FORMS
def test_soft_threshold_of_nothing_does_nothing(multi_tensor: bool) -> None:
    kernels.soft_threshold_([], 0.5, multi_tensor=multi_tensor)


def operators_for(work: Callable[[list[Tensor], list[Tensor]], None], pieces: int) -> int:
    """Operators ``work`` dispatches on 4096 weights cut into ``pieces`` tensors."""
    weights = list(torch.randn(4096).chunk(pieces))
    weights = [weight.clone() for weight in weights]
    grads = [torch.zeros_like(weight) for weight in weights]
    with RecordOps() as recorder:
        work(weights, grads)
    return len(recorder.ops)


HALF = torch.tensor(0.5)


def run_abs_sum(multi: bool) -> Callable[[list[Tensor], list[Tensor]], None]:
    def work(weights: list[Tensor], grads: list[Tensor]) -> None:
        kernels.abs_sum(weights, multi)

    return work


def run_add_scaled_sign(multi: bool) -> Callable[[list[Tensor], list[Tensor]], None]:
    return lambda weights, grads: kernels.add_scaled_sign_(grads, weights, HALF, multi)


def run_scale(multi: bool) -> Callable[[list[Tensor], list[Tensor]], None]:
    return lambda weights, grads: kernels.scale_(weights, 0.5, multi)


def run_soft_threshold(multi: bool) -> Callable[[list[Tensor], list[Tensor]], None]:
    return lambda weights, grads: kernels.soft_threshold_(weights, 0.1, multi)


WORK = {
    "abs_sum": run_abs_sum,
    "add_scaled_sign_": run_add_scaled_sign,
    "scale_": run_scale,
    "soft_threshold_": run_soft_threshold,
}


@pytest.mark.parametrize("name", sorted(WORK))
def test_the_multi_tensor_form_dispatches_as_many_operators_for_many_tensors_as_for_few(name: str) -> None:
    few, many = operators_for(WORK[name](True), 4), operators_for(WORK[name](True), 64)
    assert few == many <= 3
    # ... where the loop dispatches at least one per tensor, so the count above is not vacuous.
    assert operators_for(WORK[name](False), 64) >= 64


SCALED_SCALE = 0.75


def scaled_case(dtype: torch.dtype, layout: str, seed: int = 5) -> tuple[Tensor, Tensor]:
    """Weights and positive denominators spanning 1e-3..1e3, none within 0.1% of its threshold but planted
    ones: exact zeros, and ``|w| == t`` exactly (dyadic numbers, so that every form of the formula agrees)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (6, 4, 3, 2) if layout == "channels_last" else (7, 9)
    denominator = torch.exp(torch.empty(shape, dtype=torch.float64).uniform_(-7, 7, generator=generator))
    threshold = SCALED_SCALE / denominator
    w = torch.randn(shape, dtype=torch.float64, generator=generator) * threshold * 2
    near = (w.abs() - threshold).abs() < 1e-3 * threshold
    w = torch.where(near, w.sign() * threshold * 1.5, w)
    flat_w, flat_d = w.view(-1), denominator.view(-1)
    flat_w[:3] = 0.0
    flat_d[3:7] = 4.0
    flat_w[3:7] = torch.tensor([0.1875, -0.1875, 0.25, -0.125], dtype=torch.float64)  # t = 0.75 / 4
    w, denominator = w.to(dtype), denominator.to(dtype)
    if layout == "channels_last":
        w = w.contiguous(memory_format=torch.channels_last)
        denominator = denominator.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        w, denominator = w.t().contiguous().t(), denominator.t().contiguous().t()
    return w, denominator


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["float-scale", "tensor-scale"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_soft_threshold_scaled_is_the_per_entry_formula(
    dtype: torch.dtype, as_tensor: bool, layout: str
) -> None:
    """``sign(w) * max(|w| - scale / d, 0)`` entry by entry, in place, with exact zeros where ``|w| <= t``."""
    w, denominator = scaled_case(dtype, layout)
    original, kept = w.to(torch.float64, copy=True), denominator.clone()
    threshold = SCALED_SCALE / denominator.double()
    expected = torch.sign(original) * torch.clamp(original.abs() - threshold, min=0)
    pointer, strides = w.data_ptr(), w.stride()
    scale: float | Tensor = torch.tensor(SCALED_SCALE, dtype=dtype) if as_tensor else SCALED_SCALE
    kernels.soft_threshold_scaled_(w, scale, denominator)
    assert (w.data_ptr(), w.stride(), w.dtype) == (pointer, strides, dtype)  # in place
    assert torch.equal(denominator, kept)  # only read
    tolerance = 4 * torch.finfo(dtype).eps * (original.abs() + threshold)
    assert ((w.double() - expected).abs() <= tolerance).all()
    assert torch.equal(w == 0, original.abs() <= threshold)
    assert (w.double() * original >= 0).all()  # never crosses zero
    zeros = int((w == 0).sum())
    assert 7 < zeros < w.numel() - 7  # zeros beyond the planted ones, and survivors
    assert w.reshape(-1)[3:7].tolist() == [0.0, 0.0, 0.0625, 0.0]  # the planted ones, exactly
