"""The slice rules of the channel tracer: which ``(parameter, axis)`` slices a channel group holds of a layer.

A channel group that reaches a layer holds a slice of its parameters: on the layer's outputs (a linear
layer's weight rows and bias entries) or on its inputs (its weight columns). The tracer
(:mod:`~lightning_reg.structured.channels`) looks each layer up here, by its class and then its base
classes, and leaves out, with a warning, any group that reaches a layer with parameters and no rule.

Add a rule for a layer of your own with :func:`register_layer`. When Torch-Pruning does not know the
layer either, give it a Torch-Pruning pruning function too (``pruner=``: a
``torch_pruning.pruner.function.BasePruningFunc``, which says how many channels the layer has and removes
them): the tracer passes it to Torch-Pruning as a ``customized_pruners`` entry, so that the layer is a
node of the graph rather than an operation it guesses at, and :func:`~lightning_reg.shrink` removes the
layer's channels with it.

Example: a layer that mixes channels with an ``einsum`` (weight ``(out, in)``)::

    >>> import torch
    >>> from torch import nn
    >>> class ChannelMix(nn.Module):
    ...     def __init__(self, channels_in, channels_out):
    ...         super().__init__()
    ...         self.mix = nn.Parameter(torch.randn(channels_out, channels_in))
    ...     def forward(self, x):
    ...         return torch.einsum("oc,bchw->bohw", self.mix, x)
    >>> register_layer(ChannelMix, lambda layer, out: [(layer.mix, 0 if out else 1)])
    >>> rule_for(ChannelMix(2, 3)).slices(ChannelMix(2, 3), True)[0][1]
    0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from lightning_reg.utilities.checks import InvalidArgumentError

__all__ = [
    "PER_CHANNEL_NORMS",
    "LayerRule",
    "SliceRule",
    "UnslicedLayerError",
    "bias_of",
    "customized_pruners",
    "register_layer",
    "rule_for",
]

#: ``(layer, out) -> [(parameter, axis), ...]``: the slices a channel group holds of ``layer``, on its
#: outputs (``out``) or on its inputs. Raise :class:`UnslicedLayerError` for a layer that cannot be sliced.
SliceRule = Callable[[Any, bool], list[tuple[Tensor, int]]]

#: The normalizations with a scale and shift per channel: a channel's slices are one entry of each.
PER_CHANNEL_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


class UnslicedLayerError(Exception):
    """A layer whose channels this rule cannot slice (the reason completes "it touches <layer>, ...")."""


@dataclass(frozen=True)
class LayerRule:
    """How the tracer slices one type of layer, and (for layers Torch-Pruning does not know) how
    Torch-Pruning counts and removes its channels."""

    slices: SliceRule
    pruner: Any = None


_RULES: dict[type[nn.Module], LayerRule] = {}


def register_layer(layer_type: type[nn.Module], slices: SliceRule, *, pruner: Any = None) -> None:
    """Teach the channel tracer the slices of ``layer_type`` (and its subclasses without a rule).

    Args:
        layer_type: an ``nn.Module`` subclass.
        slices: ``(layer, out) -> [(parameter, axis), ...]``: the parameters, and the axis of each, that
            a channel on the layer's outputs (``out=True``) or inputs (``out=False``) indexes.
        pruner: a ``torch_pruning.pruner.function.BasePruningFunc`` instance for a layer Torch-Pruning
            does not know, or ``None``.

    Raises:
        ~lightning_reg.InvalidArgumentError: ``layer_type`` is not an ``nn.Module`` subclass, or
            ``slices`` is not callable.
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise InvalidArgumentError("layer_type", layer_type, "an nn.Module subclass")
    if not callable(slices):
        raise InvalidArgumentError("slices", slices, "a callable (layer, out) -> [(parameter, axis), ...]")
    _RULES[layer_type] = LayerRule(slices, pruner)


def rule_for(layer: nn.Module) -> LayerRule | None:
    """The rule of ``layer``'s class, or of its nearest base class that has one; ``None`` if none has."""
    for cls in type(layer).__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule
    return None


def customized_pruners() -> dict[type[nn.Module], Any]:
    """The Torch-Pruning pruning functions registered with the rules, by layer type."""
    return {layer_type: rule.pruner for layer_type, rule in _RULES.items() if rule.pruner is not None}


def bias_of(layer: nn.Module) -> nn.Parameter | None:
    """The layer's ``bias`` parameter, or ``None`` (no bias, or ``bias=False``)."""
    bias = getattr(layer, "bias", None)
    return bias if isinstance(bias, nn.Parameter) else None


def _bias_slices(layer: nn.Module) -> list[tuple[Tensor, int]]:
    bias = bias_of(layer)
    return [] if bias is None else [(bias, 0)]


def _linear(layer: nn.Linear, out: bool) -> list[tuple[Tensor, int]]:
    return [(layer.weight, 0), *_bias_slices(layer)] if out else [(layer.weight, 1)]


def _conv(layer: nn.modules.conv._ConvNd, out: bool) -> list[tuple[Tensor, int]]:
    """Output channels are ``weight`` axis 0 (1 when transposed) and the bias; a depthwise convolution's
    input channel is its output channel."""
    out_axis, in_axis = (1, 0) if layer.transposed else (0, 1)
    depthwise = layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels
    if layer.groups > 1 and not depthwise:
        raise UnslicedLayerError(f"a grouped convolution ({layer.groups} groups)")
    if out:
        return [(layer.weight, out_axis), *_bias_slices(layer)]
    return [(layer.weight, out_axis if depthwise else in_axis)]


def _per_channel_norm(layer: nn.Module, out: bool) -> list[tuple[Tensor, int]]:
    return [(param, 0) for param in (layer.weight, layer.bias) if isinstance(param, Tensor)]


def _embedding(layer: nn.Embedding, out: bool) -> list[tuple[Tensor, int]]:
    return [(layer.weight, 1)]


def _prelu(layer: nn.PReLU, out: bool) -> list[tuple[Tensor, int]]:
    return [(layer.weight, 0)] if layer.num_parameters > 1 else []


register_layer(nn.Linear, _linear)
register_layer(nn.modules.conv._ConvNd, _conv)
for _norm in PER_CHANNEL_NORMS:
    register_layer(_norm, _per_channel_norm)
register_layer(nn.Embedding, _embedding)
register_layer(nn.PReLU, _prelu)
