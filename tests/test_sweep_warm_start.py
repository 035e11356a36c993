"""``sweep(warm_start=True)``: the grid as regularization paths, strongest first, each point from the last.

The models record the weights they started from and the validation losses they computed; the test
checks the order they were built in, that each started from the previous point's final weights, and the
epoch each stopped at against ``EarlyStopping``'s rule applied here to those losses.
"""

from __future__ import annotations

import itertools

import lightning.pytorch as L
import pytest
import torch
from test_sweep import TRAIN, VAL, ValRegression, never_called, val_loss
from torch import Tensor, nn

from lightning_reg import sweep
from lightning_reg.sweeps import WARM_START_PATIENCE, check_arguments

MAX_EPOCHS = 8
TRAINER = {"max_epochs": MAX_EPOCHS, "accelerator": "cpu", "devices": 1}


class Tracked(ValRegression):
    """``ValRegression`` that keeps the weights it started training from and its validation losses."""

    def __init__(self, **strengths: float) -> None:
        super().__init__(**strengths, l1_mode="proximal")
        self.strengths = strengths
        self.start: dict[str, Tensor] = {}
        self.losses: list[float] = []

    def on_train_start(self) -> None:
        self.start = {name: value.detach().clone() for name, value in self.state_dict().items()}

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        if not self.trainer.sanity_checking:
            self.losses.append(loss.item())
        self.log("val_loss", loss)


class Built:
    """``make_model``: a ``Tracked`` per call, kept in call order; ``fail`` names a point that raises."""

    def __init__(self, fail: dict[str, float] | None = None) -> None:
        self.models: list[Tracked] = []
        self.fail = fail

    def __call__(self, **strengths: float) -> Tracked:
        if strengths == self.fail:
            raise RuntimeError("this point does not build")
        self.models.append(Tracked(**strengths))
        return self.models[-1]


def early_stop_epoch(losses: list[float]) -> int:
    """The epoch ``EarlyStopping(patience=WARM_START_PATIENCE)`` stops at, written out here."""
    best, stale = float("inf"), 0
    for epoch, loss in enumerate(losses, 1):
        best, stale = (loss, 0) if loss < best else (best, stale + 1)
        if stale >= WARM_START_PATIENCE:
            return epoch
    return len(losses)


def fresh_weights(**strengths: float) -> dict[str, Tensor]:
    L.seed_everything(0, verbose=False)
    return ValRegression(**strengths, l1_mode="proximal").state_dict()


def assert_same(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_a_path_runs_strongest_first_each_point_from_the_previous_weights() -> None:
    make_model = Built()
    result = sweep(make_model, TRAIN, VAL, l1=[0.01, 0.03, 0.1, 0.3], warm_start=True, trainer_kwargs=TRAINER)

    models = make_model.models
    assert [model.strengths["l1"] for model in models] == [0.3, 0.1, 0.03, 0.01]
    assert [row["l1"] for row in result.table] == [0.01, 0.03, 0.1, 0.3]  # rows in the grid's order
    rows = {row["l1"]: row for row in result.table}
    assert_same(models[0].start, fresh_weights(l1=0.3))
    assert len(models[0].losses) == MAX_EPOCHS  # the first point trains fully
    for previous, model in itertools.pairwise(models):
        assert_same(model.start, previous.state_dict())
    stops = [early_stop_epoch(model.losses) for model in models[1:]]
    assert any(stop < MAX_EPOCHS for stop in stops)  # the rule stopped some point before the end
    for model, stop in zip(models, [MAX_EPOCHS, *stops], strict=True):
        row = rows[model.strengths["l1"]]
        assert (row["state"], row["epochs"], len(model.losses)) == ("complete", stop, stop)
        assert row["val_loss"] == pytest.approx(val_loss(model), rel=1e-6)


def test_several_strengths_give_one_path_per_value_of_the_others() -> None:
    make_model = Built()
    result = sweep(
        make_model, TRAIN, VAL, l1=[0.03, 0.3], l2=[0.0, 0.05], warm_start=True, trainer_kwargs=TRAINER
    )

    built = [(model.strengths["l1"], model.strengths["l2"]) for model in make_model.models]
    assert built == [(0.3, 0.0), (0.03, 0.0), (0.3, 0.05), (0.03, 0.05)]  # along l1, one path per l2
    assert [(row["l1"], row["l2"]) for row in result.table] == list(
        itertools.product([0.03, 0.3], [0.0, 0.05])
    )
    first, second, third, fourth = make_model.models
    assert_same(second.start, first.state_dict())
    assert_same(third.start, fresh_weights(l1=0.3, l2=0.05))  # a new path starts afresh
    assert_same(fourth.start, third.state_dict())


def test_a_failed_point_is_skipped_by_the_path() -> None:
    make_model = Built(fail={"l1": 0.1})
    result = sweep(
        make_model,
        TRAIN,
        VAL,
        l1=[0.01, 0.1, 0.3],
        warm_start=True,
        catch=RuntimeError,
        trainer_kwargs=TRAINER,
    )
    assert [row["state"] for row in result.table] == ["complete", "failed", "complete"]
    assert result.table[1]["error"] == "RuntimeError: this point does not build"
    strongest, weakest = make_model.models
    assert_same(weakest.start, strongest.state_dict())  # from the last complete point of the path


def test_the_path_runs_along_l1_then_group_l1_then_l2() -> None:
    def paths(**strengths: list[float]) -> list[list[dict[str, float]]]:
        search = check_arguments(
            never_called, strengths, monitor="val_loss", mode="min", trainer_kwargs=None,
            n_trials=None, sampler=None, storage=None, study_name=None, seed=0,
        )  # fmt: skip
        return search.paths()

    assert paths(l2=[0.1, 1.0], group_l1=[0.0, 0.5]) == [
        [{"l2": 0.1, "group_l1": 0.5}, {"l2": 0.1, "group_l1": 0.0}],
        [{"l2": 1.0, "group_l1": 0.5}, {"l2": 1.0, "group_l1": 0.0}],
    ]
    assert paths(l2=[0.1, 1.0]) == [[{"l2": 1.0}, {"l2": 0.1}]]
