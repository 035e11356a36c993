"""BatchNorm running statistics recomputed from data: honest eval-mode outputs after group L1.

A convolution followed by BatchNorm is scale-invariant in train mode: BatchNorm divides its output by
the batch's standard deviation. Group L1 over coupled channels puts that convolution's row in the
channel's group (with the BatchNorm's scale and shift), so the penalty can shrink the row at no cost to
the training loss, and the proximal step does so geometrically: one channel's row norm went from 0.41 to
3.4e-5 in 18 steps. The running variance is an exponential average of the batches' variances and cannot
follow such a fall: after three epochs it stood at 1.5e10 times the true variance, and eval-mode accuracy
at chance (0.101, against 0.920 in train mode). Recomputed from a pass over training data, the
statistics are those of the weights as they are, and eval mode agrees with train mode (0.921). Ye et
al. (ICLR 2018) describe the same scale invariance; Network Slimming avoids it by penalising only the
BatchNorm scale.

:func:`recalibrate_batchnorm` is ``torch.optim.swa_utils.update_bn``, which resets the statistics and
averages each batch's mean and variance over one pass; this adds the choice of the inputs, a number of
batches, and the count of what was used. A dead channel (its weights, scale and shift exactly zero) gives
exactly zero in eval mode whatever its statistics.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

from lightning_reg.utilities.checks import check_integer

__all__ = ["first_input", "has_batchnorm", "recalibrate_batchnorm"]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer that keeps running statistics.

    >>> has_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    True
    """
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


def first_input(batch: Any) -> Any:
    """What the model is called with: the batch itself, or its first element (``(inputs, targets)``).

    >>> first_input((torch.ones(1), torch.zeros(1)))
    tensor([1.])
    """
    if isinstance(batch, list | tuple):
        return batch[0]
    if isinstance(batch, dict):
        raise TypeError(
            "Invalid batch: a dict; pass inputs=, a function from a batch to what the model is called "
            'with, e.g. inputs=lambda batch: batch["image"]'
        )
    return batch


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    num_batches: int | None = None,
    inputs: Callable[[Any], Any] = first_input,
) -> int:
    """Recompute the running statistics of ``model``'s BatchNorm layers from ``batches``.

    Each layer's running mean and variance become the average, over the batches, of each batch's
    per-channel mean and (unbiased) variance, as ``torch.optim.swa_utils.update_bn`` computes them: the
    model runs in train mode without gradients, then returns to the mode it was in. Costs one forward
    pass over the batches used.

    Args:
        model: the model; called as ``model(inputs(batch))``.
        batches: an iterable of batches, e.g. a training ``DataLoader``. Move them to the model's device
            first, or pass ``inputs`` that does.
        num_batches: use at most this many batches (``None``: all of them).
        inputs: what the model is called with, from a batch: by default the batch itself, or its first
            element when it is a list or tuple.

    Returns:
        The number of batches used (``0`` when ``model`` has no BatchNorm layer: nothing runs).

    >>> model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    >>> data = [(torch.randn(8, 3), None) for _ in range(4)]
    >>> recalibrate_batchnorm(model, data, num_batches=2)
    2
    """
    if num_batches is not None:
        check_integer("num_batches", num_batches, 1)
    if not has_batchnorm(model):
        return 0
    used = 0

    def counted() -> Iterator[Any]:
        nonlocal used
        for batch in itertools.islice(batches, num_batches):
            used += 1
            yield inputs(batch)

    update_bn(counted(), model)
    return used
