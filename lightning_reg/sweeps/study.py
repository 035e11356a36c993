"""The Optuna side of :func:`~lightning_reg.sweeps.sweep`: samplers, the study, its trials as rows.

With ``n_trials`` each swept strength is drawn on a log scale in its ``[min, max]`` range, one trial per
model, into a study that a ``storage`` can share between processes or machines. Optuna comes with the
``sweep`` extra and is imported only here, when a search runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lightning_reg.optional import require
from lightning_reg.sweeps.result import MEASUREMENTS

if TYPE_CHECKING:
    import optuna

    from lightning_reg.sweeps.arguments import Search


def import_optuna() -> Any:
    """The ``optuna`` module.

    Raises:
        ~lightning_reg.optional.MissingDependencyError: Optuna is not installed.
    """
    return require("optuna", "sweep with n_trials", "sweep")


def optimize(train: Callable[[dict[str, float]], dict[str, float]], search: Search) -> list[dict[str, float]]:
    """Run ``search.n_trials`` Optuna trials of ``train``; return every complete trial of the study as a row.

    Args:
        train: trains the model of one point (the swept strengths by name) and returns its row.
        search: the checked arguments; ``search.n_trials`` is not ``None``.
    """
    library = import_optuna()
    study = _create_study(
        library,
        storage=search.storage,
        study_name=search.study_name,
        load_if_exists=True,
        direction=_direction(search),
        sampler=_sampler(library, search),
    )
    _check_study(study, search)
    study.set_user_attr("monitor", search.monitor)

    def objective(trial: optuna.Trial) -> float:
        strengths = {
            name: trial.suggest_float(name, min(values), max(values), log=True)
            for name, values in search.values.items()
        }
        row = train(strengths)
        for attr in MEASUREMENTS:
            trial.set_user_attr(attr, row[attr])
        return row[search.monitor]

    study.optimize(objective, n_trials=search.n_trials)
    return [_trial_row(trial, search) for trial in _complete_trials(study)]


def _sampler(library: Any, search: Search) -> optuna.samplers.BaseSampler:
    """The sampler of ``search``: seeded, unless the study is in a storage (its workers would draw alike)."""
    samplers = {"random": library.samplers.RandomSampler, "tpe": library.samplers.TPESampler}
    sampler: optuna.samplers.BaseSampler = samplers[search.sampler](
        seed=search.seed if search.storage is None else None
    )
    return sampler


def _direction(search: Search) -> str:
    """Optuna's name for ``search.mode``."""
    return "minimize" if search.mode == "min" else "maximize"


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
    library = import_optuna()
    trials = study.get_trials(deepcopy=False, states=(library.trial.TrialState.COMPLETE,))
    return sorted(trials, key=lambda trial: trial.number)


def _check_study(study: optuna.Study, search: Search) -> None:
    """Refuse a stored study that this call would mix up: another direction, monitor or strengths."""
    where = f"study {study.study_name!r} in {search.storage}"
    if study.direction.name.lower() != _direction(search):
        raise ValueError(f"{where} was created to {study.direction.name.lower()}, not mode={search.mode!r}")
    monitor = study.user_attrs.get("monitor", search.monitor)
    if monitor != search.monitor:
        raise ValueError(f"{where} monitors {monitor!r}, not monitor={search.monitor!r}")
    for trial in _complete_trials(study):
        _trial_row(trial, search)


def _trial_row(trial: optuna.trial.FrozenTrial, search: Search) -> dict[str, float]:
    """The row of the table for one complete trial; refuses a trial that varied other strengths."""
    if set(trial.params) != set(search.names) or trial.value is None:
        raise ValueError(
            f"study {search.study_name!r} in {search.storage}: trial {trial.number} varied "
            f"{sorted(trial.params)}, not the swept {list(search.names)}; use another study_name"
        )
    return {
        **{name: float(trial.params[name]) for name in search.names},
        search.monitor: float(trial.value),
        **{attr: float(trial.user_attrs.get(attr, math.nan)) for attr in MEASUREMENTS},
    }
