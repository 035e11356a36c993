"""The ``lightning-reg`` command."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from lightning_reg.sweep import SAMPLERS, SweepResult

#: The strengths ``lightning-reg sweep`` tries when none is given: a short log grid of loss-mode L1.
DEFAULT_L1 = (1e-5, 1e-4, 1e-3)
#: Default epochs per point of ``lightning-reg sweep``: enough for the MLP to fit its 200 images.
SWEEP_EPOCHS = 20
#: What ``lightning-reg sweep`` can monitor, and which way is best.
SWEEP_MONITORS = {"val_loss": "min", "val_acc": "max"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-reg`` with ``argv`` (default: the command line); return the exit status."""
    parser = argparse.ArgumentParser(prog="lightning-reg", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train an MLP on digits without and with L2, L1, Elastic Net and their proximal forms"
    )
    sweep = commands.add_parser(
        "sweep",
        help="train the demo's MLP once per strength (a grid, or an Optuna search); print the validation "
        "loss and sparsity of each",
    )
    from lightning_reg.demo import add_arguments, run

    add_arguments(demo)
    add_sweep_arguments(sweep)
    args = parser.parse_args(argv)
    if args.command == "sweep":
        return run_sweep(args, sweep)
    return run(args)


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``lightning-reg sweep`` to its subcommand parser."""
    from lightning_reg.demo import parse_png_path, parse_positive_int, parse_seed

    parser.description = (
        "Train the demo's MLP (scikit-learn's digits, 200 training images) once per point of a grid of "
        "strengths, or per Optuna trial with --n-trials, from the same initial weights; print the "
        "monitored value, the sparsity of the weights and the seconds of each, and the best strengths. "
        f"Without --l1, --l2 or --group-l1: --l1 {' '.join(f'{value:g}' for value in DEFAULT_L1)}."
    )
    for flag in ("--l1", "--l2", "--group-l1"):
        parser.add_argument(
            flag,
            type=_strength,
            nargs="+",
            metavar="X",
            help="values of the grid; with --n-trials, the range [min, max] searched on a log scale",
        )
    parser.add_argument(
        "--l1-mode",
        choices=("loss", "proximal"),
        default="loss",
        help="how l1 and group l1 reach the weights (default loss); with Adam, proximal strengths that "
        "zero weights are about 1e4 times the loss-mode ones (0.1 to 1)",
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
    parser.add_argument(
        "--n-trials", type=parse_positive_int, metavar="N", help="search with Optuna: run N trials"
    )
    parser.add_argument("--sampler", choices=SAMPLERS, help="with --n-trials: random search (default) or TPE")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="with --n-trials: an Optuna storage (sqlite:///sweep.db) shared by several workers",
    )
    parser.add_argument("--study-name", metavar="NAME", help="with --storage: the shared study's name")
    parser.add_argument(
        "--plot", type=parse_png_path, metavar="PATH", help="also write the regularization path to PATH (PNG)"
    )


def run_sweep(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``lightning-reg sweep`` with the options of :func:`add_sweep_arguments`; return the status.

    Arguments that :func:`~lightning_reg.sweep.sweep` refuses are reported by ``parser`` (status 2)
    before the data are loaded; a missing optional dependency is reported with status 1.
    """
    from lightning_reg import demo
    from lightning_reg.sweep import check_arguments, sweep

    strengths: dict[str, Any] = {"l1": args.l1, "l2": args.l2, "group_l1": args.group_l1}
    if all(value is None for value in strengths.values()):
        strengths["l1"] = list(DEFAULT_L1)
    options: dict[str, Any] = {
        "monitor": args.monitor,
        "mode": SWEEP_MONITORS[args.monitor],
        "trainer_kwargs": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": args.epochs,
            "check_val_every_n_epoch": args.epochs,  # validate once, after the last epoch
            "num_sanity_val_steps": 0,
        },
        "n_trials": args.n_trials,
        "sampler": args.sampler,
        "storage": args.storage,
        "study_name": args.study_name,
        "seed": args.seed,
    }
    built = 0

    def make_model(**point: Any) -> demo.RegularizedDigitsMLP:
        nonlocal built
        built += 1
        total = args.n_trials or math.prod(len(values) for values in strengths.values() if values)
        values = ", ".join(f"{name}={value:.3g}" for name, value in point.items())
        print(f"[{built}/{total}] {values}", file=sys.stderr, flush=True)
        return demo.RegularizedDigitsMLP(**point, l1_mode=args.l1_mode, group_by=demo.GROUP_BY)

    try:
        check_arguments(make_model, strengths, **options)
        if args.plot is not None:
            demo.require("matplotlib.figure")
        data = demo.load_digits_split(demo.TRAIN_SIZE, args.seed)
    except ValueError as error:
        parser.error(str(error))
    except ImportError as error:  # Optuna (with --n-trials), scikit-learn or matplotlib
        print(f"lightning-reg sweep: {error}", file=sys.stderr)
        return 1
    with demo.quiet_lightning(), _quiet_optuna(args.n_trials is not None):
        result = sweep(make_model, data.train_loader(), data.eval_loaders(), **strengths, **options)
    print(f"{demo.describe_setup(data, args.epochs, args.seed)}; l1_mode {args.l1_mode}")
    print()
    print(format_sweep_table(result))
    print()
    best = ", ".join(f"{name}={value:g}" for name, value in result.best.items())
    print(f"best ({'lowest' if result.mode == 'min' else 'highest'} {result.monitor}): {best}")
    if args.plot is not None:
        result.plot(args.plot)
        print(f"figure: {args.plot}")
    return 0


@contextlib.contextmanager
def _quiet_optuna(active: bool) -> Iterator[None]:
    """Lower Optuna's log level to warnings until the exit: the command prints its own progress."""
    if not active:
        yield
        return
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def format_sweep_table(result: SweepResult) -> str:
    """The rows of ``result`` as an aligned text table, one line per row.

    >>> row = {"l1": 1e-4, "val_loss": 0.61234, "sparsity": 0.25, "seconds": 3.14159}
    >>> print(format_sweep_table(SweepResult([row], ("l1",), "val_loss", "min")))
    l1        val_loss  sparsity  seconds
    --------  --------  --------  -------
    1.00e-04    0.6123     0.250      3.1
    """
    header = (*result.names, result.monitor, "sparsity", "seconds")
    rows = [
        (
            *("0" if row[name] == 0 else f"{row[name]:.2e}" for name in result.names),
            f"{row[result.monitor]:.4f}",
            f"{row['sparsity']:.3f}",
            f"{row['seconds']:.1f}",
        )
        for row in result.table
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    left = len(result.names)  # the strengths are left-aligned, the measurements right-aligned

    def line(cells: Sequence[str]) -> str:
        text = [
            cell.ljust(width) if column < left else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(text).rstrip()

    return "\n".join([line(header), line(tuple("-" * width for width in widths)), *map(line, rows)])
