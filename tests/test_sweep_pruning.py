"""``sweep(pruner=...)``: every validation reported to Optuna, unpromising points stopped early.

Each expectation comes from the test's own measurements: the points trained here without a pruner, the
validation losses and epochs the models count themselves, the order ``make_model`` was called in.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as L
import pytest
from helpers import quiet_trainer
from lightning.pytorch.callbacks import Callback
from test_sweep import TRAIN, VAL, ValRegression, needs_optuna, val_loss
from torch import Tensor, nn

from lightning_reg import sweep
from lightning_reg.sweeps.study import HYPERBAND_PRUNER, MEDIAN_PRUNER, MEDIAN_WARMUP

TRAINER = {"max_epochs": 5, "accelerator": "cpu", "devices": 1}
GRID = [0.01, 0.1, 0.3, 1.0]


class Counted(ValRegression):
    """``ValRegression`` that counts its epochs, and logs its validation MSE plus ``handicap``."""

    def __init__(self, handicap: float = 0.0, **strengths: float) -> None:
        super().__init__(**strengths, l1_mode="proximal")
        self.handicap = handicap
        self.epochs_trained = 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y) + self.handicap
        if not self.trainer.sanity_checking:
            self.losses.append(loss.item())
        self.log("val_loss", loss)

    def on_train_epoch_end(self) -> None:
        self.epochs_trained += 1


class HandicapLate:
    """``make_model``: the first ``good`` models as they are, every later one worse by 100 at every epoch."""

    def __init__(self, good: int = 2) -> None:
        self.good = good
        self.models: list[Counted] = []
        self.calls: list[dict[str, float]] = []

    def __call__(self, **strengths: float) -> Counted:
        handicap = 0.0 if len(self.models) < self.good else 100.0
        self.calls.append(strengths)
        self.models.append(Counted(handicap, **strengths))
        return self.models[-1]


class Losses(Callback):
    """The logged validation loss after each epoch."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics["val_loss"]))


def trained_here(l1: float) -> list[float]:
    """The validation loss after each of the 5 epochs of the point ``l1``, trained by the test itself."""
    L.seed_everything(0, verbose=False)
    losses = Losses()
    quiet_trainer(max_epochs=TRAINER["max_epochs"], callbacks=[losses]).fit(Counted(l1=l1), TRAIN, VAL)
    return losses.values


@needs_optuna
def test_a_pruner_object_stops_each_point_at_the_first_validation_it_prunes() -> None:
    import optuna

    upper, warmup = 1.0, 2  # ThresholdPruner prunes at the first report above upper, from step 2 on
    expected, raw = [], []
    for l1 in GRID:
        losses = trained_here(l1)
        raw.append(losses)
        # the value reported after each validation is the best so far: pruned once all exceed upper
        stop = next((epoch for epoch in range(warmup, 6) if min(losses[:epoch]) > upper), None)
        seen = losses if stop is None else losses[:stop]  # a row reports the best value it saw
        expected.append(("complete" if stop is None else "pruned", len(seen), min(seen)))
    assert any(state == "pruned" for state, _, _ in expected)
    # a point whose loss rose above upper after a better value is kept: its best is what counts
    assert any(
        state == "complete" and max(losses) > upper
        for (state, _, _), losses in zip(expected, raw, strict=True)
    )

    models: dict[float, Counted] = {}

    def make_model(**strengths: float) -> Counted:
        models[strengths["l1"]] = Counted(**strengths)
        return models[strengths["l1"]]

    result = sweep(
        make_model,
        TRAIN,
        VAL,
        l1=GRID,
        pruner=optuna.pruners.ThresholdPruner(upper=upper, n_warmup_steps=warmup),
        trainer_kwargs=TRAINER,
    )
    assert [row["l1"] for row in result.table] == GRID
    assert [(row["state"], row["epochs"]) for row in result.table] == [(state, n) for state, n, _ in expected]
    assert [row["val_loss"] for row in result.table] == pytest.approx([v for _, _, v in expected], rel=1e-6)
    for row in result.table:
        model = models[row["l1"]]
        assert model.epochs_trained == row["epochs"]
        assert model.losses[-1] == pytest.approx(val_loss(model), rel=1e-6)  # the model it stopped
        assert row["val_loss"] == pytest.approx(min(model.losses), rel=1e-6)
    assert result.best == {
        "l1": min(
            (row for row in result.table if row["state"] == "complete"), key=lambda row: row["val_loss"]
        )["l1"]
    }


@needs_optuna
@pytest.mark.parametrize(("kind", "every", "epochs"), [("grid", 1, 5), ("tpe", 1, 5), ("grid", 2, 8)])
def test_median_pruner_stops_worse_points_at_the_end_of_its_warm_up(
    kind: str, every: int, epochs: int
) -> None:
    make_model = HandicapLate(good=MEDIAN_PRUNER["n_startup_trials"])
    rows: list[dict[str, Any]] = []
    options: dict[str, Any] = {"n_trials": 4, "sampler": "tpe"} if kind == "tpe" else {}
    trainer = {**TRAINER, "max_epochs": epochs, "check_val_every_n_epoch": every}
    result = sweep(
        make_model,
        TRAIN,
        VAL,
        l1=GRID,
        pruner="median",
        trainer_kwargs=trainer,
        progress=rows.append,
        **options,
    )

    # no point is pruned in the first half of its validations: the validation that ends it, in epochs
    warmup = math.ceil(MEDIAN_WARMUP * (epochs // every)) * every
    assert warmup < epochs
    # in the order they were trained: the startup trials complete, the handicapped ones stop after warm-up
    assert [{"l1": row["l1"]} for row in rows] == make_model.calls
    assert [(row["state"], row["epochs"]) for row in rows] == [("complete", epochs)] * 2 + [
        ("pruned", warmup)
    ] * 2
    assert [model.epochs_trained for model in make_model.models] == [epochs] * 2 + [warmup] * 2
    measured = [min(model.losses) for model in make_model.models]
    assert [model.losses[-1] for model in make_model.models] == pytest.approx(
        [val_loss(model) + model.handicap for model in make_model.models], rel=1e-6
    )
    assert [row["val_loss"] for row in rows] == pytest.approx(measured, rel=1e-6)
    by_l1 = sorted(rows, key=lambda row: row["l1"])
    assert result.table == (by_l1 if kind == "grid" else rows)  # progress saw the table's rows
    good = [row for row in rows if row["state"] == "complete"]
    assert result.best == {"l1": min(good, key=lambda row: row["val_loss"])["l1"]}


@needs_optuna
def test_hyperband_is_optunas_with_epochs_as_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    built: list[dict[str, Any]] = []
    asked: list[int] = []

    class Recording(optuna.pruners.HyperbandPruner):
        def __init__(self, **kwargs: Any) -> None:
            built.append(kwargs)
            super().__init__(**kwargs)

        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            asked.append(trial.last_step)
            return bool(super().prune(study, trial))

    monkeypatch.setattr(optuna.pruners, "HyperbandPruner", Recording)
    result = sweep(HandicapLate(good=1), TRAIN, VAL, l1=GRID, pruner="hyperband", trainer_kwargs=TRAINER)

    assert built == [HYPERBAND_PRUNER]
    # asked once per validation, with the epochs trained as the step
    assert len(asked) == sum(row["epochs"] for row in result.table)
    assert sorted(asked) == sorted(step for row in result.table for step in range(1, row["epochs"] + 1))
    assert {row["state"] for row in result.table} <= {"complete", "pruned"}
