"""Which parameters are regularized: the one rule every other part of the package uses.

The rule is the tutorial's, made precise. A parameter is regularized when it

- is trainable (``requires_grad``) and floating point,
- has ``dim() > 1`` (weight matrices and kernels, not biases or norm scales),
- matches no ``exclude`` glob under any of its names, and
- is not named by the model's ``no_weight_decay()`` (the timm convention), if the model defines one.

A parameter shared by several modules (tied weights) is one parameter: it is counted once, under the
first name ``named_parameters()`` gives it, and excluded if any of its names is excluded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

#: The attribute FSDP1 sets on the parameters it flattens (``torch.distributed.fsdp._common_utils``).
_FSDP1_FLATTENED = "_fsdp_flattened"


@dataclass(frozen=True)
class Selection:
    """The trainable parameters of a model, split by the rule above.

    Attributes:
        regularized: ``(name, parameter)`` pairs that are regularized, in ``named_parameters()`` order.
        others: the remaining trainable ``(name, parameter)`` pairs.
        unmatched: the ``exclude`` patterns that matched no parameter name (likely typos).
    """

    regularized: tuple[tuple[str, nn.Parameter], ...]
    others: tuple[tuple[str, nn.Parameter], ...]
    unmatched: tuple[str, ...]


def select_parameters(model: nn.Module, exclude: Iterable[str] = ()) -> Selection:
    """Split ``model``'s trainable parameters into the regularized ones and the rest.

    Args:
        model: any ``torch.nn.Module``.
        exclude: glob patterns (``fnmatch`` syntax, ``*`` crosses dots) over parameter names.

    Raises:
        ValueError: a parameter was flattened by FSDP1, which hides the shapes the rule needs.

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> chosen = select_parameters(model, exclude=["2.*"])
    >>> [name for name, _ in chosen.regularized]
    ['0.weight']
    >>> [name for name, _ in chosen.others]
    ['0.bias', '2.weight', '2.bias']
    """
    patterns = tuple(exclude)
    aliases: dict[int, list[str]] = {}
    first: dict[int, nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
        first.setdefault(id(param), param)

    skip = _no_weight_decay_names(model)
    matched: set[str] = set()
    regularized: list[tuple[str, nn.Parameter]] = []
    others: list[tuple[str, nn.Parameter]] = []
    for key, param in first.items():
        if not param.requires_grad:
            continue
        if getattr(param, _FSDP1_FLATTENED, False):
            raise ValueError(
                f"Cannot select the regularized parameters of {type(model).__name__}: "
                f"{aliases[key][0]!r} was flattened by FSDP1 (Lightning's FSDPStrategy), so its shape, "
                "which the dim() > 1 rule reads, is gone. Use ModelParallelStrategy with "
                "torch.distributed.fsdp.fully_shard (FSDP2): its DTensor parameters keep their shapes."
            )
        names = aliases[key]
        hits = {pattern for pattern in patterns for name in names if fnmatchcase(name, pattern)}
        matched |= hits
        eligible = param.is_floating_point() and param.dim() > 1
        if eligible and not hits and skip.isdisjoint(names):
            regularized.append((names[0], param))
        else:
            others.append((names[0], param))
    unmatched = tuple(pattern for pattern in patterns if pattern not in matched)
    return Selection(tuple(regularized), tuple(others), unmatched)


def _no_weight_decay_names(model: nn.Module) -> frozenset[str]:
    """The parameter names a model opts out of decay with ``no_weight_decay()``, if it defines it."""
    declared = getattr(model, "no_weight_decay", None)
    if not callable(declared):
        return frozenset()
    return frozenset(str(name) for name in declared())
