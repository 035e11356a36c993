"""Activity L1: ``strength * sum(|a|) / a.shape[0]`` on chosen modules' outputs, in training steps only."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    Batch,
    RegRegression,
    assert_same_weights,
    fit,
    loader,
    make_net,
    quiet_trainer,
    regression_data,
)
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

from lightning_reg import RegularizationMonitor, RegularizationOptions, Regularizer
from lightning_reg.activity import ActivityPenalty

STRENGTH, EPOCHS = 0.05, 2


def by_hand(strength: float = STRENGTH, l1: float = 0.0) -> nn.Module:
    """The loss with the activity term of the Tanh (``net.1``) written out, SGD as RegRegression's."""
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(EPOCHS):
        for x, y in loader(regression_data()):
            optimizer.zero_grad()
            hidden = net[1](net[0](x))
            out = net[3](net[2](hidden))
            loss = nn.functional.mse_loss(out, y) + strength * torch.sum(torch.abs(hidden)) / hidden.shape[0]
            loss.backward()
            optimizer.step()
    return net


class WithValidation(RegRegression):
    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("val_loss", loss)
        return loss


def test_training_adds_the_activity_term_and_validation_records_nothing() -> None:
    """Validation runs the module between training steps; a term recorded there would change the weights."""
    model = WithValidation(activity_l1={"net.1": STRENGTH})
    data = loader(regression_data())
    quiet_trainer(max_epochs=EPOCHS, val_check_interval=2).fit(model, data, loader(regression_data(seed=1)))
    assert_same_weights(model.net, by_hand())


def test_the_term_changes_training() -> None:
    """Guard: the comparison above is not vacuous."""
    model = RegRegression()
    fit(model, EPOCHS)
    assert not torch.equal(model.net[0].weight, by_hand()[0].weight)


def test_a_module_called_twice_adds_a_term_per_call() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    activity = ActivityPenalty(model, {"0": 2.0})
    x1, x2 = torch.randn(5, 3), torch.randn(7, 3)
    with activity.capture():
        model(x1)
        model(x2)
    expected = 2.0 * torch.sum(torch.abs(model[0](x1))) / 5 + 2.0 * torch.sum(torch.abs(model[0](x2))) / 7
    torch.testing.assert_close(activity.take()["0"], expected, rtol=0, atol=0)
    assert activity.take() == {}  # taken once


def test_nothing_is_recorded_outside_a_capture_and_the_hooks_go_away() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    activity = ActivityPenalty(model, {"1": 1.0})
    model(torch.randn(2, 3))
    assert activity.take() == {}
    with activity.capture():
        pass
    assert not model[1]._forward_hooks


def test_the_regularizer_adds_weight_and_activity_terms() -> None:
    net = make_net()
    reg = Regularizer(net, l1=1e-3, activity_l1={"1": STRENGTH})
    x = torch.randn(4, 5)
    with reg.activity.capture():
        hidden = net[1](net[0](x))
    expected = 1e-3 * sum(p.abs().sum() for p in net.parameters() if p.dim() > 1)
    expected = expected + STRENGTH * torch.sum(torch.abs(hidden)) / 4
    torch.testing.assert_close(reg.penalty(), expected)


def test_an_unknown_module_is_refused_before_training() -> None:
    model = RegRegression(activity_l1={"net.9": STRENGTH})
    with pytest.raises(ValueError, match=r"^Invalid activity_l1: 'net.9' is not a module of RegRegression"):
        fit(model, epochs=1)
    assert model.global_step == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"net.0": -1.0}, r"^Invalid activity_l1\['net.0'\]: -1.0"),
        ({"net.0": "big"}, r"^Invalid activity_l1\['net.0'\]: 'big'"),
        ("net.0", r"^Invalid activity_l1: 'net.0'"),
        ({1: 0.1}, r"^Invalid activity_l1: key 1"),
    ],
)
def test_bad_strengths_are_refused_by_name(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegularizationOptions(activity_l1=value)


class TupleOut(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


def test_a_module_that_returns_no_tensor_is_refused_when_called() -> None:
    model = nn.Sequential(TupleOut())
    activity = ActivityPenalty(model, {"0": 1.0})
    with pytest.raises(TypeError, match=r"activity_l1\['0'\]: TupleOut returned a tuple"), activity.capture():
        model(torch.randn(2, 3))


def test_the_options_are_saved_for_checkpoints() -> None:
    assert RegRegression(activity_l1={"net.1": STRENGTH}).hparams["activity_l1"] == {"net.1": STRENGTH}


class ManualAddingActivity(RegRegression):
    """Manual optimization whose step adds the activity penalty itself, as the user has to."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Batch, batch_idx: int) -> None:  # type: ignore[override]
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)
        optimizer.zero_grad()
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y) + self.regularizer.activity_penalty()
        self.manual_backward(loss)
        optimizer.step()


def test_manual_optimization_adds_the_activity_penalty_the_user_asks_for() -> None:
    model = ManualAddingActivity(activity_l1={"net.1": STRENGTH})
    fit(model, EPOCHS)
    assert_same_weights(model.net, by_hand())


def test_the_monitor_logs_the_term_of_the_step(tmp_path: Path) -> None:
    x, _ = regression_data().tensors
    model = RegRegression(activity_l1={"net.1": STRENGTH})
    logger = CSVLogger(tmp_path)
    trainer = quiet_trainer(
        max_steps=1, logger=logger, callbacks=[RegularizationMonitor(log_every_n_steps=1)]
    )
    trainer.fit(model, loader(regression_data(), batch_size=len(x)))
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        [row] = [row for row in csv.DictReader(handle) if row.get("reg/activity_l1/net.1")]
    first = make_net()  # the weights of that one step
    expected = STRENGTH * torch.sum(torch.abs(first[1](first[0](x)))).item() / len(x)
    assert int(row["step"]) == 0
    assert float(row["reg/activity_l1/net.1"]) == pytest.approx(expected, rel=1e-6)
