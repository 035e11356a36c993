"""The arguments of :func:`~lightning_reg.sweeps.sweep`, checked before any model is built.

:func:`check_arguments` checks every argument through :mod:`lightning_reg.utilities.checks` and returns
them as one :class:`Search`, which the grid and the Optuna study read.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import lightning.pytorch as L

from lightning_reg.options import STRENGTH_NAMES
from lightning_reg.sweeps.result import MEASUREMENTS, MODES, Mode
from lightning_reg.utilities.checks import (
    InvalidArgumentError,
    check_choice,
    check_integer,
    check_strength_list,
    check_text,
)
from lightning_reg.utilities.optional import import_optuna

__all__ = [
    "PATH_ORDER",
    "PRUNERS",
    "SAMPLERS",
    "TRAINER_DEFAULTS",
    "Pruner",
    "Sampler",
    "Search",
    "WarmStart",
    "check_arguments",
]

Sampler = Literal["random", "tpe"]
Pruner = Literal["median", "hyperband"]
#: ``sweep``'s ``warm_start``: ``True`` carries the weights and the optimizers' states along a path,
#: ``"weights"`` only the weights, ``False`` trains every point from scratch.
WarmStart = bool | Literal["weights"]

SAMPLERS: tuple[Sampler, ...] = ("random", "tpe")
#: The pruners ``sweep`` builds by name (an ``optuna.pruners.BasePruner`` object is accepted as well).
PRUNERS: tuple[Pruner, ...] = ("median", "hyperband")
#: The strengths a warm-started path runs along: the first of these that is swept.
PATH_ORDER = ("l1", "group_l1", "l2")
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
    storage: object  # None, a URL or an Optuna storage
    study_name: str | None
    seed: int | None
    pruner: object = None  # None, one of PRUNERS or an Optuna pruner
    warm_start: WarmStart = False
    catch: tuple[type[BaseException], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The swept strengths, in the order of :data:`~lightning_reg.options.STRENGTH_NAMES`."""
        return tuple(self.values)

    @property
    def uses_study(self) -> bool:
        """Whether the points run as the trials of an Optuna study (a search, a pruner or a storage)."""
        return self.n_trials is not None or self.pruner is not None or self.storage is not None

    def points(self) -> Iterable[tuple[float, ...]]:
        """The grid, in product order (the first swept strength varies slowest)."""
        return itertools.product(*self.values.values())

    def strengths(self, point: Iterable[float]) -> dict[str, float]:
        """A point of the grid as the keywords of ``make_model``."""
        return dict(zip(self.names, point, strict=True))

    def paths(self) -> list[list[dict[str, float]]]:
        """The grid as warm-started paths: one per combination of the other strengths, weakest first.

        The path runs along the first swept strength of :data:`PATH_ORDER`; the paths come in the
        product order of the other strengths.

        >>> search = check_arguments(
        ...     print, {"l1": [1e-4, 1e-3], "l2": [0.0, 0.1]}, monitor="val_loss", mode="min",
        ...     trainer_kwargs=None, n_trials=None, sampler=None, storage=None, study_name=None, seed=0,
        ... )
        >>> for path in search.paths():
        ...     print(path)
        [{'l1': 0.0001, 'l2': 0.0}, {'l1': 0.001, 'l2': 0.0}]
        [{'l1': 0.0001, 'l2': 0.1}, {'l1': 0.001, 'l2': 0.1}]
        """
        along = next(name for name in PATH_ORDER if name in self.values)
        paths: dict[tuple[float, ...], list[dict[str, float]]] = {}
        others = [name for name in self.names if name != along]
        for point in map(self.strengths, self.points()):
            paths.setdefault(tuple(point[name] for name in others), []).append(point)
        return [sorted(path, key=lambda point: point[along]) for path in paths.values()]


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
    pruner: object = None,
    warm_start: object = False,
    catch: object = (),
    progress: object = None,
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
        storage: an Optuna storage URL, ``"journal:PATH"``, an ``optuna.storages.BaseStorage``, or
            ``None``.
        study_name: the study's name, or ``None``.
        seed: an integer from ``0`` to ``2**32 - 1``, or ``None``.
        pruner: ``None``, ``"median"``, ``"hyperband"`` or an ``optuna.pruners.BasePruner``.
        warm_start: ``True``, ``False`` or ``"weights"``.
        catch: an exception class, or a tuple of them.
        progress: a callable that takes a row, or ``None``.

    Raises:
        ~lightning_reg.InvalidArgumentError: a bad value (a ``ValueError``); a plain
            ``ValueError`` for arguments that do not go together.
        ~lightning_reg.MissingDependencyError: Optuna is not installed, and ``n_trials``,
            ``storage`` or ``pruner`` needs it.

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
    values = _values(strengths, log_range=trials is not None)
    monitor = _monitor(monitor)
    checked_mode = cast(Mode, check_choice("mode", mode, MODES))
    checked_sampler = cast(
        Sampler, "random" if sampler is None else check_choice("sampler", sampler, SAMPLERS)
    )
    kwargs = _trainer_kwargs(trainer_kwargs)
    seed_value = None if seed is None else check_integer("seed", seed, 0, 2**32 - 1)
    storage = _storage(storage)
    if study_name is not None:
        study_name = check_text("study_name", study_name)
    checked_pruner = _pruner(pruner)
    warm = _warm_start(warm_start)
    caught = _exception_types("catch", catch)
    if progress is not None and not callable(progress):
        raise InvalidArgumentError("progress", progress, "a callable that takes a row, or None")
    search = Search(
        values=values,
        monitor=monitor,
        mode=checked_mode,
        trainer_kwargs=kwargs,
        n_trials=trials,
        sampler=checked_sampler,
        storage=storage,
        study_name=study_name,
        seed=seed_value,
        pruner=checked_pruner,
        warm_start=warm,
        catch=caught,
    )
    _check_together(search, sampler)
    if trials is not None or storage is not None:
        import_optuna()
    return search


def _values(strengths: Mapping[str, object], log_range: bool) -> dict[str, list[float]]:
    """The swept strengths' checked lists; at least one is required."""
    values = {
        name: _strength_list(name, value, log_range=log_range)
        for name, value in strengths.items()
        if value is not None
    }
    if not values:
        raise ValueError(
            f"nothing to sweep: give at least one of {', '.join(STRENGTH_NAMES)} (e.g. l1=[1e-5, 1e-4, 1e-3])"
        )
    return values


def _monitor(monitor: object) -> str:
    """The name of a logged metric that is none of the table's columns."""
    name = check_text("monitor", monitor, "the name of a logged metric")
    columns = (*STRENGTH_NAMES, *MEASUREMENTS, "error")
    if name in columns:
        other = ", ".join(repr(column) for column in columns)
        raise InvalidArgumentError("monitor", name, f"a metric other than the table's columns {other}")
    return name


def _check_together(search: Search, sampler: object) -> None:
    """Refuse the arguments that are each valid but do not go together (``sampler`` as given)."""
    if search.n_trials is None:
        if sampler is not None:
            raise ValueError(
                f"Invalid sampler: {sampler!r} without n_trials (a grid runs every point; give "
                "n_trials to search with Optuna)"
            )
        if search.study_name is not None and search.storage is None and search.pruner is None:
            raise ValueError(
                f"Invalid study_name: {search.study_name!r} without n_trials, storage or pruner (a plain "
                "grid makes no Optuna study to name)"
            )
    if search.storage is not None and search.study_name is None:
        raise ValueError(
            f"Invalid study_name: None with storage={search.storage!r} (name the study, so that other "
            "workers can load it)"
        )
    if search.warm_start:
        given = (("n_trials", search.n_trials), ("storage", search.storage), ("pruner", search.pruner))
        for name, value in given:
            if value is not None:
                raise ValueError(
                    f"Invalid warm_start: {search.warm_start!r} with {name}={value!r} (a warm-started path "
                    "trains the points of a grid one after another in this process, each stopped by its "
                    "own rule; drop warm_start or " + name + ")"
                )


def _warm_start(value: object) -> WarmStart:
    """``value`` if it is ``True``, ``False`` or ``"weights"``."""
    if isinstance(value, bool):
        return value
    if value == "weights":
        return "weights"
    raise InvalidArgumentError("warm_start", value, "True, False or 'weights'")


def _storage(value: object) -> object:
    """``value`` if it is ``None``, a non-empty string or an Optuna storage object."""
    expected = "an Optuna storage URL, 'journal:PATH' or an optuna.storages.BaseStorage"
    if value is None:
        return None
    if isinstance(value, str):
        return check_text("storage", value, expected)
    if not isinstance(value, import_optuna().storages.BaseStorage):
        raise InvalidArgumentError("storage", value, expected)
    return value


def _pruner(value: object) -> object:
    """``value`` if it is ``None``, one of :data:`PRUNERS` or an Optuna pruner (Optuna is then needed)."""
    if value is None:
        return None
    if isinstance(value, str):
        check_choice("pruner", value, PRUNERS)
    optuna = import_optuna()
    if not isinstance(value, (str, optuna.pruners.BasePruner)):
        expected = "one of " + ", ".join(map(repr, PRUNERS)) + " or an optuna.pruners.BasePruner"
        raise InvalidArgumentError("pruner", value, expected)
    return value


def _exception_types(name: str, value: object) -> tuple[type[BaseException], ...]:
    """``value`` as a tuple of exception classes: a class, or an iterable of them (Optuna's ``catch``).

    >>> _exception_types("catch", (ValueError, RuntimeError))
    (<class 'ValueError'>, <class 'RuntimeError'>)
    >>> _exception_types("catch", "ValueError")
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid catch: 'ValueError' (expected a tuple of ...)
    """
    expected = "a tuple of exception classes, e.g. (ValueError, RuntimeError)"
    items = (value,) if isinstance(value, type) else value
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise InvalidArgumentError(name, value, expected)
    checked = tuple(items)
    if not all(isinstance(item, type) and issubclass(item, BaseException) for item in checked):
        raise InvalidArgumentError(name, value, expected)
    return checked


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
