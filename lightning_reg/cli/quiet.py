"""Quieter logs while ``lightning-reg`` trains: the commands print their own progress and results."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from lightning_reg.utilities.optional import import_optuna

__all__ = [
    "quiet_lightning",
    "quiet_optuna",
]


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info logs and the warnings that do not apply to the commands, until the exit."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


@contextlib.contextmanager
def quiet_optuna(active: bool = True) -> Iterator[None]:
    """Lower Optuna's log level to warnings until the exit (if ``active``: Optuna is then imported)."""
    if not active:
        yield
        return
    optuna = import_optuna()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
