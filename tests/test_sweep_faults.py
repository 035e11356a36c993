"""A shared grid survives a worker killed in the middle of a point: every point complete exactly once.

Three worker processes (``sweep_worker.py``) share the grid in one SQLite file with a 1 s heartbeat.
One of them blocks in the middle of its first point and is killed there with SIGKILL; the survivors fail
its trial once its heartbeat is stale, train the point again, and return. The test counts what the
workers trained from their own log lines, reads the states from the storage, and trains the killed
point itself to check the value its retry stored.
"""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
from helpers import quiet_trainer
from sweep_worker import GRID
from test_sweep import TRAIN, TRAINER, VAL, ValRegression, best_loss, needs_optuna, never_called

from lightning_reg import sweep

TESTS = Path(__file__).resolve().parent


def start_worker(storage: str, logs: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(TESTS / "sweep_worker.py"), storage, "grid", str(logs), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until ``path`` exists (the worker's own signal); fails if the worker exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the worker exited before {path.name}: {process.communicate()[0][-3000:]}")
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.05)


def logged_points(path: Path) -> collections.Counter[float]:
    """How many lines of ``path`` name each point."""
    return collections.Counter(float(line.split()[0]) for line in path.read_text().splitlines())


@needs_optuna
def test_a_point_whose_worker_was_killed_is_trained_again_by_a_survivor(tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    blocked = tmp_path / "blocked"
    victim = start_worker(storage, tmp_path, "--heartbeat", "--victim")
    # the survivors start together with the victim, and sweep once it is in the middle of its point
    survivors = [start_worker(storage, tmp_path, "--heartbeat", "--after", str(blocked)) for _ in range(2)]
    wait_for(blocked, victim)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    killed_point = float(blocked.read_text())
    outputs = [survivor.communicate(timeout=180)[0] for survivor in survivors]
    for survivor, output in zip(survivors, outputs, strict=True):
        assert survivor.returncode == 0, output[-3000:]
    assert victim.returncode == -signal.SIGKILL

    # what the workers trained, by their own count: the killed point started twice, finished once
    started, finished = logged_points(tmp_path / "started.log"), logged_points(tmp_path / "finished.log")
    assert finished == collections.Counter(GRID)
    assert started == collections.Counter(GRID) + collections.Counter([killed_point])

    # what the study holds: one complete trial per point; the killed one failed, and its retry completed
    study = optuna.load_study(study_name="grid", storage=storage)
    trials = [trial for trial in study.trials if not trial.user_attrs.get("surplus")]
    # a trial that found its point taken (two workers asked at once) was pruned before any training
    surplus = [trial for trial in study.trials if trial.user_attrs.get("surplus")]
    assert all(trial.state.name == "PRUNED" and "epochs" not in trial.user_attrs for trial in surplus)
    assert collections.Counter(trial.state.name for trial in trials) == {"COMPLETE": len(GRID), "FAIL": 1}
    complete = [trial for trial in trials if trial.state.name == "COMPLETE"]
    assert sorted(trial.params["l1"] for trial in complete) == sorted(GRID)
    (failed,) = [trial for trial in trials if trial.state.name == "FAIL"]
    assert failed.params == {"l1": killed_point}
    (retry,) = [trial for trial in complete if "failed_trial" in trial.system_attrs]
    assert (retry.system_attrs["failed_trial"], retry.params) == (failed.number, failed.params)

    # each survivor's table: the whole grid in order, complete, with the values the study holds
    values = {trial.params["l1"]: trial.value for trial in complete}
    for output in outputs:
        table = json.loads(output.splitlines()[-1])
        assert [row["l1"] for row in table] == GRID
        assert [row["state"] for row in table] == ["complete"] * len(GRID)
        assert [row["val_loss"] for row in table] == [values[point] for point in GRID]
        assert [row["epochs"] for row in table] == [TRAINER["max_epochs"]] * len(GRID)

    # the retry trained the killed point from scratch: the value this test measures training it here
    L.seed_everything(0, verbose=False)
    model = ValRegression(l1=killed_point, l1_mode="proximal")
    quiet_trainer(max_epochs=TRAINER["max_epochs"]).fit(model, TRAIN, VAL)
    assert retry.value == pytest.approx(best_loss(model), rel=1e-6)


class Killed(BaseException):
    """Ends a worker in the middle of a point, as SIGKILL would: Optuna neither catches nor records it."""


class DeadPoint:
    """A shared grid of two points in SQLite whose worker died in the point 0.3, failed as stale since.

    ``make_model`` records every point it builds in ``calls``; the first build of 0.3 ends the worker.
    """

    def __init__(self, tmp_path: Path) -> None:
        import optuna

        self.calls: list[float] = []
        storage = f"sqlite:///{tmp_path / 'grid.db'}"
        self.common: dict[str, Any] = {
            "l1": [0.1, 0.3],
            "trainer_kwargs": TRAINER,
            "storage": storage,
            "study_name": "g",
        }
        with pytest.raises(Killed):
            sweep(self.make_model, TRAIN, VAL, **self.common)
        self.study = optuna.load_study(study_name="g", storage=storage)
        (dead,) = [trial for trial in self.study.trials if trial.state.name == "RUNNING"]
        self.study.tell(dead.number, state=optuna.trial.TrialState.FAIL)  # a worker failed it as stale
        self.dead = self.study.trials[dead.number]

    def make_model(self, **strengths: float) -> ValRegression:
        self.calls.append(strengths["l1"])
        if strengths["l1"] == 0.3 and self.calls.count(0.3) == 1:
            raise Killed
        return ValRegression(**strengths, l1_mode="proximal")

    def resume(self) -> Any:
        """The sweep run again by a surviving worker."""
        return sweep(self.make_model, TRAIN, VAL, **self.common)


@needs_optuna
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_two_retries_of_one_dead_trial_train_its_point_once(tmp_path: Path) -> None:
    import optuna

    point = DeadPoint(tmp_path)
    study, dead, calls = point.study, point.dead, point.calls
    # two workers failed the stale trial at once (SQLite has no row lock): each queues a retry
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
    retry(study, dead)
    retry(study, dead)

    result = point.resume()
    assert sorted(calls) == [0.1, 0.3, 0.3]  # the dead point trained once more, not twice
    assert [(row["l1"], row["state"]) for row in result.table] == [(0.1, "complete"), (0.3, "complete")]
    retries = [trial for trial in study.get_trials() if "failed_trial" in trial.system_attrs]
    assert sorted(trial.state.name for trial in retries) == ["COMPLETE", "PRUNED"]
    assert [trial.user_attrs.get("surplus") for trial in retries if trial.state.name == "PRUNED"] == [True]


@needs_optuna
def test_a_trial_given_a_grid_point_that_another_trial_runs_is_surplus() -> None:
    import optuna

    from lightning_reg.sweeps import check_arguments
    from lightning_reg.sweeps.study import _is_surplus

    search = check_arguments(
        never_called,
        {"l1": [0.1, 0.3]},
        monitor="val_loss",
        mode="min",
        trainer_kwargs=None,
        n_trials=None,
        sampler=None,
        storage=None,
        study_name=None,
        seed=0,
        pruner="median",
    )
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"l1": [0.1, 0.3]}))
    running = study.ask()  # another worker's trial, still running
    done = study.ask()
    study.tell(done, 1.0)
    late = study.ask()  # every point finished or running: GridSampler hands out a running one again
    assert late.suggest_float("l1", 0.1, 0.3) == running.suggest_float("l1", 0.1, 0.3)
    assert not _is_surplus(study, running, search)
    assert not _is_surplus(study, done, search)
    assert _is_surplus(study, late, search)


@needs_optuna
def test_a_trial_waits_for_an_earlier_trial_to_record_its_grid_point() -> None:
    import optuna

    from lightning_reg.sweeps import check_arguments
    from lightning_reg.sweeps.study import _is_surplus

    search = check_arguments(
        never_called, {"l1": [0.1, 0.3]}, monitor="val_loss", mode="min", trainer_kwargs=None,
        n_trials=None, sampler=None, storage=None, study_name=None, seed=0, pruner="median",
    )  # fmt: skip
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"l1": [0.1, 0.3]}))
    storage, study_id = study._storage, study._study_id
    # another worker's trial, created but not yet given its grid point by GridSampler
    other = storage.create_new_trial(study_id)
    late = study.ask()
    grid_id = storage.get_trial_system_attrs(late._trial_id)["grid_id"]
    reads = 0
    get_trials = study.get_trials

    def then_the_other_records_its_point(**kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        nonlocal reads
        trials = get_trials(**kwargs)
        reads += 1
        if reads == 1:  # right after this worker's first look, the other worker's sampler catches up
            storage.set_trial_system_attr(other, "grid_id", grid_id)
        return trials

    study.get_trials = then_the_other_records_its_point  # type: ignore[method-assign]
    assert _is_surplus(study, late, search)
    assert reads == 2


@needs_optuna
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_worker_waits_for_the_retry_of_a_trial_failed_a_moment_ago(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from lightning_reg.sweeps import study as study_module

    point = DeadPoint(tmp_path)
    study, dead, calls = point.study, point.dead, point.calls
    slept: list[float] = []

    def other_worker_queues_the_retry(seconds: float) -> None:  # ... and queues its retry meanwhile
        if not slept:
            optuna.storages.RetryHeartbeatStaleTrialCallback()(study, dead)
        slept.append(seconds)

    monkeypatch.setattr(study_module.time, "sleep", other_worker_queues_the_retry)
    result = point.resume()

    assert slept  # the worker did not return before the retry was queued
    assert sorted(calls) == [0.1, 0.3, 0.3]
    assert [(row["l1"], row["state"]) for row in result.table] == [(0.1, "complete"), (0.3, "complete")]
