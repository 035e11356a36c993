"""The loss-mode L1 term alone: its value and its gradient into existing gradients, tutorial vs package.

    .venv/bin/python benchmarks/l1_term.py            # 50 weights of 632 x 632, as in step_overhead.py
    .venv/bin/python benchmarks/l1_term.py --quick    # a smoke run

Each trial gives every weight a gradient (as the data loss would), then runs one of:

- floor: ``torch._foreach_add_(grads, W, alpha)``, one multi-tensor pass (read W, read and write grads);
- tutorial: ``(l1 * sum(torch.sum(torch.abs(w)))).backward()``, the gradient through autograd;
- package: ``l1_term(W, l1).backward()``, the value without autograd and ``sign(w) * l1`` added to
  ``.grad`` in place at the end of backward (:mod:`lightning_reg.functional.deferred`).

The three run in turn, ``--trials`` times, in one process, so that a noisy machine slows them alike;
the table gives medians and quartiles, and the ratios to the floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from lightning_reg.functional.deferred import l1_term


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tensors", type=int, default=50)
    parser.add_argument("--width", type=int, default=632)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.tensors, args.width, args.trials = 4, 64, 3
    torch.manual_seed(0)
    weights = [torch.randn(args.width, args.width, requires_grad=True) for _ in range(args.tensors)]
    data_grads = [torch.randn(args.width, args.width) for _ in weights]
    l1 = 1e-6

    def tutorial() -> None:
        total: torch.Tensor | int = 0
        for weight in weights:
            total = total + torch.sum(torch.abs(weight))
        assert isinstance(total, torch.Tensor)
        (l1 * total).backward()

    def package() -> None:
        l1_term(weights, l1).backward()

    def floor() -> None:
        torch._foreach_add_([weight.grad for weight in weights], weights, alpha=l1)  # type: ignore[misc]

    runs: dict[str, Callable[[], None]] = {"floor": floor, "tutorial": tutorial, "package": package}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.trials):
        for name, run in runs.items():
            for weight, grad in zip(weights, data_grads, strict=True):
                weight.grad = grad.clone()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    floor_s = statistics.median(times["floor"])
    print(
        f"L1 term over {args.tensors} weights of {args.width} x {args.width} "
        f"({args.tensors * args.width**2 / 1e6:.2f}M entries); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.trials} trials each, in turn"
    )
    print(f"{'':10s} {'ms':>8s} {'quartiles':>13s} {'x floor':>8s}")
    for name, measured in times.items():
        low, _, high = statistics.quantiles(measured, n=4) if len(measured) > 1 else measured * 3
        median = statistics.median(measured)
        print(f"{name:10s} {median * 1e3:8.2f} {low * 1e3:6.2f}..{high * 1e3:<6.2f} {median / floor_s:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
