"""``sweep``: train one model per regularization strength and compare them on a validation set.

By default the strengths form a grid (the cartesian product of the given lists, usually log-spaced),
trained here one point after another, or as warm-started paths (``warm_start``). With ``n_trials`` the
lists give ranges instead, searched on a log scale by Optuna (random search or TPE); with a ``pruner`` or
a ``storage`` the points run as the trials of an Optuna study, which several processes or machines can
share (see :mod:`~lightning_reg.sweeps.study`). Optuna is an optional dependency (the ``sweep`` extra),
imported only when used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback, EarlyStopping

from lightning_reg.module import regularizer_of
from lightning_reg.sweeps.arguments import Pruner, Sampler, Search, WarmStart, check_arguments
from lightning_reg.sweeps.callbacks import BestValue, CarryOptimizerState, ReportToTrial
from lightning_reg.sweeps.result import Mode, SweepResult
from lightning_reg.sweeps.study import describe_error, optimize

if TYPE_CHECKING:
    import optuna

__all__ = [
    "WARM_START_BUDGET",
    "WARM_START_PATIENCE",
    "Trained",
    "sweep",
    "warm_epochs",
]

#: Validations without improvement after which a warm-started point stops (``EarlyStopping``'s
#: ``patience``; with ``check_val_every_n_epoch=k`` that is ``k`` times as many epochs).
WARM_START_PATIENCE = 3
#: A warm-started point trains at most this fraction of the epochs its path's first point trained.
WARM_START_BUDGET = 0.35


def sweep(
    make_model: Callable[..., L.LightningModule],
    train_dataloaders: Any,
    val_dataloaders: Any,
    *,
    l1: Iterable[float] | None = None,
    l2: Iterable[float] | None = None,
    group_l1: Iterable[float] | None = None,
    monitor: str = "val_loss",
    mode: Mode = "min",
    trainer_kwargs: Mapping[str, Any] | None = None,
    n_trials: int | None = None,
    sampler: Sampler | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    seed: int | None = 0,
    pruner: Pruner | optuna.pruners.BasePruner | None = None,
    warm_start: WarmStart = False,
    catch: type[BaseException] | tuple[type[BaseException], ...] = (),
    progress: Callable[[dict[str, Any]], object] | None = None,
) -> SweepResult:
    """Train one model per point of a grid (or per Optuna trial) of strengths; compare them.

    For each point, ``make_model(**strengths)`` builds the model, with the swept strengths only as
    keywords (``make_model(l1=1e-4, l2=1e-3)`` when ``l1`` and ``l2`` are swept); a fresh
    ``lightning.pytorch.Trainer(**{**TRAINER_DEFAULTS, **trainer_kwargs})`` fits it on the given
    dataloaders; the row records the best value of ``monitor`` over the point's validations (log it in
    ``validation_step``; as ``EarlyStopping`` and ``ModelCheckpoint`` judge a run) and ``best_epoch``,
    the epoch it came at; the sparsity of the model's regularized weights at the end of ``fit`` (its
    ``regularizer`` for a :class:`~lightning_reg.module.RegularizedModule`, else ``Regularizer(model)``'s
    selection; NaN if it has none), the seconds ``fit`` took, the point's ``state`` and the ``epochs`` it
    trained (see :class:`SweepResult`).

    - Grid (default): every combination of the given lists, in order (``l1`` varies slowest).
    - ``n_trials``: each list gives the range ``[min, max]`` that Optuna searches on a log scale (a
      single value, or equal ends, keeps that strength fixed); ``sampler`` ``"random"`` (default) or
      ``"tpe"``.
    - ``pruner``: the monitored value is reported to Optuna after every validation, and Optuna's
      ``MedianPruner`` (``"median"``) or ``HyperbandPruner`` (``"hyperband"``), or the pruner object
      given, stops an unpromising point early: its row is ``"pruned"``, with the best value it reached
      and its epochs. The value reported after each validation is the point's best so far, as its row
      shows it. ``"median"`` prunes no point in the first half of its validations
      (:data:`~lightning_reg.sweeps.study.MEDIAN_WARMUP`). A grid with a pruner runs as an Optuna
      study (``GridSampler``); validate several times per point for the pruner to have something to
      compare.
    - ``storage`` (with ``study_name``): the study is created or loaded there, and every process or
      machine that runs the same call is a worker of it. A grid is shared: each point is trained once
      across the workers. ``n_trials`` counts the study's trials across the workers, not each worker's:
      the workers stop once the study holds ``n_trials`` (a later call with a larger ``n_trials`` adds
      the difference). In a database, a worker that dies mid-point is detected by its heartbeats and
      its point is trained again by a surviving one; every worker returns when no point is left, after
      waiting for the points still running elsewhere, and its table holds every finished point of the
      study, other workers' included. A URL gets the heartbeat timing of
      :func:`~lightning_reg.sweeps.storages.open_storage`; pass its result to choose another.
    - ``warm_start`` (a grid without pruner or storage): the regularization path. The grid is cut into
      paths along the first swept strength of ``l1``, ``group_l1``, ``l2`` (in that order of
      preference), one path per combination of the other swept strengths, and each path runs from its
      weakest value to its strongest (glmnet runs the other way, from the strength that zeroes every
      weight; a network zeroed that way has no gradient to grow back from). The first point of a path
      trains fully; each later one starts from the path's previous complete point: its weights
      (``load_state_dict``, so ``make_model`` must build the same architecture) and, with ``True``, its
      optimizers' states (moments and step counts, not the learning rate or ``weight_decay``; see
      :class:`~lightning_reg.sweeps.callbacks.CarryOptimizerState`). It trains at most
      :data:`WARM_START_BUDGET` of the first point's epochs, and stops earlier once its monitored value
      has not improved for :data:`WARM_START_PATIENCE` validations (``EarlyStopping``). A learning-rate
      schedule restarts with each point, over that point's epochs. The rows still come in the grid's
      order.
    - ``catch``: an error of one of these types while a point is built or trained makes its row
      ``"failed"`` (with ``error``), and the sweep goes on; other errors propagate.

    Every argument is checked before any model is built. Progress is silent unless ``progress`` is
    given: it is called with each row as its point finishes in this process.

    Args:
        make_model: builds the model of one point from the swept strengths as keywords.
        train_dataloaders: passed to ``Trainer.fit`` (a dataloader, a list of them or a datamodule).
        val_dataloaders: passed to ``Trainer.fit``.
        l1: the ``l1`` values of the grid (with ``n_trials``: its range); ``None`` does not sweep it.
        l2: the same for ``l2``.
        group_l1: the same for ``group_l1``.
        monitor: the metric to compare, as logged with ``self.log``.
        mode: ``"min"`` or ``"max"``: which monitored value is best.
        trainer_kwargs: arguments of every point's ``Trainer`` (``max_epochs``, ``accelerator``, ...),
            over :data:`TRAINER_DEFAULTS`. The same objects go to every Trainer: stateful callbacks
            (``EarlyStopping``) carry their state from one point to the next.
        n_trials: search with Optuna: this many trials in the study (across workers, with ``storage``).
        sampler: with ``n_trials``, ``"random"`` (default) or ``"tpe"``.
        storage: an Optuna storage to keep and share the study in: a database URL
            (``"sqlite:///sweep.db"``, ``"postgresql+psycopg://user@host/db"``), ``"journal:PATH"``
            (Optuna's journal file, for a shared file system without a database server: no
            heartbeats), or an ``optuna.storages.BaseStorage``.
        study_name: the study's name; required with ``storage``.
        seed: ``L.seed_everything(seed)`` runs before each model is built, so every point starts from
            the same weights and data order; it also seeds the sampler, unless the study is in a
            ``storage`` (workers sharing it would draw the same points). ``None``: no seeding.
        pruner: ``"median"``, ``"hyperband"`` or an ``optuna.pruners.BasePruner``; ``None``: none.
        warm_start: train the grid as regularization paths, each point from the previous one's weights
            and optimizer state (``True``) or weights only (``"weights"``).
        catch: the exception types that fail one point rather than the sweep (Optuna's convention).
        progress: called with each row of this process, as its point finishes (the command line
            prints a line from it).

    Returns:
        a :class:`SweepResult`: ``.table`` (the rows), ``.best`` (the best complete row's strengths) and
        ``.pareto`` (the complete rows not beaten on both the monitored value and sparsity).

    Raises:
        ValueError: for a bad argument, before any training; when ``monitor`` was not logged (naming
            what was); for a stored study that does not match this call (direction, monitor, grid,
            strengths).
        ~lightning_reg.MissingDependencyError: ``n_trials``, ``storage`` or ``pruner`` without
            Optuna installed (an ``ImportError``).

    Example::

        >>> import lightning.pytorch as L
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_reg import RegularizedModule
        >>> class Net(RegularizedModule, L.LightningModule):
        ...     def __init__(self, **strengths):
        ...         super().__init__(**strengths)
        ...         self.layer = torch.nn.Linear(4, 1)
        ...     def loss(self, batch):
        ...         x, y = batch
        ...         return torch.nn.functional.mse_loss(self.layer(x), y)
        ...     def training_step(self, batch, batch_idx):
        ...         return self.loss(batch)
        ...     def validation_step(self, batch, batch_idx):
        ...         self.log("val_loss", self.loss(batch))
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        >>> y = x[:, :1] + 0.1 * x[:, 1:2]  # the 3rd and 4th inputs do not matter
        >>> train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16)
        >>> val = DataLoader(TensorDataset(x[48:], y[48:]), batch_size=16)
        >>> result = sweep(
        ...     lambda **strengths: Net(**strengths, l1_mode="proximal"),
        ...     train,
        ...     val,
        ...     l1=[1e-3, 1.0],
        ...     trainer_kwargs={"max_epochs": 20, "accelerator": "cpu"},
        ... )
        >>> [(row["l1"], row["sparsity"]) for row in result.table]  # 1e-3 zeroes the 2 unused inputs
        [(0.001, 0.5), (1.0, 0.75)]
        >>> result.best
        {'l1': 0.001}

    The same grid as a warm-started path: ``l1=1e-3`` trains fully, then ``1.0`` starts from its
    weights and optimizer state and trains at most 35 % of those epochs (7): here it stops after 4, its
    loss not improved for 3 validations; a failing point is caught::

        >>> def make_model(**strengths):
        ...     if strengths["l1"] == 0.1:
        ...         raise RuntimeError("no model for 0.1")
        ...     return Net(**strengths, l1_mode="proximal")
        >>> path = sweep(
        ...     make_model, train, val, l1=[1e-3, 0.1, 1.0], warm_start=True, catch=(RuntimeError,),
        ...     trainer_kwargs={"max_epochs": 20, "accelerator": "cpu"},
        ... )
        >>> [(row["l1"], row["state"], row["epochs"]) for row in path.table]
        [(0.001, 'complete', 20), (0.1, 'failed', 0), (1.0, 'complete', 4)]
        >>> path.table[1]["error"]
        'RuntimeError: no model for 0.1'
    """
    search = check_arguments(
        make_model,
        {"l1": l1, "l2": l2, "group_l1": group_l1},
        monitor=monitor,
        mode=mode,
        trainer_kwargs=trainer_kwargs,
        n_trials=n_trials,
        sampler=sampler,
        storage=storage,
        study_name=study_name,
        seed=seed,
        pruner=pruner,
        warm_start=warm_start,
        catch=catch,
        progress=progress,
    )
    loaders = (train_dataloaders, val_dataloaders)

    def train(
        strengths: dict[str, float],
        trial: optuna.Trial | None = None,
        start_from: Trained | None = None,
    ) -> tuple[dict[str, Any], Trained | None]:
        row, trained = _train_point(make_model, strengths, loaders, search, trial, start_from)
        if progress is not None:
            progress(row)
        return row, trained

    if search.uses_study:
        table = optimize(lambda strengths, trial: train(strengths, trial)[0], search)
    elif search.warm_start:
        table = _warm_paths(train, search)
    else:
        table = [train(search.strengths(point))[0] for point in search.points()]
    return SweepResult(table=table, names=search.names, monitor=monitor, mode=search.mode)


@dataclass(frozen=True)
class Trained:
    """A trained point, for the next point of its path: its final weights and optimizers' states, and
    the epochs its path's first point trained."""

    weights: dict[str, Any]
    optimizer_states: list[dict[str, Any]]
    epochs: int


def _warm_paths(
    train: Callable[..., tuple[dict[str, Any], Trained | None]], search: Search
) -> list[dict[str, Any]]:
    """Train each path of the grid, each point from the previous complete one; the rows in grid order."""
    rows: dict[tuple[float, ...], list[dict[str, Any]]] = {}
    for path in search.paths():
        previous = None
        for strengths in path:
            row, trained = train(strengths, start_from=previous)
            if row["state"] == "complete" and trained is not None:  # the budget counts the first's epochs
                previous = trained if previous is None else replace(trained, epochs=previous.epochs)
            rows.setdefault(tuple(strengths.values()), []).append(row)
    return [rows[point].pop(0) for point in search.points()]


def _train_point(
    make_model: Callable[..., L.LightningModule],
    strengths: dict[str, float],
    loaders: tuple[Any, Any],
    search: Search,
    trial: optuna.Trial | None,
    start_from: Trained | None,
) -> tuple[dict[str, Any], Trained | None]:
    """Build, fit and measure the model of one point: its row of the table, and what the next point of a
    path starts from.

    With ``trial`` (a pruner), each validation is reported to it; with ``start_from`` (a warm start), the
    model starts from its weights (and its optimizers from their states, unless the warm start is
    ``"weights"``) and stops by :data:`WARM_START_PATIENCE` within :func:`warm_epochs`. An error of a type in
    ``search.catch`` gives a failed row (and nothing to start from).
    """
    if search.seed is not None:
        L.seed_everything(search.seed, verbose=False)
    reporter = None
    if trial is not None and search.pruner is not None:
        reporter = ReportToTrial(trial, search.monitor, search.mode)
    best = reporter or BestValue(search.monitor, search.mode)  # a reporter keeps the best value too
    extra: list[Callback] = [best]
    kwargs = search.trainer_kwargs
    if start_from is not None:
        extra.append(EarlyStopping(search.monitor, patience=WARM_START_PATIENCE, mode=search.mode))
        if search.warm_start is True:
            extra.append(CarryOptimizerState(start_from.optimizer_states))
        kwargs = {**kwargs, "max_epochs": warm_epochs(start_from.epochs)}
    given = kwargs.get("callbacks") or []
    kwargs = {**kwargs, "callbacks": [*([given] if isinstance(given, Callback) else given), *extra]}
    trainer = None
    start = time.perf_counter()
    try:
        model = make_model(**strengths)
        if start_from is not None:
            model.load_state_dict(start_from.weights)
        trainer = L.Trainer(**kwargs)
        start = time.perf_counter()
        trainer.fit(model, *loaders)
    except search.catch as error:
        failed = {search.monitor: math.nan, "sparsity": math.nan, "seconds": time.perf_counter() - start}
        epochs = 0 if trainer is None else trainer.current_epoch
        row = {
            **strengths,
            **failed,
            "state": "failed",
            "epochs": epochs,
            "best_epoch": None,
            "error": describe_error(error),
        }
        return row, None
    seconds = time.perf_counter() - start
    metrics = trainer.callback_metrics
    if search.monitor not in metrics:
        raise ValueError(
            f"monitor {search.monitor!r} was not logged (logged after fit: {sorted(metrics)}); log it "
            "with self.log in validation_step, or pass one of those names"
        )
    row = {
        **strengths,
        # the best validation's value and epoch; without one, the value logged last (at the last epoch)
        search.monitor: best.value if best.epoch is not None else float(metrics[search.monitor]),
        "sparsity": _sparsity(model),
        "seconds": seconds,
        "state": "pruned" if reporter is not None and reporter.pruned else "complete",
        "epochs": trainer.current_epoch,
        "best_epoch": best.epoch if best.epoch is not None else trainer.current_epoch,
    }
    if not search.warm_start:
        return row, None
    states = [optimizer.state_dict() for optimizer in trainer.optimizers]
    return row, Trained(model.state_dict(), states, trainer.current_epoch)


def warm_epochs(first: int) -> int:
    """The epochs a warm-started point may train: :data:`WARM_START_BUDGET` of its path's first point's
    ``first`` epochs, rounded up.

    >>> warm_epochs(100), warm_epochs(1)
    (35, 1)
    """
    return max(1, math.ceil(WARM_START_BUDGET * first))


def _sparsity(model: L.LightningModule) -> float:
    """Fraction of the model's regularized weights that are exactly zero; NaN if it has none."""
    return regularizer_of(model).statistics().summary(penalties=False).get("sparsity", math.nan)
