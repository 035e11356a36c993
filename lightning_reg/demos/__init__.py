"""Example data and models, kept out of the library's core (as ``lightning.pytorch.demos`` does).

:mod:`~lightning_reg.demos.digits` holds scikit-learn's digits, split for overfitting, and the MLP that
``lightning-reg demo`` and ``lightning-reg sweep`` train; the notebooks use them too.
"""

from lightning_reg.demos.digits import (
    DEPTH,
    EVAL_SPLITS,
    HIDDEN,
    LR,
    TRAIN_SIZE,
    DigitsMLP,
    DigitsSplit,
    RegularizedDigitsMLP,
    load_digits_split,
)

__all__ = [
    "DEPTH",
    "EVAL_SPLITS",
    "HIDDEN",
    "LR",
    "TRAIN_SIZE",
    "DigitsMLP",
    "DigitsSplit",
    "RegularizedDigitsMLP",
    "load_digits_split",
]
