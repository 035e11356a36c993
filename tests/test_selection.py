"""Which parameters are regularized: the dim > 1 rule, exclude globs, no_weight_decay, tied weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_reg.selection import select_parameters


def names(pairs: tuple[tuple[str, nn.Parameter], ...]) -> list[str]:
    return [name for name, _ in pairs]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 6, kernel_size=3)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 10)
        self.scale = nn.Parameter(torch.ones(1, 1))  # 2-D but conceptually a scalar
        self.frozen = nn.Linear(3, 3).requires_grad_(False)


def test_the_default_rule_takes_trainable_float_params_with_dim_above_one() -> None:
    chosen = select_parameters(Block())
    assert names(chosen.regularized) == ["scale", "embed.weight", "conv.weight", "head.weight"]
    assert names(chosen.others) == ["conv.bias", "norm.weight", "norm.bias", "head.bias"]
    assert chosen.unmatched == ()


def test_exclude_globs_match_full_names_and_report_the_unmatched() -> None:
    chosen = select_parameters(Block(), exclude=["embed.*", "sca?e", "missing.*"])
    assert names(chosen.regularized) == ["conv.weight", "head.weight"]
    assert "embed.weight" in names(chosen.others)
    assert "scale" in names(chosen.others)
    assert chosen.unmatched == ("missing.*",)


def test_no_weight_decay_names_are_honoured() -> None:
    class Declares(Block):
        def no_weight_decay(self) -> set[str]:
            return {"scale", "embed.weight"}

    assert names(select_parameters(Declares()).regularized) == ["conv.weight", "head.weight"]


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(7, 5)
        self.decoder = nn.Linear(5, 7, bias=False)
        self.decoder.weight = self.encoder.weight


def test_a_tied_parameter_counts_once_under_its_first_name() -> None:
    chosen = select_parameters(Tied())
    assert names(chosen.regularized) == ["encoder.weight"]
    assert len(chosen.regularized) + len(chosen.others) == len(list(Tied().parameters())) == 1


def test_a_tied_parameter_is_excluded_by_any_of_its_names() -> None:
    chosen = select_parameters(Tied(), exclude=["decoder.*"])
    assert chosen.regularized == ()
    assert names(chosen.others) == ["encoder.weight"]
    assert chosen.unmatched == ()


def test_frozen_parameters_are_neither_regularized_nor_listed() -> None:
    chosen = select_parameters(Block())
    listed = names(chosen.regularized) + names(chosen.others)
    assert not any(name.startswith("frozen") for name in listed)


def test_any_float_dtype_and_any_rank_above_one() -> None:
    model = nn.Module()
    model.w64 = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    model.w16 = nn.Parameter(torch.zeros(2, 2, dtype=torch.float16))
    model.vector = nn.Parameter(torch.zeros(3))
    model.kernel = nn.Parameter(torch.zeros(1, 1, 1, 1))
    assert names(select_parameters(model).regularized) == ["w64", "w16", "kernel"]


def test_parameters_flattened_by_fsdp1_are_refused_not_silently_skipped() -> None:
    model = Block()
    model.head.weight._fsdp_flattened = True  # what FSDP1 marks; a flat shard looks 1-D
    with pytest.raises(
        ValueError, match=r"'head.weight' was flattened by FSDP1 .* Use ModelParallelStrategy"
    ):
        select_parameters(model)
