"""Remove the coupled units that group L1 has zeroed from a copy of any traceable model.

A unit of :mod:`~lightning_reg.structured.channels` is dead when every slice of it is exactly zero: its
producing rows and biases, its normalization's scale and shift, its consumers' input slices. It then
contributes nothing downstream (a BatchNorm with zero scale and shift outputs zero whatever its statistics),
so Torch-Pruning's ``DependencyGraph`` can remove it, with every coupled slice and the normalization's running
statistics, without changing the outputs.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch
from torch import nn

from lightning_reg.structured.channels import TracedCoupling, Tracing, call, modes_kept, move_inputs, trace
from lightning_reg.utilities.nested import leaves

__all__ = [
    "RELATIVE_TOLERANCE",
    "dead_channels",
    "remove_channels",
    "shrink_coupled",
]

_Module = TypeVar("_Module", bound=nn.Module)

#: How far the copy's outputs may be from the original's, relative to the largest output: the rounding
#: of sums that now have fewer (zero) terms, or are split into other blocks by the kernels.
RELATIVE_TOLERANCE = 1e-4


def dead_channels(traced: TracedCoupling) -> list[int]:
    """The channels of ``traced`` whose slices are exactly zero in every member."""
    with torch.no_grad():
        alive = traced.coupling.channel_sums(
            [(member.param != 0).to(torch.float32) for member in traced.coupling.members]
        )
    return [int(channel) for channel in torch.nonzero(alive == 0).flatten()]


def remove_channels(tracing: Tracing, traced: TracedCoupling, channels: list[int]) -> None:
    """Remove ``channels`` of ``traced`` from the traced model, in place, with every coupled slice."""
    module, handler = traced.root
    indices = sorted(index for channel in channels for index in traced.roots[channel])
    tracing.graph.get_pruning_group(module, handler, indices).prune()


def shrink_coupled(module: _Module, example_inputs: Any) -> _Module:
    """A copy of ``module`` without its dead coupled units; see
    :func:`~lightning_reg.structured.shrink.shrink`.

    Raises:
        MissingDependencyError: Torch-Pruning is not installed.
        UntraceableModelError: the tracer cannot run ``module`` on ``example_inputs``.
        ValueError: the copy's outputs on ``example_inputs`` (in eval mode) differ from the original's
            by more than float rounding: a layer the tracer took for element-wise mixes channels.
    """
    result = copy.deepcopy(module)
    params = list(result.parameters())
    inputs = move_inputs(example_inputs, params[0].device if params else torch.device("cpu"))
    tracing = trace(result, inputs)
    for traced in tracing.couplings:
        dead = dead_channels(traced)
        if len(dead) == traced.coupling.count:
            dead = dead[1:]  # a layer keeps one (zero) channel: no layer of width 0
        if dead:
            remove_channels(tracing, traced, dead)
    _check_outputs(module, result, inputs)
    return result


def _check_outputs(original: nn.Module, shrunk: nn.Module, inputs: Any) -> None:
    """Refuse a copy whose outputs on ``inputs``, in eval mode, are not the original's."""
    with modes_kept(original), modes_kept(shrunk), torch.no_grad():
        original.eval()
        shrunk.eval()
        before, after = _tensors(call(original, inputs)), _tensors(call(shrunk, inputs))
    same = len(before) == len(after) and all(
        a.shape == b.shape
        and torch.allclose(a, b, rtol=RELATIVE_TOLERANCE, atol=RELATIVE_TOLERANCE * float(b.abs().max()))
        for a, b in zip(after, before, strict=False)
        if b.numel()
    )
    if not same:
        raise ValueError(
            f"Cannot shrink {type(original).__name__}: without its dead units its outputs on the example "
            "inputs change, so some layer mixes channels in a way the tracer does not follow. Nothing "
            "was removed from the model, which is left as it was."
        )


def _tensors(output: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a model's output (a tensor, or lists, tuples and dicts of them)."""
    return [leaf for leaf in leaves(output) if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()]
