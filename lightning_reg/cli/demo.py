"""``lightning-reg demo``: L1, L2 and Elastic Net against overfitting, on scikit-learn's digits.

One over-parameterised MLP (64-512-512-512-10, about 560k weights) is trained on 200 of the 1797 8x8
digit images, few enough for it to memorise them, and evaluated on the other 1597. It is trained seven
times, with the same seed, initial weights, data and optimizer (Adam): without regularization, with L2
(weight decay), with L1 and with both (Elastic Net), L1 in the loss; then with L1 and Elastic Net whose
L1 is applied by a proximal step (``l1_mode="proximal"``), and with a proximal group L1 on the rows of the
weight matrices (``group_l1``). Each is built through :class:`~lightning_reg.module.RegularizedModule` as
a user would write it, with a :class:`~lightning_reg.monitor.RegularizationMonitor` writing to a
``CSVLogger``. The table shows how far training accuracy runs ahead of validation accuracy (the gap), the
validation loss, how many of the regularized weights are exactly zero or below ``1e-3``, and how many
units are dead (a row of a weight matrix entirely zero: a unit whose incoming weights are all ``0``).
L1 in the loss, minimised by a gradient method, drives weights towards zero but rarely exactly to it;
the proximal step sets them exactly to zero, and the group term removes whole units. The proximal step
thresholds each weight by its strength times the step Adam has just applied to it (the default
``proximal_threshold="optimizer"``), so its strengths compare with the loss-mode ones.

The data and the model are :mod:`lightning_reg.demos.digits`'s; this module holds the variants, their
training, the table and the options, and :mod:`~lightning_reg.cli.demo_plot` the figure. scikit-learn
(the data) and matplotlib (``--plot``) come with the ``demo`` extra and are imported only when the demo
runs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import lightning.pytorch as L
from lightning.pytorch.loggers import CSVLogger

from lightning_reg.cli.arguments import parse_png_path, parse_positive_int, parse_seed
from lightning_reg.cli.demo_plot import CURVES, plot_results
from lightning_reg.cli.demo_variants import Variant, VariantResult
from lightning_reg.cli.progress import ProgressLine
from lightning_reg.cli.quiet import quiet_lightning
from lightning_reg.cli.table import format_strength, format_table
from lightning_reg.demos.digits import (
    DEPTH,
    HIDDEN,
    LR,
    TRAIN_SIZE,
    DigitsSplit,
    RegularizedDigitsMLP,
    load_digits_split,
)
from lightning_reg.monitor import RegularizationMonitor
from lightning_reg.options import GroupBy
from lightning_reg.statistics import NEAR_ZERO_TOL
from lightning_reg.utilities.optional import MissingDependencyError, require

__all__ = [
    "COLUMNS",
    "EPOCHS",
    "GROUP_BY",
    "GROUP_L1_STRENGTH",
    "L1_STRENGTH",
    "L2_STRENGTH",
    "PROX_L1_STRENGTH",
    "SEED",
    "VARIANTS",
    "add_arguments",
    "describe_setup",
    "format_results",
    "read_curves",
    "run",
    "train_all",
    "train_variant",
]

#: Default number of epochs; every variant fits the training split perfectly well before the end.
EPOCHS = 200
#: Default seed of the split, the initial weights and everything else random.
SEED = 0

# How the strengths were chosen: on log grids (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3 for each, and pairs
# of them for Elastic Net) with this setup (200 training images, 3 x 512 hidden, Adam lr 2e-3, 200
# and 300 epochs), by the train/val accuracy gap averaged over seeds 0-4, measured with the same
# training in a plain PyTorch loop (it gives the demo's numbers for seed 0). At 200 epochs: no
# regularization 0.093 (val acc 0.907, val loss 1.17); L2=1e-3 0.066 (0.934, 0.24); L1=3e-5 0.067
# (0.933, 0.25); both 0.067 (0.933, 0.24), and each of them narrows the gap for every one of the five
# seeds. Weaker strengths help less (L2=1e-4: 0.084, L2=3e-4: 0.071, L1=1e-5: 0.076), stronger ones no
# more (L2=3e-3: 0.069, L1=1e-4: 0.069). With Adam's default lr 1e-3 the unregularized model overfits
# less and the gain is smaller: 0.078 without, 0.066 / 0.070 / 0.066 with L2 / L1 / both.
#: The L2 strength: Adam's ``weight_decay`` on the weight matrices (gradient ``L2_STRENGTH * w``).
L2_STRENGTH = 1e-3
#: The L1 strength: ``L1_STRENGTH * sum|w|`` over the weight matrices, added to the training loss.
L1_STRENGTH = 3e-5

# How the proximal strengths were chosen: the same way (seeds 0-4, 200 epochs, val acc, gap, val loss
# and sparsity), with the demo's own train_variant, on log grids of their own. With the default
# proximal_threshold="optimizer" the threshold of each weight is l1 times the step Adam has just applied
# to that weight's gradient, so the fixed points are the minimisers of "loss + l1 * sum|w|" (+ the group
# term) and the strengths compare with the loss-mode ones. Means over seeds 0-4 at 200 epochs (without
# regularization: gap 0.093, val acc 0.907, val loss 1.17; L1 in the loss at 3e-5: 0.067, 0.933, 0.25):
# - proximal L1 on 1e-5, 3e-5, 1e-4, 3e-4, 1e-3: gap 0.077 / 0.070 / 0.076 / 0.142 / 0.004, val acc
#   0.923 / 0.930 / 0.924 / 0.858 / 0.101, val loss 0.32 / 0.26 / 0.28 / 0.62 / 2.30, sparsity 0.66 /
#   0.85 / 0.95 / 0.98 / 1.00, dead units 0.03 / 0.08 / 0.28 / 0.65 / 1.00 (at 1e-3 every weight is 0:
#   train and val acc 0.10). We take 3e-5, the best gap of the grid and the loss-mode L1's own strength:
#   nearly as good as L1 in the loss, with 85 % of the weights exactly 0 instead of none; it narrows the
#   gap on every seed. 1e-4 gives 95 % zeros for 0.006 more gap.
# - Elastic Net prox, proximal L1 3e-5 with weight decay 3e-4, 1e-3, 3e-3: gap 0.069, 0.069, 0.071, val
#   acc 0.931, 0.931, 0.929, sparsity 0.85, 0.86, 0.85, dead units 0.10, 0.15, 0.28. We keep the L2
#   variant's 1e-3, as the loss-mode Elastic Net keeps its parts' strengths: val loss 0.249, narrower
#   than without on every seed.
# - proximal group L1 on 1e-4, 3e-4, 1e-3, 3e-3, 1e-2 (and 5e-4), over rows (a unit's incoming weights;
#   the output layer's 10 rows are the classes): dead units 0.05 / 0.17 / 0.63 / 0.78 / 1.00 (5e-4:
#   0.36), gap 0.077 / 0.068 / 0.076 / 0.184 / 0.004 (5e-4: 0.070), val acc 0.923 / 0.932 / 0.924 /
#   0.816 / 0.101 (5e-4: 0.930), sparsity 0.08 / 0.23 / 0.65 / 0.79 / 1.00. We take 1e-3, for units
#   visibly removed: the strongest of the grid before accuracy breaks, it narrows the gap on every seed,
#   but less than L1 or L2 (0.076 against 0.067), trading 0.009 of validation accuracy for 63 % of the
#   units; 5e-4 removes 36 % of them at L1 prox's accuracy (gap 0.070).
# At 300 epochs the proximal variants keep pruning at about the same accuracy: L1 prox sparsity 0.92
# (gap 0.070), Elastic Net prox sparsity 0.93, dead units 0.30 (gap 0.069), group L1 prox dead units
# 0.81 (gap 0.078). The strengths tuned for the old rule (proximal_threshold="lr": L1 0.3, group 3)
# zero every weight under the new one (val acc 0.101 on seed 0). The demo's seed 0: gap 0.075, 0.071,
# 0.073 for L1 prox, Elastic Net prox, group L1 prox, against 0.071 for L1 in the loss.
#: The proximal L1 strength: after each step every weight is soft-thresholded by ``PROX_L1_STRENGTH``
#: times the step Adam has just applied to its gradient.
PROX_L1_STRENGTH = 3e-5
#: The proximal group strength: after each step each row takes the proximal step of
#: ``GROUP_L1_STRENGTH * ||row||`` in the metric of Adam's per-weight steps.
GROUP_L1_STRENGTH = 1e-3
#: The groups of ``group_l1`` and of the dead-unit count, for every variant: rows (a unit's inputs).
GROUP_BY: GroupBy = "rows"


#: The variants the demo trains, in table order. Add a variant here and it is trained, tabled and plotted.
VARIANTS: tuple[Variant, ...] = (
    Variant("none", l1=0.0, l2=0.0),
    Variant("L2", l1=0.0, l2=L2_STRENGTH),
    Variant("L1", l1=L1_STRENGTH, l2=0.0),
    Variant("Elastic Net", l1=L1_STRENGTH, l2=L2_STRENGTH),
    Variant("L1 prox", l1=PROX_L1_STRENGTH, l2=0.0, l1_mode="proximal"),
    Variant("Elastic Net prox", l1=PROX_L1_STRENGTH, l2=L2_STRENGTH, l1_mode="proximal"),
    Variant("Group L1 prox", l1=0.0, l2=0.0, l1_mode="proximal", group_l1=GROUP_L1_STRENGTH),
)


def train_variant(
    variant: Variant,
    data: DigitsSplit,
    *,
    epochs: int,
    seed: int,
    log_dir: str | Path,
    progress: ProgressLine,
) -> VariantResult:
    """Train one variant from the seed's initial weights and measure it after the last epoch.

    Validation runs once, after the last epoch, on both splits (see :data:`EVAL_SPLITS`). The
    ``RegularizationMonitor`` logs ``reg/*`` about 20 times per run to ``log_dir/<variant slug>``.
    """
    L.seed_everything(seed, verbose=False)
    model = RegularizedDigitsMLP(
        l1=variant.l1,
        l2=variant.l2,
        l1_mode=variant.l1_mode,
        group_l1=variant.group_l1,
        group_by=GROUP_BY,
    )
    interval = max(1, epochs // 20)
    logger = CSVLogger(log_dir, name=variant.slug)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=logger,
        callbacks=[RegularizationMonitor(), progress],
        log_every_n_steps=interval,
        check_val_every_n_epoch=epochs,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    trainer.fit(model, data.train_loader(), data.eval_loaders())
    seconds = time.perf_counter() - start
    metrics = trainer.callback_metrics
    curves = read_curves(Path(logger.log_dir) / "metrics.csv", CURVES)
    weights = model.regularizer.statistics(NEAR_ZERO_TOL).summary(penalties=False)
    return VariantResult(
        variant=variant,
        train_acc=float(metrics["train_acc"]),
        val_acc=float(metrics["val_acc"]),
        val_loss=float(metrics["val_loss"]),
        sparsity=weights["sparsity"],
        near_zero=weights["near_zero"],
        dead_units=weights["dead_units"],
        seconds=seconds,
        curves=curves,
    )


def read_curves(metrics_csv: Path, names: Sequence[str]) -> dict[str, tuple[tuple[int, float], ...]]:
    """Read the ``(step, value)`` pairs of each metric in ``names`` from a ``CSVLogger`` file."""
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        name: tuple((int(row["step"]), float(row[name])) for row in rows if row.get(name)) for name in names
    }


def train_all(
    data: DigitsSplit,
    *,
    epochs: int,
    seed: int,
    log_dir: str | Path,
    variants: Sequence[Variant] = VARIANTS,
    stream: TextIO | None = None,
) -> list[VariantResult]:
    """Train every variant in turn, reporting progress to ``stream`` (default: ``sys.stderr``)."""
    stream = sys.stderr if stream is None else stream
    results = []
    with quiet_lightning():
        for index, variant in enumerate(variants, start=1):
            progress = ProgressLine(f"[{index}/{len(variants)}] {variant.name}", stream)
            result = train_variant(
                variant, data, epochs=epochs, seed=seed, log_dir=log_dir, progress=progress
            )
            progress.finish(
                f"{epochs} epochs, {result.seconds:.1f} s: train acc {result.train_acc:.3f}, "
                f"val acc {result.val_acc:.3f}"
            )
            results.append(result)
    return results


#: The columns of the demo's table; the text columns before ``train acc`` are left-aligned.
COLUMNS = (
    "variant",
    "l1 mode",
    "l1",
    "group l1",
    "l2",
    "train acc",
    "val acc",
    "gap",
    "val loss",
    "sparsity",
    "near-zero",
    "dead units",
    "seconds",
)


def format_results(results: Sequence[VariantResult]) -> str:
    """The results as an aligned text table, one row per variant.

    >>> result = VariantResult(Variant("L2", 0.0, 3e-4), 1.0, 0.875, 0.6123, 0.0, 0.25, 0.0, 3.14)
    >>> print(format_results([result]))
    variant  l1 mode  l1  group l1  l2     train acc  val acc  gap    val loss  sparsity  near-zero
      dead units  seconds
    -------  -------  --  --------  -----  ---------  -------  -----  --------  --------  ---------
      ----------  -------
    L2       -        0   0         3e-04      1.000    0.875  0.125     0.612     0.000      0.250
           0.000      3.1
    """
    rows = [
        (
            result.variant.name,
            result.variant.mode,
            format_strength(result.variant.l1, 0),
            format_strength(result.variant.group_l1, 0),
            format_strength(result.variant.l2, 0),
            f"{result.train_acc:.3f}",
            f"{result.val_acc:.3f}",
            f"{result.gap:.3f}",
            f"{result.val_loss:.3f}",
            f"{result.sparsity:.3f}",
            f"{result.near_zero:.3f}",
            f"{result.dead_units:.3f}",
            f"{result.seconds:.1f}",
        )
        for result in results
    ]
    return format_table(COLUMNS, rows, left=COLUMNS.index("train acc"))


def describe_setup(data: DigitsSplit, epochs: int, seed: int) -> str:
    """One line naming the data, the model and the training."""
    layers = "-".join(str(size) for size in [data.x_train.shape[1], *[HIDDEN] * DEPTH, 10])
    return (
        f"digits: {len(data.y_train)} training / {len(data.y_val)} validation images; "
        f"MLP {layers}; Adam lr {LR:g}, full batch, {epochs} epochs; seed {seed}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its ``lightning-reg demo`` subcommand parser."""
    parser.description = (
        f"Train one over-parameterised MLP on {TRAIN_SIZE} of scikit-learn's digits {len(VARIANTS)} times: "
        "without regularization, with L2, L1 and Elastic Net (L1 in the loss), with L1 and Elastic Net by "
        "proximal steps and with a proximal group L1; print train/validation accuracy, their gap, "
        "validation loss, weight sparsity and dead units."
    )
    parser.add_argument(
        "--epochs",
        type=parse_positive_int,
        default=EPOCHS,
        help=f"full-batch epochs per variant (default {EPOCHS})",
    )
    parser.add_argument(
        "--seed", type=parse_seed, default=SEED, help=f"seed of the split and the weights (default {SEED})"
    )
    parser.add_argument("--plot", type=parse_png_path, metavar="PATH", help="also write a PNG figure to PATH")
    parser.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="keep the CSV logs (RegularizationMonitor's reg/* metrics) in DIR (default: a temporary "
        "directory, deleted at the end)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo with the options parsed by :func:`add_arguments`; return the exit status."""
    try:
        if args.plot is not None:
            require("matplotlib.figure", "the demo", "demo")
        data = load_digits_split(TRAIN_SIZE, args.seed)
    except MissingDependencyError as error:
        print(f"lightning-reg demo: {error}", file=sys.stderr)
        return 1
    keep_logs = args.log_dir is not None
    log_dirs: contextlib.AbstractContextManager[str] = (
        contextlib.nullcontext(str(args.log_dir))
        if keep_logs
        else tempfile.TemporaryDirectory(prefix="lightning-reg-demo-")
    )
    with log_dirs as log_dir:
        results = train_all(data, epochs=args.epochs, seed=args.seed, log_dir=log_dir)
    print(describe_setup(data, args.epochs, args.seed))
    print()
    print(format_results(results))
    print()
    print(
        "gap = train acc - val acc; sparsity: fraction of the regularized weights exactly 0; near-zero: "
        f"|w| < {NEAR_ZERO_TOL:g};\ndead units: fraction of their {GROUP_BY} (a unit's incoming weights) "
        "entirely 0.\n"
        "L1 in the loss, trained by gradient steps, pushes weights towards 0 (near-zero) but rarely exactly "
        "to 0.\nl1_mode 'proximal' soft-thresholds them after each Adam step by l1 times the step Adam "
        "applied to each weight:\nexact zeros (sparsity), at strengths that compare with the loss-mode "
        "ones; group l1 zeroes whole rows (dead units)."
    )
    if args.plot is not None:
        plot_results(results, args.plot, group_by=GROUP_BY)
        print(f"figure: {args.plot}")
    if keep_logs:
        print(f"CSV logs (reg/* metrics per step): {args.log_dir}/<variant>/version_*/metrics.csv")
    return 0
