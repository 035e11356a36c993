"""Example data and models, kept out of the library's core (as ``lightning.pytorch.demos`` does).

:mod:`~lightning_reg.demos.digits` holds scikit-learn's digits, split for overfitting (as vectors or as
images), and the MLP that ``lightning-reg demo`` and ``lightning-reg sweep`` train;
:mod:`~lightning_reg.demos.resnet` holds torchvision's ResNet-18, written out, for structured sparsity.
The notebooks and benchmarks use them too.
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
    as_images,
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
    "as_images",
    "load_digits_split",
]
