"""The coupled channel groups of a model, traced by Torch-Pruning, and the removal of dead ones.

Torch-Pruning's ``DependencyGraph`` (the ``structured`` extra: ``pip install
'lightning-reg[structured]'``) runs the model once on example inputs and follows every channel through
the graph: a convolution's output channel reaches its BatchNorm, the next convolution's input slice,
and, across residual additions and concatenations, every tensor that adds into the same stream. Each
of its groups becomes a :class:`~lightning_reg.functional.couplings.Coupling`, whose members are the
parameters' slices:

- a convolution's or linear layer's output row and bias entry, or its input slice (a depthwise
  convolution's input channel is its output channel);
- a BatchNorm's or InstanceNorm's scale and shift;
- an embedding's column, and a bare ``nn.Parameter`` along the axis the tracer found (a ViT's class
  token and position embedding).

A unit is left out (it could not be removed with the outputs kept) when its channels

- reach the model's outputs (a classifier's logits, a backbone's returned features);
- pass through a normalization across channels (``LayerNorm``, ``GroupNorm``, ``RMSNorm``): removing a
  channel that is zero would still change the mean and variance it computes;
- touch a layer whose slices no rule of :mod:`~lightning_reg.structured.layer_rules` gives
  (``nn.MultiheadAttention``, recurrent layers, a grouped convolution; add your own with
  :func:`~lightning_reg.structured.layer_rules.register_layer`), or a parameter along two axes at once.

Attention: the query, key and value projections of an attention module that names its head size
(``head_dim``, as in timm and recent Hugging Face models, or ``attention_head_size``, as in BERT) are
coupled per head: one group holds a whole head, its rows of the three projections (and biases) and
the output projection's columns, so that removing it leaves the head size the module reshapes by.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_reg.functional.couplings import Coupling, Member
from lightning_reg.functional.sharding import is_sharded
from lightning_reg.structured import layer_rules
from lightning_reg.utilities.checks import InvalidArgumentError
from lightning_reg.utilities.optional import require

__all__ = [
    "FEATURE",
    "HEAD_SIZE_ATTRIBUTES",
    "TracedCoupling",
    "Tracing",
    "UntraceableModelError",
    "call",
    "modes_kept",
    "move_inputs",
    "trace",
    "traced_couplings",
]

#: How the error and the docs name this feature.
FEATURE = 'group_by="channels"'

_CROSS_CHANNEL_NORMS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []),
)
#: The attributes an attention module names its head size by (timm and new Hugging Face; BERT).
HEAD_SIZE_ATTRIBUTES = ("head_dim", "attention_head_size")


class UntraceableModelError(ValueError):
    """The tracer cannot follow the channels of a model."""

    __module__ = "lightning_reg"  # public: shown and caught under this name


@dataclass(frozen=True, eq=False)
class TracedCoupling:
    """A coupling and what removing its channels takes.

    Attributes:
        coupling: the channels and their slices.
        producers: the names of the weights (``dim() > 1``) whose output channels make up the unit:
            the convolutions, linear layers and embeddings that write into it.
        root: the layer the tracer started the group from, and its pruning function.
        roots: for each channel, the root layer's indices it stands for (one, or a whole head).
    """

    coupling: Coupling
    producers: tuple[str, ...]
    root: tuple[nn.Module, Callable[..., Any]]
    roots: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, eq=False)
class Tracing:
    """What tracing a model found: its couplings, the units left out and why, and the graph.

    Attributes:
        couplings: the coupled units.
        left_out: ``(root layer, why)`` for each unit that is not a coupling.
        unknown: those of :attr:`left_out` that touch a layer this module cannot slice.
        graph: Torch-Pruning's ``DependencyGraph``, which removes channels.
    """

    couplings: tuple[TracedCoupling, ...]
    left_out: tuple[tuple[str, str], ...]
    unknown: tuple[tuple[str, str], ...]
    graph: Any


class _LeftOutError(Exception):
    """Why a traced group is not a coupling; ``unknown`` when it holds a layer this module cannot slice."""

    def __init__(self, reason: str, unknown: bool = False) -> None:
        super().__init__(reason)
        self.unknown = unknown


def trace(model: nn.Module, example_inputs: Any) -> Tracing:
    """Trace the coupled channel groups of ``model`` on ``example_inputs``.

    The model runs once, in eval mode and with gradients recorded (the tracer reads the autograd
    graph); every module's training mode is restored afterwards.

    Args:
        model: any module the tracer can run.
        example_inputs: what ``model`` is called with: a tensor, a tuple of positional inputs, or a
            dict of keyword inputs, on the model's device.

    Raises:
        MissingDependencyError: Torch-Pruning is not installed.
        UntraceableModelError: the model cannot be run or traced on ``example_inputs``.
    """
    tp = require("torch_pruning", FEATURE, "structured")
    outputs: list[Any] = []

    def forward(module: nn.Module, inputs: Any) -> Any:
        output = call(module, inputs)
        outputs.append(output)
        return output

    with modes_kept(model), torch.enable_grad():
        try:
            custom = layer_rules.customized_pruners()
            graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_inputs,
                forward_fn=forward,
                verbose=False,
                customized_pruners=custom,
            )
            roots = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, *custom)
            groups = list(graph.get_all_groups(root_module_types=roots))
        except Exception as error:
            raise UntraceableModelError(
                f"{FEATURE}: Torch-Pruning cannot trace the channels of {type(model).__name__} on the "
                f"example inputs ({type(error).__name__}: {error}). Pass inputs the model's forward "
                "accepts (a tensor, a tuple of positional inputs or a dict of keyword inputs), or group "
                'by "rows" or "columns", which need no tracing.'
            ) from error
    output_functions = {tensor.grad_fn for tensor in tp.utils.flatten_as_list(outputs) if tensor.grad_fn}
    context = _Context(model, graph, output_functions)
    couplings, left_out, unknown = [], [], []
    for group in groups:
        try:
            couplings.append(context.coupling(group))
        except _LeftOutError as reason:
            entry = (context.module_name(group[0].dep.target.module), str(reason))
            left_out.append(entry)
            if reason.unknown:
                unknown.append(entry)
    return Tracing(tuple(couplings), tuple(left_out), tuple(unknown), graph)


def call(module: nn.Module, inputs: Any) -> Any:
    """``module`` called on example inputs: a tensor, a tuple of positional inputs or a dict of keywords."""
    if isinstance(inputs, dict):
        return module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    return module(inputs)


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Give every module its training mode back: the tracer leaves the model in eval mode."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class _Context:
    """The model's names and the graph's facts that turning a traced group into a coupling reads."""

    def __init__(self, model: nn.Module, graph: Any, output_functions: set[Any]) -> None:
        self.graph = graph
        self.output_functions = output_functions
        self.modules = dict(model.named_modules())
        self.module_names: dict[Any, str] = {module: name for name, module in self.modules.items()}
        self.param_names = {id(param): name for name, param in model.named_parameters()}
        self.owners = {
            id(param): module for module in model.modules() for param in module.parameters(recurse=False)
        }
        self.unwrapped = {id(param): dim for param, dim in graph.unwrapped_parameters}

    def module_name(self, module: Any) -> str:
        if isinstance(module, nn.Parameter):
            return self.param_names.get(id(module), "parameter")
        return self.module_names.get(module, type(module).__name__)

    def coupling(self, group: Any) -> TracedCoupling:
        """The coupling of one traced group (every channel of its root), or :class:`_LeftOutError`."""
        tp = self.graph.ops
        pieces: dict[tuple[int, int], tuple[Tensor, list[int], list[int]]] = {}
        producers: list[str] = []
        attention: dict[nn.Module, int] = {}  # linear layers projecting heads, with the head size
        for item in group:
            node, handler = item.dep.target, item.dep.handler
            out = self.graph.is_out_channel_pruning_fn(handler)
            if node.type == tp.OPTYPE.OUTPUT or (out and node.grad_fn in self.output_functions):
                raise _LeftOutError("its channels reach the model's outputs")
            for param, axis in self._slices(node.module, out):
                key = (id(param), axis)
                _, positions, channels = pieces.setdefault(key, (param, [], []))
                for position, root in zip(item.idxs, item.root_idxs, strict=True):
                    positions.append(int(position))
                    channels.append(int(root))
                if out and param.dim() > 1:
                    producers.append(self.param_names[id(param)])
            head = self._head_size(node.module) if out else None
            if head is not None:
                attention[node.module] = head
        axes: dict[int, int] = {}
        for param_id, axis in pieces:
            if axes.setdefault(param_id, axis) != axis:
                raise _LeftOutError(f"it holds {self.param_names[param_id]!r} along two axes", unknown=True)
        root_module, root_handler = group[0].dep.target.module, group[0].dep.handler
        count = len(group[0].idxs)
        roots: list[tuple[int, ...]] = [(int(index),) for index in group[0].idxs]
        name = self.module_name(root_module)
        head_sizes = set(attention.values())
        if len(attention) >= 2 and len(head_sizes) == 1:  # query, key, value: one group per head
            size = head_sizes.pop()
            if count % size == 0 and size < count:
                roots = [tuple(range(start, start + size)) for start in range(0, count, size)]
                count //= size
                name = self._parent_name(next(iter(attention)))
        of_channel = {root: channel for channel, indices in enumerate(roots) for root in indices}
        members = []
        for (param_id, axis), (param, positions, channels) in pieces.items():
            order = sorted(set(zip(positions, channels, strict=True)))
            device = param.device
            members.append(
                Member(
                    self.param_names[param_id],
                    param,
                    axis,
                    torch.tensor([position for position, _ in order], dtype=torch.long, device=device),
                    torch.tensor([of_channel[root] for _, root in order], dtype=torch.long, device=device),
                )
            )
        return TracedCoupling(
            Coupling(name, count, tuple(members)),
            tuple(dict.fromkeys(producers)),
            (root_module, root_handler),
            tuple(roots),
        )

    def _slices(self, module: Any, out: bool) -> list[tuple[Tensor, int]]:
        """The ``(parameter, axis)`` slices a group holds of ``module``, pruned on outputs if ``out``."""
        if isinstance(module, nn.Parameter):
            owner = self.owners.get(id(module))
            if owner is not None and _normalizes_across_channels(owner):
                raise _LeftOutError(
                    f"its channels pass through {type(owner).__name__}, a normalization across channels"
                )
            return [(module, self.unwrapped[id(module)])]
        if _normalizes_across_channels(module):
            raise _LeftOutError(
                f"its channels pass through {type(module).__name__}, a normalization across channels"
            )
        rule = layer_rules.rule_for(module) if isinstance(module, nn.Module) else None
        if rule is not None:
            try:
                return rule.slices(module, out)
            except layer_rules.UnslicedLayerError as reason:
                raise _LeftOutError(
                    f"it touches {self.module_name(module)}, {reason}", unknown=True
                ) from None
        if isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False)):
            raise _LeftOutError(
                f"it touches {self.module_name(module)} ({type(module).__name__}): slices not mapped",
                unknown=True,
            )
        return []  # an operation of the graph (addition, reshape, concatenation, ...): no parameters

    def _head_size(self, module: Any) -> int | None:
        """The head size of the attention module that ``module`` (a linear projection) belongs to."""
        if not isinstance(module, nn.Linear):
            return None
        parent = self._parent(module)
        for attribute in HEAD_SIZE_ATTRIBUTES:
            size = getattr(parent, attribute, None)
            if isinstance(size, int) and size > 0:
                return size
        return None

    def _parent_name(self, module: nn.Module) -> str:
        return self.module_names[module].rpartition(".")[0]

    def _parent(self, module: nn.Module) -> nn.Module | None:
        return self.modules.get(self._parent_name(module))


def _normalizes_across_channels(module: nn.Module) -> bool:
    """LayerNorm, GroupNorm, RMSNorm and look-alikes (Hugging Face's ``*RMSNorm``, ``*LayerNorm``)."""
    if isinstance(module, layer_rules.PER_CHANNEL_NORMS):
        return False
    name = type(module).__name__
    return isinstance(module, _CROSS_CHANNEL_NORMS) or name.endswith(("LayerNorm", "RMSNorm", "GroupNorm"))


def move_inputs(example_inputs: Any, device: torch.device) -> Any:
    """``example_inputs`` (a tensor, or tuples, lists and dicts of them) on ``device``."""
    if isinstance(example_inputs, Tensor):
        return example_inputs.to(device)
    if isinstance(example_inputs, dict):
        return {key: move_inputs(value, device) for key, value in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return type(example_inputs)(move_inputs(value, device) for value in example_inputs)
    return example_inputs


def traced_couplings(model: nn.Module, example_inputs: Any) -> list[tuple[Coupling, tuple[str, ...]]]:
    """The couplings of ``model`` with their producers, for ``Regularizer(group_by="channels")``.

    ``example_inputs`` are moved to the device of the model's first parameter. A unit left out for a
    layer this module does not know is named in a warning; units reaching the outputs or a
    normalization across channels are left out silently, as the documentation says.

    Raises:
        InvalidArgumentError: ``example_inputs`` is ``None``.
        ValueError: a parameter is sharded (``DTensor``): coupled groups need whole tensors.
        UntraceableModelError, MissingDependencyError: see :func:`trace`.
    """
    if example_inputs is None:
        raise InvalidArgumentError(
            "example_inputs",
            None,
            f"what the model is called with, to trace its coupled channels with {FEATURE} (a tensor, a "
            "tuple of positional inputs or a dict of keyword inputs; RegularizedModule takes its "
            "example_input_array)",
        )
    params = list(model.parameters())
    sharded = [name for name, param in model.named_parameters() if is_sharded(param)]
    if sharded:
        raise ValueError(
            f"{FEATURE} needs whole tensors, but {sharded[0]!r} is sharded (DTensor, FSDP2): group by "
            '"rows" or "columns" with sharded models.'
        )
    device = params[0].device if params else torch.device("cpu")
    tracing = trace(model, move_inputs(example_inputs, device))
    if tracing.unknown:
        unknown = [f"{name} ({reason})" for name, reason in tracing.unknown]
        warnings.warn(
            f"{FEATURE}: these units of {type(model).__name__} are not grouped, their coupled slices "
            f"cannot be followed: {'; '.join(unknown)}",
            UserWarning,
            stacklevel=3,
        )
    return [(traced.coupling, traced.producers) for traced in tracing.couplings]
