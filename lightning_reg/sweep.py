"""``sweep``: train one model per regularization strength and compare them on a validation set.

By default the strengths form a grid (the cartesian product of the given lists, usually log-spaced).
With ``n_trials`` the lists give ranges instead, searched on a log scale by Optuna (random search or TPE);
a ``storage`` shared by several processes or machines lets them work on one study. Optuna is an optional
dependency (the ``sweep`` extra) and matplotlib, for :meth:`SweepResult.plot`, comes with the ``demo``
extra; both are imported only when used.
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as L

from lightning_reg.module import RegularizedModule
from lightning_reg.regularizer import Regularizer

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

Mode = Literal["min", "max"]
Sampler = Literal["random", "tpe"]

#: The strengths ``sweep`` can vary, in the order of the table's columns and of the grid's product.
STRENGTHS = ("l1", "l2", "group_l1")
MODES: tuple[Mode, ...] = ("min", "max")
SAMPLERS: tuple[Sampler, ...] = ("random", "tpe")
#: The Trainer arguments ``sweep`` sets unless ``trainer_kwargs`` gives them: no files, no progress output.
TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
OPTUNA_HINT = "pip install 'lightning-reg[sweep]'"
MATPLOTLIB_HINT = "pip install 'lightning-reg[demo]'"
_ATTRS = ("sparsity", "seconds")  # stored as Optuna user attributes of each trial


@dataclass(frozen=True)
class SweepResult:
    """What a :func:`sweep` measured: one row per trained model.

    Attributes:
        table: one dict per point, in the order the points were trained (for a study, by trial number):
            each swept strength by name, the monitored value under the ``monitor``'s name, ``sparsity``
            (fraction of the regularized weights exactly ``0`` after training) and ``seconds`` (the
            wall time of ``Trainer.fit``).
        names: the swept strengths, a subset of ``("l1", "l2", "group_l1")`` in that order.
        monitor: the name of the monitored metric.
        mode: ``"min"`` or ``"max"``: which monitored value is best.

    Example::

        >>> result = SweepResult(
        ...     table=[
        ...         {"l1": 1e-4, "val_loss": 0.5, "sparsity": 0.0, "seconds": 1.0},
        ...         {"l1": 1e-3, "val_loss": 0.4, "sparsity": 0.2, "seconds": 1.0},
        ...     ],
        ...     names=("l1",),
        ...     monitor="val_loss",
        ...     mode="min",
        ... )
        >>> result.best
        {'l1': 0.001}
    """

    table: list[dict[str, float]]
    names: tuple[str, ...]
    monitor: str
    mode: Mode

    @property
    def best(self) -> dict[str, float]:
        """The strengths of the row with the best monitored value (the first of equal ones).

        Rows whose monitored value is NaN (a diverged run) are never best.

        Raises:
            ValueError: no row has a monitored value that is not NaN.
        """
        rows = [row for row in self.table if not math.isnan(row[self.monitor])]
        if not rows:
            raise ValueError(f"no row of the sweep has a {self.monitor} to compare (table: {self.table})")
        sign = 1.0 if self.mode == "min" else -1.0
        best = min(rows, key=lambda row: sign * row[self.monitor])  # min keeps the first of equal keys
        return {name: best[name] for name in self.names}

    def plot(self, path: str | Path | None = None, against: str | None = None) -> Figure:
        """The regularization path: the monitored value and the sparsity against one strength.

        The strength (``against``, default the first swept one) is on a log x-axis; the monitored value
        is on the left y-axis (solid lines, circles) and the sparsity on the right one (dashed lines,
        squares), one line of each per combination of the other swept strengths. A row whose strength is
        ``0`` has no place on a log axis: its monitored value is drawn as a dotted horizontal line in its
        line's colour (the unregularized baseline), and its sparsity is left out.

        Args:
            path: also write the figure there (the format follows the suffix: ``.png``, ``.pdf``, ...).
            against: the swept strength on the x-axis.

        Returns:
            a ``matplotlib.figure.Figure`` (not attached to pyplot: display it in a notebook as is).

        Raises:
            ValueError: ``against`` is not a swept strength, or every row has it at ``0``.
            ImportError: matplotlib is not installed.
        """
        x_name = self.names[0] if against is None else against
        if x_name not in self.names:
            raise ValueError(f"Invalid against: {against!r} (expected one of the swept {list(self.names)})")
        if not any(row[x_name] > 0 for row in self.table):
            raise ValueError(f"cannot draw {x_name} on a log axis: no row has {x_name} > 0")
        figure_module = _import_matplotlib_figure()
        others = [name for name in self.names if name != x_name]
        lines: dict[tuple[float, ...], list[dict[str, float]]] = {}
        for row in self.table:
            lines.setdefault(tuple(row[name] for name in others), []).append(row)
        figure: Figure = figure_module.Figure(figsize=(7, 4.5), layout="constrained")
        ax = figure.subplots()
        right = ax.twinx()
        for index, (key, rows) in enumerate(lines.items()):
            color = f"C{index % 10}"
            label = ", ".join(f"{name}={value:.3g}" for name, value in zip(others, key, strict=True))
            drawn = sorted((row for row in rows if row[x_name] > 0), key=lambda row: row[x_name])
            xs = [row[x_name] for row in drawn]
            ax.plot(xs, [row[self.monitor] for row in drawn], "o-", color=color, label=label or None)
            right.plot(xs, [row["sparsity"] for row in drawn], "s--", color=color)
            for row in rows:
                if row[x_name] == 0:
                    ax.axhline(row[self.monitor], color=color, linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"{x_name} (log scale)")
        ax.set_ylabel(f"{self.monitor} (solid)")
        right.set_ylabel("sparsity: fraction of weights exactly 0 (dashed)")
        right.set_ylim(-0.02, 1.02)
        title = f"{self.monitor} and sparsity against {x_name}"
        if any(row[x_name] == 0 for row in self.table):
            title += f"\ndotted: {self.monitor} at {x_name} = 0"
        ax.set_title(title)
        if others:
            ax.legend(fontsize=8)
        if path is not None:
            figure.savefig(path)
        return figure


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
        ImportError: ``n_trials`` without Optuna installed.

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
        table = _optimize(train, search)
    return SweepResult(table=table, names=search.names, monitor=monitor, mode=search.mode)


@dataclass(frozen=True)
class _Search:
    """The checked arguments of one :func:`sweep` call."""

    values: dict[str, list[float]]  # swept name -> its grid values (with n_trials: [low, high])
    monitor: str
    mode: Mode
    trainer_kwargs: dict[str, Any]
    n_trials: int | None
    sampler: Sampler
    storage: str | None
    study_name: str | None
    seed: int | None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.values)

    def points(self) -> Iterable[tuple[float, ...]]:
        """The grid, in product order."""
        return itertools.product(*self.values.values())


def check_arguments(
    make_model: object,
    strengths: Mapping[str, object],
    *,
    monitor: object,
    mode: object,
    trainer_kwargs: object,
    n_trials: object,
    sampler: object,
    storage: object,
    study_name: object,
    seed: object,
) -> _Search:
    """Check every argument of :func:`sweep`; raise ``ValueError`` naming the first bad one."""
    if not callable(make_model):
        raise ValueError(f"Invalid make_model: {make_model!r} (expected a callable that builds a model)")
    trials = _optional_int("n_trials", n_trials, 1, None, "an integer >= 1, or None for a grid")
    values = {
        name: _strength_list(name, value, log_range=trials is not None)
        for name, value in strengths.items()
        if value is not None
    }
    if not values:
        raise ValueError(
            "nothing to sweep: give at least one of l1, l2, group_l1 (e.g. l1=[1e-5, 1e-4, 1e-3])"
        )
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"Invalid monitor: {monitor!r} (expected the name of a logged metric)")
    if monitor in (*STRENGTHS, *_ATTRS):
        raise ValueError(f"Invalid monitor: {monitor!r} (the table has a column of that name already)")
    if mode not in MODES:
        raise ValueError(f"Invalid mode: {mode!r} (expected 'min' or 'max')")
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"Invalid sampler: {sampler!r} (expected 'random' or 'tpe', with n_trials)")
    kwargs = _trainer_kwargs(trainer_kwargs)
    seed_value = _optional_int("seed", seed, 0, 2**32 - 1, "an integer from 0 to 2**32 - 1, or None")
    if storage is not None and (not isinstance(storage, str) or not storage):
        raise ValueError(f"Invalid storage: {storage!r} (expected an Optuna storage URL)")
    if study_name is not None and (not isinstance(study_name, str) or not study_name):
        raise ValueError(f"Invalid study_name: {study_name!r} (expected a non-empty string)")
    if trials is None:
        for name, value in (("sampler", sampler), ("storage", storage), ("study_name", study_name)):
            if value is not None:
                raise ValueError(
                    f"Invalid {name}: {value!r} without n_trials (a grid runs every point; give "
                    "n_trials to search with Optuna)"
                )
    elif storage is not None and study_name is None:
        raise ValueError(
            f"Invalid study_name: None with storage={storage!r} (name the study, so that other "
            "workers can load it)"
        )
    if trials is not None:
        _import_optuna()
    return _Search(
        values=values,
        monitor=monitor,
        mode=mode,
        trainer_kwargs=kwargs,
        n_trials=trials,
        sampler="random" if sampler is None else sampler,
        storage=storage,
        study_name=study_name,
        seed=seed_value,
    )


def _optional_int(name: str, value: object, low: int, high: int | None, expected: str) -> int | None:
    """``value`` as an int in ``[low, high]`` (``high=None``: no upper bound), or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"Invalid {name}: {value!r} (expected {expected})")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise ValueError(f"Invalid {name}: {value!r} (expected {expected})")
    return number


def _strength_list(name: str, value: object, *, log_range: bool) -> list[float]:
    """``value`` as a list of floats: non-empty, finite, ``>= 0`` (``> 0`` for a log range)."""
    expected = (
        "a non-empty list of finite numbers > 0: with n_trials it gives the range [min, max] searched "
        "on a log scale"
        if log_range
        else "a non-empty list of finite numbers >= 0"
    )
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"Invalid {name}: {value!r} (expected {expected})")
    numbers_ = [
        float(item) if isinstance(item, numbers.Real) and not isinstance(item, bool) else math.nan
        for item in value
    ]
    ok = bool(numbers_) and all(
        math.isfinite(number) and (number > 0 if log_range else number >= 0) for number in numbers_
    )
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} (expected {expected})")
    return numbers_


def _trainer_kwargs(value: object) -> dict[str, Any]:
    """``TRAINER_DEFAULTS`` updated with ``value``, whose keys must be ``Trainer`` arguments."""
    if value is None:
        return dict(TRAINER_DEFAULTS)
    if not isinstance(value, Mapping):
        raise ValueError(f"Invalid trainer_kwargs: {value!r} (expected a dict of Trainer arguments)")
    accepted = inspect.signature(L.Trainer.__init__).parameters
    unknown = [key for key in value if key not in accepted or key == "self"]
    if unknown:
        raise ValueError(
            f"Invalid trainer_kwargs: {unknown} not arguments of lightning.pytorch.Trainer "
            f"(expected some of {[key for key in accepted if key != 'self']})"
        )
    return {**TRAINER_DEFAULTS, **value}


def _train_point(
    make_model: Callable[..., L.LightningModule],
    strengths: dict[str, float],
    train_dataloaders: Any,
    val_dataloaders: Any,
    search: _Search,
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
    regularizer = model.regularizer if isinstance(model, RegularizedModule) else Regularizer(model)
    return regularizer.statistics().summary(penalties=False).get("sparsity", math.nan)


def _optimize(
    train: Callable[[dict[str, float]], dict[str, float]], search: _Search
) -> list[dict[str, float]]:
    """Run ``search.n_trials`` Optuna trials; return every complete trial of the study as a row."""
    library = _import_optuna()
    sampler_seed = search.seed if search.storage is None else None
    samplers = {"random": library.samplers.RandomSampler, "tpe": library.samplers.TPESampler}
    direction = "minimize" if search.mode == "min" else "maximize"
    study = _create_study(
        library,
        storage=search.storage,
        study_name=search.study_name,
        load_if_exists=True,
        direction=direction,
        sampler=samplers[search.sampler](seed=sampler_seed),
    )
    _check_study(study, search)
    study.set_user_attr("monitor", search.monitor)

    def objective(trial: optuna.Trial) -> float:
        strengths = {
            name: trial.suggest_float(name, min(values), max(values), log=True)
            for name, values in search.values.items()
        }
        row = train(strengths)
        for attr in _ATTRS:
            trial.set_user_attr(attr, row[attr])
        return row[search.monitor]

    study.optimize(objective, n_trials=search.n_trials)
    return [_trial_row(trial, search) for trial in _complete_trials(study)]


def _create_study(library: Any, *, storage: str | None, **kwargs: Any) -> optuna.Study:
    """``optuna.create_study``, tried again when workers started together race to set up the database.

    Optuna creates the tables of a new database without a lock, so the second of two workers starting on
    one new SQLite file can fail with "table studies already exists" or a duplicate ``alembic_version``
    (optuna/optuna#4621); a moment later the tables are there and loading the study succeeds.
    """
    from sqlalchemy.exc import DBAPIError  # an Optuna dependency

    retries = 4 if storage is not None else 0
    attempt = 0
    while True:
        try:
            study: optuna.Study = library.create_study(storage=storage, **kwargs)
            return study
        except DBAPIError:
            if attempt == retries:
                raise
        time.sleep(0.1 * 2**attempt)
        attempt += 1


def _complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    library = _import_optuna()
    trials = study.get_trials(deepcopy=False, states=(library.trial.TrialState.COMPLETE,))
    return sorted(trials, key=lambda trial: trial.number)


def _check_study(study: optuna.Study, search: _Search) -> None:
    """Refuse a stored study that this call would mix up: another direction, monitor or strengths."""
    where = f"study {study.study_name!r} in {search.storage}"
    direction = "minimize" if search.mode == "min" else "maximize"
    if study.direction.name.lower() != direction:
        raise ValueError(f"{where} was created to {study.direction.name.lower()}, not mode={search.mode!r}")
    monitor = study.user_attrs.get("monitor", search.monitor)
    if monitor != search.monitor:
        raise ValueError(f"{where} monitors {monitor!r}, not monitor={search.monitor!r}")
    for trial in _complete_trials(study):
        _trial_row(trial, search)


def _trial_row(trial: optuna.trial.FrozenTrial, search: _Search) -> dict[str, float]:
    if set(trial.params) != set(search.names) or trial.value is None:
        raise ValueError(
            f"study {search.study_name!r} in {search.storage}: trial {trial.number} varied "
            f"{sorted(trial.params)}, not the swept {list(search.names)}; use another study_name"
        )
    return {
        **{name: float(trial.params[name]) for name in search.names},
        search.monitor: float(trial.value),
        **{attr: float(trial.user_attrs.get(attr, math.nan)) for attr in _ATTRS},
    }


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as error:
        raise ImportError(
            f"sweep with n_trials needs Optuna, which is not installed: {OPTUNA_HINT}"
        ) from error
    return optuna


def _import_matplotlib_figure() -> Any:
    try:
        import matplotlib.figure
    except ImportError as error:
        raise ImportError(
            f"SweepResult.plot needs matplotlib, which is not installed: {MATPLOTLIB_HINT}"
        ) from error
    return matplotlib.figure
