"""Where a shared study lives: a database with heartbeats, or Optuna's journal file.

:func:`open_storage` turns the ``storage`` URL of :func:`~lightning_reg.sweeps.sweep` into an Optuna
storage. A database (SQLite, PostgreSQL, MySQL: any SQLAlchemy URL) gets heartbeats: each running trial's
worker writes one every ``heartbeat_interval`` seconds, and a trial whose worker has been silent for
``grace_period`` seconds is failed by the next worker that looks, and queued again
(``RetryHeartbeatStaleTrialCallback``), so that a surviving worker trains it. ``"journal:PATH"`` is
Optuna's journal file: an append-only log under a file lock, for a shared file system with no database
server; it has no heartbeats, so a dead worker's point stays running.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from lightning_reg.utilities.checks import check_integer
from lightning_reg.utilities.optional import import_optuna

if TYPE_CHECKING:
    import optuna

__all__ = [
    "HEARTBEAT_INTERVAL",
    "JOURNAL_PREFIX",
    "MAX_RETRY",
    "describe",
    "has_heartbeats",
    "open_storage",
    "retry_database_race",
]

#: Seconds between two heartbeats of a running trial, in a database storage.
HEARTBEAT_INTERVAL = 60
#: Times a point whose worker died is queued again before it is left failed.
MAX_RETRY = 3
#: The prefix of a ``storage`` that names a journal file rather than a database.
JOURNAL_PREFIX = "journal:"

_Value = TypeVar("_Value")


def open_storage(
    url: str,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int | None = None,
    max_retry: int | None = MAX_RETRY,
) -> optuna.storages.BaseStorage:
    """The Optuna storage that ``url`` names, with heartbeats and retries for a database.

    Pass the result as ``sweep(storage=...)`` to choose the heartbeat's timing; a URL given to
    ``sweep`` itself gets the defaults.

    Args:
        url: an SQLAlchemy URL (``"sqlite:///sweep.db"``, ``"postgresql+psycopg://user@host/db"``), or
            ``"journal:PATH"`` for Optuna's journal file at ``PATH``.
        heartbeat_interval: seconds between two heartbeats of a running trial (an integer >= 1).
        grace_period: seconds without a heartbeat after which a trial's worker counts as dead; ``None``:
            twice ``heartbeat_interval``.
        max_retry: how many times a dead worker's point is queued again; ``None``: without limit.

    Raises:
        ~lightning_reg.InvalidArgumentError: a bad ``heartbeat_interval``, ``grace_period`` or
            ``max_retry``.

    >>> storage = open_storage("sqlite://", heartbeat_interval=1, grace_period=3)
    >>> type(storage).__name__, storage.get_heartbeat_interval()
    ('RDBStorage', 1)
    """
    interval = check_integer("heartbeat_interval", heartbeat_interval, 1)
    grace = 2 * interval if grace_period is None else check_integer("grace_period", grace_period, 1)
    retries = None if max_retry is None else check_integer("max_retry", max_retry, 0)
    library = import_optuna()
    if url.startswith(JOURNAL_PREFIX):
        backend = library.storages.journal.JournalFileBackend(url.removeprefix(JOURNAL_PREFIX))
        journal: optuna.storages.BaseStorage = library.storages.JournalStorage(backend)
        return journal
    with warnings.catch_warnings():  # heartbeats and their retry callback are "experimental"
        warnings.simplefilter("ignore", library.exceptions.ExperimentalWarning)
        callback = library.storages.RetryHeartbeatStaleTrialCallback(retries)
        storage: optuna.storages.BaseStorage = retry_database_race(
            lambda: library.storages.RDBStorage(
                url, heartbeat_interval=interval, grace_period=grace, heartbeat_stale_trial_callback=callback
            )
        )
    return storage


def retry_database_race(open_database: Callable[[], _Value], retries: int = 4) -> _Value:
    """``open_database()``, tried again when workers started together race to set up a new database.

    Optuna creates the tables of a new database without a lock, so the second of two workers starting on
    one new database can fail with "table studies already exists", a duplicate ``alembic_version``
    (optuna/optuna#4621) or, on PostgreSQL, a duplicate enum type; a moment later the tables are there
    and opening the database succeeds.
    """
    from sqlalchemy.exc import DBAPIError  # an Optuna dependency

    attempt = 0
    while True:
        try:
            return open_database()
        except DBAPIError:
            if attempt == retries:
                raise
        time.sleep(0.1 * 2**attempt)
        attempt += 1


def has_heartbeats(storage: object) -> bool:
    """Whether ``storage`` records heartbeats, so that a trial running there belongs to a live worker."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def describe(storage: object) -> str:
    """``storage`` in a message: its URL, or its class."""
    if storage is None or isinstance(storage, str):
        return str(storage)
    url = getattr(storage, "url", None)
    return str(url) if isinstance(url, str) else type(storage).__name__
