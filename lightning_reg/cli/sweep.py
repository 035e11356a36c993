"""``lightning-reg sweep``: the demo's MLP trained once per strength, by :func:`~lightning_reg.sweeps.sweep`.

A grid of strengths (``--l1 1e-5 1e-4 1e-3``), or an Optuna search over their ranges (``--n-trials``),
on the digits split of :mod:`lightning_reg.demos.digits`, pruned (``--pruner``) or warm-started along
the path (``--warm-start``), and shared by the workers of a ``--storage``; the command prints a line on
standard error as each point finishes, then one row per point (the monitored value, the sparsity of the
weights, the seconds, the state, the epochs) and the best strengths.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from lightning_reg.cli.arguments import parse_png_path, parse_positive_int, parse_seed, parse_strength
from lightning_reg.cli.demo import GROUP_BY, describe_setup
from lightning_reg.cli.progress import ProgressLine
from lightning_reg.cli.quiet import quiet_lightning, quiet_optuna
from lightning_reg.cli.table import format_strength, format_table
from lightning_reg.demos.digits import TRAIN_SIZE, RegularizedDigitsMLP, load_digits_split
from lightning_reg.options import L1_MODES, STRENGTH_NAMES
from lightning_reg.sweeps import PRUNERS, SAMPLERS, WARM_START_BUDGET, SweepResult, check_arguments, sweep
from lightning_reg.utilities.optional import require

__all__ = [
    "DEFAULT_L1",
    "SWEEP_EPOCHS",
    "SWEEP_MONITORS",
    "VALIDATIONS",
    "add_arguments",
    "format_sweep_table",
    "run",
]

#: The strengths ``lightning-reg sweep`` tries when none is given: a short log grid of loss-mode L1.
DEFAULT_L1 = (1e-5, 1e-4, 1e-3)
#: Default epochs per point of ``lightning-reg sweep``: enough for the MLP to fit its 200 images.
SWEEP_EPOCHS = 20
#: What ``lightning-reg sweep`` can monitor, and which way is best.
SWEEP_MONITORS = {"val_loss": "min", "val_acc": "max"}
#: Validations per point with --pruner or --warm-start (otherwise: once, after the last epoch); each costs
#: about as much as three of the demo's epochs.
VALIDATIONS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``lightning-reg sweep`` to its subcommand parser."""
    parser.description = (
        "Train the demo's MLP (scikit-learn's digits, 200 training images) once per point of a grid of "
        "strengths, or per Optuna trial with --n-trials, from the same initial weights; print the "
        "monitored value, the sparsity of the weights and the seconds of each, and the best strengths. "
        f"Without --l1, --l2 or --group-l1: --l1 {' '.join(f'{value:g}' for value in DEFAULT_L1)}."
    )
    for name in STRENGTH_NAMES:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=parse_strength,
            nargs="+",
            metavar="X",
            help="values of the grid; with --n-trials, the range [min, max] searched on a log scale",
        )
    parser.add_argument(
        "--l1-mode",
        choices=L1_MODES,
        default="loss",
        help="how l1 and group l1 reach the weights (default loss); proximal thresholds each weight by l1 "
        "times the step Adam applied to it, so its strengths compare with the loss-mode ones",
    )
    parser.add_argument(
        "--monitor",
        choices=tuple(SWEEP_MONITORS),
        default="val_loss",
        help="the validation metric to compare (default val_loss; lowest loss, highest accuracy wins)",
    )
    parser.add_argument(
        "--epochs",
        type=parse_positive_int,
        default=SWEEP_EPOCHS,
        help=f"full-batch epochs per point (default {SWEEP_EPOCHS})",
    )
    parser.add_argument(
        "--seed",
        type=parse_seed,
        default=0,
        help="seed of the split, the weights and (without --storage) the sampler (default 0)",
    )
    _add_search_arguments(parser)


def _add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of how the points are searched, shared, cut short and plotted."""
    parser.add_argument(
        "--n-trials", type=parse_positive_int, metavar="N", help="search with Optuna: run N trials"
    )
    parser.add_argument("--sampler", choices=SAMPLERS, help="with --n-trials: random search (default) or TPE")
    parser.add_argument(
        "--pruner",
        choices=PRUNERS,
        help=f"stop unpromising points early (validating {VALIDATIONS} times a point): Optuna's MedianPruner "
        "or HyperbandPruner",
    )
    parser.add_argument(
        "--warm-start",
        action="store_true",
        help="train the grid as a regularization path, weakest first, each point from the previous one's "
        f"weights and optimizer state, for at most {WARM_START_BUDGET:.0%} of the first's epochs or until "
        f"its monitored value stops improving (validating {VALIDATIONS} times a point)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="an Optuna storage (sqlite:///sweep.db, postgresql+psycopg://..., journal:PATH) whose study "
        "several workers share: each point of a grid is trained once, --n-trials counts the study's trials",
    )
    parser.add_argument("--study-name", metavar="NAME", help="with --storage: the shared study's name")
    parser.add_argument(
        "--plot", type=parse_png_path, metavar="PATH", help="also write the regularization path to PATH (PNG)"
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``lightning-reg sweep`` with the options of :func:`add_arguments`; return the status.

    Arguments that :func:`~lightning_reg.sweeps.sweep` refuses are reported by ``parser`` (status 2)
    before the data are loaded; a missing optional dependency is reported with status 1.
    """
    strengths: dict[str, Any] = {name: getattr(args, name) for name in STRENGTH_NAMES}
    if all(value is None for value in strengths.values()):
        strengths["l1"] = list(DEFAULT_L1)
    line = ProgressLine("", sys.stderr)
    options = _sweep_options(args, line)
    built = 0

    def make_model(**point: Any) -> RegularizedDigitsMLP:
        nonlocal built
        built += 1
        total = args.n_trials or math.prod(len(values) for values in strengths.values() if values)
        values = ", ".join(f"{name}={value:.3g}" for name, value in point.items())
        line.label = f"[{built}/{total}] {values}"
        return RegularizedDigitsMLP(**point, l1_mode=args.l1_mode, group_by=GROUP_BY)

    def progress(row: dict[str, Any]) -> None:
        value = row[args.monitor]
        line.finish(
            f"{row['state']}  {args.monitor} {value:.4f} (best, epoch {row['best_epoch']})  "
            f"{row['epochs']} epochs  {row['seconds']:.1f} s"
        )

    try:
        check_arguments(make_model, strengths, **options)
        if args.plot is not None:
            require("matplotlib.figure", "the demo", "demo")
        data = load_digits_split(TRAIN_SIZE, args.seed)
    except ValueError as error:
        parser.error(str(error))
    except (
        ImportError
    ) as error:  # Optuna (with --n-trials, --storage or --pruner), scikit-learn or matplotlib
        print(f"lightning-reg sweep: {error}", file=sys.stderr)
        return 1
    uses_optuna = args.n_trials is not None or args.storage is not None or args.pruner is not None
    with quiet_lightning(), quiet_optuna(uses_optuna):
        result = sweep(
            make_model, data.train_loader(), data.eval_loaders(), **strengths, **options, progress=progress
        )
    _print_result(
        result, f"{describe_setup(data, args.epochs, args.seed)}; l1_mode {args.l1_mode}", args.plot
    )
    return 0


def _sweep_options(args: argparse.Namespace, line: ProgressLine) -> dict[str, Any]:
    """The keyword arguments of :func:`~lightning_reg.sweeps.sweep` that the options give."""
    stepwise = args.pruner is not None or args.warm_start
    return {
        "monitor": args.monitor,
        "mode": SWEEP_MONITORS[args.monitor],
        "trainer_kwargs": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": args.epochs,
            # validate once, after the last epoch, unless a pruner or a path's stopping rule reads it
            "check_val_every_n_epoch": max(1, args.epochs // VALIDATIONS) if stepwise else args.epochs,
            "num_sanity_val_steps": 0,
            "callbacks": [line],
        },
        "n_trials": args.n_trials,
        "sampler": args.sampler,
        "storage": args.storage,
        "study_name": args.study_name,
        "seed": args.seed,
        "pruner": args.pruner,
        "warm_start": args.warm_start,
    }


def _print_result(result: SweepResult, setup: str, plot: str | None) -> None:
    """The table, the best strengths and (with ``plot``) where the figure went, on standard output."""
    print(setup)
    print()
    print(format_sweep_table(result))
    print()
    best = ", ".join(f"{name}={value:g}" for name, value in result.best.items())
    print(f"best ({'lowest' if result.mode == 'min' else 'highest'} {result.monitor}): {best}")
    if plot is not None:
        result.plot(plot)
        print(f"figure: {plot}")


def format_sweep_table(result: SweepResult) -> str:
    """The rows of ``result`` as an aligned text table, one line per row.

    The monitored value is the point's best, at epoch ``best at``:

    >>> row = {"l1": 1e-4, "val_loss": 0.61234, "sparsity": 0.25, "seconds": 3.14159, "state": "pruned",
    ...        "epochs": 4, "best_epoch": 3}
    >>> print(format_sweep_table(SweepResult([row], ("l1",), "val_loss", "min")))
    l1        val_loss  best at  sparsity  seconds   state  epochs
    --------  --------  -------  --------  -------  ------  ------
    1.00e-04    0.6123        3     0.250      3.1  pruned       4
    """
    header = (*result.names, result.monitor, "best at", "sparsity", "seconds", "state", "epochs")
    rows = [
        (
            *(format_strength(row[name], 2) for name in result.names),
            f"{row[result.monitor]:.4f}",
            _text(row.get("best_epoch")),
            f"{row['sparsity']:.3f}",
            f"{row['seconds']:.1f}",
            row.get("state", "complete"),
            _text(row.get("epochs")),
        )
        for row in result.table
    ]
    # the strengths are left-aligned, the measurements right-aligned
    return format_table(header, rows, left=len(result.names))


def _text(value: object) -> str:
    """A count of the table, or nothing where it has none."""
    return "" if value is None else str(value)
