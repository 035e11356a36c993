"""RegularizationMonitor: values read back from real loggers' files, compared with formulas."""

from __future__ import annotations

import copy
import csv
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from helpers import LitRegression, RecordOps, RegRegression, assert_same_weights, fit
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_reg import RegularizationMonitor
from lightning_reg.monitor import host_copy

L1, L2 = 3e-3, 2e-2
W_NAMES = ("net.0.weight", "net.3.weight")


class Snapshots(L.Callback):
    """Copies of the regularized weights after every optimizer step, keyed by global_step."""

    def __init__(self) -> None:
        self.weights: dict[int, list[np.ndarray]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        params = dict(pl_module.named_parameters())
        self.weights[trainer.global_step] = [params[n].detach().double().numpy().copy() for n in W_NAMES]


def expected_metrics(
    weights: list[np.ndarray], penalties: bool = True, tol: float = 1e-3
) -> dict[str, float]:
    flat = np.concatenate([w.ravel() for w in weights])
    values = {
        "reg/l1_norm": np.abs(flat).sum(),
        "reg/l2_norm": math.sqrt(np.square(flat).sum()),
        "reg/sparsity": (flat == 0).mean(),
        "reg/near_zero": (np.abs(flat) < tol).mean(),
    }
    row_norms = np.concatenate([np.linalg.norm(w, axis=1) for w in weights])
    values["reg/dead_units"] = (row_norms == 0).mean()
    if penalties:
        values["reg/l1_penalty"] = L1 * np.abs(flat).sum()
        values["reg/l2_penalty"] = L2 / 2 * np.square(flat).sum()
        values["reg/group_l1_penalty"] = 0.0
    return values


def read_csv(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def fit_logged(
    model: L.LightningModule, callbacks: list[L.Callback], logger: Any, **kwargs: Any
) -> L.Trainer:
    """:func:`helpers.fit` with these callbacks and logger, ``log_every_n_steps=1`` unless told otherwise."""
    kwargs.setdefault("log_every_n_steps", 1)
    return fit(model, callbacks=callbacks, logger=logger, **kwargs)


def test_csv_values_are_the_formulas_over_the_weights_at_that_step(tmp_path: Path) -> None:
    logger, snapshots = CSVLogger(tmp_path), Snapshots()
    monitor = RegularizationMonitor(log_every_n_steps=4, per_layer=True)
    fit_logged(RegRegression(l1=L1, l2=L2), [monitor, snapshots], logger)
    rows = [row for row in read_csv(logger) if row.get("reg/l1_norm")]
    assert [int(row["step"]) for row in rows] == [3, 7, 11]  # 12 optimizer steps, every 4th
    for row in rows:
        weights = snapshots.weights[int(row["step"]) + 1]
        for key, want in expected_metrics(weights).items():
            assert float(row[key]) == pytest.approx(want, rel=1e-9), key
        for name, w in zip(W_NAMES, weights, strict=True):
            assert float(row[f"reg/l1_norm/{name}"]) == pytest.approx(np.abs(w).sum(), rel=1e-9)
            assert float(row[f"reg/sparsity/{name}"]) == (w == 0).mean()


def read_events(logger: TensorBoardLogger) -> Any:
    """Every scalar and every histogram the logger wrote, read back from its event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def test_tensorboard_receives_the_same_values(tmp_path: Path) -> None:
    logger, snapshots = TensorBoardLogger(tmp_path), Snapshots()
    fit_logged(RegRegression(l1=L1, l2=L2), [RegularizationMonitor(log_every_n_steps=6), snapshots], logger)
    events = read_events(logger)
    for key, want_at in (("reg/l1_penalty", "reg/l1_penalty"), ("reg/l2_norm", "reg/l2_norm")):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [5, 11]
        for scalar in scalars:
            want = expected_metrics(snapshots.weights[scalar.step + 1])[want_at]
            assert scalar.value == pytest.approx(want, rel=1e-6)  # TensorBoard stores float32


# mlflow's SQL store asks SQLAlchemy for a loader strategy SQLAlchemy 2 deprecates (mlflow's to mend).
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")
def test_mlflow_on_a_sqlite_store_receives_the_same_values(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger(
        experiment_name="monitor", tracking_uri=tracking_uri, artifact_location=str(tmp_path / "artifacts")
    )
    snapshots = Snapshots()
    fit_logged(
        RegRegression(l1=L1, l2=L2),
        [RegularizationMonitor(log_every_n_steps=4, per_layer=True), snapshots],
        logger,
    )
    want: dict[str, list[tuple[int, float]]] = {}
    for step in (3, 7, 11):  # 12 optimizer steps, every 4th
        weights = snapshots.weights[step + 1]
        values = expected_metrics(weights)
        for name, w in zip(W_NAMES, weights, strict=True):
            values[f"reg/l1_norm/{name}"] = np.abs(w).sum()
            values[f"reg/sparsity/{name}"] = (w == 0).mean()
        for key, value in values.items():
            want.setdefault(key, []).append((step, value))
    client = MlflowClient(tracking_uri)  # a client of its own, reading the store the run wrote
    for key, points in want.items():
        logged = sorted(
            (metric.step, metric.value) for metric in client.get_metric_history(logger.run_id, key)
        )
        assert [step for step, _ in logged] == [step for step, _ in points], key
        for (_, value), (_, wanted) in zip(logged, points, strict=True):
            assert value == pytest.approx(wanted, rel=1e-9), key  # MLflow stores float64


HISTOGRAM_TAGS = [f"reg/weights/{name}" for name in W_NAMES]


def assert_histogram_of(histogram: Any, weight: np.ndarray) -> None:
    """num, min, max, sum and sum of squares of the TensorBoard histogram are those of ``weight``."""
    flat = weight.astype(np.float64).ravel()
    assert histogram.num == flat.size
    assert histogram.min == flat.min()
    assert histogram.max == flat.max()
    assert histogram.sum == pytest.approx(math.fsum(flat), rel=1e-6)
    assert histogram.sum_squares == pytest.approx(math.fsum(flat * flat), rel=1e-6)
    assert sum(histogram.bucket) == flat.size


def test_tensorboard_gets_a_histogram_of_each_weight_at_each_logging_step(tmp_path: Path) -> None:
    logger, snapshots = TensorBoardLogger(tmp_path), Snapshots()
    model = RegRegression(l1=L1, l2=L2)
    fit_logged(model, [RegularizationMonitor(log_every_n_steps=4, histograms=True), snapshots], logger)
    events = read_events(logger)
    assert sorted(events.Tags()["histograms"]) == HISTOGRAM_TAGS  # the regularized weights, no bias
    assert [s.step for s in events.Scalars("reg/l1_norm")] == [3, 7, 11]
    final = dict(model.named_parameters())
    for index, (name, tag) in enumerate(zip(W_NAMES, HISTOGRAM_TAGS, strict=True)):
        histograms = events.Histograms(tag)
        assert [h.step for h in histograms] == [3, 7, 11], "the scalars' steps and step index"
        for event in histograms:
            assert_histogram_of(event.histogram_value, snapshots.weights[event.step + 1][index])
        # The last one against the trained model itself, not the snapshots.
        assert_histogram_of(histograms[-1].histogram_value, final[name].detach().numpy())


def test_no_histograms_unless_asked(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    fit_logged(RegRegression(l1=L1, l2=L2), [RegularizationMonitor(log_every_n_steps=4)], logger)
    events = read_events(logger)
    assert events.Tags()["histograms"] == []
    assert [s.step for s in events.Scalars("reg/l1_norm")] == [3, 7, 11]


def test_histograms_with_only_a_csv_logger_warn_once_and_training_runs(tmp_path: Path) -> None:
    logger, snapshots = CSVLogger(tmp_path), Snapshots()
    monitor = RegularizationMonitor(log_every_n_steps=4, histograms=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit_logged(RegRegression(l1=L1, l2=L2), [monitor, snapshots], logger)
    ours = [w for w in caught if "RegularizationMonitor" in str(w.message)]
    assert len(ours) == 1
    assert issubclass(ours[0].category, UserWarning)
    assert "(CSVLogger)" in str(ours[0].message)
    assert "histograms" in str(ours[0].message)
    assert trainer.global_step == 12
    rows = [row for row in read_csv(logger) if row.get("reg/l1_norm")]
    assert [int(row["step"]) for row in rows] == [3, 7, 11]
    assert not any(key.startswith("reg/weights") for key in rows[0])
    want = expected_metrics(snapshots.weights[12])["reg/l1_norm"]
    assert float(rows[-1]["reg/l1_norm"]) == pytest.approx(want, rel=1e-9)


def test_histograms_go_to_the_tensorboard_logger_among_several(tmp_path: Path) -> None:
    csv_logger, tensorboard = CSVLogger(tmp_path / "csv"), TensorBoardLogger(tmp_path / "tb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_logged(
            RegRegression(l1=L1, l2=L2),
            [RegularizationMonitor(log_every_n_steps=6, histograms=True)],
            [csv_logger, tensorboard],
        )
    assert not [w for w in caught if "RegularizationMonitor" in str(w.message)]
    events = read_events(tensorboard)
    assert sorted(events.Tags()["histograms"]) == HISTOGRAM_TAGS
    assert [h.step for h in events.Histograms(HISTOGRAM_TAGS[0])] == [5, 11]
    rows = [row for row in read_csv(csv_logger) if row.get("reg/l1_norm")]
    assert [int(row["step"]) for row in rows] == [5, 11]


def test_a_weight_with_nan_gets_no_histogram_and_one_warning(tmp_path: Path) -> None:
    model = Frozen(l1=L1)
    with torch.no_grad():
        model.net[3].weight[0, 0] = float("nan")  # and, through the loss, every weight after a step
    logger = TensorBoardLogger(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit_logged(model, [RegularizationMonitor(log_every_n_steps=2, histograms=True)], logger)
    messages = sorted(str(w.message) for w in caught if "NaN or infinite" in str(w.message))
    assert len(messages) == 2  # once per parameter, not once per logging step
    assert "net.0.weight" in messages[0]
    assert "net.3.weight" in messages[1]
    assert trainer.global_step == 12
    assert read_events(logger).Tags()["histograms"] == []


def test_host_copy_keeps_bfloat16_values_that_float16_cannot_hold() -> None:
    weight = torch.tensor([[1e5, -3.0], [0.0, 2.5e-8]], dtype=torch.bfloat16)
    copy = host_copy(weight)
    assert copy.dtype == torch.float32
    assert torch.equal(copy, weight.float())
    assert host_copy(weight.double()).dtype == torch.float64


class Frozen(RegRegression):
    """lr = 0: the planted weights stay as planted."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_sparsity_and_near_zero_count_planted_values(tmp_path: Path) -> None:
    model = Frozen(l1=L1, l2=L2)
    with torch.no_grad():
        first, last = model.net[0].weight, model.net[3].weight  # 16 x 5 and 1 x 16: 96 entries
        first.fill_(0.5)
        first[:8] = 0.0  # 40 exact zeros
        last.fill_(-0.25)
        last[0, :6] = 1e-4  # 6 more below the tolerance
    logger = CSVLogger(tmp_path)
    fit_logged(model, [RegularizationMonitor(log_every_n_steps=1, per_layer=True)], logger)
    row = [row for row in read_csv(logger) if row.get("reg/sparsity")][-1]
    assert float(row["reg/sparsity"]) == 40 / 96
    assert float(row["reg/near_zero"]) == 46 / 96
    assert float(row["reg/sparsity/net.0.weight"]) == 40 / 80
    assert float(row["reg/sparsity/net.3.weight"]) == 0.0
    l1_norm = 0.5 * 40 + 0.25 * 10 + 6e-4
    assert float(row["reg/l1_norm"]) == pytest.approx(l1_norm, rel=1e-12)
    assert float(row["reg/l1_penalty"]) == pytest.approx(L1 * l1_norm, rel=1e-12)
    sq = 0.25 * 40 + 0.0625 * 10 + 6e-8
    assert float(row["reg/l2_penalty"]) == pytest.approx(L2 / 2 * sq, rel=1e-12)


@pytest.mark.parametrize("histograms", [False, True])
def test_a_run_with_the_monitor_is_bitwise_a_run_without(tmp_path: Path, histograms: bool) -> None:
    with_monitor, without = RegRegression(l1=L1, l2=L2), RegRegression(l1=L1, l2=L2)
    monitor = RegularizationMonitor(
        log_every_n_steps=1, per_layer=True, near_zero_tol=0.5, histograms=histograms
    )
    logger = TensorBoardLogger(tmp_path / "a") if histograms else CSVLogger(tmp_path / "a")
    fit_logged(with_monitor, [monitor], logger)
    fit_logged(without, [], CSVLogger(tmp_path / "b"))
    assert_same_weights(with_monitor, without)


def test_any_lightning_module_gets_norms_but_no_penalties(tmp_path: Path) -> None:
    logger, snapshots = CSVLogger(tmp_path), Snapshots()
    fit_logged(LitRegression(), [RegularizationMonitor(log_every_n_steps=12), snapshots], logger)
    (row,) = [row for row in read_csv(logger) if row.get("reg/l1_norm")]
    assert "reg/l1_penalty" not in row
    assert "reg/l2_penalty" not in row
    for key, want in expected_metrics(snapshots.weights[12], penalties=False).items():
        assert float(row[key]) == pytest.approx(want, rel=1e-9), key


def test_with_accumulation_it_logs_after_optimizer_steps_only(tmp_path: Path) -> None:
    logger, snapshots = CSVLogger(tmp_path), Snapshots()
    fit_logged(
        RegRegression(l1=L1, l2=L2),
        [RegularizationMonitor(log_every_n_steps=2), snapshots],
        logger,
        accumulate_grad_batches=3,
    )
    rows = [row for row in read_csv(logger) if row.get("reg/l1_norm")]
    assert [int(row["step"]) for row in rows] == [1, 3]  # 4 optimizer steps in 12 batches
    for row in rows:
        want = expected_metrics(snapshots.weights[int(row["step"]) + 1])["reg/l1_norm"]
        assert float(row["reg/l1_norm"]) == pytest.approx(want, rel=1e-9)


def test_default_interval_is_the_trainers(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    fit_logged(RegRegression(l1=L1), [RegularizationMonitor()], logger, log_every_n_steps=5)
    steps = [int(row["step"]) for row in read_csv(logger) if row.get("reg/l1_norm")]
    assert steps == [4, 9]


class CountingMonitor(RegularizationMonitor):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ops_per_batch: list[list[str]] = []

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        with RecordOps() as recorder:
            super().on_train_batch_end(*args, **kwargs)
        self.ops_per_batch.append(recorder.ops)


@pytest.mark.parametrize("histograms", [False, True])
def test_no_tensor_work_and_so_no_host_sync_on_steps_that_do_not_log(
    tmp_path: Path, histograms: bool
) -> None:
    monitor = CountingMonitor(log_every_n_steps=5, histograms=histograms)
    logger = TensorBoardLogger(tmp_path) if histograms else CSVLogger(tmp_path)
    fit_logged(RegRegression(l1=L1, l2=L2), [monitor], logger)
    if histograms:
        assert isinstance(logger, TensorBoardLogger)
        assert [h.step for h in read_events(logger).Histograms(HISTOGRAM_TAGS[0])] == [4, 9]
    assert len(monitor.ops_per_batch) == 12
    for index, ops in enumerate(monitor.ops_per_batch):
        if (index + 1) % 5 == 0:
            assert ops, "a logging step computes the statistics"
        else:
            assert ops == [], f"batch {index} ran tensor ops: {ops[:3]}"


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("log_every_n_steps", 0),
        ("log_every_n_steps", -3),
        ("log_every_n_steps", 2.5),
        ("log_every_n_steps", True),
        ("per_layer", "yes"),
        ("histograms", "yes"),
        ("histograms", 1),
        ("histograms", None),
        ("near_zero_tol", 0.0),
        ("near_zero_tol", float("nan")),
        ("near_zero_tol", "1e-3"),
    ],
)
def test_bad_arguments_are_refused_at_construction(keyword: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^Invalid {keyword}: ") as error:
        RegularizationMonitor(**{keyword: value})
    assert repr(value) in str(error.value)


def test_a_trainer_without_logger_is_refused_before_training() -> None:
    model = RegRegression(l1=L1)
    before = copy.deepcopy(model)
    with pytest.raises(MisconfigurationException, match="RegularizationMonitor needs a logger"):
        fit_logged(model, [RegularizationMonitor()], logger=False)
    assert_same_weights(model, before)


def test_group_penalty_and_dead_units_over_columns(tmp_path: Path) -> None:
    model = Frozen(l1=L1, group_l1=0.25, group_by="columns")
    with torch.no_grad():
        first, last = model.net[0].weight, model.net[3].weight  # 16 x 5 and 1 x 16
        first.fill_(2.0)
        first[:, 1:3] = 0.0  # 2 of 5 input columns dead
        last.fill_(-1.0)
        last[0, :4] = 0.0  # 4 of 16 columns dead
    logger = CSVLogger(tmp_path)
    fit_logged(model, [RegularizationMonitor(log_every_n_steps=1, per_layer=True)], logger)
    row = [row for row in read_csv(logger) if row.get("reg/dead_units")][-1]
    assert float(row["reg/dead_units"]) == (2 + 4) / (5 + 16)
    assert float(row["reg/dead_units/net.0.weight"]) == 2 / 5
    assert float(row["reg/dead_units/net.3.weight"]) == 4 / 16
    group_norms = 3 * np.sqrt(16 * 4.0) + 12 * 1.0  # live columns: norm 8 in the first layer, 1 in the last
    assert float(row["reg/group_l1_penalty"]) == pytest.approx(0.25 * group_norms, rel=1e-12)


SHARDED_RUN = """
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[2])
import lightning.pytorch as L
import torch
from distributed_run import WORLD_SIZE, Sharded, full_weights, leave_process_group
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ModelParallelStrategy

from lightning_reg import RegularizationMonitor

out = Path(sys.argv[1])
model = Sharded(l1=3e-3, l2=2e-2)
trainer = L.Trainer(
    accelerator="cpu",
    devices=WORLD_SIZE,
    strategy=ModelParallelStrategy(data_parallel_size=WORLD_SIZE, tensor_parallel_size=1),
    max_epochs=2,
    use_distributed_sampler=False,
    logger=TensorBoardLogger(out, name="tb", version=0),
    callbacks=[RegularizationMonitor(log_every_n_steps=3, histograms=True)],
    log_every_n_steps=1,
    enable_progress_bar=False,
    enable_model_summary=False,
    enable_checkpointing=False,
)
trainer.fit(model)
assert type(model.net[0].weight).__name__ == "DTensor"
weights = full_weights(model)
if trainer.is_global_zero:
    torch.save(weights, out / "weights.pt")
leave_process_group()
"""


def test_fsdp2_histograms_are_of_the_whole_gathered_weights(tmp_path: Path) -> None:
    """Two CPU processes, FSDP2: each holds half of each weight; the histogram covers all of it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    script = tmp_path / "sharded_run.py"
    script.write_text(SHARDED_RUN)
    command = [sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trained = torch.load(tmp_path / "weights.pt", weights_only=True)
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"histograms": 0})
    events.Reload()
    assert sorted(events.Tags()["histograms"]) == HISTOGRAM_TAGS
    for key in ("0.weight", "3.weight"):
        histograms = events.Histograms(f"reg/weights/net.{key}")
        assert [h.step for h in histograms] == [2, 5, 8, 11]  # 12 steps: 2 epochs of 24 samples, batch 4
        assert_histogram_of(histograms[-1].histogram_value, trained[key].numpy())
