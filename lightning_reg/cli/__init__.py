"""The ``lightning-reg`` command: an application of the library, not a part of its core.

``lightning-reg demo`` (:mod:`~lightning_reg.cli.demo`) trains the digits MLP without and with each
regularization; ``lightning-reg sweep`` (:mod:`~lightning_reg.cli.sweep`) trains it once per strength.
Both share their argparse types (:mod:`~lightning_reg.cli.arguments`), their progress line
(:mod:`~lightning_reg.cli.progress`), their table (:mod:`~lightning_reg.cli.table`) and their quieter
logs (:mod:`~lightning_reg.cli.quiet`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lightning_reg.cli import demo, sweep

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-reg`` with ``argv`` (default: the command line); return the exit status."""
    parser = argparse.ArgumentParser(prog="lightning-reg", description="The ``lightning-reg`` command.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="train an MLP on digits without and with L2, L1, Elastic Net and their proximal forms"
    )
    sweep_parser = commands.add_parser(
        "sweep",
        help="train the demo's MLP once per strength (a grid, or an Optuna search); print the validation "
        "loss and sparsity of each",
    )
    demo.add_arguments(demo_parser)
    sweep.add_arguments(sweep_parser)
    args = parser.parse_args(argv)
    if args.command == "sweep":
        return sweep.run(args, sweep_parser)
    return demo.run(args)
