"""The ``lightning-reg`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-reg`` with ``argv`` (default: the command line); return the exit status."""
    parser = argparse.ArgumentParser(prog="lightning-reg", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train an MLP on digits without and with L2, L1, Elastic Net and their proximal forms"
    )
    from lightning_reg.demo import add_arguments, run

    add_arguments(demo)
    args = parser.parse_args(argv)
    return run(args)
