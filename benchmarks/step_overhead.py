"""What regularization costs per training step, against the least the math needs.

    .venv/bin/python benchmarks/step_overhead.py            # the issue's model: 20.07M parameters, ~2 min
    .venv/bin/python benchmarks/step_overhead.py --quick    # a small model, a smoke run

Model: ``layers`` x (``Linear(width, width)`` + ``LayerNorm(width)``), batch 32, SGD, MSE, trained with
``Trainer.fit``. Each variant runs in its own process (so that its peak resident memory is its own) and
reports the median wall time of a training step, measured from ``on_train_batch_start`` to
``on_train_batch_end`` after a warm-up. The variants run ``--repeats`` times, interleaved, and the table
shows the median of the runs' medians with the lowest and highest of them: a shared machine is noisy.
The floor is measured in the parent process, on a model of the same shapes: one multi-tensor pass
``grads += lam * W`` over the regularized weights (read W, read and write the gradients). Ratios are
overheads (variant minus plain step) over that floor, in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

import torch
from torch import nn

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "seed recipe": {"seed": True},
    "package: l1 + l2 (default modes)": {"l1": 1e-6, "l2": 1e-4},
    "package: proximal l1 + l2": {"l1": 1e-6, "l2": 1e-4, "l1_mode": "proximal"},
    "package: l1 + decoupled l2": {"l1": 1e-6, "l2": 1e-4, "l2_mode": "decoupled"},
}


def build(layers: int, width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        *[nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width)) for _ in range(layers)]
    )


def run_variant(name: str, layers: int, width: int, steps: int, warmup: int) -> dict[str, float]:
    """Train one variant in this process; return its median step time and peak resident memory."""
    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_reg import RegularizedModule

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    options = dict(VARIANTS[name])
    seed = options.pop("seed", False)

    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build(layers, width)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            if seed:  # the tutorial's L1 loop
                l1_penalty = 0
                for param in self.parameters():
                    if param.dim() > 1:
                        l1_penalty += torch.sum(torch.abs(param))
                loss = loss + 1e-6 * l1_penalty
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-3, weight_decay=1e-4 if seed else 0.0)

    class Regularized(RegularizedModule, Plain):
        pass

    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            times.append(time.perf_counter() - self.start)

    model = Regularized(**options) if options else Plain()
    data = TensorDataset(torch.randn(32 * (steps + warmup), width), torch.randn(32 * (steps + warmup), width))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps + warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Timer()],
    )
    trainer.fit(model, DataLoader(data, batch_size=32))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"median_s": statistics.median(times[warmup:]), "peak_mib": peak_kib / 1024}


def floor_seconds(layers: int, width: int, repeats: int) -> float:
    """Median time of ``grads += lam * W`` over the weight matrices, one multi-tensor call."""
    weights = [p.detach() for p in build(layers, width).parameters() if p.dim() > 1]
    grads = [torch.randn_like(w) for w in weights]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch._foreach_add_(grads, weights, alpha=1e-4)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--width", type=int, default=632)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, interleaved")
    parser.add_argument("--quick", action="store_true", help="2 layers of width 64, 5 steps: a smoke run")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.width, args.steps, args.warmup, args.repeats = 2, 64, 5, 2, 1
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.layers, args.width, args.steps, args.warmup)))
        return 0

    shape = ["--layers", str(args.layers), "--width", str(args.width)]
    shape += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name in VARIANTS:
            command = [sys.executable, __file__, "--variant", name, *shape]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  run {repeat + 1}/{args.repeats}: {name}", file=sys.stderr)
    results = {
        name: {
            "median_s": statistics.median(run["median_s"] for run in measured),
            "low_s": min(run["median_s"] for run in measured),
            "high_s": max(run["median_s"] for run in measured),
            "peak_mib": max(run["peak_mib"] for run in measured),
        }
        for name, measured in runs.items()
    }
    floor = floor_seconds(args.layers, args.width, repeats=max(20, args.steps))

    model = build(args.layers, args.width)
    params = sum(p.numel() for p in model.parameters())
    largest = max(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(
        f"model: {args.layers} x (Linear({args.width}, {args.width}) + LayerNorm({args.width})) = "
        f"{params / 1e6:.2f}M parameters in {len(list(model.parameters()))} tensors; batch 32; SGD; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} timed steps, "
        f"{args.repeats} runs each"
    )
    print(f"floor (grads += lam * W, one multi-tensor pass): {floor * 1e3:.2f} ms")
    print(f"largest weight tensor: {largest:.2f} MiB\n")
    plain = results["plain"]
    header = (
        f"{'variant':36s} {'step ms':>8s} {'runs ms':>13s} {'overhead ms':>12s} {'x floor':>8s} "
        f"{'peak MiB':>9s} {'+MiB':>6s}"
    )
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        overhead = result["median_s"] - plain["median_s"]
        ratio = "" if name == "plain" else f"{overhead / floor:8.2f}"
        spread = f"{result['low_s'] * 1e3:.1f}-{result['high_s'] * 1e3:.1f}"
        print(
            f"{name:36s} {result['median_s'] * 1e3:8.1f} {spread:>13s} {overhead * 1e3:12.1f} {ratio:>8s} "
            f"{result['peak_mib']:9.0f} {result['peak_mib'] - plain['peak_mib']:6.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
