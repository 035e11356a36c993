"""What regularization costs per training step, against the least the math needs.

    .venv/bin/python benchmarks/step_overhead.py            # the issue's model: 20.07M parameters, ~4 min
    .venv/bin/python benchmarks/step_overhead.py --quick    # a small model, no fused variants: a smoke run

Model: ``layers`` x (``Linear(width, width)`` + ``LayerNorm(width)``), batch 32, SGD (Adam for the
variants marked so), MSE, trained with ``Trainer.fit``. A step is timed from ``on_train_batch_start`` to
``on_train_batch_end`` after a warm-up.

The timing runs in one process, in ``--rounds`` rounds; each round trains every variant in turn (a new
model and ``Trainer`` each time) and then measures the floor: one multi-tensor pass ``grads += lam * W``
over weights of the regularized shapes (read W, read and write the gradients). Within a round, a
variant's overhead is its median step minus the plain median step with the same optimizer, and its
ratio is that overhead over the round's floor. The table gives the median over rounds, and the
quartiles of the overhead: the machine this was written on is shared and noisy, and pairing each
variant with the plain step of the same round removes most of the drift.

Peak memory comes from a separate run of each variant with glibc told to return every block of 64 KiB
or more to the system when it is freed (``MALLOC_MMAP_THRESHOLD_=65536``), so that the peak resident
size follows the memory actually in use rather than what the allocator keeps cached. Those runs are
not timed.

The ``fused`` variants compile their kernels in their first step. Their compile time is measured apart,
as the first step's time less a later step's, in fresh processes: cold, with an empty inductor cache
(``TORCHINDUCTOR_CACHE_DIR`` a new folder), and warm, in a second process given the same folder.

The monitor's cost is timed inside its own hook, in a run of the default configuration with a logger
that discards what it gets: the time of a logging step and of a step that does not log, and from them
the average cost per step at the default interval (``Trainer(log_every_n_steps=50)``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
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
    "plain (Adam)": {"optimizer": "adam"},
    "package: proximal l1 + l2 (Adam)": {"l1": 1e-6, "l2": 1e-4, "l1_mode": "proximal", "optimizer": "adam"},
    # the proximal step alone, without the pass Adam's own weight decay adds
    "package: proximal l1 (Adam)": {"l1": 1e-6, "l1_mode": "proximal", "optimizer": "adam"},
}
# Each package variant again with fused=True: the package's work as kernels torch.compile generates.
VARIANTS.update(
    {
        name.replace(")", ", fused)") if name.endswith(")") else f"{name} (fused)": {**options, "fused": True}
        for name, options in VARIANTS.items()
        if name.startswith("package")
    }
)


def baseline(name: str) -> str:
    """The variant whose step ``name``'s overhead is measured against: plain, with the same optimizer;
    the ``fused`` variants are also shown as ratios to their eager form."""
    return "plain (Adam)" if VARIANTS[name].get("optimizer") == "adam" else "plain"


def build(layers: int, width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        *[nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width)) for _ in range(layers)]
    )


def eager_form(name: str) -> str | None:
    """The eager variant of a ``fused`` variant ``name``; ``None`` for the others."""
    if not VARIANTS[name].get("fused"):
        return None
    return name.replace(", fused)", ")").replace(" (fused)", "")


MONITORED = "package: l1 + l2 (default modes)"
DEFAULT_LOG_EVERY = 50  # Trainer's default log_every_n_steps


def run_variant(
    name: str, layers: int, width: int, steps: int, warmup: int, monitor: bool = False
) -> dict[str, float]:
    """Train one variant in this process; return its median step time, peak resident memory, the floor.

    With ``monitor``, a ``RegularizationMonitor`` logging every other step is attached and the time spent
    in its hook is returned instead, for logging steps and for the others.
    """
    import lightning.pytorch as L
    from lightning.pytorch.loggers import Logger
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_reg import RegularizationMonitor, RegularizedModule

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    options = dict(VARIANTS[name])
    seed = options.pop("seed", False)
    adam = options.pop("optimizer", "sgd") == "adam"

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
            if adam:
                return torch.optim.Adam(self.parameters(), lr=1e-3)
            return torch.optim.SGD(self.parameters(), lr=1e-3, weight_decay=1e-4 if seed else 0.0)

    class Regularized(RegularizedModule, Plain):
        pass

    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            times.append(time.perf_counter() - self.start)

    hook_times: dict[bool, list[float]] = {True: [], False: []}

    class TimedMonitor(RegularizationMonitor):
        logged = False

        def on_train_batch_end(self, *args: Any) -> None:
            self.logged, start = False, time.perf_counter()
            super().on_train_batch_end(*args)
            hook_times[self.logged].append(time.perf_counter() - start)

        def _log(self, *args: Any) -> None:
            self.logged = True
            super()._log(*args)

    class Discard(Logger):
        name, version = "discard", 0

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            pass

        def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
            pass

    model = Regularized(**options) if options else Plain()
    data = TensorDataset(torch.randn(32 * (steps + warmup), width), torch.randn(32 * (steps + warmup), width))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps + warmup,
        logger=Discard() if monitor else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Timer(), TimedMonitor(log_every_n_steps=2)] if monitor else [Timer()],
    )
    trainer.fit(model, DataLoader(data, batch_size=32))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "first_s": times[0],
        "median_s": statistics.median(times[warmup:]),
        "peak_mib": peak_kib / 1024,
        "floor_s": floor_seconds(layers, width, repeats=max(20, steps)),
    }
    if monitor:
        result["log_s"] = statistics.median(hook_times[True][1:])
        result["quiet_s"] = statistics.median(hook_times[False][1:])
    return result


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


def _versus_eager(name: str, rounds: list[dict[str, dict[str, float]]]) -> float | None:
    """A fused variant's overhead over its eager form's, the median over rounds; ``None`` for others."""
    eager = eager_form(name)
    if eager is None:
        return None
    base = baseline(name)
    return statistics.median(
        (run[name]["median_s"] - run[base]["median_s"]) / (run[eager]["median_s"] - run[base]["median_s"])
        for run in rounds
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--width", type=int, default=632)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of all variants, in turn")
    parser.add_argument("--quick", action="store_true", help="2 layers of width 64, 5 steps: a smoke run")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    parser.add_argument("--monitor", action="store_true", help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.quick:  # without the fused variants (compiling them takes minutes on two cores) and the one
        # that only leaves out a term of another
        args.layers, args.width, args.steps, args.warmup, args.rounds = 2, 64, 5, 2, 1
        for name in [name for name, options in VARIANTS.items() if options.get("fused")]:
            del VARIANTS[name]
        del VARIANTS["package: proximal l1 (Adam)"]
    if args.variant:
        measured = run_variant(args.variant, args.layers, args.width, args.steps, args.warmup, args.monitor)
        print(json.dumps(measured))
        return 0

    shape = ["--layers", str(args.layers), "--width", str(args.width)]
    shape += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    # Before the timing rounds: a child process starts with its parent's peak resident size (Linux keeps
    # it across exec), and this process grows while it trains the variants.
    peaks: dict[str, float] = {}
    exact_memory = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    for name in VARIANTS:
        command = [sys.executable, __file__, "--variant", name, *shape]
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=exact_memory)
        peaks[name] = json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]
        print(f"  memory: {name}", file=sys.stderr)
    compile_s: dict[str, tuple[float, float]] = {}
    for name in (name for name, options in VARIANTS.items() if options.get("fused")):
        with tempfile.TemporaryDirectory() as cache:
            command = [sys.executable, __file__, "--variant", name, *shape]
            firsts = []
            for _ in ("cold", "warm"):
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
                run = json.loads(done.stdout.strip().splitlines()[-1])
                firsts.append(run["first_s"] - run["median_s"])
        compile_s[name] = (firsts[0], firsts[1])
        print(f"  compile: {name}", file=sys.stderr)
    command = [sys.executable, __file__, "--variant", MONITORED, "--monitor", *shape]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    monitored = json.loads(done.stdout.strip().splitlines()[-1])
    rounds: list[dict[str, dict[str, float]]] = []
    for number in range(args.rounds):
        measured = {}
        for name in VARIANTS:
            measured[name] = run_variant(name, args.layers, args.width, args.steps, args.warmup)
            gc.collect()  # the last variant's model and Trainer, before the next one allocates its own
        rounds.append(measured)
        print(f"  round {number + 1}/{args.rounds}", file=sys.stderr)
    floors = [statistics.median(run["floor_s"] for run in measured.values()) for measured in rounds]
    results: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        base = baseline(name)
        overheads = [measured[name]["median_s"] - measured[base]["median_s"] for measured in rounds]
        results[name] = {
            "median_s": statistics.median(measured[name]["median_s"] for measured in rounds),
            "overhead_s": statistics.median(overheads),
            "quartiles_s": statistics.quantiles(overheads, n=4) if len(overheads) > 1 else overheads * 3,
            "ratio": statistics.median(o / f for o, f in zip(overheads, floors, strict=True)),
            "x_eager": _versus_eager(name, rounds),
            "peak_mib": peaks[name],
        }
    floor = statistics.median(floors)

    model = build(args.layers, args.width)
    params = sum(p.numel() for p in model.parameters())
    largest = max(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(
        f"model: {args.layers} x (Linear({args.width}, {args.width}) + LayerNorm({args.width})) = "
        f"{params / 1e6:.2f}M parameters in {len(list(model.parameters()))} tensors; batch 32; SGD or Adam; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} rounds of "
        f"{args.steps} timed steps"
    )
    print(f"floor (grads += lam * W, one multi-tensor pass): {floor * 1e3:.2f} ms (median over rounds)")
    print(f"largest weight tensor: {largest:.2f} MiB\n")
    plain = results["plain"]
    header = (
        f"{'variant':44s} {'step ms':>8s} {'overhead ms':>12s} {'quartiles':>11s} {'x floor':>8s} "
        f"{'peak MiB':>9s} {'+MiB':>6s} {'x eager':>8s}"
    )
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        low, _, high = result["quartiles_s"]
        base = results[baseline(name)]
        ratio = "" if base is result else f"{result['ratio']:8.2f}"
        spread = "" if base is result else f"{low * 1e3:.1f}..{high * 1e3:.1f}"
        print(
            f"{name:44s} {result['median_s'] * 1e3:8.1f} {result['overhead_s'] * 1e3:12.1f} {spread:>11s} "
            f"{ratio:>8s} {result['peak_mib']:9.1f} {result['peak_mib'] - base['peak_mib']:6.1f} "
            f"{'' if result['x_eager'] is None else format(result['x_eager'], '8.2f'):>8s}"
        )
    print("\ncompile time of the fused variants (first step less a later one), cold / warm cache:")
    for name, (cold, warm) in compile_s.items():
        print(f"  {name:44s} {cold:6.1f} s / {warm:5.1f} s")
    per_step = (monitored["log_s"] + (DEFAULT_LOG_EVERY - 1) * monitored["quiet_s"]) / DEFAULT_LOG_EVERY
    print(
        f"\nmonitor (RegularizationMonitor on {MONITORED!r}): {monitored['log_s'] * 1e3:.2f} ms per logging "
        f"step, {monitored['quiet_s'] * 1e6:.1f} us per other step; every {DEFAULT_LOG_EVERY} steps: "
        f"{per_step * 1e3:.3f} ms per step = {100 * per_step / plain['median_s']:.2f} % of a plain step"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
