"""A worker of a shared grid, run as its own process by the storage and fault tests.

    python tests/sweep_worker.py STORAGE STUDY LOGS [--heartbeat] [--victim] [--after PATH]

It sweeps :data:`GRID` (``l1``) over the regression of ``test_sweep`` into the study ``STUDY`` of
``STORAGE`` and prints its table as JSON on its last line. Each point it trains appends a line to
``LOGS/started.log`` when training starts and to ``LOGS/finished.log`` when it ends: the tests count
those lines, independently of the study. ``--heartbeat`` opens a database with a 1 s heartbeat and a 2 s
grace period. A ``--victim`` blocks after the first epoch of its first point, once it has written
``LOGS/blocked`` (the test's signal to kill it there, in the middle of a point). ``--after PATH`` waits,
once imported, until ``PATH`` exists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_sweep import TRAIN, TRAINER, VAL, ValRegression

from lightning_reg import sweep
from lightning_reg.sweeps import open_storage

#: The grid the workers share: six points of ``l1``.
GRID = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]


def append(path: Path, text: str) -> None:
    """One line, in one ``write`` of a file opened for appending (whole lines, whatever the processes)."""
    with path.open("a") as file:
        file.write(text + "\n")


class LoggedRegression(ValRegression):
    """``ValRegression`` that logs the start and the end of its training, and may block mid-point."""

    def __init__(self, logs: Path, victim: bool, **strengths: Any) -> None:
        super().__init__(**strengths, l1_mode="proximal")
        self.logs, self.victim, self.point = logs, victim, strengths["l1"]

    def on_train_start(self) -> None:
        append(self.logs / "started.log", f"{self.point!r} {os.getpid()}")

    def on_train_epoch_end(self) -> None:
        if self.victim:
            (self.logs / "blocked").write_text(f"{self.point!r}")
            threading.Event().wait()  # until the test kills this process

    def on_train_end(self) -> None:
        append(self.logs / "finished.log", f"{self.point!r} {os.getpid()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("storage")
    parser.add_argument("study")
    parser.add_argument("logs", type=Path)
    parser.add_argument("--heartbeat", action="store_true")
    parser.add_argument("--victim", action="store_true")
    parser.add_argument("--after", type=Path)
    args = parser.parse_args()
    while args.after is not None and not args.after.exists():
        time.sleep(0.05)
    storage: Any = args.storage
    if args.heartbeat:
        storage = open_storage(args.storage, heartbeat_interval=1, grace_period=2)
    result = sweep(
        lambda **strengths: LoggedRegression(args.logs, args.victim, **strengths),
        TRAIN,
        VAL,
        l1=GRID,
        trainer_kwargs=TRAINER,
        storage=storage,
        study_name=args.study,
    )
    print(json.dumps(result.table))


if __name__ == "__main__":
    main()
