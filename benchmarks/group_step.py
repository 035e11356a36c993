"""What the proximal step costs inside the optimizer step, by mode, on the ResNet demo.

    .venv/bin/python benchmarks/group_step.py                  # ResNet-18 and ResNet-34, width 32
    .venv/bin/python benchmarks/group_step.py --quick          # ResNet-18 at width 8: a smoke run
    .venv/bin/python benchmarks/group_step.py --device cuda    # the same on a GPU, with kernel launches

The model is :class:`lightning_reg.demos.resnet.ResNet` (3x3 stem, 1x16x16 inputs, batch 32, 10
classes) with multi-tensor Adam (``foreach=True``), trained on random data with cross-entropy. Each mode
attaches a ``Regularizer`` in the proximal mode:

- ``plain``: no regularization (the baseline);
- ``l1``: ``l1=1e-4`` (soft-thresholding);
- ``rows``: ``group_l1=1e-3`` over each weight's rows;
- ``channels``: ``group_l1=1e-3`` over the coupled channels (units cross at every block's convolutions);
- ``... fused``: the same with ``fused=True``: the arithmetic runs as kernels ``torch.compile`` generates,
  which the operator counter does not see (it counts what runs outside them). ``--quick`` leaves them
  out (it is the test suite's smoke run, and compiling takes minutes on two cores).

For each mode the table gives the operators dispatched inside one ``optimizer.step()`` after three
warm-up steps (a ``TorchDispatchMode`` counter: on a GPU each is about one kernel launch), how many of
them read a value back to the host (``aten._local_scalar_dense``), the CUDA kernels launched (profiler;
``-`` elsewhere), and two times as ratios to ``plain`` measured in the same round: ``optimizer.step()``
alone, and the whole training step (zero_grad, forward, backward, step). The modes run in turn in each
of ``--rounds`` rounds, each timing the median of ``--repeats`` steps; the table gives the median ratio
over the rounds, so that a noisy machine slows the modes alike. ``first steps s`` is the time of the
three warm-up steps, which for the fused modes includes compiling (with inductor's cache as it is).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from gpu import kernel_launches, median_seconds  # benchmarks/ is the script's folder
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_reg import Regularizer
from lightning_reg.demos.resnet import ResNet

MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "l1": {"l1": 1e-4},
    "rows": {"group_l1": 1e-3},
    "channels": {"group_l1": 1e-3, "group_by": "channels"},
    "l1 fused": {"l1": 1e-4, "fused": True},
    "rows fused": {"group_l1": 1e-3, "fused": True},
    "channels fused": {"group_l1": 1e-3, "group_by": "channels", "fused": True},
}
EAGER = [mode for mode, options in MODES.items() if not options.get("fused")]
DEPTHS = {"ResNet-18": (2, 2, 2, 2), "ResNet-34": (3, 4, 6, 3)}


class OperatorsByName(TorchDispatchMode):
    """Counts the operators dispatched while it is active, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@dataclass
class Setup:
    """One mode's model and its two pieces of work."""

    optimizer_step: Callable[[], None]
    training_step: Callable[[], None]
    first_seconds: float


def setup(mode: str, layers: tuple[int, int, int, int], width: int, device: torch.device) -> Setup:
    torch.manual_seed(0)
    model = ResNet(layers=layers, num_classes=10, width=width, in_channels=1, small_stem=True).to(device)
    x = torch.randn(32, 1, 16, 16, device=device)
    y = torch.randint(0, 10, (32,), device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    if mode != "plain":
        regularizer = Regularizer(model, l1_mode="proximal", example_inputs=x[:2], **MODES[mode])
        regularizer.attach(optimizer)

    def training_step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(3):
        training_step()
    return Setup(optimizer.step, training_step, time.perf_counter() - start)


def table(name: str, layers: tuple[int, int, int, int], width: int, args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    modes = EAGER if args.quick else list(MODES)
    setups = {mode: setup(mode, layers, width, device) for mode in modes}
    params = sum(
        p.numel() for p in ResNet(layers=layers, width=width, in_channels=1, num_classes=10).parameters()
    )
    operators, launches = {}, {}
    for mode, work in setups.items():
        with OperatorsByName() as counter:  # compiled kernels cannot run under it: fused modes run eagerly
            work.optimizer_step()
        operators[mode] = counter.counts
        launches[mode] = kernel_launches(work.optimizer_step, device)
    step_ratios: dict[str, list[float]] = {mode: [] for mode in modes}
    train_ratios: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        steps = {
            mode: median_seconds(work.optimizer_step, device, args.repeats) for mode, work in setups.items()
        }
        trains = {
            mode: median_seconds(work.training_step, device, args.repeats) for mode, work in setups.items()
        }
        for mode in modes:
            step_ratios[mode].append(steps[mode] / steps["plain"])
            train_ratios[mode].append(trains[mode] / trains["plain"])
    plain = sum(operators["plain"].values())
    print(f"{name}, width {width} ({params / 1e6:.2f}M parameters), Adam foreach, on {device}")
    header = (
        f"{'mode':14s} {'operators':>10s} {'x plain':>8s} {'host reads':>11s} {'kernels':>8s} "
        f"{'opt.step x plain':>17s} {'train step x plain':>19s} {'first steps s':>14s}"
    )
    print(header)
    print("-" * len(header))
    for mode in modes:
        count = sum(operators[mode].values())
        shown = "-" if launches[mode] is None else str(launches[mode])
        fused = MODES[mode].get("fused", False)  # its operators were counted eagerly: not shown
        counted = f"{'-':>10s} {'-':>8s}" if fused else f"{count:10d} {count / plain:8.2f}"
        print(
            f"{mode:14s} {counted} {operators[mode]['_local_scalar_dense']:11d} "
            f"{shown:>8s} {statistics.median(step_ratios[mode]):17.2f} "
            f"{statistics.median(train_ratios[mode]):19.2f} {setups[mode].first_seconds:14.1f}"
        )
    if args.breakdown:
        for mode in ("channels",):
            common = ", ".join(f"{op} {n}" for op, n in operators[mode].most_common(12))
            print(f"  {mode}: {common}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--breakdown", action="store_true", help="the most frequent operators of a step")
    parser.add_argument("--quick", action="store_true", help="ResNet-18 at width 8, one round: a smoke run")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here", file=sys.stderr)
        return 2
    depths = DEPTHS
    if args.quick:
        args.width, args.rounds, args.repeats = 8, 1, 2
        depths = {"ResNet-18": DEPTHS["ResNet-18"]}
    for name, layers in depths.items():
        table(name, layers, args.width, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
