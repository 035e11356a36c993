"""``sweep``: every row checked against the test's own measurement of the model built for that point."""

from __future__ import annotations

import importlib.util
import itertools
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import RegRegression, loader, regression_data
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_reg import SweepResult, sweep
from lightning_reg.cli import main
from lightning_reg.sweeps import WARM_START_BUDGET

needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="needs optuna")

TESTS = Path(__file__).resolve().parent
X, Y = regression_data(64).tensors
TRAIN = loader(TensorDataset(X[:48], Y[:48]), batch_size=8)
VAL = loader(TensorDataset(X[48:], Y[48:]), batch_size=16)  # one batch: the logged mean is its MSE
TRAINER = {"max_epochs": 3, "accelerator": "cpu", "devices": 1}
# proximal L1 with SGD lr 0.05 over 18 steps: 0.1 zeroes about a tenth of the weights, 0.3 about a fifth
L1S, L2S = [0.1, 0.3], [0.0, 0.05]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ValRegression(RegRegression):
    """The helpers' regression module, validated: ``val_loss`` is the MSE of one validation batch; it
    keeps the value of each validation after the sanity check."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.losses: list[float] = []

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        if not self.trainer.sanity_checking:
            self.losses.append(loss.item())
        self.log("val_loss", loss)


class Recorder:
    """``make_model`` for the tests: builds a proximal-L1 ``ValRegression``, keeps every call and model."""

    def __init__(self) -> None:
        self.calls: list[dict[str, float]] = []
        self.models: list[ValRegression] = []

    def __call__(self, **strengths: float) -> ValRegression:
        self.calls.append(strengths)
        self.models.append(ValRegression(**strengths, l1_mode="proximal"))
        return self.models[-1]


def never_called(**strengths: float) -> nn.Module:
    raise AssertionError(f"make_model was called ({strengths}) although the arguments are bad")


def val_loss(model: nn.Module) -> float:
    """The validation MSE, computed here from the trained model."""
    with torch.no_grad():
        return nn.functional.mse_loss(model(X[48:]), Y[48:]).item()


def best_loss(model: ValRegression) -> float:
    """The lowest validation loss the model computed; its last is checked against :func:`val_loss`."""
    assert model.losses[-1] == pytest.approx(val_loss(model), rel=1e-6)
    return min(model.losses)


def zero_fraction(model: nn.Module) -> float:
    """Exact zeros among the entries of the parameters with dim > 1, counted here."""
    weights = [param for param in model.parameters() if param.dim() > 1]
    return sum(int((param == 0).sum()) for param in weights) / sum(param.numel() for param in weights)


def test_grid_rows_are_the_product_measured_on_each_model() -> None:
    make_model = Recorder()
    result = sweep(make_model, TRAIN, VAL, l1=L1S, l2=L2S, trainer_kwargs=TRAINER)

    points = list(itertools.product(L1S, L2S))
    assert make_model.calls == [{"l1": l1, "l2": l2} for l1, l2 in points]
    assert result.names == ("l1", "l2")
    columns = ["l1", "l2", "val_loss", "sparsity", "seconds", "state", "epochs", "best_epoch"]
    assert [list(row) for row in result.table] == [columns] * 4
    assert [(row["state"], row["epochs"]) for row in result.table] == [("complete", 3)] * 4
    assert [(row["l1"], row["l2"]) for row in result.table] == points
    losses = [best_loss(model) for model in make_model.models]
    epochs = [model.losses.index(min(model.losses)) + 1 for model in make_model.models]
    assert [row["best_epoch"] for row in result.table] == epochs
    zeros = [zero_fraction(model) for model in make_model.models]
    assert [row["val_loss"] for row in result.table] == pytest.approx(losses, rel=1e-6)
    assert [row["sparsity"] for row in result.table] == zeros
    assert all(0 < fraction < 1 for fraction in zeros)
    assert len(set(zeros)) > 1
    assert all(row["seconds"] > 0 for row in result.table)
    l1, l2 = points[losses.index(min(losses))]
    assert result.best == {"l1": l1, "l2": l2}


def test_mode_max_picks_the_largest_monitored_value() -> None:
    make_model = Recorder()
    result = sweep(make_model, TRAIN, VAL, l1=L1S, mode="max", trainer_kwargs={**TRAINER, "max_epochs": 1})
    losses = [best_loss(model) for model in make_model.models]
    assert losses[0] != losses[1]
    assert result.mode == "max"
    assert result.best == {"l1": L1S[losses.index(max(losses))]}


def test_best_takes_the_first_of_equal_rows_and_skips_nan() -> None:
    table = [
        {"l2": 1e-4, "score": math.nan, "sparsity": 0.0, "seconds": 1.0},
        {"l2": 1e-3, "score": 0.5, "sparsity": 0.0, "seconds": 1.0},
        {"l2": 1e-2, "score": 0.5, "sparsity": 0.0, "seconds": 1.0},
        {"l2": 1e-1, "score": 0.7, "sparsity": 0.0, "seconds": 1.0},
    ]
    assert SweepResult(table, ("l2",), "score", "min").best == {"l2": 1e-3}
    assert SweepResult(table, ("l2",), "score", "max").best == {"l2": 1e-1}
    with pytest.raises(ValueError, match="no row of the sweep has a score"):
        _ = SweepResult(table[:1], ("l2",), "score", "min").best


def test_make_model_gets_only_the_swept_names_after_seeding() -> None:
    seen: list[tuple[dict[str, float], float]] = []

    def make_model(**strengths: float) -> ValRegression:
        seen.append((strengths, torch.rand(()).item()))  # the global RNG, as the model's init would use it
        return ValRegression(**strengths, l1_mode="proximal")

    grid = np.array([0.0, 0.5])  # any iterable of real numbers
    sweep(make_model, TRAIN, VAL, group_l1=grid, seed=3, trainer_kwargs={**TRAINER, "max_epochs": 1})
    torch.manual_seed(3)
    expected = torch.rand(()).item()
    assert seen == [({"group_l1": 0.0}, expected), ({"group_l1": 0.5}, expected)]
    assert all(type(strengths["group_l1"]) is float for strengths, _ in seen)


def test_a_monitor_that_was_not_logged_is_named_with_the_logged_ones() -> None:
    with pytest.raises(ValueError, match=r"monitor 'val_acc' was not logged .*\['val_loss'\]"):
        sweep(
            Recorder(), TRAIN, VAL, l1=[0.1], monitor="val_acc", trainer_kwargs={**TRAINER, "max_epochs": 1}
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"l1": [-1.0]}, "Invalid l1: [-1.0] (expected a non-empty list of finite numbers >= 0)"),
        ({"l1": []}, "Invalid l1: []"),
        ({"l2": [math.nan]}, "Invalid l2: [nan]"),
        ({"l2": [1e-3, math.inf]}, "Invalid l2: [0.001, inf]"),
        ({"l1": 1e-3}, "Invalid l1: 0.001 (expected a non-empty list"),
        ({"l1": "1e-3"}, "Invalid l1: '1e-3'"),
        ({"l1": [True]}, "Invalid l1: [True]"),
        ({"group_l1": ["0.1"]}, "Invalid group_l1: ['0.1']"),
        ({}, "nothing to sweep: give at least one of l1, l2, group_l1"),
        ({"l1": [1e-3], "mode": "maximize"}, "Invalid mode: 'maximize' (expected one of 'min', 'max')"),
        ({"l1": [1e-3], "monitor": ""}, "Invalid monitor: ''"),
        ({"l1": [1e-3], "monitor": "sparsity"}, "Invalid monitor: 'sparsity'"),
        ({"l1": [1e-3], "trainer_kwargs": {"max_epoch": 1}}, "Invalid trainer_kwargs: ['max_epoch']"),
        (
            {"l1": [1e-3], "trainer_kwargs": [("max_epochs", 1)]},
            "Invalid trainer_kwargs: [('max_epochs', 1)]",
        ),
        ({"l1": [1e-3], "seed": -1}, "Invalid seed: -1"),
        ({"l1": [1e-3], "seed": 1.5}, "Invalid seed: 1.5"),
        ({"l1": [1e-3], "n_trials": 0}, "Invalid n_trials: 0 (expected an integer >= 1"),
        ({"l1": [1e-3], "n_trials": 2.0}, "Invalid n_trials: 2.0"),
        ({"l1": [1e-3], "n_trials": True}, "Invalid n_trials: True"),
        (
            {"l1": [0.0, 1e-3], "n_trials": 2},
            "Invalid l1: [0.0, 0.001] (expected a non-empty list of finite "
            "numbers > 0: with n_trials it gives the range [min, max] searched on a log scale)",
        ),
        ({"l1": [1e-3], "n_trials": 2, "sampler": "grid"}, "Invalid sampler: 'grid'"),
        ({"l1": [1e-3], "sampler": "tpe"}, "Invalid sampler: 'tpe' without n_trials"),
        (
            {"l1": [1e-3], "storage": "sqlite:///s.db"},
            "Invalid study_name: None with storage='sqlite:///s.db'",
        ),
        ({"l1": [1e-3], "study_name": "s"}, "Invalid study_name: 's' without n_trials"),
        ({"l1": [1e-3], "n_trials": 2, "storage": "sqlite:///s.db"}, "Invalid study_name: None with storage"),
        ({"l1": [1e-3], "monitor": "state"}, "Invalid monitor: 'state'"),
        ({"l1": [1e-3], "pruner": "mean"}, "Invalid pruner: 'mean' (expected one of 'median', 'hyperband')"),
        (
            {"l1": [1e-3], "pruner": 3},
            "Invalid pruner: 3 (expected one of 'median', 'hyperband' or an optuna.pruners.BasePruner)",
        ),
        (
            {"l1": [1e-3], "warm_start": "yes"},
            "Invalid warm_start: 'yes' (expected True, False or 'weights')",
        ),
        ({"l1": [1e-3], "warm_start": True, "n_trials": 2}, "Invalid warm_start: True with n_trials=2"),
        (
            {"l1": [1e-3], "warm_start": True, "pruner": "median"},
            "Invalid warm_start: True with pruner='median'",
        ),
        (
            {"l1": [1e-3], "warm_start": True, "storage": "sqlite:///s.db", "study_name": "s"},
            "Invalid warm_start: True with storage='sqlite:///s.db'",
        ),
        (
            {"l1": [1e-3], "catch": "ValueError"},
            "Invalid catch: 'ValueError' (expected a tuple of exception classes, e.g. (ValueError, "
            "RuntimeError))",
        ),
        ({"l1": [1e-3], "catch": (ValueError, 3)}, "Invalid catch: (<class 'ValueError'>, 3)"),
        ({"l1": [1e-3], "catch": [ValueError()]}, "Invalid catch: [ValueError()]"),
        (
            {"l1": [1e-3], "progress": 3},
            "Invalid progress: 3 (expected a callable that takes a row, or None)",
        ),
        (
            {"l1": [1e-3], "storage": 3, "study_name": "s"},
            "Invalid storage: 3 (expected an Optuna storage URL, 'journal:PATH' or an "
            "optuna.storages.BaseStorage)",
        ),
        ({"l1": [1e-3], "study_name": "s"}, "Invalid study_name: 's' without n_trials, storage or pruner"),
    ],
)
def test_bad_arguments_are_refused_before_any_model_is_built(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        sweep(never_called, TRAIN, VAL, **kwargs)


def test_n_trials_without_optuna_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes ``import optuna`` raise ImportError
    with pytest.raises(ImportError, match=re.escape("pip install 'lightning-reg[sweep]'")):
        sweep(never_called, TRAIN, VAL, l1=[1e-3, 1e-1], n_trials=2)


@needs_optuna
def test_random_search_draws_each_strength_in_its_log_range() -> None:
    make_model = Recorder()
    result = sweep(make_model, TRAIN, VAL, l1=[0.3, 0.01], l2=[1e-4], n_trials=3, trainer_kwargs=TRAINER)

    assert len(result.table) == 3
    assert [{"l1": row["l1"], "l2": row["l2"]} for row in result.table] == make_model.calls
    assert all(0.01 <= row["l1"] <= 0.3 for row in result.table)
    assert len({row["l1"] for row in result.table}) == 3
    assert all(row["l2"] == 1e-4 for row in result.table)  # equal ends: a fixed strength
    losses = [best_loss(model) for model in make_model.models]
    assert [row["val_loss"] for row in result.table] == pytest.approx(losses, rel=1e-6)
    assert [row["sparsity"] for row in result.table] == [zero_fraction(m) for m in make_model.models]
    assert result.best == make_model.calls[losses.index(min(losses))]


@needs_optuna
def test_tpe_search_runs() -> None:
    result = sweep(Recorder(), TRAIN, VAL, l1=[0.01, 0.3], n_trials=2, sampler="tpe", trainer_kwargs=TRAINER)
    assert len(result.table) == 2
    assert all(0.01 <= row["l1"] <= 0.3 for row in result.table)


WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_sweep import TRAIN, TRAINER, VAL, Recorder
from lightning_reg import sweep

sweep(Recorder(), TRAIN, VAL, l1=[0.01, 0.3], n_trials=4, trainer_kwargs=TRAINER, storage={storage!r},
      study_name="shared")
"""


@needs_optuna
def test_two_worker_processes_fill_one_study_to_n_trials_in_sqlite(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    code = textwrap.dedent(WORKER.format(tests=str(TESTS), storage=storage))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, output

    import optuna

    study = optuna.load_study(study_name="shared", storage=storage)
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4  # n_trials counts the study's trials, not each worker's
    assert len({trial.params["l1"] for trial in complete}) == 4  # a shared study's sampler is not seeded
    make_model = Recorder()
    result = sweep(
        make_model,
        TRAIN,
        VAL,
        l1=[0.01, 0.3],
        n_trials=5,
        storage=storage,
        study_name="shared",
        trainer_kwargs=TRAINER,
    )
    assert len(make_model.calls) == 1  # the study held 4: one more makes 5
    assert len(result.table) == 5
    assert [row["l1"] for row in result.table[:4]] == [trial.params["l1"] for trial in complete]
    assert [row["val_loss"] for row in result.table[:4]] == [trial.value for trial in complete]
    assert result.table[4]["l1"] == make_model.calls[0]["l1"]
    assert all(0 <= row["sparsity"] <= 1 and row["seconds"] > 0 for row in result.table)


@needs_optuna
def test_a_race_to_create_the_database_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    from sqlalchemy.exc import OperationalError

    create_study = optuna.create_study
    calls = []

    def racing(**kwargs: Any) -> Any:  # the other worker created the tables first, once
        calls.append(kwargs["storage"].url)
        if len(calls) == 1:
            raise OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        return create_study(**kwargs)

    monkeypatch.setattr(optuna, "create_study", racing)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    result = sweep(
        Recorder(), TRAIN, VAL, l1=[0.1], n_trials=1, storage=storage, study_name="s", trainer_kwargs=TRAINER
    )
    assert calls == [storage, storage]
    assert len(result.table) == 1


@needs_optuna
def test_a_stored_study_of_another_sweep_is_refused(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    common: dict[str, Any] = {"n_trials": 1, "storage": storage, "study_name": "s", "trainer_kwargs": TRAINER}
    sweep(Recorder(), TRAIN, VAL, l1=[0.01, 0.3], **common)
    with pytest.raises(ValueError, match="created to minimize, not mode='max'"):
        sweep(never_called, TRAIN, VAL, l1=[0.01, 0.3], mode="max", **common)
    with pytest.raises(ValueError, match=re.escape("varied ['l1'], not the swept ['l2']")):
        sweep(never_called, TRAIN, VAL, l2=[0.01, 0.3], **common)


PLOTTED = SweepResult(
    table=[
        {"l1": l1, "l2": l2, "val_loss": 1 + l1 + 10 * l2, "sparsity": l1, "seconds": 0.1}
        for l1, l2 in itertools.product([0.0, 0.3, 0.1], [0.0, 0.01])
    ],
    names=("l1", "l2"),
    monitor="val_loss",
    mode="min",
)


def test_plot_draws_the_path_on_a_log_axis_with_sparsity_on_the_right(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "path.png"
    figure = PLOTTED.plot(path)

    assert path.read_bytes().startswith(PNG_SIGNATURE)
    left, right = figure.axes
    assert left.get_xscale() == "log"
    assert (left.get_ylabel(), right.get_ylabel()) == ("val_loss (solid)", right.get_ylabel())
    assert "sparsity" in right.get_ylabel()
    solid = [line for line in left.get_lines() if line.get_linestyle() == "-"]
    dotted = [line for line in left.get_lines() if line.get_linestyle() == ":"]
    # one line per l2, through l1 = 0.1, 0.3 in order; l1 = 0 as a horizontal baseline
    assert [list(line.get_xdata()) for line in solid] == [[0.1, 0.3], [0.1, 0.3]]
    assert [list(line.get_ydata()) for line in solid] == [
        pytest.approx([1.1, 1.3]),
        pytest.approx([1.2, 1.4]),
    ]
    assert [line.get_ydata()[0] for line in dotted] == pytest.approx([1.0, 1.1])
    assert [list(line.get_ydata()) for line in right.get_lines()] == [[0.1, 0.3], [0.1, 0.3]]
    assert [text.get_text() for text in left.get_legend().get_texts()] == ["l2=0", "l2=0.01"]


def test_plot_against_another_strength_and_refusals() -> None:
    pytest.importorskip("matplotlib")
    (left, _) = PLOTTED.plot(against="l2").axes
    assert [list(line.get_xdata()) for line in left.get_lines() if line.get_linestyle() == "-"] == [
        [0.01]
    ] * 3
    with pytest.raises(
        ValueError, match=re.escape("Invalid against: 'l3' (expected one of the swept ['l1', 'l2'])")
    ):
        PLOTTED.plot(against="l3")
    zeros = SweepResult([{**PLOTTED.table[0]}], ("l1", "l2"), "val_loss", "min")
    with pytest.raises(ValueError, match="no row has l1 > 0"):
        zeros.plot()


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'lightning-reg[demo]'")):
        PLOTTED.plot()


def sweep_rows(out: str) -> list[list[str]]:
    """The printed table's rows, split into cells."""
    lines = out.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("l1 "))
    assert set(lines[start + 1].replace(" ", "")) == {"-"}
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def test_the_sweep_command_prints_a_row_per_point_and_the_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn")
    figure = tmp_path / "path.png"
    status = main(
        ["sweep", "--l1", "1e-5", "1e-2", "--l2", "0", "1e-3", "--epochs", "2", "--plot", str(figure)]
    )
    out, err = capsys.readouterr()

    assert status == 0
    rows = sweep_rows(out)
    assert [(float(row[0]), float(row[1])) for row in rows] == list(
        itertools.product([1e-5, 1e-2], [0, 1e-3])
    )
    losses = [float(row[2]) for row in rows]
    assert all(1 <= int(row[3]) <= 2 for row in rows)  # the epoch of the best value
    assert all(0 <= float(row[4]) <= 1 for row in rows)
    best = rows[losses.index(min(losses))]
    assert f"best (lowest val_loss): l1={float(best[0]):g}, l2={float(best[1]):g}" in out
    assert figure.read_bytes().startswith(PNG_SIGNATURE)
    labels = [
        "[1/4] l1=1e-05, l2=0",
        "[2/4] l1=1e-05, l2=0.001",
        "[3/4] l1=0.01, l2=0",
        "[4/4] l1=0.01, l2=0.001",
    ]
    lines = err.splitlines()  # one line per finished point: its label, state, value, epochs, seconds
    assert len(lines) == 4
    for line, label, row in zip(lines, labels, rows, strict=True):
        value = f"val_loss {float(row[2]):.4f} (best, epoch {row[3]})"
        assert line.startswith(f"{label}  complete  {value}  2 epochs  "), line
        assert line.endswith(" s")


@needs_optuna
def test_the_sweep_command_searches_with_optuna_into_a_storage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn")
    storage = f"sqlite:///{tmp_path / 'cli.db'}"
    argv = ["sweep", "--l1", "1e-5", "1e-3", "--n-trials", "2", "--epochs", "1"]
    assert main([*argv, "--storage", storage, "--study-name", "cli", "--monitor", "val_acc"]) == 0
    out = capsys.readouterr().out

    import optuna

    trials = optuna.load_study(study_name="cli", storage=storage).trials
    rows = sweep_rows(out)
    assert [float(row[0]) for row in rows] == pytest.approx(
        [trial.params["l1"] for trial in trials], rel=5e-3
    )
    assert [float(row[1]) for row in rows] == pytest.approx([trial.value for trial in trials], abs=5e-5)
    assert "best (highest val_acc): l1=" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--l1", "-1"], "argument --l1: invalid value '-1' (expected a finite number >= 0)"),
        (["--l2", "nan"], "argument --l2: invalid value 'nan' (expected a finite number >= 0)"),
        (["--n-trials", "0"], "argument --n-trials: invalid value '0' (expected an integer >= 1)"),
        (["--sampler", "grid"], "argument --sampler: invalid choice: 'grid'"),
        (["--storage", "sqlite:///s.db"], "Invalid study_name: None with storage='sqlite:///s.db'"),
        (["--l1", "0", "1e-3", "--n-trials", "2"], "Invalid l1: [0.0, 0.001]"),
        (["--pruner", "mean"], "argument --pruner: invalid choice: 'mean'"),
        (["--warm-start", "--pruner", "median"], "Invalid warm_start: True with pruner='median'"),
        (
            ["--warm-start", "--l1", "1e-3", "1e-2", "--n-trials", "2"],
            "Invalid warm_start: True with n_trials=2",
        ),
    ],
)
def test_bad_sweep_arguments_exit_with_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--warm-start", "--pruner"])
def test_the_sweep_command_prunes_or_warm_starts_validating_every_epoch(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn")
    argv = ["sweep", "--l1", "1e-5", "1e-3", "--epochs", "3", option]
    if option == "--pruner":
        storage = f"sqlite:///{tmp_path / 'cli.db'}"
        argv += ["median", "--storage", storage, "--study-name", "grid"]
    assert main(argv) == 0
    out, err = capsys.readouterr()

    rows = sweep_rows(out)
    assert [float(row[0]) for row in rows] == [1e-5, 1e-3]
    states = [row[5] for row in rows]
    epochs = [int(row[6]) for row in rows]
    labels = [line.split("]")[1].split()[0] for line in err.splitlines()]  # a line per finished point
    if option == "--warm-start":  # weakest first, trained fully; the next within its budget
        assert labels == ["l1=1e-05", "l1=0.001"]
        assert (states, epochs) == (["complete"] * 2, [3, math.ceil(WARM_START_BUDGET * 3)])
    else:  # a grid shared through a storage: one trial per point, a report per epoch unless pruned
        assert sorted(labels) == ["l1=0.001", "l1=1e-05"]
        import optuna

        trials = optuna.load_study(study_name="grid", storage=storage).trials
        assert sorted(trial.params["l1"] for trial in trials) == [1e-5, 1e-3]
        by_point = {trial.params["l1"]: trial for trial in trials}
        for row, state, count in zip(rows, states, epochs, strict=True):
            trial = by_point[float(row[0])]
            assert (trial.state.name.lower(), len(trial.intermediate_values)) == (
                {"complete": "complete", "pruned": "pruned"}[state],
                count,
            )
            assert count == 3 or state == "pruned"


@needs_optuna
def test_a_surplus_trial_takes_no_slot_of_n_trials(tmp_path: Path) -> None:
    """Two workers asking at once for the last slot: the later trial is surplus and trains nothing, so
    it must not count; here the study holds 2 complete trials and a surplus one, and n_trials=3 adds one.
    """
    import optuna

    storage = f"sqlite:///{tmp_path / 's.db'}"
    common: dict[str, Any] = {
        "l1": [0.01, 0.3],
        "storage": storage,
        "study_name": "shared",
        "trainer_kwargs": TRAINER,
    }
    sweep(Recorder(), TRAIN, VAL, n_trials=2, **common)
    study = optuna.load_study(study_name="shared", storage=storage)
    late = study.ask()  # what the second of two racing workers got, marked as the package marks it
    late.set_user_attr("surplus", True)
    study.tell(late, state=optuna.trial.TrialState.PRUNED)

    make_model = Recorder()
    sweep(make_model, TRAIN, VAL, n_trials=3, **common)
    assert len(make_model.calls) == 1
    complete = [trial for trial in study.get_trials() if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
