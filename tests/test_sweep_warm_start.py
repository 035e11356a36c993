"""``sweep(warm_start=...)``: the grid as regularization paths, weakest first, each point from the last.

The models record the weights and optimizer state they started from, the gradients and weights of their
first step, and the validation losses they computed; the test checks the order they were built in, that
each started from the previous point's final weights and (``warm_start=True``) its Adam state, their first
update against Adam's formula written out here, and the epoch each stopped at against
``EarlyStopping``'s rule and the budget applied here to those losses.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from test_sweep import TRAIN, VAL, ValRegression, never_called, val_loss
from torch import Tensor

from lightning_reg import sweep
from lightning_reg.sweeps import WARM_START_BUDGET, WARM_START_PATIENCE, check_arguments, runner

MAX_EPOCHS = 8
TRAINER = {"max_epochs": MAX_EPOCHS, "accelerator": "cpu", "devices": 1}


class Tracked(ValRegression):
    """``ValRegression`` that keeps what it started from (weights, optimizer state by parameter name),
    its first step (gradients, weights after it), its validation losses (``ValRegression.losses``) and
    what it ended with."""

    def __init__(self, **strengths: Any) -> None:
        super().__init__(**strengths)
        self.strengths = {name: strengths[name] for name in ("l1", "l2") if name in strengths}
        self.start: dict[str, Tensor] = {}
        self.start_state: dict[str, dict[str, Tensor]] = {}
        self.end: dict[str, Tensor] = {}
        self.end_state: dict[str, dict[str, Tensor]] = {}
        self.decays: list[float] = []
        self.first_grads: dict[str, Tensor] = {}
        self.after_first: dict[str, Tensor] = {}

    def _state(self) -> dict[str, dict[str, Tensor]]:
        optimizer = self.trainer.optimizers[0]
        return {
            name: {key: value.clone() for key, value in optimizer.state[param].items()}
            for name, param in self.named_parameters()
            if param in optimizer.state
        }

    def on_train_start(self) -> None:
        self.start = {name: value.detach().clone() for name, value in self.state_dict().items()}
        self.start_state = self._state()
        self.decays = [group["weight_decay"] for group in self.trainer.optimizers[0].param_groups]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.first_grads:
            self.first_grads = {name: param.grad.clone() for name, param in self.named_parameters()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.after_first:
            self.after_first = {name: param.detach().clone() for name, param in self.named_parameters()}

    def on_train_end(self) -> None:
        self.end = {name: value.detach().clone() for name, value in self.state_dict().items()}
        self.end_state = self._state()

    def final(self) -> dict[str, Tensor]:
        """The weights it ended with (a copy taken when training ended)."""
        return self.end


class Built:
    """``make_model``: a proximal-L1 ``Tracked`` per call (SGD, or Adam with ``adam``), kept in call
    order; ``fail`` names a point that raises."""

    def __init__(self, fail: dict[str, float] | None = None, adam: bool = False) -> None:
        self.models: list[Tracked] = []
        self.fail = fail
        self.adam = adam

    def __call__(self, **strengths: float) -> Tracked:
        if strengths == self.fail:
            raise RuntimeError("this point does not build")
        options = {"adam": True, "lr": 0.01} if self.adam else {}
        self.models.append(Tracked(**strengths, **options, l1_mode="proximal"))
        return self.models[-1]


def early_stop_epoch(losses: list[float], cap: int) -> int:
    """The epoch ``EarlyStopping(patience=WARM_START_PATIENCE)`` stops at, or ``cap``, written out here."""
    best, stale = float("inf"), 0
    for epoch, loss in enumerate(losses[:cap], 1):
        best, stale = (loss, 0) if loss < best else (best, stale + 1)
        if stale >= WARM_START_PATIENCE:
            return epoch
    return cap


def fresh_weights(**strengths: float) -> dict[str, Tensor]:
    L.seed_everything(0, verbose=False)
    return ValRegression(**strengths, l1_mode="proximal").state_dict()


def assert_same(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_a_path_runs_weakest_first_each_point_from_the_previous_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "WARM_START_BUDGET", 1.0)  # as long as the first: the patience decides
    make_model = Built()
    result = sweep(make_model, TRAIN, VAL, l1=[0.01, 0.03, 0.1, 0.3], warm_start=True, trainer_kwargs=TRAINER)

    models = make_model.models
    assert [model.strengths["l1"] for model in models] == [0.01, 0.03, 0.1, 0.3]
    assert [row["l1"] for row in result.table] == [0.01, 0.03, 0.1, 0.3]  # rows in the grid's order
    rows = {row["l1"]: row for row in result.table}
    assert_same(models[0].start, fresh_weights(l1=0.01))
    assert len(models[0].losses) == MAX_EPOCHS  # the first point trains fully
    for previous, model in itertools.pairwise(models):
        assert_same(model.start, previous.final())  # from the previous point's final weights
    stops = [early_stop_epoch(model.losses, MAX_EPOCHS) for model in models[1:]]
    assert any(stop < MAX_EPOCHS for stop in stops)  # the rule stopped some point before the end
    for model, stop in zip(models, [MAX_EPOCHS, *stops], strict=True):
        row = rows[model.strengths["l1"]]
        assert (row["state"], row["epochs"], len(model.losses)) == ("complete", stop, stop)
        assert model.losses[-1] == pytest.approx(val_loss(model), rel=1e-6)
        assert row["val_loss"] == pytest.approx(min(model.losses), rel=1e-6)  # the best validation
        assert row["best_epoch"] == model.losses.index(min(model.losses)) + 1


def test_a_warm_point_trains_at_most_its_budget_of_the_first_points_epochs() -> None:
    make_model = Built()
    sweep(make_model, TRAIN, VAL, l1=[0.01, 0.03, 0.1], warm_start=True, trainer_kwargs=TRAINER)
    cap = math.ceil(WARM_START_BUDGET * MAX_EPOCHS)
    assert cap < MAX_EPOCHS
    first, *later = make_model.models
    assert len(first.losses) == MAX_EPOCHS
    assert [len(model.losses) for model in later] == [early_stop_epoch(m.losses, cap) for m in later]


def adam_step(
    weights: dict[str, Tensor], grads: dict[str, Tensor], state: dict[str, dict[str, Tensor]], l2: float
) -> dict[str, Tensor]:
    """One step of ``torch.optim.Adam(lr=0.01)`` with the seed's L2 (``weight_decay=l2`` on the
    parameters with ``dim > 1``) from ``state`` (empty: a fresh Adam), written out here."""
    lr, (beta1, beta2), eps = 0.01, (0.9, 0.999), 1e-8
    updated = {}
    for name, weight in weights.items():
        grad = grads[name] + (l2 * weight if weight.dim() > 1 else 0.0)
        entry = state.get(name)
        m = torch.zeros_like(weight) if entry is None else entry["exp_avg"]
        v = torch.zeros_like(weight) if entry is None else entry["exp_avg_sq"]
        t = 1 if entry is None else int(entry["step"]) + 1
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        step = lr / (1 - beta1**t)
        updated[name] = weight - step * m / ((v / (1 - beta2**t)).sqrt() + eps)
    return updated


@pytest.mark.parametrize("warm_start", [True, "weights"])
def test_a_warm_point_continues_the_adam_state_of_the_last_or_starts_it_afresh(warm_start: object) -> None:
    make_model = Built(adam=True)
    sweep(make_model, TRAIN, VAL, l2=[0.01, 0.1], warm_start=warm_start, trainer_kwargs=TRAINER)

    first, second = make_model.models
    assert [first.strengths["l2"], second.strengths["l2"]] == [0.01, 0.1]
    assert sorted(set(second.decays)) == [0.0, 0.1]  # its own weight decay, not the first's 0.01
    weights = {name: second.start[name] for name, _ in second.named_parameters()}
    assert_same(second.start, first.final())
    if warm_start is True:
        assert second.start_state.keys() == first.end_state.keys() == weights.keys()
        for name, entry in first.end_state.items():
            assert entry.keys() == second.start_state[name].keys()
            for key, value in entry.items():
                assert torch.equal(second.start_state[name][key], value), (name, key)
        state = first.end_state
    else:
        assert second.start_state == {}
        state = {}
    expected = adam_step(weights, second.first_grads, state, l2=0.1)
    for name, value in expected.items():
        torch.testing.assert_close(second.after_first[name], value, rtol=1e-5, atol=1e-7)


def test_several_strengths_give_one_path_per_value_of_the_others() -> None:
    make_model = Built()
    result = sweep(
        make_model, TRAIN, VAL, l1=[0.03, 0.3], l2=[0.0, 0.05], warm_start=True, trainer_kwargs=TRAINER
    )

    built = [(model.strengths["l1"], model.strengths["l2"]) for model in make_model.models]
    assert built == [(0.03, 0.0), (0.3, 0.0), (0.03, 0.05), (0.3, 0.05)]  # along l1, one path per l2
    assert [(row["l1"], row["l2"]) for row in result.table] == list(
        itertools.product([0.03, 0.3], [0.0, 0.05])
    )
    first, second, third, fourth = make_model.models
    assert_same(second.start, first.final())
    assert_same(third.start, fresh_weights(l1=0.03, l2=0.05))  # a new path starts afresh
    assert_same(fourth.start, third.final())


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
    weakest, strongest = make_model.models
    assert_same(strongest.start, weakest.final())  # from the last complete point of the path


def test_the_path_runs_along_l1_then_group_l1_then_l2() -> None:
    def paths(**strengths: list[float]) -> list[list[dict[str, float]]]:
        search = check_arguments(
            never_called, strengths, monitor="val_loss", mode="min", trainer_kwargs=None,
            n_trials=None, sampler=None, storage=None, study_name=None, seed=0,
        )  # fmt: skip
        return search.paths()

    assert paths(l2=[0.1, 1.0], group_l1=[0.0, 0.5]) == [
        [{"l2": 0.1, "group_l1": 0.0}, {"l2": 0.1, "group_l1": 0.5}],
        [{"l2": 1.0, "group_l1": 0.0}, {"l2": 1.0, "group_l1": 0.5}],
    ]
    assert paths(l2=[0.1, 1.0]) == [[{"l2": 0.1}, {"l2": 1.0}]]
