"""``sweep``: train one model per regularization strength and compare them on a validation set.

By default the strengths form a grid (the cartesian product of the given lists, usually log-spaced).
With ``n_trials`` the lists give ranges instead, searched on a log scale by Optuna (random search or TPE,
see :mod:`~lightning_reg.sweeps.study`); a ``storage`` shared by several processes or machines lets them
work on one study. Optuna is an optional dependency (the ``sweep`` extra), imported only when used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as L

from lightning_reg.module import regularizer_of
from lightning_reg.sweeps.arguments import Sampler, Search, check_arguments
from lightning_reg.sweeps.result import Mode, SweepResult
from lightning_reg.sweeps.study import optimize


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
    storage: str | None = None,
    study_name: str | None = None,
    seed: int | None = 0,
) -> SweepResult:
    """Train one model per point of a grid (or per Optuna trial) of strengths; compare them.

    For each point, ``make_model(**strengths)`` builds the model, with the swept strengths only as
    keywords (``make_model(l1=1e-4, l2=1e-3)`` when ``l1`` and ``l2`` are swept); a fresh
    ``lightning.pytorch.Trainer(**{**TRAINER_DEFAULTS, **trainer_kwargs})`` fits it on the given
    dataloaders; the row records ``trainer.callback_metrics[monitor]`` after ``fit`` (log it in
    ``validation_step``), the sparsity of the model's regularized weights (its ``regularizer`` for a
    :class:`~lightning_reg.module.RegularizedModule`, else ``Regularizer(model)``'s selection; NaN if it
    has none) and the seconds ``fit`` took.

    - Grid (default): every combination of the given lists, in order (``l1`` varies slowest).
    - ``n_trials``: each list gives the range ``[min, max]`` that Optuna searches on a log scale (a
      single value, or equal ends, keeps that strength fixed); ``sampler`` ``"random"`` (default) or
      ``"tpe"``. The trials go to a study; with ``storage`` (an Optuna storage URL such as
      ``"sqlite:///sweep.db"``) and ``study_name``, the study is created or loaded there, so that
      several processes or machines running the same call share it, each running ``n_trials`` more. The
      table then holds every complete trial of the study, other workers' included.

    Every argument is checked before any model is built.

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
        n_trials: search with Optuna, running this many trials (in this process).
        sampler: with ``n_trials``, ``"random"`` (default) or ``"tpe"``.
        storage: with ``n_trials``, an Optuna storage (URL) to keep and share the study in.
        study_name: with ``n_trials``, the study's name; required with ``storage``.
        seed: ``L.seed_everything(seed)`` runs before each model is built, so every point starts from
            the same weights and data order; it also seeds the sampler, unless the study is in a
            ``storage`` (workers sharing it would draw the same points). ``None``: no seeding.

    Returns:
        a :class:`SweepResult`: ``.table`` (the rows) and ``.best`` (the best row's strengths).

    Raises:
        ValueError: for a bad argument, before any training; when ``monitor`` was not logged (naming
            what was); for a stored study that does not match this call (direction, monitor, strengths).
        ~lightning_reg.optional.MissingDependencyError: ``n_trials`` without Optuna installed (an
            ``ImportError``).

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
    )

    def train(strengths: dict[str, float]) -> dict[str, float]:
        return _train_point(make_model, strengths, train_dataloaders, val_dataloaders, search)

    if search.n_trials is None:
        table = [train(dict(zip(search.names, point, strict=True))) for point in search.points()]
    else:
        table = optimize(train, search)
    return SweepResult(table=table, names=search.names, monitor=monitor, mode=search.mode)


def _train_point(
    make_model: Callable[..., L.LightningModule],
    strengths: dict[str, float],
    train_dataloaders: Any,
    val_dataloaders: Any,
    search: Search,
) -> dict[str, float]:
    """Build, fit and measure the model of one point: its row of the table."""
    if search.seed is not None:
        L.seed_everything(search.seed, verbose=False)
    model = make_model(**strengths)
    trainer = L.Trainer(**search.trainer_kwargs)
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders, val_dataloaders)
    seconds = time.perf_counter() - start
    metrics = trainer.callback_metrics
    if search.monitor not in metrics:
        raise ValueError(
            f"monitor {search.monitor!r} was not logged (logged after fit: {sorted(metrics)}); log it "
            "with self.log in validation_step, or pass one of those names"
        )
    return {
        **strengths,
        search.monitor: float(metrics[search.monitor]),
        "sparsity": _sparsity(model),
        "seconds": seconds,
    }


def _sparsity(model: L.LightningModule) -> float:
    """Fraction of the model's regularized weights that are exactly zero; NaN if it has none."""
    return regularizer_of(model).statistics().summary(penalties=False).get("sparsity", math.nan)
