"""Kernel launches and time of the regularization work on an accelerator, for few and for many tensors.

    .venv/bin/python benchmarks/gpu.py                    # on CUDA: launches (profiler) and times
    .venv/bin/python benchmarks/gpu.py --device cpu --quick   # a smoke run: operator counts only

The same number of weights is cut into ``--few`` and into ``--many`` tensors. For each piece of
per-step work (the L1 value, the L1 gradient, decoupled decay, the proximal step) and each form of
:mod:`lightning_reg.functional.kernels` (the per-tensor loop and the multi-tensor form), the table gives the
number of operators dispatched, the number of device kernels launched (CUDA profiler; ``-`` elsewhere),
and the median time against the floor ``torch._foreach_add_(grads, W)`` on the same tensors. On an
accelerator the multi-tensor form, which the package picks there, must launch as many kernels for
``--many`` tensors as for ``--few``. The ``fused`` form is the compiled kernel of ``fused=True`` (Triton
on CUDA), whose launches the profiler counts; ``--quick`` leaves it out.

A last table runs whole training steps of a model (``Linear`` + ``LayerNorm`` blocks, SGD) with the
loss-mode L1 term and ``weight_decay``, as the package does it (eager and ``fused=True``) and as the
tutorial does it, against the plain step, with the peak memory the device allocator saw.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_reg import Regularizer
from lightning_reg.functional import fused, kernels


class CountOps(TorchDispatchMode):
    """Counts the operators dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(work: Callable[[], Any], device: torch.device, repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        work()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kernel_launches(work: Callable[[], Any], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        work()
        synchronize(device)
    return sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)


def operators(work: Callable[[], Any]) -> int:
    with CountOps() as counter:
        work()
    return counter.count


def per_step_work(
    weights: list[Tensor], grads: list[Tensor], factor: Tensor
) -> dict[str, dict[str, Callable[[], object]]]:
    """The package's per-step work on ``weights``, in each form: the per-tensor loop, the multi-tensor
    form, and the compiled kernel of ``fused=True`` (its per-tensor numbers as one tensor)."""
    ones = fused.scalars([1.0] * len(weights), weights[0].device)
    return {
        "l1 value": {
            "loop": lambda: kernels.abs_sum(weights, False),
            "multi": lambda: kernels.abs_sum(weights, True),
            "fused": lambda: fused.abs_sum(weights),
        },
        "l1 gradient": {
            "loop": lambda: kernels.add_scaled_sign_(grads, weights, factor, False),
            "multi": lambda: kernels.add_scaled_sign_(grads, weights, factor, True),
            "fused": lambda: fused.add_scaled_sign_(grads, weights, factor),
        },
        "decoupled decay": {
            "loop": lambda: kernels.scale_(weights, 1.0, False),
            "multi": lambda: kernels.scale_(weights, 1.0, True),
            "fused": lambda: fused.scale_(weights, ones),
        },
        "proximal l1": {
            "loop": lambda: kernels.soft_threshold_(weights, 1e-12, False),
            "multi": lambda: kernels.soft_threshold_(weights, 1e-12, True),
            "fused": lambda: fused.soft_threshold_(weights, ones * 1e-12),
        },
    }


def kernel_table(
    numel: int, counts: tuple[int, ...], device: torch.device, repeats: int, forms: tuple[str, ...]
) -> None:
    print(f"per-step work on {numel / 1e6:.2f}M weights ({device}), median of {repeats}")
    header = (
        f"{'work':18s} {'form':7s} {'tensors':>8s} {'operators':>10s} {'kernels':>8s} {'ms':>8s} "
        f"{'x floor':>8s}"
    )
    print(header)
    print("-" * len(header))
    for count in counts:
        rows = numel // count // 16
        weights = [torch.randn(rows, 16, device=device) for _ in range(count)]
        grads = [torch.randn_like(weight) for weight in weights]
        floor = median_seconds(
            functools.partial(torch._foreach_add_, grads, weights, alpha=1e-4), device, repeats
        )
        for name, by_form in per_step_work(weights, grads, torch.tensor(1e-6, device=device)).items():
            for form in forms:
                work = by_form[form]
                work()  # a fused kernel compiles on its first call
                launches = kernel_launches(work, device)
                seconds = median_seconds(work, device, repeats)
                # compiled kernels cannot run under the operator counter: counted, they would run eagerly
                counted = "-" if form == "fused" else str(operators(work))
                print(
                    f"{name:18s} {form:7s} {count:8d} {counted:>10s} "
                    f"{'-' if launches is None else launches:>8} {seconds * 1e3:8.3f} {seconds / floor:8.2f}"
                )
    print()


def step_table(
    layers: int, width: int, device: torch.device, repeats: int, variants: tuple[str, ...]
) -> None:
    l1, l2 = 1e-6, 1e-4

    def setup(variant: str) -> Callable[[], None]:
        torch.manual_seed(0)
        model = nn.Sequential(
            *[nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width)) for _ in range(layers)]
        ).to(device)
        x, y = torch.randn(32, width, device=device), torch.randn(32, width, device=device)
        reg = Regularizer(model, l1=l1, l2=l2, fused=variant == "fused")
        if variant in ("package", "fused"):
            optimizer = torch.optim.SGD(reg.param_groups(), lr=1e-3)
        else:
            decay = l2 if variant == "seed" else 0.0
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, weight_decay=decay)

        def step() -> None:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            if variant in ("package", "fused"):
                loss = loss + reg.penalty()
            elif variant == "seed":
                loss = loss + l1 * sum(torch.sum(torch.abs(p)) for p in model.parameters() if p.dim() > 1)
            loss.backward()
            optimizer.step()

        return step

    print(f"training step, {layers} x (Linear({width}, {width}) + LayerNorm({width})) on {device}")
    header = f"{'variant':10s} {'ms':>8s} {'overhead ms':>12s} {'kernels':>8s} {'peak MiB':>9s}"
    print(header)
    print("-" * len(header))
    plain = None
    for variant in variants:
        step = setup(variant)
        step()  # fused=True compiles its kernels here
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = median_seconds(step, device, repeats)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        launches = kernel_launches(step, device)
        plain = seconds if plain is None else plain
        shown = "-" if launches is None else str(launches)
        print(f"{variant:10s} {seconds * 1e3:8.2f} {(seconds - plain) * 1e3:12.2f} {shown:>8s} {peak:9.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--numel", type=int, default=20_000_000, help="weights in all tensors together")
    parser.add_argument("--few", type=int, default=50)
    parser.add_argument("--many", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu for a smoke run", file=sys.stderr)
        return 2
    layers, width = 50, 632
    if args.quick:
        args.numel, args.few, args.many, args.repeats = 40_000, 4, 64, 3
        layers, width = 2, 64
    # --quick is the test suite's smoke run: compiling the fused kernels there takes a minute on two cores
    forms = ("loop", "multi") if args.quick else ("loop", "multi", "fused")
    kernel_table(args.numel, (args.few, args.many), device, args.repeats, forms)
    variants = ("plain", "seed", "package") if args.quick else ("plain", "seed", "package", "fused")
    step_table(layers, width, device, args.repeats, variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
