"""What a strength search costs on the digits demo: the grid, the pruned grid, the warm path, TPE + pruning.

    .venv/bin/python benchmarks/sweep_cost.py                     # 8 strengths of loss-mode l1, 100 epochs
    .venv/bin/python benchmarks/sweep_cost.py --monitor val_acc   # the same, compared on accuracy
    .venv/bin/python benchmarks/sweep_cost.py --quick             # a smoke run

The four ways of :func:`~lightning_reg.sweep` run one after another in this process, on the demo's task
(``load_digits_split`` and ``RegularizedDigitsMLP`` of :mod:`lightning_reg.demos.digits`, as
``lightning-reg sweep`` trains them), with the same Trainer arguments (validation every
``--validate-every`` epochs, which pruning and the path's stopping rule read):

- grid: every strength trained for ``--epochs`` (the baseline);
- pruned grid: the same grid with ``pruner`` (``"median"`` by default, or the settings given);
- warm path: ``warm_start=True``, strongest first, each point from the previous one's weights;
- TPE + pruning: ``n_trials`` (as many as the grid's points) over the grid's range, ``sampler="tpe"``,
  with the same pruner.

Each row gives the wall and CPU seconds of the whole sweep, the epochs trained over all points, the best
complete row's monitored value (``--monitor``: ``val_loss``, lowest best, or ``val_acc``, highest best) and
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
from typing import Any

import lightning.pytorch as L
import numpy as np
import optuna
import torch

from lightning_reg import SweepResult, sweep
from lightning_reg.cli.demo import GROUP_BY
from lightning_reg.demos.digits import TRAIN_SIZE, RegularizedDigitsMLP, load_digits_split
from lightning_reg.sweeps import runner

#: The targets of issue 15, as fractions of the grid's time, and the warm path's value within 5 %.
WARM_TIME, WARM_VALUE, PRUNED_TIME = 0.40, 0.05, 0.70
#: What the benchmark can monitor, and which way is best (as ``lightning-reg sweep``).
MONITORS = {"val_loss": "min", "val_acc": "max"}


def pruner_from(args: argparse.Namespace) -> Any:
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
        max_resource=args.epochs,
        reduction_factor=args.reduction_factor or 3,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--validate-every", type=int, default=5)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--low", type=float, default=1e-6)
    parser.add_argument("--high", type=float, default=1e-3)
    parser.add_argument("--strength", default="l1", choices=("l1", "l2", "group_l1"))
    parser.add_argument("--l1-mode", default="loss", choices=("loss", "proximal"))
    parser.add_argument("--monitor", default="val_loss", choices=tuple(MONITORS))
    parser.add_argument("--pruner", default="median", choices=("median", "hyperband"))
    parser.add_argument("--startup", type=int, help="MedianPruner's n_startup_trials")
    parser.add_argument("--warmup", type=int, help="MedianPruner's n_warmup_steps (epochs)")
    parser.add_argument("--min-resource", type=int, help="HyperbandPruner's min_resource (epochs)")
    parser.add_argument("--reduction-factor", type=int, help="HyperbandPruner's reduction_factor")
    parser.add_argument("--patience", type=int, help="the warm path's patience, in validations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.validate_every, args.points = 4, 1, 3
    if args.patience is not None:
        runner.WARM_START_PATIENCE = args.patience
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    data = load_digits_split(TRAIN_SIZE, 0)
    grid = [float(value) for value in np.geomspace(args.low, args.high, args.points)]

    def make_model(**strengths: float) -> L.LightningModule:
        return RegularizedDigitsMLP(**strengths, l1_mode=args.l1_mode, group_by=GROUP_BY)

    trainer_kwargs = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": args.epochs,
        "check_val_every_n_epoch": args.validate_every,
        "num_sanity_val_steps": 0,
    }
    pruner = pruner_from(args)
    name, mode = args.strength, MONITORS[args.monitor]
    variants: dict[str, Callable[[], SweepResult]] = {
        "grid": lambda: run({name: grid}),
        f"pruned grid ({args.pruner})": lambda: run({name: grid}, pruner=pruner),
        "warm path": lambda: run({name: grid}, warm_start=True),
        f"TPE + {args.pruner} pruning": lambda: run(
            {name: [args.low, args.high]}, n_trials=args.points, sampler="tpe", pruner=pruner
        ),
    }

    def run(strengths: dict[str, list[float]], **options: Any) -> SweepResult:
        return sweep(
            make_model,
            data.train_loader(),
            data.eval_loaders(),
            **strengths,
            monitor=args.monitor,
            mode=mode,
            trainer_kwargs=trainer_kwargs,
            **options,
        )

    print(
        f"sweep cost on the digits demo: {args.points} points of {name} from {args.low:g} to {args.high:g} "
        f"(log; l1 mode {args.l1_mode}); {args.epochs} epochs, validation every {args.validate_every}; "
        f"pruner {pruner}; warm-start patience {runner.WARM_START_PATIENCE}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print(
        f"{'variant':26s} {'wall s':>7s} {'x grid':>6s} {'CPU s':>7s} {'x grid':>6s} {'epochs':>6s} "
        f"{'best ' + args.monitor:>13s} {'x grid':>6s} {'best ' + name:>14s}"
    )
    baseline: tuple[float, float, float] | None = None
    for variant_name, variant in variants.items():
        wall, cpu = time.perf_counter(), time.process_time()
        result = variant()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best = result.best
        value = next(
            row[args.monitor]
            for row in result.table
            if row["state"] == "complete" and row[name] == best[name]
        )
        baseline = baseline or (wall, cpu, value)
        epochs = sum(row["epochs"] for row in result.table)
        print(
            f"{variant_name:26s} {wall:7.1f} {wall / baseline[0]:6.2f} {cpu:7.1f} {cpu / baseline[1]:6.2f} "
            f"{epochs:6d} {value:13.4f} {value / baseline[2]:6.3f} {best[name]:14.2e}"
        )
    bound = f"<= {1 + WARM_VALUE:.2f}" if mode == "min" else f">= {1 - WARM_VALUE:.2f}"
    print(
        f"targets: warm path <= {WARM_TIME:.2f} x the grid's time and {bound} x its best value; "
        f"pruning <= {PRUNED_TIME:.2f} x its time"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
