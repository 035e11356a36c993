"""The Optuna side of :func:`~lightning_reg.sweeps.sweep`: the study, its workers, its trials as rows.

A search (``n_trials``) draws each swept strength on a log scale in its ``[min, max]`` range; a grid with
a ``pruner`` or a ``storage`` runs its points as the trials of a study with Optuna's ``GridSampler``. A
``storage`` shares the study between processes or machines; every process that runs the same call is a
worker, and the workers together train each point once:

- Each point has a slot: a grid point (``GridSampler``'s ``grid_id``), or one of the first ``n_trials``
  trials of a search (counted over the study, across workers). A trial that finds its slot already taken
  by an earlier trial (two workers asked at the same moment) is pruned at once, before any training, and
  marked ``surplus``: it is no row and no point.
- A worker asks for a trial while a slot is free or a trial waits to be retried. When none is, it waits
  for the trials still running elsewhere, if the storage has heartbeats: a trial whose worker died is
  failed by Optuna once its heartbeat is stale, and queued again by the retry callback of
  :func:`~lightning_reg.sweeps.storages.open_storage`; a surviving worker trains it. A worker returns
  when no trial runs anywhere and no dead worker's trial waits for its retry to be queued.

Optuna comes with the ``sweep`` extra and is imported only when a study is used.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from lightning_reg.sweeps.storages import describe, has_heartbeats, open_storage, retry_database_race
from lightning_reg.utilities.optional import import_optuna

if TYPE_CHECKING:
    import optuna

    from lightning_reg.sweeps.arguments import Search

__all__ = [
    "HYPERBAND_PRUNER",
    "LIGHTNING_MAX_EPOCHS",
    "MEDIAN_PRUNER",
    "MEDIAN_WARMUP",
    "POLL_SECONDS",
    "RETRY_GRACE",
    "SLOT_TIMEOUT",
    "SURPLUS",
    "PointFailedError",
    "TrainPoint",
    "describe_error",
    "median_warmup",
    "optimize",
]

#: Trains one point: its strengths and its trial (whose ``report`` the pruner reads); returns its row.
TrainPoint = Callable[[dict[str, float], "optuna.Trial"], dict[str, Any]]
#: Seconds a worker waits before it looks again at trials running elsewhere.
POLL_SECONDS = 1.0
#: ``"median"``: Optuna's ``MedianPruner`` with these arguments, and a warm-up of
#: :data:`MEDIAN_WARMUP` of a point's validations.
MEDIAN_PRUNER = {"n_startup_trials": 2}
#: The share of a point's validations (of ``max_epochs``; Lightning's 1000 when not given) before
#: ``"median"`` may prune it, whatever ``check_val_every_n_epoch`` is.
MEDIAN_WARMUP = 0.5
#: The epochs Lightning trains when neither ``max_epochs`` nor ``max_steps`` is given.
LIGHTNING_MAX_EPOCHS = 1000
#: ``"hyperband"``: Optuna's ``HyperbandPruner`` with these arguments (resources are epochs).
HYPERBAND_PRUNER = {"min_resource": 1, "max_resource": "auto", "reduction_factor": 3}
#: Seconds a worker waits for the retry of a dead worker's trial to be queued, before it counts the
#: retries as spent (Optuna fails a stale trial, then queues its retry: two steps, a moment apart).
RETRY_GRACE = 5.0
#: Seconds a new trial of a shared grid waits for the earlier trials to record their grid points.
SLOT_TIMEOUT = 10.0
#: The user attribute that marks a trial which found its point taken (no row, no point).
SURPLUS = "surplus"
_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}


class PointFailedError(Exception):
    """A point's training raised one of ``catch``: its trial fails, the study goes on."""


def optimize(train: TrainPoint, search: Search) -> list[dict[str, Any]]:
    """Run this worker's share of the study of ``search``; return every finished point of it as a row.

    Args:
        train: trains the model of one point and returns its row.
        search: the checked arguments; ``search.uses_study`` is true.
    """
    library = import_optuna()
    study, storage = _open_study(library, search)
    _check_study(study, search)
    study.set_user_attr("monitor", search.monitor)
    study.set_user_attr("grid", _grid(search))

    def objective(trial: optuna.Trial) -> float:
        if _is_surplus(study, trial, search):
            trial.set_user_attr(SURPLUS, True)
            raise library.TrialPruned("its point was taken by an earlier trial")
        strengths = {
            name: trial.suggest_float(name, min(values), max(values), log=search.n_trials is not None)
            for name, values in search.values.items()
        }
        try:
            row = train(strengths, trial)
        except (Exception, KeyboardInterrupt) as error:  # what Optuna records as the trial's failure
            trial.set_user_attr("error", describe_error(error))
            raise
        if row["state"] == "complete" and math.isnan(row[search.monitor]):
            row["error"] = f"{search.monitor} is NaN, which Optuna does not accept as a trial's value"
        for key in ("sparsity", "seconds", "epochs", "best_epoch", "error"):
            if key in row:
                trial.set_user_attr(key, row[key])
        if row["state"] == "failed":
            raise PointFailedError(row["error"])
        if row["state"] == "pruned":
            raise library.TrialPruned()
        value: float = row[search.monitor]
        return value

    waits = has_heartbeats(storage)
    seen_dead: dict[int, float] = {}
    while True:
        if waits:
            _fail_stale_trials(library, study)
        trials = study.get_trials(deepcopy=False)
        if _work_left(trials, search):
            study.optimize(objective, n_trials=1, catch=(PointFailedError,))
        elif waits and (
            any(trial.state.name == "RUNNING" for trial in trials) or _awaiting_retry(trials, seen_dead)
        ):
            time.sleep(POLL_SECONDS)
        else:
            break
    return _rows(study.get_trials(deepcopy=False), search)


def describe_error(error: BaseException) -> str:
    """An exception as a row's ``error``: ``"ValueError: message"``.

    >>> describe_error(ValueError("bad point"))
    'ValueError: bad point'
    """
    return f"{type(error).__name__}: {error}"


def _grid(search: Search) -> dict[str, list[float]] | None:
    """The grid of ``search`` as the study records it, or ``None`` for a search."""
    return dict(search.values) if search.n_trials is None else None


def _open_study(library: Any, search: Search) -> tuple[optuna.Study, object]:
    """The study of ``search``, created or loaded, and its storage (``None`` in memory)."""
    storage = search.storage
    if isinstance(storage, str):
        storage = open_storage(storage)

    def create() -> optuna.Study:
        study: optuna.Study = library.create_study(
            storage=storage,
            study_name=search.study_name,
            load_if_exists=True,
            direction=_direction(search),
            sampler=_sampler(library, search),
            pruner=_pruner(library, search),
        )
        return study

    return retry_database_race(create, retries=4 if storage is not None else 0), storage


def _sampler(library: Any, search: Search) -> optuna.samplers.BaseSampler:
    """The sampler of ``search``: the grid's, or a seeded one (unless the study is in a storage, where
    its workers would draw alike)."""
    seed = search.seed if search.storage is None else None
    if search.n_trials is None:  # workers must shuffle the grid alike: GridSampler takes None as 0
        grid: optuna.samplers.BaseSampler = library.samplers.GridSampler(dict(search.values), seed=seed)
        return grid
    samplers = {"random": library.samplers.RandomSampler, "tpe": library.samplers.TPESampler}
    sampler: optuna.samplers.BaseSampler = samplers[search.sampler](seed=seed)
    return sampler


def _pruner(library: Any, search: Search) -> optuna.pruners.BasePruner:
    """The pruner of ``search``: Optuna's by name, the given object, or none."""
    if search.pruner is None:
        return library.pruners.NopPruner()  # type: ignore[no-any-return]
    if search.pruner == "median":
        warmup = median_warmup(search.trainer_kwargs)
        return library.pruners.MedianPruner(**MEDIAN_PRUNER, n_warmup_steps=warmup)  # type: ignore[no-any-return]
    if search.pruner == "hyperband":
        return library.pruners.HyperbandPruner(**HYPERBAND_PRUNER)  # type: ignore[no-any-return]
    return search.pruner  # type: ignore[return-value]


def median_warmup(trainer_kwargs: Mapping[str, Any]) -> int:
    """``"median"``'s ``n_warmup_steps``, in epochs: the epoch of the validation that ends the first
    :data:`MEDIAN_WARMUP` of a point's validations.

    >>> median_warmup({"max_epochs": 100, "check_val_every_n_epoch": 5}), median_warmup({"max_epochs": 9})
    (50, 5)
    """
    every = int(trainer_kwargs.get("check_val_every_n_epoch") or 1)
    epochs = trainer_kwargs.get("max_epochs")
    validations = (epochs if isinstance(epochs, int) and epochs > 0 else LIGHTNING_MAX_EPOCHS) // every
    return max(1, math.ceil(MEDIAN_WARMUP * validations)) * every


def _direction(search: Search) -> str:
    """Optuna's name for ``search.mode``."""
    return "minimize" if search.mode == "min" else "maximize"


def _fail_stale_trials(library: Any, study: optuna.Study) -> None:
    """Fail the trials whose worker stopped sending heartbeats (the storage's callback retries them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", library.exceptions.ExperimentalWarning)
        library.storages.fail_stale_trials(study)


def _root(trial: optuna.trial.FrozenTrial) -> int:
    """The number of the first trial of a chain of retries (its own number if it is no retry)."""
    number: int = trial.system_attrs.get("failed_trial", trial.number)
    return number


def _slot(trial: optuna.trial.FrozenTrial, search: Search) -> object:
    """The point a trial trains: its grid point, or for a search its chain of retries."""
    return _root(trial) if search.n_trials is not None else trial.system_attrs.get("grid_id")


def _trials_with_slots(study: optuna.Study, number: int, search: Search) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, once every running trial before ``number`` has its grid point.

    ``GridSampler`` records a trial's grid point just after creating it: until then a concurrent
    worker's trial would not be seen to hold its point. The wait ends after :data:`SLOT_TIMEOUT`
    seconds (the worker died in between; its trial, without a point, holds nothing).
    """
    deadline = time.monotonic() + SLOT_TIMEOUT
    while True:
        trials = study.get_trials(deepcopy=False)
        unknown = [
            trial
            for trial in trials
            if trial.number < number and trial.state.name == "RUNNING" and "grid_id" not in trial.system_attrs
        ]
        if search.n_trials is not None or not unknown or time.monotonic() > deadline:
            return trials
        time.sleep(0.01)


def _is_surplus(study: optuna.Study, trial: optuna.Trial, search: Search) -> bool:
    """Whether the slot of ``trial`` is not its own: past ``n_trials``, or held by an earlier trial.

    Trials are ordered by (first trial of their chain of retries, number). An earlier trial of the slot
    holds it, whatever its state, unless it is a failed attempt of the same chain: a dead worker's
    trial, which its retry replaces. So two workers that pick the same grid point, or that both queue a
    retry of one dead trial (SQLite has no row locks to stop them), train it once.
    """
    trials = _trials_with_slots(study, trial.number, search)
    this = next(other for other in trials if other.number == trial.number)
    root, slot = _root(this), _slot(this, search)
    if search.n_trials is not None:
        earlier = sum(1 for other in trials if _counts(other) and other.number < root)
        if earlier >= search.n_trials:
            return True
    for other in trials:
        if other.user_attrs.get(SURPLUS) or _slot(other, search) != slot:
            continue
        if (_root(other), other.number) >= (root, this.number):
            continue  # later, or this trial itself
        if _root(other) == root and other.state.name == "FAIL":
            continue  # a dead attempt of this point: this trial is its retry
        return True
    return False


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` counts towards ``n_trials``: not a retry of another, nor a surplus trial.

    Two workers that ask at once when one slot is left both get a trial; the later one is surplus and
    trains nothing, so it takes no slot (a later call with a larger ``n_trials`` adds the difference).
    """
    return "failed_trial" not in trial.system_attrs and not trial.user_attrs.get(SURPLUS)


def _awaiting_retry(trials: list[optuna.trial.FrozenTrial], seen: dict[int, float]) -> bool:
    """Whether a dead worker's trial failed less than :data:`RETRY_GRACE` seconds ago, without a retry yet.

    A dead worker's trial is failed without an ``error`` (every other failure records one); ``seen``
    keeps when this worker first saw each, so that a trial whose retries are spent is waited for once.
    """
    retried = {number for trial in trials for number in trial.system_attrs.get("retry_history", [])}
    now = time.monotonic()
    dead = [
        trial.number
        for trial in trials
        if trial.state.name == "FAIL"
        and "error" not in trial.user_attrs
        and not trial.user_attrs.get(SURPLUS)
        and trial.number not in retried
    ]
    return any(now - seen.setdefault(number, now) < RETRY_GRACE for number in dead)


def _work_left(trials: list[optuna.trial.FrozenTrial], search: Search) -> bool:
    """Whether a trial waits to be retried, or a slot has no trial yet."""
    if any(trial.state.name == "WAITING" for trial in trials):
        return True
    if search.n_trials is not None:
        return sum(1 for trial in trials if _counts(trial)) < search.n_trials
    taken = {trial.system_attrs.get("grid_id") for trial in trials if not trial.user_attrs.get(SURPLUS)}
    return not taken >= set(range(math.prod(len(values) for values in search.values.values())))


def _check_study(study: optuna.Study, search: Search) -> None:
    """Refuse a stored study that this call would mix up: another direction, monitor, grid or strengths."""
    where = f"study {study.study_name!r} in {describe(search.storage)}"
    if study.direction.name.lower() != _direction(search):
        raise ValueError(f"{where} was created to {study.direction.name.lower()}, not mode={search.mode!r}")
    monitor = study.user_attrs.get("monitor", search.monitor)
    if monitor != search.monitor:
        raise ValueError(f"{where} monitors {monitor!r}, not monitor={search.monitor!r}")
    trials = study.get_trials(deepcopy=False)
    # a study without the attribute is new (no trials yet), or a search from before grids were shared
    recorded = study.user_attrs.get("grid", None if trials else _grid(search))
    if recorded != _grid(search):

        def kind(grid: object) -> str:
            return "a search (n_trials)" if grid is None else f"the grid {grid}"

        raise ValueError(f"{where} holds {kind(recorded)}, not {kind(_grid(search))}; use another study_name")
    for trial in trials:
        if trial.params and set(trial.params) != set(search.names):
            raise ValueError(
                f"{where}: trial {trial.number} varied {sorted(trial.params)}, not the swept "
                f"{list(search.names)}; use another study_name"
            )


def _rows(trials: list[optuna.trial.FrozenTrial], search: Search) -> list[dict[str, Any]]:
    """One row per finished point: a search's by trial number, a grid's in the grid's order.

    Left out: trials that are not finished, surplus trials, and a dead worker's trial that was retried
    (its retry is the point's trial).
    """
    retried = {number for trial in trials for number in trial.system_attrs.get("retry_history", [])}
    finished = sorted(
        (
            trial
            for trial in trials
            if trial.state.is_finished()
            and trial.params
            and not trial.user_attrs.get(SURPLUS)
            and trial.number not in retried
        ),
        key=lambda trial: trial.number,
    )
    rows = [_trial_row(trial, search) for trial in finished]
    if search.n_trials is not None:
        return rows
    places: dict[tuple[float, ...], list[int]] = {}
    for index, point in enumerate(search.points()):
        places.setdefault(point, []).append(index)
    order: dict[int, int] = {}
    for row in rows:  # the k-th row of a point takes the point's k-th place (points may repeat)
        free = places.get(tuple(row[name] for name in search.names), [])
        order[id(row)] = free.pop(0) if free else len(order) + len(rows)
    return sorted(rows, key=lambda row: order[id(row)])


def _trial_row(trial: optuna.trial.FrozenTrial, search: Search) -> dict[str, Any]:
    """The row of one finished trial."""
    state = _STATES[trial.state.name]
    attrs = trial.user_attrs
    row: dict[str, Any] = {
        **{name: float(trial.params[name]) for name in search.names},
        # a pruned trial's value is its last report, the best so far (see ReportToTrial)
        search.monitor: math.nan if trial.value is None or state == "failed" else float(trial.value),
        "sparsity": float(attrs.get("sparsity", math.nan)),
        "seconds": float(attrs.get("seconds", math.nan)),
        "state": state,
        "epochs": attrs.get("epochs", math.nan),
        "best_epoch": attrs.get("best_epoch"),
    }
    if state == "failed":
        row["error"] = attrs.get("error", "its worker stopped (no heartbeat) before the point finished")
    return row
