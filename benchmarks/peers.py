"""Structured sparsity head to head at equal MACs: lightning-reg, Torch-Pruning, OTO and torchao's PAT.

    .venv/bin/python benchmarks/peers.py            # width 16, 12 epochs, 3 strengths, seeds 0 1 2
    .venv/bin/python benchmarks/peers.py --quick    # width 4, 1 epoch, one strength, one seed: a smoke run

Every entry trains the same network from the same initialisation, on the same data, for the same number of
epochs, with Adam (the variant each method offers), then removes channels, then fine-tunes for the same
number of epochs with plain Adam:

- the network: :class:`lightning_reg.demos.resnet.ResNet` (ResNet-18's layout, a 3x3 stem), ``--width``
  channels in its first stage;
- the data: scikit-learn's 8x8 digits (1200 training, 597 validation images, standardized) upsampled to
  ``--side`` x ``--side`` (16 by default);
- ``lightning-reg``: proximal channel group L1 (``group_by="channels"``, ``l1_mode="proximal"``) at each
  ``--strengths``, then :func:`lightning_reg.shrink`; its MACs set each row's target;
- ``Torch-Pruning``: ``GroupNormPruner`` sparse training (its ``regularize`` after each backward), then
  pruning step by step until its MACs are at most the target;
- ``OTO``: the HESSO optimizer (Adam variant) at each ``--oto-sparsities`` (a fraction of channel groups,
  not of MACs), then ``construct_subnet``;
- ``PAT``: torchao's prototype pruning-aware training (group lasso over each convolution's filters) at
  each ``--pat-strengths``, whose zero filters Torch-Pruning then removes (PAT removes nothing itself).

Torch-Pruning is pruned to each lightning-reg row's MACs; OTO's and PAT's knobs do not set MACs, so each
of them draws its own front of accuracy against MACs and latency.

Each entry's BatchNorm statistics are recomputed from the training images before every accuracy
(:func:`lightning_reg.recalibrate_batchnorm`), so that all are measured alike. For each entry the table
gives accuracy right after removing channels and after fine-tuning, MACs and parameters (Torch-Pruning's
counter), CPU latency (median of ``--repeats`` calls on a batch of 128, eval mode), training time per
epoch, and the milliseconds per step the method spends updating the weights (its work after the backward
pass, and the optimizer's step). A first row per seed trains the same network with plain Adam and removes
nothing: the dense reference. A peer that is not installed or fails is reported with its error. The
peers come with the ``peers`` extra: ``pip install 'lightning-reg[peers]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_reg import Regularizer, recalibrate_batchnorm, shrink
from lightning_reg.demos import DigitsSplit, as_images, load_digits_split
from lightning_reg.demos.resnet import ResNet
from lightning_reg.utilities.optional import require

Step = Callable[[nn.Module], None]


@dataclass
class Setup:
    """What every entry shares."""

    data: DigitsSplit
    epochs: int
    finetune: int
    batch: int
    lr: float
    repeats: int

    @property
    def example(self) -> Tensor:
        return self.data.x_train[:1]


@dataclass
class Result:
    method: str
    seed: int
    acc_removed: float = float("nan")
    acc_tuned: float = float("nan")
    macs: float = float("nan")
    params: float = float("nan")
    latency_ms: float = float("nan")
    epoch_s: float = float("nan")
    update_ms: float = float("nan")
    error: str = ""


@dataclass
class Timing:
    """Seconds per epoch, and milliseconds per step spent updating the weights: the method's own work
    after the backward pass (its ``after_backward``, then ``optimizer.step``)."""

    epoch_s: float
    update_ms: float


def train(
    model: nn.Module,
    setup: Setup,
    epochs: int,
    seed: int,
    optimizer: torch.optim.Optimizer | None = None,
    after_backward: Step | None = None,
) -> Timing:
    """``epochs`` epochs of mini-batch training (Adam at ``setup.lr`` unless given), timed."""
    data = setup.data
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=setup.lr)
    generator = torch.Generator().manual_seed(seed)
    updating, steps = 0.0, 0
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(data.x_train), generator=generator).split(setup.batch):
            optimizer.zero_grad()
            F.cross_entropy(model(data.x_train[index]), data.y_train[index]).backward()
            update = time.perf_counter()
            if after_backward is not None:
                after_backward(model)
            optimizer.step()
            updating += time.perf_counter() - update
            steps += 1
    return Timing((time.perf_counter() - start) / max(epochs, 1), updating / max(steps, 1) * 1e3)


@torch.no_grad()
def accuracy(model: nn.Module, setup: Setup) -> float:
    """Validation accuracy in eval mode, after recomputing the BatchNorm statistics from the training set."""
    recalibrate_batchnorm(model, setup.data.x_train.split(setup.batch))
    model.eval()
    return float((model(setup.data.x_val).argmax(1) == setup.data.y_val).float().mean())


@torch.inference_mode()
def latency_ms(model: nn.Module, setup: Setup) -> float:
    x = setup.data.x_val[:128]
    model.eval()
    model(x)
    times = []
    for _ in range(setup.repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(result: Result, small: nn.Module, setup: Setup, seed: int) -> Result:
    """Fill in ``result`` for the network ``small`` (channels removed): its accuracy, size, speed, and
    its accuracy after the fine-tuning budget."""
    tp = require("torch_pruning", "benchmarks/peers.py", "structured")
    result.acc_removed = accuracy(small, setup)
    result.macs, result.params = tp.utils.count_ops_and_params(small, setup.example)
    result.latency_ms = latency_ms(small, setup)
    train(small, setup, setup.finetune, seed + 1000)
    result.acc_tuned = accuracy(small, setup)
    return result


def dense(initial: nn.Module, setup: Setup, seed: int) -> Result:
    """The reference: plain Adam, nothing removed."""
    model = copy.deepcopy(initial)
    result = Result("dense (plain Adam)", seed)
    result.epoch_s, result.update_ms = astuple(train(model, setup, setup.epochs, seed))
    return measure(result, model, setup, seed)


def ours(initial: nn.Module, setup: Setup, strength: float, seed: int) -> Result:
    model = copy.deepcopy(initial)
    optimizer = torch.optim.Adam(model.parameters(), lr=setup.lr)
    Regularizer(
        model, group_l1=strength, group_by="channels", l1_mode="proximal", example_inputs=setup.example
    ).attach(optimizer)
    result = Result(f"lightning-reg {strength:g}", seed)
    result.epoch_s, result.update_ms = astuple(train(model, setup, setup.epochs, seed, optimizer))
    model.eval()
    return measure(result, shrink(model, example_inputs=setup.example), setup, seed)


def torch_pruning(initial: nn.Module, setup: Setup, target_macs: float, seed: int) -> Result:
    tp = require("torch_pruning", "benchmarks/peers.py", "structured")
    model = copy.deepcopy(initial)
    head = [module for module in model.modules() if isinstance(module, nn.Linear)]
    pruner = tp.pruner.GroupNormPruner(
        model,
        example_inputs=setup.example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        reg=5e-4,
        global_pruning=True,
        pruning_ratio=1.0,
        iterative_steps=400,
        max_pruning_ratio=0.95,
        ignored_layers=head,
    )
    pruner.update_regularizer()
    result = Result("Torch-Pruning", seed)
    result.epoch_s, result.update_ms = astuple(
        train(model, setup, setup.epochs, seed, after_backward=pruner.regularize)
    )
    macs, _ = tp.utils.count_ops_and_params(model, setup.example)
    steps = 0
    while macs > target_macs and steps < 400:
        pruner.step()
        steps += 1
        macs, _ = tp.utils.count_ops_and_params(model, setup.example)
    return measure(result, model, setup, seed)


def _patch_oto_imports() -> None:
    """OTO 3.0.1 imports ``torch.onnx._globals`` and ``torch.onnx._optimize_graph``, which torch 2.9 moved
    under ``torch.onnx._internal.torchscript_exporter``: point the old names at the new places."""
    import torch.onnx
    from torch.onnx._internal.torchscript_exporter import _globals, utils

    sys.modules.setdefault("torch.onnx._globals", _globals)
    if not hasattr(torch.onnx, "_optimize_graph"):
        torch.onnx._optimize_graph = utils._optimize_graph  # type: ignore[attr-defined]


@contextlib.contextmanager
def _cuda_calls_stay_on_the_cpu() -> Iterator[None]:
    """HESSO calls ``.cuda()`` on a mask it makes (hesso.py, ``identify_redundant_groups``): on a machine
    without CUDA, make that call return the tensor, for the duration of OTO's training only."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def oto(initial: nn.Module, setup: Setup, sparsity: float, seed: int) -> Result:
    """HESSO (Adam variant) to ``sparsity`` of the channel groups, then OTO's own subnet."""
    _patch_oto_imports()
    only_train_once = require("only_train_once", "benchmarks/peers.py", "peers")
    model = copy.deepcopy(initial)
    graph = only_train_once.OTO(model=model, dummy_input=setup.example)
    model.train()  # OTO leaves the model in eval mode
    steps = setup.epochs * -(-len(setup.data.x_train) // setup.batch)
    optimizer = graph.hesso(
        variant="adam",
        lr=setup.lr,
        target_group_sparsity=sparsity,
        start_pruning_step=steps // 5,
        pruning_steps=steps // 2,
        pruning_periods=3,
    )
    result = Result(f"OTO {sparsity:.2f}", seed)
    with _cuda_calls_stay_on_the_cpu():
        result.epoch_s, result.update_ms = astuple(train(model, setup, setup.epochs, seed, optimizer))
    with tempfile.TemporaryDirectory() as folder:
        graph.construct_subnet(out_dir=folder)
        small = torch.load(graph.compressed_model_path, weights_only=False)  # OTO pickles the module
    return measure(result, small, setup, seed)


def pat(initial: nn.Module, setup: Setup, strength: float, seed: int) -> Result:
    """torchao's PAT: group lasso over each convolution's filters with its proximal Adam; the zero
    filters whose coupled slices are all zero are then removed with Torch-Pruning."""
    pat_optim = require("torchao.prototype.pat.optim", "benchmarks/peers.py", "peers")
    pat_utils = require("torchao.prototype.pat.utils", "benchmarks/peers.py", "peers")
    model = copy.deepcopy(initial)
    config = {"group_type": "Dim0Grouper", "prox_type": "ProxGroupLasso"}
    groups = pat_utils.get_param_groups(model, {(nn.Conv2d, "weight"): dict(config)})
    steps = setup.epochs * -(-len(setup.data.x_train) // setup.batch)
    optimizer = pat_optim.PruneOptimizer(
        torch.optim.Adam(groups, lr=setup.lr),
        warmup_steps=steps // 5,
        healing_start_step=steps,
        reg_lambda=strength,
    )
    result = Result(f"PAT {strength:g}", seed)
    result.epoch_s, result.update_ms = astuple(train(model, setup, setup.epochs, seed, optimizer))
    remove_zero_channels(model, setup)
    return measure(result, model, setup, seed)


def remove_zero_channels(model: nn.Module, setup: Setup) -> int:
    """Remove, with Torch-Pruning, the output channels whose filters are zero in every layer that writes
    into them (a residual stream's convolutions together); the number removed."""
    tp = require("torch_pruning", "benchmarks/peers.py", "structured")
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=setup.example)
    head = [module for module in model.modules() if isinstance(module, nn.Linear)]
    plans = []
    for group in graph.get_all_groups(ignored_layers=head, root_module_types=[nn.Conv2d]):
        root = group[0].dep.target.module
        dead = torch.ones(root.weight.shape[0], dtype=torch.bool)
        for item in group:
            if item.dep.handler != tp.prune_conv_out_channels:  # bound methods: compared by ==
                continue
            rows = item.dep.target.module.weight.detach().flatten(1)[list(item.idxs)]
            zero = torch.zeros_like(dead)
            zero[torch.as_tensor(item.root_idxs)] = rows.abs().sum(1) == 0
            dead &= zero
        indices = dead.nonzero().flatten().tolist()[: root.weight.shape[0] - 1]  # keep one channel
        if indices:
            plans.append((root, indices))
    for root, indices in plans:
        graph.get_pruning_group(root, tp.prune_conv_out_channels, indices).prune()
    return sum(len(indices) for _, indices in plans)


def run_entry(name: str, seed: int, work: Callable[..., Result], *args: Any) -> Result:
    """``work(*args)``, or a row with the error where it fails (an uninstalled peer included)."""
    try:
        return work(*args)
    except Exception as error:  # reported, never hidden: the table shows it
        last = traceback.format_exception_only(type(error), error)[-1].strip()
        return Result(name, seed, error=last[:120])


def row(result: Result) -> str:
    if result.error:
        return f"{result.method:24s} {result.seed:4d}  failed: {result.error}"
    return (
        f"{result.method:24s} {result.seed:4d} {result.acc_removed:8.3f} {result.acc_tuned:6.3f} "
        f"{result.macs / 1e6:7.2f} {result.params / 1e6:7.3f} {result.latency_ms:8.1f} {result.epoch_s:7.2f} "
        f"{result.update_ms:9.1f}"
    )


#: The methods, in the order they run; Torch-Pruning needs lightning-reg's rows (their MACs).
METHODS = ("lightning-reg", "OTO", "PAT")


def summary(results: list[Result]) -> None:
    """Each row's mean over the seeds, with the spread (smallest to largest) of its accuracies."""
    by_method: dict[str, list[Result]] = {}
    for result in results:
        if not result.error:
            by_method.setdefault(result.method, []).append(result)
    print("\nover the seeds: mean (min..max)")
    for method, rows in by_method.items():
        cut = [r.acc_removed for r in rows]
        tuned = [r.acc_tuned for r in rows]
        print(
            f"{method:24s} acc cut {statistics.mean(cut):.3f} ({min(cut):.3f}..{max(cut):.3f})  tuned "
            f"{statistics.mean(tuned):.3f} ({min(tuned):.3f}..{max(tuned):.3f})  MMACs "
            f"{statistics.mean(r.macs for r in rows) / 1e6:.2f}  ms "
            f"{statistics.mean(r.latency_ms for r in rows):.1f}  s/epoch "
            f"{statistics.mean(r.epoch_s for r in rows):.2f}  update ms "
            f"{statistics.mean(r.update_ms for r in rows):.1f}"
        )


def figure(results: list[Result], path: str) -> None:
    """Accuracy right after removing channels (filled) and after fine-tuning (hollow), against MACs
    (left) and CPU latency (right): each method's front."""
    plt = require("matplotlib.pyplot", "benchmarks/peers.py --figure", "demo")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    families = ["dense", "lightning-reg", "Torch-Pruning", "OTO", "PAT"]
    for ax, (label, x_of) in zip(
        axes,
        [
            ("MMACs per image", lambda r: r.macs / 1e6),
            ("CPU latency, ms per 128 images", lambda r: r.latency_ms),
        ],
        strict=True,
    ):
        for family, colour in zip(families, ["k", "C0", "C1", "C2", "C3"], strict=True):
            rows = [r for r in results if r.method.startswith(family) and not r.error]
            if not rows:
                continue
            x = [x_of(r) for r in rows]
            ax.scatter(x, [r.acc_removed for r in rows], color=colour, label=f"{family}: right after removal")
            ax.scatter(
                x,
                [r.acc_tuned for r in rows],
                facecolors="none",
                edgecolors=colour,
                label=f"{family}: fine-tuned",
            )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy")
    axes[0].set_ylim(0, 1)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=5)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strengths", type=float, nargs="+", default=[1e-2, 2e-2, 4e-2])
    parser.add_argument("--oto-sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8])
    parser.add_argument("--pat-strengths", type=float, nargs="+", default=[0.3, 0.35, 0.45])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--side", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--finetune", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help="the methods to run (default: all)",
    )
    parser.add_argument("--figure", help="save the fronts (accuracy against MACs) to this PNG file")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:  # the test suite's smoke run: one point of each method, width 4, one epoch
        args.strengths, args.oto_sparsities, args.pat_strengths = [4e-2], [0.5], [0.3]
        args.seeds, args.width, args.epochs, args.finetune, args.repeats = [0], 4, 1, 1, 2
    data = as_images(load_digits_split(train_size=1200), side=args.side)
    setup = Setup(data, args.epochs, args.finetune, args.batch, args.lr, args.repeats)
    print(
        f"ResNet-18 layout (width {args.width}, 3x3 stem) on digits at {args.side}x{args.side}: "
        f"{len(data.x_train)} training / {len(data.x_val)} validation images; Adam lr {args.lr}, batch "
        f"{args.batch}, {args.epochs} epochs, then {args.finetune} epochs of fine-tuning; "
        f"seeds {args.seeds}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    header = (
        f"{'method':24s} {'seed':>4s} {'acc cut':>8s} {'tuned':>6s} {'MMACs':>7s} {'Mparams':>7s} "
        f"{'ms':>8s} {'s/epoch':>7s} {'update ms':>9s}"
    )
    print(header)
    print("-" * len(header))
    results: list[Result] = []

    def report(result: Result) -> None:
        results.append(result)
        print(row(result), flush=True)

    for seed in args.seeds:
        torch.manual_seed(seed)
        initial = ResNet(num_classes=10, width=args.width, in_channels=1, small_stem=True)
        report(run_entry("dense (plain Adam)", seed, dense, initial, setup, seed))
        for strength in args.strengths if "lightning-reg" in args.methods else []:
            mine = run_entry(f"lightning-reg {strength:g}", seed, ours, initial, setup, strength, seed)
            report(mine)
            target = mine.macs  # Torch-Pruning prunes to this row's MACs
            peer = run_entry("Torch-Pruning", seed, torch_pruning, initial, setup, target, seed)
            peer.method = f"Torch-Pruning @{strength:g}"  # pruned to that lightning-reg row's MACs
            report(peer)
        # OTO's and PAT's knobs do not set MACs: each draws its own front of accuracy against MACs
        for sparsity in args.oto_sparsities if "OTO" in args.methods else []:
            report(run_entry(f"OTO {sparsity:g}", seed, oto, initial, setup, sparsity, seed))
        for strength in args.pat_strengths if "PAT" in args.methods else []:
            report(run_entry(f"PAT {strength:g}", seed, pat, initial, setup, strength, seed))
    summary(results)
    if args.figure:
        figure(results, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
