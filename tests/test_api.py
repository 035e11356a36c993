"""The public surface: names, and one set of options shared by every entry point."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

import lightning_reg
from lightning_reg import RegularizationOptions, RegularizedModule, Regularizer


def test_public_names() -> None:
    from lightning_reg import RegularizationMonitor, RegularizedModule, Regularizer  # noqa: F401

    assert set(lightning_reg.__all__) <= set(dir(lightning_reg))


@pytest.mark.parametrize("entry", [Regularizer.__init__, RegularizedModule.__init__])
def test_every_entry_point_takes_exactly_the_options_with_their_defaults(entry: object) -> None:
    keyword_only = {
        name: param.default
        for name, param in inspect.signature(entry).parameters.items()  # type: ignore[arg-type]
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    fields = {field.name: field.default for field in dataclasses.fields(RegularizationOptions)}
    assert keyword_only == fields


def test_numbers_of_any_real_type_are_accepted() -> None:
    options = RegularizationOptions(l1=1, l2=np.float32(0.5), exclude=("a*",))
    assert (options.l1, options.l2) == (1.0, 0.5)
    assert type(options.l1) is float
    assert type(options.l2) is float


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RegularizationOptions().l1 = 1.0  # type: ignore[misc]


def test_the_engine_does_not_import_lightning() -> None:
    """penalties <- selection <- regularizer: plain PyTorch, usable in a bare loop."""
    import ast
    from pathlib import Path

    package = Path(lightning_reg.__file__).parent
    for name in ("options", "selection", "penalties", "param_groups", "regularizer"):
        tree = ast.parse((package / f"{name}.py").read_text())
        imported = {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {
            module for module in imported if module.split(".")[0] in ("lightning", "pytorch_lightning")
        }, name
