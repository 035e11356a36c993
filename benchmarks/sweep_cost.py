"""What a strength search costs, on three tasks: the grid, the pruned grid, the warm path, TPE + pruning.

    .venv/bin/python benchmarks/sweep_cost.py                          # every task, both monitors
    .venv/bin/python benchmarks/sweep_cost.py --tasks l2-mlp --monitors val_loss
    .venv/bin/python benchmarks/sweep_cost.py --quick                  # a smoke run (each task once)

The tasks were fixed before any of the sweep's defaults were tuned on them, and differ in kind:

- ``l2-mlp``: ``l2`` on the digits demo's MLP (``RegularizedDigitsMLP``: 200 training images, full-batch
  Adam), 8 strengths from 3e-5 to 1e-1, 100 epochs, validation every 5;
- ``l1-mlp``: loss-mode ``l1`` on the same MLP, 8 strengths from 1e-6 to 1e-3, 100 epochs, validation
  every 5;
- ``group-resnet``: proximal ``group_l1`` over channels on the ResNet demo (width 8, the 8x8 digits,
  the same 200 images, full-batch Adam at 1e-2, BatchNorm recalibrated before each validation), 8
  strengths from 1e-4 to 1e-1, 60 epochs, validation every 3.

Each task runs under each ``--monitors`` (``val_loss``, lowest best; ``val_acc``, highest best). The four
ways of :func:`~lightning_reg.sweep` run one after another in this process, with the same Trainer
arguments:

- grid: every strength trained for the task's epochs (the baseline);
- pruned grid: the same grid with ``pruner`` (``"median"`` by default, or the settings given);
- warm path: ``warm_start=True``, strongest first, each point from the previous one;
- TPE + pruning: as many trials as the grid's points over the grid's range, ``sampler="tpe"``, with the
  same pruner.

Each row gives the CPU seconds of the whole sweep, the epochs trained over all points, the best complete
row's monitored value (a row's value is its best validation, see :class:`~lightning_reg.SweepResult`) and
strength, and the ratios of time and best value to the grid's, measured in the same run. Torch runs on
``--threads`` threads (default 1), so that a machine shared with other work slows the variants alike; the
CPU seconds are this process's own. Nothing is asserted: the targets are printed beside the ratios.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as L
import numpy as np
import optuna
import torch

from lightning_reg import BatchNormRecalibration, RegularizedModule, SweepResult, sweep
from lightning_reg.demos.digits import (
    TRAIN_SIZE,
    DigitsMLP,
    DigitsSplit,
    RegularizedDigitsMLP,
    as_images,
    load_digits_split,
)
from lightning_reg.demos.resnet import ResNet
from lightning_reg.sweeps import runner

#: The targets of issue 24, as fractions of the grid's time, and the best value within 5 % of the grid's.
WARM_TIME, PRUNED_TIME, WITHIN = 0.45, 0.80, 0.05
#: What the benchmark can monitor, and which way is best (as ``lightning-reg sweep``).
MONITORS = {"val_loss": "min", "val_acc": "max"}


class DigitsResNet(RegularizedModule, DigitsMLP):
    """The digits classifier of the demo with the ResNet demo as its network (8x8 images, 3x3 stem)."""

    def __init__(self, width: int = 8, lr: float = 1e-2, **strengths: Any) -> None:
        super().__init__(**strengths, hidden=1, depth=0, lr=lr)
        self.net = ResNet(num_classes=10, width=width, in_channels=1, small_stem=True)
        self.example_input_array = torch.zeros(1, 1, 8, 8)  # what group_by="channels" traces


@dataclass(frozen=True)
class Task:
    """One search: which strength, over which grid, on which model and data, for how long."""

    strength: str
    monitor: str  # the one the --quick run compares on
    low: float
    high: float
    epochs: int
    validate_every: int
    model: Callable[..., L.LightningModule]
    images: bool = False

    def data(self) -> DigitsSplit:
        split = load_digits_split(TRAIN_SIZE, 0)
        return as_images(split) if self.images else split

    def callbacks(self) -> list[L.Callback]:
        return [BatchNormRecalibration(num_batches=1)] if self.images else []


TASKS = {
    "l2-mlp": Task("l2", "val_loss", 3e-5, 1e-1, 100, 5, RegularizedDigitsMLP),
    "l1-mlp": Task("l1", "val_acc", 1e-6, 1e-3, 100, 5, RegularizedDigitsMLP),
    "group-resnet": Task(
        "group_l1",
        "val_acc",
        1e-4,
        1e-1,
        60,
        3,
        lambda **strengths: DigitsResNet(**strengths, group_by="channels", l1_mode="proximal"),
        images=True,
    ),
}


def pruner_from(args: argparse.Namespace, epochs: int) -> Any:
    """The pruner the options ask for: the library's named one, or an Optuna pruner with those settings."""
    if args.pruner == "median":
        if args.startup is None and args.warmup is None:
            return "median"
        return optuna.pruners.MedianPruner(
            n_startup_trials=args.startup or 0, n_warmup_steps=args.warmup or 0
        )
    if args.min_resource is None and args.reduction_factor is None:
        return "hyperband"
    return optuna.pruners.HyperbandPruner(
        min_resource=args.min_resource or 1,
        max_resource=epochs,
        reduction_factor=args.reduction_factor or 3,
    )


def run_task(name: str, task: Task, monitor: str, args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """Every variant on ``task``, compared on ``monitor``; prints a table, returns (variant, time, value)
    ratios to the grid."""
    data = task.data()
    epochs = args.epochs or task.epochs
    grid = [float(value) for value in np.geomspace(task.low, task.high, args.points)]
    trainer_kwargs = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": epochs,
        "check_val_every_n_epoch": args.validate_every or task.validate_every,
        "num_sanity_val_steps": 0,
        "callbacks": task.callbacks(),
    }
    pruner = pruner_from(args, epochs)
    strength, mode = task.strength, MONITORS[monitor]

    def run(strengths: dict[str, list[float]], **options: Any) -> SweepResult:
        return sweep(
            task.model,
            data.train_loader(),
            data.eval_loaders(),
            **strengths,
            monitor=monitor,
            mode=mode,
            trainer_kwargs=trainer_kwargs,
            **options,
        )

    variants: dict[str, Callable[[], SweepResult]] = {
        "grid": lambda: run({strength: grid}),
        f"pruned grid ({args.pruner})": lambda: run({strength: grid}, pruner=pruner),
        "warm path": lambda: run({strength: grid}, warm_start=True),
        "warm path, weights only": lambda: run({strength: grid}, warm_start="weights"),
        f"TPE + {args.pruner} pruning": lambda: run(
            {strength: [task.low, task.high]}, n_trials=args.points, sampler="tpe", pruner=pruner
        ),
    }
    print(
        f"\n{name}, on {monitor}: {args.points} points of {strength} from {task.low:g} to {task.high:g} "
        f"(log); {epochs} epochs, validation every {trainer_kwargs['check_val_every_n_epoch']}; pruner "
        f"{pruner}"
    )
    print(
        f"{'variant':26s} {'CPU s':>7s} {'x grid':>6s} {'epochs':>6s} "
        f"{'best ' + monitor:>13s} {'x grid':>6s} {'at ' + strength:>12s}"
    )
    baseline: tuple[float, float] | None = None
    ratios = []
    for variant_name, variant in variants.items():
        if variant_name != "grid" and args.variants and not variant_name.startswith(tuple(args.variants)):
            continue
        cpu = time.process_time()
        result = variant()
        cpu = time.process_time() - cpu
        best = result.best
        value = next(
            row[monitor]
            for row in result.table
            if row["state"] == "complete" and row[strength] == best[strength]
        )
        baseline = baseline or (cpu, value)
        epochs_trained = sum(row["epochs"] for row in result.table)
        ratios.append((variant_name, cpu / baseline[0], value / baseline[1]))
        print(
            f"{variant_name:26s} {cpu:7.1f} {cpu / baseline[0]:6.2f} {epochs_trained:6d} "
            f"{value:13.4f} {value / baseline[1]:6.3f} {best[strength]:12.2e}",
            flush=True,
        )
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=tuple(TASKS))
    parser.add_argument("--monitors", nargs="+", default=list(MONITORS), choices=tuple(MONITORS))
    parser.add_argument("--epochs", type=int, help="every task's epochs (default: the task's)")
    parser.add_argument("--validate-every", type=int, help="every task's validation interval")
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--pruner", default="median", choices=("median", "hyperband"))
    parser.add_argument("--startup", type=int, help="MedianPruner's n_startup_trials")
    parser.add_argument("--warmup", type=int, help="MedianPruner's n_warmup_steps (epochs)")
    parser.add_argument("--min-resource", type=int, help="HyperbandPruner's min_resource (epochs)")
    parser.add_argument("--reduction-factor", type=int, help="HyperbandPruner's reduction_factor")
    parser.add_argument("--patience", type=int, help="the warm path's patience, in validations")
    parser.add_argument("--variants", nargs="+", help="which variants to run besides the grid (by prefix)")
    parser.add_argument("--budget", type=float, help="warm points' epochs at most, x the first's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:  # a smoke run: each task on its own monitor, 3 points of 4 epochs
        args.epochs, args.validate_every, args.points = 4, 1, 3
    if args.patience is not None:
        runner.WARM_START_PATIENCE = args.patience
    if args.budget is not None:
        runner.WARM_START_BUDGET = args.budget
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"sweep cost: torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    summary = []
    for name in args.tasks:
        for monitor in [TASKS[name].monitor] if args.quick else args.monitors:
            for variant, time_ratio, value_ratio in run_task(name, TASKS[name], monitor, args):
                summary.append((name, monitor, variant, time_ratio, value_ratio))
    print(
        f"\ntargets: warm path <= {WARM_TIME:.2f} x the grid's CPU time, pruned grid <= {PRUNED_TIME:.2f} "
        f"x; both within {WITHIN:.0%} of the grid's best value"
    )
    print(f"{'task':13s} {'monitor':8s} {'variant':26s} {'x time':>6s} {'x best':>6s}  met")
    for name, monitor, variant, time_ratio, value_ratio in summary:
        if variant == "grid":
            continue
        bound = {"warm path": WARM_TIME}.get(variant, PRUNED_TIME if variant.startswith("pruned") else None)
        close = value_ratio <= 1 + WITHIN if MONITORS[monitor] == "min" else value_ratio >= 1 - WITHIN
        met = "" if bound is None else ("yes" if close and time_ratio <= bound else "no")
        print(f"{name:13s} {monitor:8s} {variant:26s} {time_ratio:6.2f} {value_ratio:6.3f}  {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
