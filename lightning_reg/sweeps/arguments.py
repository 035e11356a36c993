"""The arguments of :func:`~lightning_reg.sweeps.sweep`, checked before any model is built.

:func:`check_arguments` checks every argument through :mod:`lightning_reg.checks` and returns them as
one :class:`Search`, which the grid and the Optuna study read.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import lightning.pytorch as L

from lightning_reg.checks import (
    InvalidArgumentError,
    check_choice,
    check_integer,
    check_strength_list,
    check_text,
)
from lightning_reg.options import STRENGTH_NAMES
from lightning_reg.sweeps.result import MEASUREMENTS, MODES, Mode
from lightning_reg.sweeps.study import import_optuna

Sampler = Literal["random", "tpe"]

SAMPLERS: tuple[Sampler, ...] = ("random", "tpe")
#: The Trainer arguments ``sweep`` sets unless ``trainer_kwargs`` gives them: no files, no progress output.
TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
#: Why the strengths of a search must be > 0: what follows "expected ..." in the message.
_LOG_RANGE = "with n_trials it gives the range [min, max] searched on a log scale"


@dataclass(frozen=True)
class Search:
    """The checked arguments of one :func:`~lightning_reg.sweeps.sweep` call."""

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
        """The swept strengths, in the order of :data:`~lightning_reg.options.STRENGTH_NAMES`."""
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
) -> Search:
    """Check every argument of :func:`~lightning_reg.sweeps.sweep`; raise naming the first bad one.

    Args:
        make_model: builds one point's model from the swept strengths.
        strengths: some of :data:`~lightning_reg.options.STRENGTH_NAMES` to their values (``None``: not
            swept).
        monitor: the name of a logged metric, other than the table's columns.
        mode: ``"min"`` or ``"max"``.
        trainer_kwargs: ``Trainer`` arguments, or ``None``.
        n_trials: the number of Optuna trials, or ``None`` for a grid.
        sampler: ``"random"``, ``"tpe"`` or ``None``.
        storage: an Optuna storage URL, or ``None``.
        study_name: the study's name, or ``None``.
        seed: an integer from ``0`` to ``2**32 - 1``, or ``None``.

    Raises:
        ~lightning_reg.checks.InvalidArgumentError: a bad value (a ``ValueError``); a plain
            ``ValueError`` for arguments that do not go together.
        ~lightning_reg.optional.MissingDependencyError: ``n_trials`` without Optuna installed.

    >>> search = check_arguments(
    ...     print, {"l1": [1e-4, 1e-3], "l2": None}, monitor="val_loss", mode="min",
    ...     trainer_kwargs=None, n_trials=None, sampler=None, storage=None, study_name=None, seed=0,
    ... )
    >>> search.names, list(search.points())
    (('l1',), [(0.0001,), (0.001,)])
    """
    if not callable(make_model):
        raise InvalidArgumentError("make_model", make_model, "a callable that builds a model")
    trials = None if n_trials is None else check_integer("n_trials", n_trials, 1)
    values = {
        name: _strength_list(name, value, log_range=trials is not None)
        for name, value in strengths.items()
        if value is not None
    }
    if not values:
        raise ValueError(
            f"nothing to sweep: give at least one of {', '.join(STRENGTH_NAMES)} (e.g. l1=[1e-5, 1e-4, 1e-3])"
        )
    monitor = check_text("monitor", monitor, "the name of a logged metric")
    columns = (*STRENGTH_NAMES, *MEASUREMENTS)
    if monitor in columns:
        other = ", ".join(repr(column) for column in columns)
        raise InvalidArgumentError("monitor", monitor, f"a metric other than the table's columns {other}")
    checked_mode = cast(Mode, check_choice("mode", mode, MODES))
    checked_sampler = cast(
        Sampler, "random" if sampler is None else check_choice("sampler", sampler, SAMPLERS)
    )
    kwargs = _trainer_kwargs(trainer_kwargs)
    seed_value = None if seed is None else check_integer("seed", seed, 0, 2**32 - 1)
    if storage is not None:
        storage = check_text("storage", storage, "an Optuna storage URL")
    if study_name is not None:
        study_name = check_text("study_name", study_name)
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
        import_optuna()
    return Search(
        values=values,
        monitor=monitor,
        mode=checked_mode,
        trainer_kwargs=kwargs,
        n_trials=trials,
        sampler=checked_sampler,
        storage=storage,
        study_name=study_name,
        seed=seed_value,
    )


def _strength_list(name: str, value: object, *, log_range: bool) -> list[float]:
    """``value`` as a list of floats: non-empty, finite, ``>= 0`` (``> 0`` for a log range)."""
    try:
        return check_strength_list(name, value, positive=log_range)
    except InvalidArgumentError as error:
        if not log_range:
            raise
        raise InvalidArgumentError(name, value, f"{error.expected}: {_LOG_RANGE}") from None


def _trainer_kwargs(value: object) -> dict[str, Any]:
    """``TRAINER_DEFAULTS`` updated with ``value``, whose keys must be ``Trainer`` arguments."""
    if value is None:
        return dict(TRAINER_DEFAULTS)
    if not isinstance(value, Mapping):
        raise InvalidArgumentError("trainer_kwargs", value, "a dict of Trainer arguments")
    accepted = [key for key in inspect.signature(L.Trainer.__init__).parameters if key != "self"]
    unknown = [key for key in value if key not in accepted]
    if unknown:
        raise InvalidArgumentError(
            "trainer_kwargs",
            value,
            f"some of {accepted}",
            shown=f"{unknown} not arguments of lightning.pytorch.Trainer",
        )
    return {**TRAINER_DEFAULTS, **value}
