"""The package's per-step tensor work as kernels that ``torch.compile`` generates (``fused=True``).

Eager PyTorch runs each operation as its own kernel: the optimizer-aware proximal step of one weight
under Adam is five passes over memory (``sqrt``, ``+ eps``, ``w * d``, ``softshrink``, ``/ d``). Compiled
by inductor (C++ on the CPU, Triton on CUDA), the same arithmetic is one loop per weight that reads
``w`` and the optimizer's state once and writes ``w`` once.

Each kernel here is the arithmetic of its eager counterpart in :mod:`~lightning_reg.functional.kernels`, over
a list of tensors, with every number that changes from step to step (a learning rate, a step count's bias
corrections, the warm-up's ramp, a step ``GradScaler`` skipped) passed as a tensor. A kernel is compiled once
for each layout of its arguments (the tensors' shapes, strides, dtypes and devices), as its own function, so
that a regularizer with several layouts never runs into Dynamo's limit of recompiles per function. Nothing
recompiles from one step to the next (tested).

The numbers are those of the eager path to float tolerance, not bit for bit: inductor evaluates the
same formulas in another order (its reductions) and rounds ``sqrt`` correctly where this CPU build's
eager ``sqrt`` may not. The zero patterns are the same (tested on the Lasso, Elastic Net and
multi-task Lasso fits and on coupled units).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from lightning_reg.utilities.checks import InvalidArgumentError

__all__ = [
    "PerLayout",
    "abs_sum",
    "add_scaled_sign_",
    "check_supported",
    "scalars",
    "scale_",
    "soft_threshold_",
    "soft_threshold_scaled_",
]


def check_supported(devices: Iterable[torch.device]) -> None:
    """Raise :class:`~lightning_reg.InvalidArgumentError` naming ``fused`` and the fix where
    ``torch.compile`` cannot generate kernels for one of ``devices``.

    On the CPU inductor writes C++ and needs a C++ compiler; on CUDA it writes Triton kernels.

    >>> check_supported([torch.device("cpu")])  # g++ is installed here
    """
    for kind in sorted({device.type for device in devices}):
        if kind == "cpu" and not _has_cpp_compiler():
            raise InvalidArgumentError(
                "fused",
                True,
                "False on a machine without a C++ compiler: torch.compile's inductor writes C++ kernels "
                "for the CPU. Install one (Debian: apt-get install g++) or leave fused=False",
            )
        if kind == "cuda" and not _has_triton():
            raise InvalidArgumentError(
                "fused", True, "False without Triton, which inductor needs for CUDA: pip install triton"
            )
        if kind not in ("cpu", "cuda"):
            raise InvalidArgumentError("fused", True, f"False on {kind!r} devices (supported: CPU, CUDA)")


@functools.cache
def _has_cpp_compiler() -> bool:
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return False
    return True


def _has_triton() -> bool:
    from torch.utils._triton import has_triton

    return bool(has_triton())


class PerLayout:
    """``function`` compiled by ``torch.compile`` (``fullgraph``, static shapes) once per layout of its
    arguments, each layout as a function of its own (Dynamo keeps its compiled graphs, and counts its
    recompiles, per function code).

    The arguments are tensors, ``None``, booleans and lists or tuples of those: a float would be
    compiled in as a constant and recompile whenever it changes. Under a ``TorchDispatchMode`` (an
    operator counter, ``FlopCounterMode``), where compiled code cannot run, ``function`` runs eagerly.

    >>> double = PerLayout(lambda x: x * 2)
    >>> double(torch.ones(2)), double(torch.ones(3))
    (tensor([2., 2.]), tensor([2., 2., 2.]))
    >>> len(double.compiled)
    2
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def __call__(self, *args: Any) -> Any:
        if _get_current_dispatch_mode() is not None:
            return self.function(*args)
        key = tuple(_layout(arg) for arg in args)
        compiled = self.compiled.get(key)
        if compiled is None:
            compiled = self.compiled[key] = _compile_copy(self.function, len(self.compiled))
        return compiled(*args)


def _layout(arg: Any) -> Any:
    if isinstance(arg, Tensor):
        return (arg.shape, arg.stride(), arg.dtype, arg.device)
    if isinstance(arg, list | tuple):
        return tuple(_layout(item) for item in arg)
    if arg is None or isinstance(arg, bool):
        return arg
    raise TypeError(f"PerLayout takes tensors, None, booleans and lists of those, not {type(arg).__name__}")


def _compile_copy(function: Callable[..., Any], index: int) -> Callable[..., Any]:
    name = f"{getattr(function, '__name__', 'kernel')}_layout{index}"
    code = function.__code__.replace(co_name=name)
    copy = types.FunctionType(code, function.__globals__, name, function.__defaults__, function.__closure__)
    return torch.compile(copy, fullgraph=True, dynamic=False)


def scalars(values: Sequence[float | Tensor], device: torch.device) -> Tensor:
    """``values`` as one float64 tensor on ``device``: the per-tensor numbers a kernel takes.

    >>> scalars([0.5, torch.tensor(2.0)], torch.device("cpu"))
    tensor([0.5000, 2.0000], dtype=torch.float64)
    """
    if all(isinstance(value, float | int) for value in values):
        return torch.tensor(values, dtype=torch.float64, device=device)
    return torch.stack([torch.as_tensor(value, dtype=torch.float64, device=device) for value in values])


# -- the kernels: each the arithmetic of its eager counterpart in lightning_reg.functional.kernels --


def _abs_sum(params: list[Tensor]) -> Tensor:
    total = torch.sum(torch.abs(params[0]))
    for param in params[1:]:
        total = total + torch.sum(torch.abs(param))
    return total


def _add_scaled_sign(grads: list[Tensor], params: list[Tensor], factor: Tensor) -> None:
    for grad, param in zip(grads, params, strict=True):
        grad.add_(torch.sign(param) * factor.to(param.dtype))


def _scale(params: list[Tensor], factors: Tensor) -> None:
    for index, param in enumerate(params):
        param.mul_(factors[index].to(param.dtype))


def _soft_threshold(params: list[Tensor], thresholds: Tensor, taken: Tensor | None) -> None:
    if taken is not None:
        thresholds = thresholds * taken
    for index, param in enumerate(params):
        threshold = thresholds[index].to(param.dtype)
        param.sub_(torch.clamp(param, -threshold, threshold))


def _soft_threshold_scaled(
    params: list[Tensor],
    firsts: list[Tensor],
    seconds: list[Tensor] | None,
    root: bool,
    offsets: Tensor,
    scales: Tensor,
    tractable: Tensor | None,
    taken: Tensor | None,
) -> None:
    if taken is not None:
        scales = scales * taken
    for index, param in enumerate(params):
        base = firsts[index] if seconds is None else firsts[index] - seconds[index] * seconds[index]
        denominator = (torch.sqrt(base) if root else base) + offsets[index].to(param.dtype)
        if tractable is not None:
            denominator = torch.where(tractable, denominator, 1.0)
        scale = scales[index].to(param.dtype)
        scaled = param * denominator
        scaled = scaled - torch.clamp(scaled, -scale, scale)
        param.copy_(scaled / denominator)


_ABS_SUM = PerLayout(_abs_sum)
_ADD_SCALED_SIGN = PerLayout(_add_scaled_sign)
_SCALE = PerLayout(_scale)
_SOFT_THRESHOLD = PerLayout(_soft_threshold)
_SOFT_THRESHOLD_SCALED = PerLayout(_soft_threshold_scaled)


@torch.no_grad()
def abs_sum(params: Sequence[Tensor]) -> Tensor:
    """``sum|w|`` over ``params`` (:func:`~lightning_reg.functional.kernels.abs_sum`), one compiled reduction.

    >>> abs_sum([torch.tensor([[1.0, -2.0]]), torch.tensor([[-3.0]])])
    tensor(6.)
    """
    result: Tensor = _ABS_SUM(list(params))
    return result


@torch.no_grad()
def add_scaled_sign_(grads: Sequence[Tensor], params: Sequence[Tensor], factor: Tensor) -> None:
    """In place, ``grads[i] += sign(params[i]) * factor``
    (:func:`~lightning_reg.functional.kernels.add_scaled_sign_`).

    >>> grad = torch.zeros(3)
    >>> add_scaled_sign_([grad], [torch.tensor([-2.0, 0.0, 5.0])], torch.tensor(0.5))
    >>> grad
    tensor([-0.5000,  0.0000,  0.5000])
    """
    if params:
        _ADD_SCALED_SIGN(list(grads), list(params), factor)


@torch.no_grad()
def scale_(params: Sequence[Tensor], factors: Tensor) -> None:
    """In place, ``params[i] *= factors[i]``: decoupled weight decay, each weight with its own factor.

    >>> w = torch.tensor([2.0, -4.0])
    >>> scale_([w], torch.tensor([0.5], dtype=torch.float64))
    >>> w
    tensor([ 1., -2.])
    """
    if params:
        _SCALE(list(params), factors)


@torch.no_grad()
def soft_threshold_(params: Sequence[Tensor], thresholds: Tensor, taken: Tensor | None = None) -> None:
    """In place, ``w <- w - clamp(w, -t, t)`` with ``t = thresholds[i] * taken`` for ``params[i]``.

    ``taken`` (a 0-dim tensor, ``0`` for a step a fused optimizer skipped) defaults to ``1``.

    >>> w = torch.tensor([-1.5, -0.2, 0.0, 0.3, 2.0])
    >>> soft_threshold_([w], torch.tensor([0.5], dtype=torch.float64))
    >>> w
    tensor([-1.0000,  0.0000,  0.0000,  0.0000,  1.5000])
    """
    if params:
        _SOFT_THRESHOLD(list(params), thresholds, taken)


@torch.no_grad()
def soft_threshold_scaled_(
    params: Sequence[Tensor],
    firsts: Sequence[Tensor],
    seconds: Sequence[Tensor] | None,
    *,
    root: bool,
    offsets: Tensor,
    scales: Tensor,
    tractable: Tensor | None = None,
    taken: Tensor | None = None,
) -> None:
    """In place, ``w <- sign(w) * max(|w| - t, 0)`` with ``t = scales[i] * taken / d`` per entry: the
    optimizer-aware proximal step of :func:`~lightning_reg.functional.kernels.soft_threshold_scaled_`,
    with the denominator ``d`` made inside the kernel from the optimizer's state.

    ``d = sqrt(firsts[i] - seconds[i]**2) + offsets[i]`` (no ``seconds``: ``sqrt(firsts[i]) + ...``;
    without ``root`` no square root); ``1`` where ``tractable`` is false (see
    :class:`~lightning_reg.optim.step_sizes.Denominator`). ``d * w`` is soft-thresholded by ``scales[i] *
    taken`` and divided by ``d`` again.

    >>> w = torch.tensor([-1.5, -0.2, 0.3, 2.0])
    >>> v = torch.tensor([1.0, 1.0, 4.0, 16.0])
    >>> one = torch.tensor([1.0], dtype=torch.float64)
    >>> soft_threshold_scaled_([w], [v], None, root=True, offsets=one * 0, scales=one)
    >>> w
    tensor([-0.5000,  0.0000,  0.0000,  1.7500])
    """
    if params:
        _SOFT_THRESHOLD_SCALED(
            list(params),
            list(firsts),
            None if seconds is None else list(seconds),
            root,
            offsets,
            scales,
            tractable,
            taken,
        )
