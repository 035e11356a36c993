"""``lightning-reg demo`` run end to end through the command line, briefly."""

from __future__ import annotations

import csv
import io
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from lightning_reg.cli import main
from lightning_reg.cli.progress import ProgressLine

VARIANTS = ("none", "L2", "L1", "Elastic Net", "L1 prox", "Elastic Net prox", "Group L1 prox")
SLUGS = ("none", "l2", "l1", "elastic_net", "l1_prox", "elastic_net_prox", "group_l1_prox")
COLUMNS = (
    "variant",
    "l1 mode",
    "l1",
    "group l1",
    "l2",
    "train acc",
    "val acc",
    "gap",
    "val loss",
    "sparsity",
    "near-zero",
    "dead units",
    "seconds",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def table_rows(out: str) -> dict[str, list[str]]:
    """The table's rows by variant name, each split into its cells."""
    lines = out.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("variant "))
    assert set(lines[start + 1].replace(" ", "")) == {"-"}
    rows = {}
    longest_first = sorted(VARIANTS, key=len, reverse=True)  # "L1 prox" before "L1"
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        name = next(variant for variant in longest_first if line.startswith(variant + " "))
        rows[name] = line[len(name) :].split()
    return rows


def test_demo_prints_the_table_and_writes_the_figure_and_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figure, logs = tmp_path / "demo.png", tmp_path / "logs"
    status = main(["demo", "--epochs", "3", "--plot", str(figure), "--log-dir", str(logs)])
    out, err = capsys.readouterr()

    assert status == 0
    header = next(line for line in out.splitlines() if line.startswith("variant "))
    positions = [header.index(column) for column in COLUMNS]
    assert positions == sorted(positions)
    rows = table_rows(out)
    assert list(rows) == list(VARIANTS)
    modes = {name: row[0] for name, row in rows.items()}
    assert modes == {
        "none": "-",
        "L2": "-",
        "L1": "loss",
        "Elastic Net": "loss",
        "L1 prox": "proximal",
        "Elastic Net prox": "proximal",
        "Group L1 prox": "proximal",
    }
    nonzero = {name: tuple(float(value) > 0 for value in row[1:4]) for name, row in rows.items()}
    assert nonzero == {  # l1, group l1, l2
        "none": (False, False, False),
        "L2": (False, False, True),
        "L1": (True, False, False),
        "Elastic Net": (True, False, True),
        "L1 prox": (True, False, False),
        "Elastic Net prox": (True, False, True),
        "Group L1 prox": (False, True, False),
    }
    for row in rows.values():
        assert len(row) == len(COLUMNS) - 1
        train_acc, val_acc, gap, _, sparsity, near_zero, dead_units = map(float, row[4:11])
        assert 0 <= train_acc <= 1
        assert 0 <= val_acc <= 1
        assert 0 <= sparsity <= near_zero <= 1
        assert 0 <= dead_units <= 1
        assert gap == pytest.approx(train_acc - val_acc, abs=1.5e-3)
    # the proximal step zeroes weights from the first step on (about 1.5 % of them after 3 steps); the
    # loss-mode L1 makes none exactly 0
    for name in ("L1 prox", "Elastic Net prox"):
        assert float(rows[name][8]) > 0
    for name in ("none", "L2", "L1", "Elastic Net"):
        assert float(rows[name][8]) == 0

    assert figure.read_bytes().startswith(PNG_SIGNATURE)
    assert str(logs) in out
    for slug in SLUGS:
        (metrics,) = (logs / slug).glob("version_*/metrics.csv")
        with metrics.open() as handle:
            records = list(csv.DictReader(handle))
        assert {"reg/sparsity", "reg/near_zero", "reg/l1_norm", "reg/dead_units"} <= set(records[0])
        assert any(record["reg/sparsity"] for record in records)
    # our own progress, one line per variant when stderr is not a terminal; nothing from Lightning
    assert [line.split("]")[0] + "]" for line in err.splitlines()] == [f"[{i}/7]" for i in range(1, 8)]


def test_without_log_dir_the_logs_are_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where TemporaryDirectory creates its folder
    assert main(["demo", "--epochs", "1"]) == 0
    assert list(table_rows(capsys.readouterr().out)) == list(VARIANTS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "argument --epochs: invalid value '0' (expected an integer >= 1)"),
        (["--epochs", "ten"], "argument --epochs: invalid value 'ten' (expected an integer >= 1)"),
        (["--seed", "-1"], "argument --seed: invalid value '-1' (expected an integer from 0 to 2**32 - 1)"),
        (
            ["--plot", "/no/such/directory/demo.png"],
            "argument --plot: invalid value '/no/such/directory/demo.png' (expected a path in an existing "
            "directory)",
        ),
    ],
)
def test_bad_arguments_are_argparse_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}" in err
    assert argv[1] in err
    assert message in err


@pytest.mark.parametrize(
    ("module", "package", "options"),
    [("matplotlib", "matplotlib", ["--plot", "demo.png"]), ("sklearn", "scikit-learn", [])],
)
def test_missing_optional_dependency_names_the_extra(
    module: str,
    package: str,
    options: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [name for name in sys.modules if name == module or name.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # makes ``import module`` raise ImportError
    monkeypatch.chdir(tmp_path)
    assert main(["demo", *options]) == 1
    out, err = capsys.readouterr()
    assert f"needs {package}" in err
    assert "pip install 'lightning-reg[demo]'" in err
    assert out == ""
    assert list(tmp_path.iterdir()) == []


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_updates_one_line_on_a_terminal() -> None:
    stream = FakeTerminal()
    progress = ProgressLine("[2/4] L2", stream)
    for epoch in (8, 9):
        trainer = cast(Any, SimpleNamespace(current_epoch=epoch, max_epochs=10))
        progress.on_train_epoch_end(trainer, cast(Any, None))
    progress.finish("done")
    assert stream.getvalue() == (
        "\r[2/4] L2  epoch 9/10"
        + "\r[2/4] L2  epoch 10/10"
        + "\r"
        + "[2/4] L2  done".ljust(len("[2/4] L2  epoch 10/10"))
        + "\n"
    )


def test_progress_writes_a_line_per_variant_elsewhere() -> None:
    stream = io.StringIO()
    progress = ProgressLine("[1/4] none", stream)
    progress.on_train_epoch_end(cast(Any, SimpleNamespace(current_epoch=0, max_epochs=10)), cast(Any, None))
    progress.finish("done")
    assert stream.getvalue() == "[1/4] none  done\n"
