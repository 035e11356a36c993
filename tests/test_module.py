"""RegularizedModule inside real Trainer.fit runs, compared with the tutorial's recipe run by hand."""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from helpers import (
    Batch,
    LitRegression,
    Manual,
    RecordOps,
    RegRegression,
    Scheduled,
    assert_same_weights,
    fit,
    loader,
    make_net,
    quiet_trainer,
    regression_data,
    seed_l1_penalty,
    seed_param_groups,
    train_reference,
)
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

from lightning_reg import RegularizedModule

L1, L2 = 3e-3, 2e-2
DEFAULT_OPTIONS = {
    "l1": 0.0,
    "l2": 0.0,
    "exclude": [],
    "l1_mode": "loss",
    "group_l1": 0.0,
    "group_by": "rows",
    "l2_mode": "weight_decay",
    "l1_warmup_steps": 0,
    "fused": False,
    "activity_l1": {},
    "rules": {},
    "proximal_threshold": "optimizer",
}


class BaseRegression(RegularizedModule, L.LightningModule):
    """Pattern 2: the mixin as a base; the subclass defines the hooks and forwards keywords."""

    def __init__(self, hidden: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = make_net(hidden=hidden)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def reference(l1: float = L1, l2: float = L2, epochs: int = 2, **kwargs: Any) -> nn.Module:
    return train_reference(make_net(), loader(regression_data()), l1=l1, l2=l2, epochs=epochs, **kwargs)


@pytest.mark.parametrize("cls", [RegRegression, BaseRegression], ids=["in-front", "as-base"])
def test_both_patterns_train_exactly_like_the_recipe(cls: type[L.LightningModule]) -> None:
    model = cls(l1=L1, l2=L2)
    fit(model)
    assert_same_weights(model.net, reference())


def test_adam_elastic_net_matches_the_recipe() -> None:
    model = RegRegression(l1=L1, l2=L2, adam=True, lr=0.01)
    fit(model)
    expected = reference(make_optimizer=lambda groups: torch.optim.Adam(groups, lr=0.01))
    assert_same_weights(model.net, expected)


def test_without_strengths_training_is_unchanged() -> None:
    plain, regularized = LitRegression(), RegRegression()
    fit(plain)
    fit(regularized)
    assert_same_weights(regularized.net, plain.net)


def test_the_recipe_is_not_a_no_op_here() -> None:
    """Guards the tests above: with these strengths the regularized weights differ from plain ones."""
    plain = reference(l1=0.0, l2=0.0)
    with pytest.raises(AssertionError):
        assert_same_weights(plain, reference())


class SuperChain(RegRegression):
    """A subclass that decorates the step through super(); the penalty must still count once."""

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss: Tensor = super().training_step(batch, batch_idx)
        self.seen.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return super().configure_optimizers()

    seen: list[float]


class DeepChain(SuperChain):
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("cls", [SuperChain, DeepChain])
def test_super_chains_add_the_penalty_once(cls: type[SuperChain]) -> None:
    model = cls(l1=L1, l2=L2)
    model.seen = []
    fit(model)
    assert_same_weights(model.net, reference())
    # the inner calls saw the plain loss: no penalty was added below the outermost call
    first_x, first_y = next(iter(loader(regression_data())))
    assert model.seen[0] == float(nn.functional.mse_loss(make_net()(first_x), first_y).detach())


class DictStep(RegRegression):
    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:  # type: ignore[override]
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.returned = {"loss": loss, "extra": 7}
        return self.returned


class MovesAWeight(RegRegression):
    """A training step that changes a weight before computing its loss."""

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        with torch.no_grad():
            self.net[0].weight.add_(0.5)
        return super().training_step(batch, batch_idx)


def test_the_penalty_is_of_the_weights_as_the_step_leaves_them() -> None:
    model = MovesAWeight(l1=L1, l2=0.0)
    x, y = next(iter(loader(regression_data())))
    out = model.training_step((x, y), 0)
    expected = nn.functional.mse_loss(model(x), y) + L1 * seed_l1_penalty(model)
    assert torch.equal(out, expected)


class RecordsWhereItStarts(RegRegression):
    recorder: RecordOps

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        self.started_at = len(self.recorder.ops)
        return super().training_step(batch, batch_idx)


def test_the_l1_sum_is_computed_before_the_forward_pass() -> None:
    """Before it, the step's memory is not at its peak: the sum's temporaries do not add to the peak."""
    model = RecordsWhereItStarts(l1=L1, l2=0.0)
    batch = next(iter(loader(regression_data())))
    with RecordOps() as recorder:
        model.recorder = recorder
        model.training_step(batch, 0)
    before, during = recorder.ops[: model.started_at], recorder.ops[model.started_at :]
    assert sum("aten.abs" in op for op in before) == len(model.regularizer.regularized_parameters)
    assert not [op for op in during if "aten.abs" in op]


def test_dict_return_gets_the_penalty_in_its_loss_and_keeps_other_keys() -> None:
    model = DictStep(l1=L1, l2=0.0)
    batch = next(iter(loader(regression_data())))
    out = model.training_step(batch, 0)
    expected = model.returned["loss"] + L1 * seed_l1_penalty(model)
    assert torch.equal(out["loss"], expected)
    assert out["extra"] == 7
    assert model.returned["loss"] is not out["loss"], "the user's dict must not be modified"
    fit(model)
    assert_same_weights(model.net, reference(l2=0.0))


class SkipOddSteps(RegRegression):
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:  # type: ignore[override]
        return None if batch_idx % 2 else super().training_step(batch, batch_idx)


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")
def test_none_passes_through_and_skips_the_step() -> None:
    model = SkipOddSteps(l1=L1, l2=L2)
    fit(model)
    even_batches = [b for i, b in enumerate(loader(regression_data())) if i % 2 == 0]
    expected = train_reference(make_net(), even_batches, l1=L1, l2=L2, epochs=2)
    assert_same_weights(model.net, expected)


def test_weight_decay_groups_split_w_from_the_rest() -> None:
    model = RegRegression(l1=L1, l2=L2, exclude=["net.3.*"])
    trainer = fit(model, epochs=1)
    (optimizer,) = trainer.optimizers
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert set(groups) == {"decay", "no_decay"}
    assert groups["decay"]["weight_decay"] == L2
    assert groups["no_decay"]["weight_decay"] == 0.0
    assert [p.shape for p in groups["decay"]["params"]] == [torch.Size([16, 5])]
    assert len(groups["no_decay"]["params"]) == 5  # 0.bias, LayerNorm weight + bias, 3.weight, 3.bias
    assert all(group["lr"] == 0.05 for group in optimizer.param_groups)


def test_l2_zero_leaves_the_optimizer_as_built() -> None:
    model = RegRegression(l1=L1)
    trainer = fit(model, epochs=1)
    (optimizer,) = trainer.optimizers
    assert len(optimizer.param_groups) == 1
    assert "name" not in optimizer.param_groups[0]


def test_a_scheduler_drives_every_group_after_the_split(tmp_path: Any) -> None:
    model = Scheduled(l1=L1, l2=L2)
    steps = 12  # 6 batches x 2 epochs
    trainer = fit(
        model, logger=CSVLogger(tmp_path), callbacks=[LearningRateMonitor("step")], log_every_n_steps=1
    )
    (optimizer,) = trainer.optimizers
    expected_lr = 0.05 * 0.5 ** (steps // 2)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([expected_lr] * 2, rel=1e-12)
    header = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "lr-SGD/decay" in header
    assert "lr-SGD/no_decay" in header

    # and the weights are those of the recipe under the same schedule
    def sgd(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return torch.optim.SGD(groups, lr=0.05, momentum=0.9)

    expected = make_net()
    ref_opt = sgd(seed_param_groups(expected, L2))
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=2, gamma=0.5)
    for _ in range(2):
        for x, y in loader(regression_data()):
            ref_opt.zero_grad()
            total = nn.functional.mse_loss(expected(x), y) + L1 * seed_l1_penalty(expected)
            total.backward()
            ref_opt.step()
            ref_sched.step()
    assert_same_weights(model.net, expected)


class TwoOptimizers(RegRegression):
    def configure_optimizers(self) -> Any:
        first = torch.optim.SGD(self.net[0].parameters(), lr=0.1)
        second = torch.optim.Adam(self.net[3].parameters(), lr=0.01)
        return [first, second], [torch.optim.lr_scheduler.ExponentialLR(second, 0.5)]


def test_every_returned_optimizer_is_split() -> None:
    model = TwoOptimizers(l2=L2)
    first, second = model.configure_optimizers()[0]
    assert [g["name"] for g in first.param_groups] == ["decay", "no_decay"]
    assert [g["name"] for g in second.param_groups] == ["decay", "no_decay"]
    assert [g["weight_decay"] for g in second.param_groups] == [L2, 0.0]
    assert second.param_groups[0]["params"][0] is model.net[3].weight


def test_regularization_options_survive_a_checkpoint(tmp_path: Any) -> None:
    model = RegRegression(l1=L1, l2=L2, exclude=["net.3.*"], hidden=12)
    trainer = fit(model, epochs=1)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = RegRegression.load_from_checkpoint(path)
    assert restored.regularization_options == model.regularization_options
    assert restored.hparams["hidden"] == 12
    assert restored.regularizer.names == ["net.0.weight"]
    assert_same_weights(restored.net, model.net)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["exclude"] == ["net.3.*"]


@pytest.mark.parametrize("save", [True, False], ids=["user-saves", "user-does-not-save"])
def test_checkpoint_round_trip_with_the_base_pattern(tmp_path: Any, save: bool) -> None:
    class Saving(BaseRegression):
        def __init__(self, hidden: int = 16, **kwargs: Any) -> None:
            super().__init__(hidden=hidden, **kwargs)
            if save:
                self.save_hyperparameters("hidden")

    model = Saving(hidden=10, l1=L1, l2=L2)
    trainer = fit(model, epochs=1)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    # the user's own arguments come back only if the user saved them; the strengths always do
    extra = {} if save else {"hidden": 10}
    restored = Saving.load_from_checkpoint(tmp_path / "model.ckpt", **extra)
    assert (restored.regularization_options.l1, restored.regularization_options.l2) == (L1, L2)
    assert_same_weights(restored.net, model.net)


def test_hparams_hold_the_options_in_both_patterns() -> None:
    assert dict(RegRegression(l1=1e-4, l2=0.5).hparams) == {
        "features": 5,
        "hidden": 16,
        "lr": 0.05,
        "adam": False,
        **DEFAULT_OPTIONS,
        "l1": 1e-4,
        "l2": 0.5,
    }
    assert dict(BaseRegression(l1=1e-4).hparams) == {**DEFAULT_OPTIONS, "l1": 1e-4}


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("l1", -1e-3),
        ("l1", math.nan),
        ("l2", math.inf),
        ("l2", "0.01"),
        ("l1", None),
        ("l1", True),
        ("l2", torch.tensor(0.1)),
        ("exclude", "bias"),
        ("exclude", ["*.bias", 3]),
        ("exclude", [""]),
    ],
)
def test_bad_input_is_refused_at_construction(keyword: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^Invalid {keyword}: ") as error:
        RegRegression(**{keyword: value})
    assert repr(value) in str(error.value)


class Lbfgs(RegRegression):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(self.parameters(), lr=0.1)


def test_an_optimizer_without_weight_decay_is_refused_before_training() -> None:
    model = Lbfgs(l2=L2)
    before = copy.deepcopy(model.net)
    with pytest.raises(ValueError, match=r"Invalid l2: 0.02: LBFGS has no weight_decay"):
        fit(model)
    assert_same_weights(model.net, before)


class OwnDecay(RegRegression):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.01)  # AdamW's default weight_decay is 0.01


def test_a_conflicting_weight_decay_is_refused() -> None:
    with pytest.raises(ValueError, match=r"AdamW param group 0 already has weight_decay=0.01"):
        fit(OwnDecay(l2=L2))


def test_an_exclude_glob_that_matches_nothing_warns() -> None:
    with pytest.warns(UserWarning, match=r"exclude pattern 'net.9.\*' matches no trainable parameter"):
        fit(RegRegression(l1=L1, exclude=["net.9.*"]), epochs=1)


def test_the_mixin_must_come_first() -> None:
    with pytest.raises(TypeError, match="RegularizedModule must come before LightningModule"):

        class Wrong(L.LightningModule, RegularizedModule):  # type: ignore[misc]
            pass


def test_manual_optimization_is_regularized_without_changing_the_users_code() -> None:
    model = Manual(l1=L1, l2=L2)
    fit(model)
    assert_same_weights(model.net, reference())


class ManualAccumulating(Manual):
    """Two backward passes per opt.step(): the penalty must still count once per step."""

    def training_step(self, batch: Batch, batch_idx: int) -> None:  # type: ignore[override]
        optimizer = self.optimizers()
        x, y = batch
        self.manual_backward(nn.functional.mse_loss(self(x[:4]), y[:4]) / 2)
        self.manual_backward(nn.functional.mse_loss(self(x[4:]), y[4:]) / 2)
        optimizer.step()  # type: ignore[union-attr]
        optimizer.zero_grad()  # type: ignore[union-attr]


def test_manual_accumulation_counts_the_penalty_once_per_step() -> None:
    model = ManualAccumulating(l1=L1, l2=L2, l2_mode="loss")
    fit(model)
    expected = make_net()
    optimizer = torch.optim.SGD(expected.parameters(), lr=0.05)
    for _ in range(2):
        for x, y in loader(regression_data()):
            optimizer.zero_grad()
            data = (
                nn.functional.mse_loss(expected(x[:4]), y[:4])
                + nn.functional.mse_loss(expected(x[4:]), y[4:])
            ) / 2
            weights = [p for p in expected.parameters() if p.dim() > 1]
            penalty = L1 * seed_l1_penalty(expected) + L2 / 2 * sum(torch.sum(w * w) for w in weights)
            (data + penalty).backward()
            optimizer.step()
    for got, want in zip(model.net.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


class TwoManualOptimizers(Manual):
    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.net[0].parameters(), lr=0.05),
            torch.optim.SGD(self.net[3].parameters(), lr=0.02),
        ]

    def training_step(self, batch: Batch, batch_idx: int) -> None:  # type: ignore[override]
        first, second = self.optimizers()  # type: ignore[misc]
        loss = nn.functional.mse_loss(self(batch[0]), batch[1])
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()


def test_with_several_optimizers_each_parameter_is_regularized_by_its_own() -> None:
    model = TwoManualOptimizers(l1=L1)
    fit(model)
    expected = make_net()
    first = torch.optim.SGD(expected[0].parameters(), lr=0.05)
    second = torch.optim.SGD(expected[3].parameters(), lr=0.02)
    for _ in range(2):
        for x, y in loader(regression_data()):
            first.zero_grad()
            second.zero_grad()
            (nn.functional.mse_loss(expected(x), y) + L1 * seed_l1_penalty(expected)).backward()
            first.step()
            second.step()
    assert_same_weights(model.net, expected)


FORMATS = {
    "optimizer": lambda o, s: o,
    "list": lambda o, s: [o],
    "tuple-of-lists": lambda o, s: ([o], [s]),
    "dict": lambda o, s: {"optimizer": o, "lr_scheduler": s},
    "dict-config": lambda o, s: {"optimizer": o, "lr_scheduler": {"scheduler": s, "interval": "step"}},
    "list-of-dicts": lambda o, s: [{"optimizer": o, "lr_scheduler": s}],
}


@pytest.mark.parametrize("shape", sorted(FORMATS))
def test_every_return_format_lightning_accepts_is_split(shape: str) -> None:
    class Shaped(RegRegression):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
            self.optimizer = optimizer
            return FORMATS[shape](optimizer, self.scheduler)

    model = Shaped(l2=L2)
    trainer = fit(model, epochs=1)
    assert [g["name"] for g in model.optimizer.param_groups] == ["decay", "no_decay"]
    if shape != "optimizer" and shape != "list":
        lrs = [g["lr"] for g in model.optimizer.param_groups]
        steps = 6 if shape == "dict-config" else 1
        assert lrs == [0.05 * 0.5**steps] * 2
    assert trainer.optimizers[0] is model.optimizer


def test_the_mixin_also_serves_the_pytorch_lightning_package() -> None:
    pl = pytest.importorskip("pytorch_lightning")

    class Legacy(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()

        def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class RegLegacy(RegularizedModule, Legacy):
        pass

    model = RegLegacy(l1=L1, l2=L2)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader(regression_data()))
    assert_same_weights(model.net, reference())


def test_lightning_still_refuses_a_module_without_training_step() -> None:
    """The mixin's pass-through ``training_step`` does not count as the user's: Lightning's check holds."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    class NoStep(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(5, 1)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class RegNoStep(RegularizedModule, NoStep):
        pass

    with pytest.raises(MisconfigurationException, match=r"No `training_step\(\)` method defined"):
        quiet_trainer(max_epochs=1).fit(RegNoStep(l1=1e-3), loader(regression_data()))


class WithTemperature(RegRegression):
    """A module with a second optimizer for a learned temperature (dim 1: not regularized); with
    ``misplaced``, the first optimizer is built over another network's weights, so that none of the
    optimizers holds a regularized weight."""

    def __init__(self, misplaced: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.temperature = nn.Parameter(torch.ones(1))
        self.misplaced = misplaced

    def configure_optimizers(self) -> Any:
        first = nn.Linear(3, 1).parameters() if self.misplaced else self.net.parameters()
        return [torch.optim.SGD(first, lr=0.1), torch.optim.SGD([self.temperature], lr=0.1)]


def test_an_optimizer_of_several_may_hold_no_regularized_weight_but_not_all_of_them() -> None:
    import warnings

    from lightning_reg.optim.step_updates import UnheldParametersWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WithTemperature(l1=0.1, l1_mode="proximal").configure_optimizers()
    model = WithTemperature(misplaced=True, l1=0.1, l1_mode="proximal")
    with pytest.warns(UnheldParametersWarning, match="hold none of the 2 regularized"):
        model.configure_optimizers()
