"""``sweep(catch=...)``: an error of one of these types fails its point, and the sweep goes on.

The failing points are chosen by the test (``make_model`` or ``training_step`` raise there); the other
points must come out as the test measures them on their models, and the failed ones with their message
and the epochs they finished before the error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from test_sweep import TRAIN, TRAINER, VAL, ValRegression, best_loss, needs_optuna
from torch import Tensor

from lightning_reg import sweep

GRID = [0.03, 0.1, 0.3]


class FailsAtEpoch(ValRegression):
    """``ValRegression`` whose training raises ``RuntimeError`` in epoch ``fail_at`` (counted from 0)."""

    def __init__(self, fail_at: int | None, **strengths: float) -> None:
        super().__init__(**strengths, l1_mode="proximal")
        self.fail_at = fail_at

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if self.current_epoch == self.fail_at:
            raise RuntimeError(f"diverged at epoch {self.current_epoch}")
        return super().training_step(batch, batch_idx)


class Failing:
    """``make_model``: raises ``build_error`` at the point ``l1=at_build``; training fails at ``at_fit``."""

    def __init__(self, at_build: float | None = None, at_fit: float | None = None) -> None:
        self.at_build, self.at_fit = at_build, at_fit
        self.build_error: BaseException = ValueError("no such layer")
        self.models: dict[float, ValRegression] = {}

    def __call__(self, **strengths: float) -> ValRegression:
        if strengths["l1"] == self.at_build:
            raise self.build_error
        fail_at = 1 if strengths["l1"] == self.at_fit else None
        self.models[strengths["l1"]] = FailsAtEpoch(fail_at, **strengths)
        return self.models[strengths["l1"]]


def assert_rows(table: list[dict[str, Any]], make_model: Failing) -> None:
    """The failed rows say what failed and when; the others are their models, measured here."""
    for row in table:
        if row["l1"] == make_model.at_build:
            assert row["state"] == "failed"
            assert row["error"] == f"{type(make_model.build_error).__name__}: {make_model.build_error}"
            assert (row["epochs"], math.isnan(row["val_loss"]), math.isnan(row["sparsity"])) == (
                0,
                True,
                True,
            )
        elif row["l1"] == make_model.at_fit:
            assert (row["state"], row["error"]) == ("failed", "RuntimeError: diverged at epoch 1")
            assert row["epochs"] == 1  # the epoch it finished before the error
        else:
            assert (row["state"], row["epochs"], "error" in row) == ("complete", TRAINER["max_epochs"], False)
            assert row["val_loss"] == pytest.approx(best_loss(make_model.models[row["l1"]]), rel=1e-6)


def test_a_caught_error_fails_its_point_and_the_grid_goes_on() -> None:
    make_model = Failing(at_build=0.03, at_fit=0.3)
    result = sweep(make_model, TRAIN, VAL, l1=GRID, catch=(ValueError, RuntimeError), trainer_kwargs=TRAINER)

    assert [row["l1"] for row in result.table] == GRID
    assert_rows(result.table, make_model)
    assert result.best == {"l1": 0.1}  # failed rows are never best
    assert result.pareto == [result.table[1]]


def test_an_error_of_another_type_propagates() -> None:
    with pytest.raises(RuntimeError, match="diverged at epoch 1"):
        sweep(Failing(at_fit=0.1), TRAIN, VAL, l1=GRID, catch=ValueError, trainer_kwargs=TRAINER)


@needs_optuna
def test_a_caught_error_fails_its_trial_in_a_study_and_is_not_trained_again(tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 's.db'}"
    common: dict[str, Any] = {"storage": storage, "study_name": "s", "trainer_kwargs": TRAINER}
    make_model = Failing(at_build=0.03, at_fit=0.3)
    result = sweep(
        make_model, TRAIN, VAL, l1=GRID, pruner="median", catch=(ValueError, RuntimeError), **common
    )

    assert [row["l1"] for row in result.table] == GRID
    assert_rows(result.table, make_model)
    states = {
        trial.params["l1"]: trial.state.name
        for trial in optuna.load_study(study_name="s", storage=storage).trials
    }
    assert states == {0.03: "FAIL", 0.1: "COMPLETE", 0.3: "FAIL"}
    again = sweep(Failing(at_build=0.1), TRAIN, VAL, l1=GRID, **common)  # a failed point is a result too
    assert again.table == result.table


@needs_optuna
def test_an_uncaught_error_ends_a_study_and_its_trial_says_why(tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(ValueError, match="no such layer"):
        sweep(
            Failing(at_build=0.1),
            TRAIN,
            VAL,
            l1=[0.1],
            storage=storage,
            study_name="s",
            trainer_kwargs=TRAINER,
        )
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert (trial.state.name, trial.user_attrs["error"]) == ("FAIL", "ValueError: no such layer")
