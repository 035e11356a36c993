"""Activity L1: ``strength * sum(|a|) / a.shape[0]`` on the outputs ``a`` of chosen modules.

The term regularizes what a layer outputs rather than its weights (Keras' ``activity_regularizer``;
the sparsity penalty of sparse autoencoders). It is recorded only while :meth:`ActivityPenalty.capture`
is active: ``RegularizedModule`` wraps every training step in it, so validation, testing and prediction
never record. Each call of a module inside the capture adds one term.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ActivityPenalty",
]


class ActivityPenalty:
    """The activity terms of one model: which modules, how strongly, and what the last step recorded.

    Args:
        model: the module whose submodules are named in ``strengths``.
        strengths: module name (as in ``model.named_modules()``) to strength.

    Raises:
        ValueError: a name that is not a submodule of ``model``.

    Example::

        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> activity = ActivityPenalty(model, {"1": 0.5})
        >>> x = torch.ones(2, 3)
        >>> with activity.capture():
        ...     _ = model(x)
        >>> term = activity.take()["1"]
        >>> torch.equal(term, 0.5 * torch.sum(torch.abs(model[1](model[0](x)))) / 2)
        True
    """

    def __init__(self, model: nn.Module, strengths: Mapping[str, float]) -> None:
        modules = dict(model.named_modules())
        unknown = [name for name in strengths if name not in modules]
        if unknown:
            examples = [name for name in modules if name][:5]
            raise ValueError(
                f"Invalid activity_l1: {unknown[0]!r} is not a module of {type(model).__name__} "
                f"(expected names from named_modules(), e.g. {examples})"
            )
        self._modules = {name: modules[name] for name in strengths}
        self.strengths = dict(strengths)
        self._recorded: dict[str, Tensor] = {}
        #: The terms of the last :meth:`take`, detached: what the monitor logs.
        self.last: dict[str, Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.strengths)

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record the activity terms of the chosen modules' calls inside the ``with`` block."""
        if not self.strengths:
            yield
            return
        self._recorded = {}
        handles = [
            module.register_forward_hook(self._recorder(name)) for name, module in self._modules.items()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def take(self) -> dict[str, Tensor]:
        """The terms recorded since the capture began, per module name; recorded terms are cleared."""
        recorded, self._recorded = self._recorded, {}
        self.last = {name: term.detach() for name, term in recorded.items()}
        return recorded

    def _recorder(self, name: str) -> Any:
        strength = self.strengths[name]

        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"activity_l1[{name!r}]: {type(module).__name__} returned a {type(output).__name__}; "
                    "the activity penalty needs a module whose output is one tensor"
                )
            term = strength * torch.sum(torch.abs(output)) / output.shape[0]
            previous = self._recorded.get(name)
            self._recorded[name] = term if previous is None else previous + term

        return record
