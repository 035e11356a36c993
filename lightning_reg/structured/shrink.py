"""Physically remove the hidden units that group L1 has zeroed, keeping the network's outputs.

One job: :func:`shrink` returns a copy of a network whose hidden layers are narrower. Given example inputs, it
removes the coupled units of any model the tracer follows (ResNets, transformers; see
:mod:`~lightning_reg.structured.pruning`). Without them, it takes an ``nn.Sequential`` of ``nn.Linear`` layers
(or of ``nn.Conv1d/2d/3d`` layers) with element-wise modules between them, which needs no tracer; there a
hidden unit (a convolution's channel) between two consecutive layers is removed when

- its outgoing weights are all zero (the next layer's column ``W[:, j]``; what ``group_by="columns"``
  zeroes): it contributes ``0`` to everything after it, so dropping it changes no output; or
- its incoming weights are all zero (its row ``W[j]``; what ``group_by="rows"`` zeroes): it then
  outputs the same value ``c = act(b[j])`` for every input, so its contribution ``W_next[:, j] * c``
  is a constant, which is added to the next layer's bias before the unit is dropped. The output is
  the same number up to the rounding of that addition. A convolution channel is removed this way
  only when ``c == 0``: the next convolution's zero padding would see ``0``, not ``c``, at the borders.

The input features and the final outputs are the network's interface and are never removed.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lightning_reg.structured.layer_rules import bias_of
from lightning_reg.structured.pruning import shrink_coupled

__all__ = [
    "ELEMENTWISE",
    "shrink",
]

_Module = TypeVar("_Module", bound=nn.Module)

#: Modules accepted between two layers: each maps every entry on its own, the same way for every unit.
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

_CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d

_ACCEPTED = (
    "shrink accepts an nn.Sequential of nn.Linear layers, or of nn.Conv1d/2d/3d layers with groups=1, "
    "with only element-wise modules between them (" + ", ".join(kind.__name__ for kind in ELEMENTWISE) + ")"
)


def shrink(module: _Module, example_inputs: Any = None) -> _Module:
    """A copy of ``module`` without the hidden units whose incoming or outgoing weights are all zero.

    With ``example_inputs`` (what ``module`` is called with: a tensor, a tuple of positional inputs or a dict
    of keyword inputs), ``module`` may be any model Torch-Pruning can trace (the ``structured`` extra). Every
    coupled unit of :mod:`~lightning_reg.structured.channels` whose slices are all exactly zero, as
    ``group_by="channels"`` leaves them, is removed with each of its slices: producing rows and biases,
    normalization scales, shifts and running statistics, consumers' input slices, and whole attention heads. A
    layer keeps at least one channel. The copy's outputs in eval mode are checked against the original's on
    ``example_inputs`` (equal to float rounding) before it is returned.

    Without ``example_inputs``, ``module`` must be an ``nn.Sequential`` whose children are
    ``nn.Linear`` layers, or ``nn.Conv1d/2d/3d`` layers with ``groups=1``, and element-wise modules
    (:data:`ELEMENTWISE`). The copy has the same children, in the same order and of the same types,
    with smaller hidden widths:

    - a unit that feeds nothing (the next layer's weights ``W[:, j]``, for a convolution
      ``weight[:, j]``, all zero) is dropped with its row of weights, its bias and that column;
    - a unit that receives nothing (its row ``W[j]`` all zero) outputs the constant
      ``c = act(b[j])`` (``act(0)`` without a bias), computed by the modules between the two layers;
      for ``nn.Linear`` the next layer's bias gains ``W_next[:, j] * c`` (a bias is created when the
      next layer had none and this is not zero) and the unit is dropped. A convolution channel is
      dropped only when ``c == 0``.

    This repeats until nothing more can be dropped (a fold can leave a later unit with no inputs). A
    hidden layer may end with width 0; torch runs such layers, and the copy then outputs a constant.
    The network's input features and outputs are never removed.

    In eval mode (dropout is then the identity) the copy's outputs equal ``module``'s: removing units
    that feed nothing changes no term of any sum; a folded constant moves one addition, which can
    change the last bit. This assumes the hidden values are finite (``0 * inf`` is ``nan``).

    ``module`` is never modified: the work is done on a deep copy. Parameters keep their dtype,
    device and ``requires_grad`` (a created bias takes them from its layer's weight).

    Args:
        module: the network to shrink.
        example_inputs: inputs to trace ``module`` on; ``None`` for the ``nn.Sequential`` path.

    Returns:
        The smaller copy, of ``module``'s type.

    Raises:
        ValueError: with ``example_inputs``: the copy's outputs differ from the original's (see
            :func:`~lightning_reg.structured.pruning.shrink_coupled`); without them: when ``module`` is not an
            ``nn.Sequential``; for a child that is not an accepted
            layer or element-wise module (named by its index and type), a convolution with
            ``groups != 1``, a layer with parameters or buffers other than ``weight`` and ``bias``, a
            layer used twice or sharing parameters, a mix of layer types (e.g. Linear and Conv2d), or
            consecutive layers whose sizes do not chain.

    Example::

        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
        >>> with torch.no_grad():
        ...     net[0].weight[1] = 0.0  # unit 1 receives nothing: it outputs tanh(bias[1])
        ...     net[2].weight[:, 2] = 0.0  # unit 2 feeds nothing
        >>> small = shrink(net)
        >>> small
        Sequential(
          (0): Linear(in_features=4, out_features=1, bias=True)
          (1): Tanh()
          (2): Linear(in_features=1, out_features=2, bias=True)
        )
        >>> sum(p.numel() for p in net.parameters()), sum(p.numel() for p in small.parameters())
        (23, 9)
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(small(x), net(x))
        True
    """
    if example_inputs is not None:
        return shrink_coupled(module, example_inputs)
    positions = _layer_positions(module)
    assert isinstance(module, nn.Sequential)  # checked by _layer_positions
    result = copy.deepcopy(module)
    with torch.no_grad():
        changed = True
        while changed:
            changed = False
            for first, second in itertools.pairwise(positions):
                changed |= _shrink_between(result, first, second)
    return result


def _layer_positions(module: nn.Module) -> list[int]:
    """The indices of ``module``'s layers, after checking that :func:`shrink` can work on it."""
    if type(module) is not nn.Sequential:
        raise ValueError(
            f"Invalid module: a {type(module).__name__}; {_ACCEPTED}; for other models pass "
            "example_inputs, to trace their coupled units"
        )
    positions: list[int] = []
    seen: dict[int, int] = {}
    for index, child in enumerate(module):
        name = f"child {index} ({type(child).__name__})"
        if type(child) in ELEMENTWISE:
            continue
        if type(child) is not nn.Linear and type(child) not in _CONVS:
            hint = (
                "; shrink does not cross a boundary between convolutions and nn.Linear layers"
                if isinstance(child, nn.Flatten | nn.Unflatten)
                else ""
            )
            raise ValueError(f"Cannot shrink {name} of the nn.Sequential{hint}: {_ACCEPTED}")
        if type(child) in _CONVS and getattr(child, "groups", 1) != 1:
            raise ValueError(f"Cannot shrink {name} with groups={getattr(child, 'groups', 1)}: {_ACCEPTED}")
        held = {key for key, _ in child.named_parameters(recurse=False)}
        held |= {key for key, _ in child.named_buffers(recurse=False)}
        if not held <= {"weight", "bias"}:
            extra = ", ".join(sorted(held - {"weight", "bias"}))
            raise ValueError(
                f"Cannot shrink {name}: it holds {extra} besides weight and bias (pruning or weight norm?); "
                f"{_ACCEPTED}"
            )
        for key in (id(child), *(id(param) for param in child.parameters())):
            if key in seen:
                raise ValueError(
                    f"Cannot shrink {name}: it shares its module or parameters with child {seen[key]}, "
                    "and a shared weight cannot be resized for one use only"
                )
            seen[key] = index
        positions.append(index)
    for index in positions[1:]:
        if type(module[index]) is not type(module[positions[0]]):
            raise ValueError(
                f"Cannot shrink a mix of child {positions[0]} ({type(module[positions[0]]).__name__}) and "
                f"child {index} ({type(module[index]).__name__}): {_ACCEPTED}"
            )
    for first, second in itertools.pairwise(positions):
        out_size, in_size = _width(module[first], out=True), _width(module[second], out=False)
        if out_size != in_size:
            raise ValueError(
                f"Cannot shrink: child {first} ({type(module[first]).__name__}) has {out_size} outputs but "
                f"child {second} ({type(module[second]).__name__}) takes {in_size} inputs; the layers do "
                "not chain"
            )
    return positions


def _width(layer: nn.Module, out: bool) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features if out else layer.in_features
    assert isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d)
    return layer.out_channels if out else layer.in_channels


def _shrink_between(network: nn.Sequential, first: int, second: int) -> bool:
    """Drop the removable units between the layers at ``first`` and ``second``; whether any were."""
    layer, following = network[first], network[second]
    assert isinstance(layer, _Layer)
    assert isinstance(following, _Layer)
    weight, following_weight = layer.weight, following.weight
    receives = torch.count_nonzero(weight, dim=tuple(range(1, weight.dim()))) > 0
    feeds = torch.count_nonzero(following_weight, dim=(0, *range(2, following_weight.dim()))) > 0
    constant = ~receives & feeds
    remove = ~feeds
    following_bias: Tensor | None = bias_of(following)
    if bool(constant.any()):
        values = _constant_outputs(layer, [network[index] for index in range(first + 1, second)], constant)
        if isinstance(following, nn.Linear):
            contribution = following_weight[:, constant] @ values.to(following_weight.dtype)
            if following_bias is not None:
                following_bias = following_bias + contribution
            elif bool(contribution.any()):
                following_bias = contribution
            remove |= constant
        else:
            remove[constant] = values == 0
    if not bool(remove.any()):
        return False
    keep = ~remove
    bias = bias_of(layer)
    _set(layer, "weight", weight[keep], weight)
    if bias is not None:
        _set(layer, "bias", bias[keep], bias)
    _set(following, "weight", following_weight[:, keep], following_weight)
    if following_bias is not None:
        old_bias = bias_of(following)
        _set(following, "bias", following_bias, following_weight if old_bias is None else old_bias)
    width = int(keep.sum())
    if isinstance(layer, nn.Linear):
        layer.out_features = width
    else:
        layer.out_channels = width
    if isinstance(following, nn.Linear):
        following.in_features = width
    else:
        following.in_channels = width
    return True


def _constant_outputs(layer: _Layer, between: list[nn.Module], units: Tensor) -> Tensor:
    """What the units ``units`` of ``layer`` output after the modules ``between`` when their rows are 0.

    Their pre-activation is their bias (``0`` without one), for every input. Dropout is skipped: it is
    the identity in eval mode.
    """
    bias = bias_of(layer)
    weight = layer.weight
    values = bias[units] if bias is not None else weight.new_zeros(int(units.sum()))
    shape = (1, -1) + (1,) * (weight.dim() - 2)
    hidden = values.reshape(shape).clone()
    for module in between:
        if not isinstance(module, nn.modules.dropout._DropoutNd):
            hidden = module(hidden)
    return hidden.reshape(-1)


def _set(layer: nn.Module, name: str, value: Tensor, like: Tensor) -> None:
    """Replace parameter ``name`` of ``layer`` by ``value``, with ``like``'s ``requires_grad``."""
    setattr(layer, name, nn.Parameter(value.detach().clone(), requires_grad=like.requires_grad))
