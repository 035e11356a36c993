"""BatchNorm recalibration: the statistics against batch moments collected with hooks, dead channels,
eval accuracy after strong group L1, shrink and recalibration in either order, and the callback."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from helpers import quiet_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import (
    BatchNormRecalibration,
    RegularizedModule,
    Regularizer,
    recalibrate_batchnorm,
    shrink,
)
from lightning_reg.demos import as_images, load_digits_split
from lightning_reg.demos.resnet import ResNet


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def images(count: int, seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [3 + 2 * torch.randn(8, 1, 6, 6, generator=generator) for _ in range(count)]


@torch.no_grad()
def batch_moments(model: nn.Module, inputs: list[Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per BatchNorm (by name): the average over ``inputs`` of each batch's per-channel mean and unbiased
    variance of that layer's input, collected by forward pre-hooks on a copy run in train mode."""
    copy_ = copy.deepcopy(model).train()
    seen: dict[str, list[Tensor]] = {}
    for name, norm in copy_.named_modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.register_forward_pre_hook(
                lambda module, args, name=name: seen.setdefault(name, []).append(args[0])
            )
    for x in inputs:
        copy_(x)
    return {
        name: (
            torch.stack([x.mean(dim=(0, 2, 3)) for x in batches]).mean(0),
            torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in batches]).mean(0),
        )
        for name, batches in seen.items()
    }


def assert_statistics(model: nn.Module, expected: dict[str, tuple[Tensor, Tensor]]) -> None:
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert set(norms) == set(expected)
    for name, (means, variances) in expected.items():
        torch.testing.assert_close(norms[name].running_mean, means, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norms[name].running_var, variances, rtol=1e-5, atol=1e-6)


def test_the_statistics_are_the_batches_mean_moments_collected_with_hooks() -> None:
    """Each BatchNorm's running mean and variance: the average over the batches of each batch's
    per-channel mean and unbiased variance of that layer's input, collected here by forward pre-hooks."""
    model = conv_net().eval()
    inputs = images(5, seed=1)
    expected = batch_moments(model, inputs[:4])
    used = recalibrate_batchnorm(model, [(x, torch.zeros(8)) for x in inputs], num_batches=4)
    assert used == 4
    assert not model.training  # back in the mode it was in
    assert_statistics(model, expected)


def test_a_model_without_batchnorm_is_left_alone_and_bad_counts_are_refused() -> None:
    model = nn.Linear(3, 2)
    assert recalibrate_batchnorm(model, [torch.randn(4, 3)]) == 0
    with pytest.raises(ValueError, match=r"Invalid num_batches: 0 \(expected an integer >= 1\)"):
        recalibrate_batchnorm(conv_net(), [], num_batches=0)
    with pytest.raises(TypeError, match="inputs="):
        recalibrate_batchnorm(conv_net(), [{"image": torch.randn(2, 1, 6, 6)}])


@pytest.mark.parametrize(("mean", "var"), [(1e30, 1e-30), (-1e30, 1e30), (0.0, 0.0)])
def test_a_dead_channel_gives_exactly_zero_in_eval_mode_whatever_its_statistics(
    mean: float, var: float
) -> None:
    """Its convolution row, bias, scale and shift are exactly zero: ``0 * (0 - m) / sqrt(v + eps) + 0``."""
    model = conv_net()
    conv, norm = model[0], model[1]
    assert isinstance(conv, nn.Conv2d)
    assert isinstance(norm, nn.BatchNorm2d)
    with torch.no_grad():
        for tensor in (conv.weight[1], conv.bias[1:2], norm.weight[1:2], norm.bias[1:2]):  # type: ignore[index]
            tensor.zero_()
        norm.running_mean[1], norm.running_var[1] = mean, var  # type: ignore[index]
    model.eval()
    x = images(1, seed=2)[0]
    assert torch.equal(model[:2](x)[:, 1], torch.zeros(8, 6, 6))
    recalibrate_batchnorm(model, images(3, seed=3))
    assert torch.equal(model[:2](x)[:, 1], torch.zeros(8, 6, 6))


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Any, list[Tensor]]:
    """The ResNet demo (width 8) after 120 steps of Adam with strong proximal channel group L1 (0.02 at lr
    1e-2: eval accuracy with the running statistics falls to 0.46, against 0.90 in train mode), and the
    training split in batches of 64."""
    data = as_images(load_digits_split())
    torch.manual_seed(0)
    model = ResNet(num_classes=10, width=8, in_channels=1, small_stem=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    reg = Regularizer(
        model, group_l1=0.02, group_by="channels", l1_mode="proximal", example_inputs=data.x_train[:2]
    )
    reg.attach(optimizer)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(120):
        index = torch.randint(len(data.x_train), (64,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index]).backward()
        optimizer.step()
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(1))
    batches = [data.x_train[index] for index in order.split(64)]
    return model, data, batches


@torch.no_grad()
def accuracy(model: nn.Module, data: Any, train_mode: bool = False) -> float:
    model = copy.deepcopy(model).train(train_mode)  # train mode: batch statistics, on a copy
    return float((model(data.x_val).argmax(1) == data.y_val).float().mean())


def test_after_strong_group_l1_recalibrated_eval_accuracy_is_train_modes(
    trained: tuple[nn.Module, Any, list[Tensor]],
) -> None:
    model, data, batches = trained
    in_train_mode = accuracy(model, data, train_mode=True)
    stale = accuracy(model, data)
    recalibrated = copy.deepcopy(model)
    recalibrate_batchnorm(recalibrated, batches)
    recalibrated_accuracy = accuracy(recalibrated, data)
    print(
        f"train mode {in_train_mode:.3f}, eval: stale {stale:.3f}, recalibrated {recalibrated_accuracy:.3f}"
    )
    assert stale < in_train_mode - 0.05, "the test needs stale statistics"
    assert abs(recalibrated_accuracy - in_train_mode) <= 0.01


def test_shrinking_and_recalibrating_commute(trained: tuple[nn.Module, Any, list[Tensor]]) -> None:
    model, data, batches = trained
    example = data.x_train[:2]
    first_shrunk = shrink(copy.deepcopy(model).eval(), example)
    recalibrate_batchnorm(first_shrunk, batches)
    first_recalibrated = copy.deepcopy(model)
    recalibrate_batchnorm(first_recalibrated, batches)
    then_shrunk = shrink(first_recalibrated.eval(), example)
    assert sum(p.numel() for p in then_shrunk.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(first_shrunk.eval()(data.x_val), then_shrunk.eval()(data.x_val))


class BatchNormNet(RegularizedModule, L.LightningModule):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.net = conv_net()
        self.example_input_array = torch.zeros(2, 1, 6, 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    generator = torch.Generator().manual_seed(4)
    x = 3 + 2 * torch.randn(64, 1, 6, 6, generator=generator)
    y = torch.randint(0, 3, (64,), generator=generator)
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=8), DataLoader(data, batch_size=16)


def test_the_callback_recalibrates_before_each_validation_and_after_fit_from_training_batches() -> None:
    model = BatchNormNet(group_l1=1e-2, group_by="channels", l1_mode="proximal")
    callback = BatchNormRecalibration(num_batches=3)
    train, val = loaders()
    quiet_trainer(max_epochs=2, callbacks=[callback], num_sanity_val_steps=2).fit(model, train, val)
    assert callback.used == [3, 3, 3]  # two validations (not the sanity check) and the end of fit
    assert_statistics(model.net, batch_moments(model.net, [x for x, _ in list(train)[:3]]))


def test_group_l1_with_batchnorm_warns_without_the_callback() -> None:
    train, _ = loaders()
    with pytest.warns(UserWarning, match="BatchNormRecalibration"):
        quiet_trainer(max_steps=1).fit(BatchNormNet(group_l1=1e-2, group_by="channels"), train)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*BatchNormRecalibration.*")
        callback = BatchNormRecalibration(num_batches=1)
        quiet_trainer(max_steps=1, callbacks=[callback]).fit(
            BatchNormNet(group_l1=1e-2, group_by="channels"), train
        )
        quiet_trainer(max_steps=1).fit(BatchNormNet(l1=1e-2), train)  # no group term: nothing to say
