"""Shared grids in each kind of storage: a real PostgreSQL server, Optuna's journal file, a storage object.

Worker processes (``sweep_worker.py``) share one grid; the test counts what they trained from their own
log lines and reads the study back from the storage: every point is trained, and complete, exactly once.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import PostgresServer, PostgresUnavailableError
from sweep_worker import GRID
from test_sweep import TRAIN, TRAINER, VAL, Recorder, needs_optuna, never_called

from lightning_reg import sweep

TESTS = Path(__file__).resolve().parent


def run_workers(storage: str, logs: Path, count: int, *flags: str) -> list[list[dict[str, object]]]:
    """Run ``count`` workers on ``storage`` at once; the table each one returned."""
    workers = [
        subprocess.Popen(
            [sys.executable, str(TESTS / "sweep_worker.py"), storage, "grid", str(logs), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]
    outputs = [worker.communicate(timeout=180)[0] for worker in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    return [json.loads(output.splitlines()[-1]) for output in outputs]


def trained(logs: Path) -> collections.Counter[float]:
    """How many times the workers trained each point to the end, by their own log lines."""
    lines = (logs / "finished.log").read_text().splitlines()
    return collections.Counter(float(line.split()[0]) for line in lines)


def assert_each_point_complete_once(study: object) -> dict[float, float]:
    """One complete trial per grid point and no other state; the value of each point.

    Left aside: trials that found their point taken (two workers asked at once), pruned before training.
    """
    everything = study.trials  # type: ignore[attr-defined]
    surplus = [trial for trial in everything if trial.user_attrs.get("surplus")]
    assert all(trial.state.name == "PRUNED" and "epochs" not in trial.user_attrs for trial in surplus)
    trials = [trial for trial in everything if not trial.user_attrs.get("surplus")]
    assert collections.Counter(trial.state.name for trial in trials) == {"COMPLETE": len(GRID)}
    assert sorted(trial.params["l1"] for trial in trials) == sorted(GRID)
    return {trial.params["l1"]: trial.value for trial in trials}


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """The URL of a database on a PostgreSQL server of the test's own; skipped where none can start."""
    why = None
    if importlib.util.find_spec("psycopg") is None:
        why = "psycopg (PostgreSQL's driver, in the dev extra) is not installed"
    else:
        try:
            server = PostgresServer()
        except PostgresUnavailableError as error:
            why = str(error)
    if why is not None:
        if os.environ.get("CI"):  # .ci/run installs the server: there the test must run
            pytest.fail(f"PostgreSQL test cannot run on CI: {why}")
        pytest.skip(f"no PostgreSQL server: {why}")
    yield server.url
    server.stop()


@needs_optuna
def test_three_workers_share_a_grid_on_a_postgresql_server(postgres_url: str, tmp_path: Path) -> None:
    import optuna

    tables = run_workers(postgres_url, tmp_path, 3, "--heartbeat")

    assert trained(tmp_path) == collections.Counter(GRID)
    values = assert_each_point_complete_once(optuna.load_study(study_name="grid", storage=postgres_url))
    # every worker waited for the others: its table is the whole grid, with the study's values
    for table in tables:
        assert [row["l1"] for row in table] == GRID
        assert [row["val_loss"] for row in table] == [values[point] for point in GRID]
        assert {row["state"] for row in table} == {"complete"}


@needs_optuna
def test_workers_share_a_grid_in_a_journal_file_and_a_storage_object_reads_it(tmp_path: Path) -> None:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "grid.journal"
    run_workers(f"journal:{path}", tmp_path, 2)

    assert trained(tmp_path) == collections.Counter(GRID)
    storage = JournalStorage(JournalFileBackend(str(path)))
    import optuna

    values = assert_each_point_complete_once(optuna.load_study(study_name="grid", storage=storage))
    # another call of the same grid on the storage object trains nothing and reads every row
    result = sweep(
        never_called, TRAIN, VAL, l1=GRID, trainer_kwargs=TRAINER, storage=storage, study_name="grid"
    )
    assert [row["l1"] for row in result.table] == GRID
    assert [row["val_loss"] for row in result.table] == [values[point] for point in GRID]
    assert result.best == {"l1": min(values, key=values.__getitem__)}


@needs_optuna
def test_a_stored_grid_refuses_another_grid_or_a_search(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    common: dict[str, object] = {"storage": storage, "study_name": "s", "trainer_kwargs": TRAINER}
    sweep(Recorder(), TRAIN, VAL, l1=[0.1, 0.3], **common)
    with pytest.raises(
        ValueError, match=r"holds the grid \{'l1': \[0.1, 0.3\]\}, not the grid \{'l1': \[0.1\]\}"
    ):
        sweep(never_called, TRAIN, VAL, l1=[0.1], **common)
    with pytest.raises(ValueError, match=r"holds the grid .*, not a search \(n_trials\)"):
        sweep(never_called, TRAIN, VAL, l1=[0.1, 0.3], n_trials=2, **common)
    make_model = Recorder()
    again = sweep(make_model, TRAIN, VAL, l1=[0.1, 0.3], **common)  # the same grid: nothing left to train
    assert make_model.calls == []
    assert [row["l1"] for row in again.table] == [0.1, 0.3]
