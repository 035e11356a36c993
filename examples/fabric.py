"""Lightning Fabric with the plain ``Regularizer``: Elastic Net with exact zeros in a Fabric training loop.

    python examples/fabric.py          # 40 epochs
    python examples/fabric.py --quick  # 3 epochs

Fabric leaves the training loop to you, so the regularization is set up as in a bare PyTorch loop:

- ``Regularizer(model, l1=..., l2=..., l1_mode="proximal")`` chooses the weight matrices;
- the optimizer is built from ``reg.param_groups()`` (weight decay on those weights only) and
  ``reg.attach(optimizer)`` installs the proximal step after every update;
- then ``fabric.setup(model, optimizer)`` wraps both, and ``fabric.backward(loss + reg.penalty())``
  and ``optimizer.step()`` run as usual.

The regularizer may be attached before ``fabric.setup`` (as here) or to the wrapper it returns: either
way it acts on the optimizer you built, which Fabric's wrapper steps.

The script then checks that the regularization acts under Fabric: it trains the same network again in a
plain PyTorch loop (same initial weights, same batches) and prints the largest difference between the two
runs' weights, which is ``0`` when Fabric's optimizer step ran every hook as the plain loop did. It prints
the optimizer's parameter groups, the accuracy and the fraction of weights that are exactly zero.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Iterable

import torch
from lightning.fabric import Fabric
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import Regularizer

FEATURES, CLASSES, HIDDEN = 20, 3, 64
L1, L2, LR = 1e-3, 1e-3, 1e-2


def make_data(n: int, seed: int) -> TensorDataset:
    """``n`` points whose class is the largest of 3 fixed linear scores of the first 4 features."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator)
    scores = x[:, :4] @ torch.tensor([[1.0, -1.0, 0.5], [0.5, 1.0, -1.0], [-1.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
    return TensorDataset(x, scores.argmax(1))


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    )


def regularized_optimizer(model: nn.Module) -> tuple[Regularizer, Optimizer]:
    """Proximal L1 and weight decay on the weight matrices; the biases are left alone."""
    reg = Regularizer(model, l1=L1, l2=L2, l1_mode="proximal")
    optimizer = torch.optim.Adam(reg.param_groups(), lr=LR)  # groups "decay" (l2) and "no_decay" (0)
    reg.attach(optimizer)  # after every optimizer.step(): soft-threshold W by l1 times Adam's step
    return reg, optimizer


def train(
    model: Callable[[Tensor], Tensor],
    reg: Regularizer,
    optimizer: Optimizer,
    batches: Iterable[tuple[Tensor, Tensor]],
    epochs: int,
    backward: Callable[[Tensor], None],
) -> None:
    for _ in range(epochs):
        for x, y in batches:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y) + reg.penalty()  # 0 here: L1 acts at the step
            backward(loss)
            optimizer.step()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 epochs instead of 40")
    args = parser.parse_args(argv)
    epochs = 3 if args.quick else 40
    train_loader = DataLoader(make_data(512, seed=1), batch_size=64)  # no shuffling: both runs see the same
    x_val, y_val = make_data(2000, seed=2).tensors
    initial = make_model()

    # -- with Fabric ----------------------------------------------------------------------------------
    fabric = Fabric(accelerator="cpu", devices=1)
    model = copy.deepcopy(initial)
    reg, optimizer = regularized_optimizer(model)
    fabric_model, fabric_optimizer = fabric.setup(model, optimizer)
    train(
        fabric_model, reg, fabric_optimizer, fabric.setup_dataloaders(train_loader), epochs, fabric.backward
    )

    # -- the same in a plain PyTorch loop, for comparison ------------------------------------------------
    plain = copy.deepcopy(initial)
    plain_reg, plain_optimizer = regularized_optimizer(plain)
    train(plain, plain_reg, plain_optimizer, train_loader, epochs, lambda loss: loss.backward())

    print(f"Fabric on {fabric.device}; Adam lr {LR}; l1 {L1:g} (proximal), l2 {L2:g}; {epochs} epochs")
    print(f"the Fabric optimizer is a {type(fabric_optimizer).__name__}; its param groups:")
    names = {id(param): name for name, param in model.named_parameters()}
    for group in fabric_optimizer.param_groups:
        held = ", ".join(names[id(param)] for param in group["params"])
        print(f"  {group['name']:<8}  weight_decay={group['weight_decay']:<6g}  {held}")
    model.eval()
    with torch.no_grad():
        accuracy = float((fabric_model(x_val).argmax(1) == y_val).float().mean())
    stats = reg.statistics().summary()
    print(f"validation accuracy: {accuracy:.3f}")
    print(f"sparsity (weights exactly zero): {stats['sparsity']:.3f}")
    print(f"dead units (rows exactly zero): {stats['dead_units']:.3f}")
    with torch.no_grad():
        pairs = zip(model.parameters(), plain.parameters(), strict=True)
        difference = max(float((a - b).abs().max()) for a, b in pairs)
    print(f"largest weight difference, Fabric vs plain loop: {difference:g}")


if __name__ == "__main__":
    main()
