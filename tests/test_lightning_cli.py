"""LightningCLI: the mixin's options on the command line, and an injected optimizer still split."""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from helpers import Batch, RegRegression, loader, make_net, regression_data
from lightning.pytorch.cli import LightningCLI
from torch import Tensor, nn

from lightning_reg import RegularizedModule

pytest.importorskip("jsonargparse")
# jsonargparse deprecations raised inside lightning.pytorch.cli, and the CLI's own notice that it overrides
# configure_optimizers: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*will be overridden by.*")


def cli(*args: str, model: type[L.LightningModule] = RegRegression, **kwargs: Any) -> LightningCLI:
    trainer = ["--trainer.max_epochs=1", "--trainer.logger=false", "--trainer.enable_checkpointing=false"]
    return LightningCLI(
        model, run=False, args=[*trainer, *args], save_config_kwargs={"overwrite": True}, **kwargs
    )


class LeavesTheOptimizerToTheCLI(L.LightningModule):
    """A user's module with no ``configure_optimizers``: ``--optimizer`` gives it one."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)


class RegLeavesTheOptimizerToTheCLI(RegularizedModule, LeavesTheOptimizerToTheCLI):
    pass


def test_the_options_are_command_line_arguments(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    built = cli(
        "--model.l1=0.001",
        "--model.l2=0.02",
        "--model.exclude=[net.3.*]",
        "--model.l1_mode=proximal",
        "--model.hidden=12",
    )
    options = built.model.regularization_options
    assert (options.l1, options.l2, tuple(options.exclude), options.l1_mode) == (
        0.001,
        0.02,
        ("net.3.*",),
        "proximal",
    )
    assert built.model.net[0].out_features == 12


def test_a_bad_option_is_refused_by_the_parser(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli("--model.l1_mode=prox")


def test_an_optimizer_injected_with_dash_dash_optimizer_is_split(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    built = cli(
        "--model.l2=0.02",
        "--optimizer=AdamW",
        "--optimizer.lr=0.01",
        "--optimizer.weight_decay=0",
        "--lr_scheduler=StepLR",
        "--lr_scheduler.step_size=1",
    )
    built.trainer.fit(built.model, loader(regression_data()))
    (optimizer,) = built.trainer.optimizers
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [(g["name"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("decay", 0.02),
        ("no_decay", 0.0),
    ]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01 * 0.1] * 2)


@pytest.mark.parametrize(
    ("model", "warned"), [(RegLeavesTheOptimizerToTheCLI, False), (RegRegression, True)], ids=["none", "own"]
)
def test_the_cli_warns_of_replacing_configure_optimizers_only_where_the_user_wrote_one(
    model: type[L.LightningModule], warned: bool, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mixin's own pass-through hook is not the user's: LightningCLI's warning follows the user's code."""
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli("--model.l2=0.02", "--optimizer=SGD", "--optimizer.lr=0.01", model=model)
    replaced = [w for w in caught if "will be overridden by" in str(w.message)]
    assert bool(replaced) == warned, [str(w.message) for w in replaced]
