"""The public surface: names, and one set of options shared by every entry point."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lightning_reg
from lightning_reg import RegularizationOptions, RegularizedModule, Regularizer


def test_public_names() -> None:
    from lightning_reg import RegularizationMonitor, RegularizedModule, Regularizer  # noqa: F401

    assert set(lightning_reg.__all__) <= set(dir(lightning_reg))


#: Keywords an entry point takes besides the options: the tracing input, which is not an option (not
#: in hparams); RegularizedModule takes it from its example_input_array.
NOT_OPTIONS = {Regularizer.__init__: [("example_inputs", None)], RegularizedModule.__init__: []}


@pytest.mark.parametrize("entry", [Regularizer.__init__, RegularizedModule.__init__])
def test_every_entry_point_takes_exactly_the_options_with_their_defaults(entry: object) -> None:
    keyword_only = {
        name: param.default
        for name, param in inspect.signature(entry).parameters.items()  # type: ignore[arg-type]
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    fields = {field.name: field.default for field in dataclasses.fields(RegularizationOptions)}
    # the same options, defaults and order
    assert list(keyword_only.items()) == [*fields.items(), *NOT_OPTIONS[entry]]  # type: ignore[index]


def test_every_option_is_documented_once_and_in_each_entry_point() -> None:
    from lightning_reg.options import OPTION_DOCS

    assert list(OPTION_DOCS) == [field.name for field in dataclasses.fields(RegularizationOptions)]
    for documented in (RegularizationOptions, Regularizer, RegularizedModule):
        doc = inspect.getdoc(documented) or ""
        assert "@options@" not in doc
        for name, text in OPTION_DOCS.items():
            first_words = " ".join(text.split()[:6])
            assert f"{name}: {first_words}" in " ".join(doc.split()), (documented, name)


def test_numbers_of_any_real_type_are_accepted() -> None:
    options = RegularizationOptions(l1=1, l2=np.float32(0.5), exclude=("a*",))
    assert (options.l1, options.l2) == (1.0, 0.5)
    assert type(options.l1) is float
    assert type(options.l2) is float


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RegularizationOptions().l1 = 1.0  # type: ignore[misc]


#: The package's Lightning-facing code: every other module is the engine, which needs only torch.
LIGHTNING_FACING = {
    "lightning_reg.monitor",
    "lightning_reg.recalibration",
    "lightning_reg.cli",
    "lightning_reg.demos",
    "lightning_reg.sweeps",
}
LIGHTNING_PACKAGES = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics")


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet); return what it printed."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def engine_modules() -> list[str]:
    """Every module of the package, found on disk, minus the Lightning-facing ones."""
    package = Path(lightning_reg.__file__).parent
    names = [
        "lightning_reg." + ".".join(path.relative_to(package).with_suffix("").parts)
        for path in sorted(package.rglob("*.py"))
    ]
    names = [name.removesuffix(".__init__") for name in names]
    return [
        name
        for name in names
        if not any(name.split(".")[:2] == facing.split(".") for facing in LIGHTNING_FACING)
    ]


def test_no_engine_module_imports_lightning() -> None:
    """Each engine module is imported in turn, and Lightning looked for after each one."""
    modules = engine_modules()
    assert {"lightning_reg", "lightning_reg.regularizer", "lightning_reg.optim.step_sizes"} <= set(modules)
    assert len(modules) >= 18
    printed = run_python(
        f"""
import importlib, sys
for name in {modules!r}:
    importlib.import_module(name)
    found = sorted(m for m in sys.modules if m.split(".")[0] in {LIGHTNING_PACKAGES!r})
    if found:
        print(name, found[0])
        break
"""
    )
    assert printed == ""


def test_a_bare_loop_user_pays_no_lightning_import() -> None:
    printed = run_python(
        f"""
import sys, torch
import lightning_reg
from lightning_reg import Regularizer, RegularizationOptions, WeightStatistics, shrink
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
reg = Regularizer(model, l1=1e-3, l2=1e-2, l1_mode="proximal")
optimizer = torch.optim.Adam(reg.param_groups(), lr=0.1)
reg.attach(optimizer)
model(torch.randn(5, 3)).sum().backward()
optimizer.step()
reg.statistics().summary()
print(sorted(m for m in sys.modules if m.split(".")[0] in {LIGHTNING_PACKAGES!r}))
"""
    )
    assert printed == "[]"


@pytest.mark.parametrize("name", ["RegularizedModule", "RegularizationMonitor", "sweep", "SweepResult"])
def test_a_lightning_facing_name_is_imported_on_first_use(name: str) -> None:
    printed = run_python(
        f"""
import sys
import lightning_reg
before = "lightning_reg.monitor" in sys.modules or "lightning_reg.sweeps" in sys.modules
value = getattr(lightning_reg, {name!r})
from lightning_reg import {name} as again
print(before, value is again, value.__name__, {name!r} in dir(lightning_reg))
"""
    )
    assert printed == f"False True {name} True"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Regulariser'"):
        _ = lightning_reg.Regulariser  # type: ignore[attr-defined]
