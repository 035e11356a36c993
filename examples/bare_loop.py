"""The seed tutorial's bare PyTorch loop, with the plain ``Regularizer``: Elastic Net, then its proximal form.

    python examples/bare_loop.py          # 600 full-batch Adam steps per run
    python examples/bare_loop.py --quick  # 150 steps

A small ReLU network learns a regression target that depends on the first 5 of 20 input features; the
other 15 are noise. The same network, from the same initial weights, is trained three times:

- without regularization;
- with Elastic Net as the tutorial writes it: ``l1 * sum|w|`` added to the loss (``reg.penalty()``) and
  ``weight_decay=l2`` on the weight matrices only (``reg.param_groups()``);
- with the same strengths and ``l1_mode="proximal"``: ``reg.attach(optimizer)`` installs a step hook that
  soft-thresholds the weights after every ``optimizer.step()``, which leaves exact zeros.

For each run it prints the validation error and, over the weight matrices, the fraction of entries
exactly zero (``sparsity``) and below ``1e-3`` (``near-zero``). Both regularized runs generalize better
than the plain one; the L1 term in the loss makes weights small, never exactly zero, while the proximal
step zeroes most of them.

Only torch and the package's engine are used: no Lightning, no scikit-learn.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
from torch import Tensor, nn

from lightning_reg import Regularizer

FEATURES, INFORMATIVE, HIDDEN = 20, 5, 32
L1, L2 = 1e-2, 1e-3
LR = 1e-2


def make_data(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` samples; the target is a fixed function of the first :data:`INFORMATIVE` features, plus noise."""
    x = torch.randn(n, FEATURES, generator=generator)
    signal = x[:, :INFORMATIVE]
    coefficients = torch.tensor([2.0, -3.0, 1.5, 1.0, -2.0])
    y = signal @ coefficients + torch.sin(2 * signal[:, 0]) + signal[:, 1] * signal[:, 2]
    y = y + 0.1 * torch.randn(n, generator=generator)
    return x, y.unsqueeze(1)


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1)
    )


def train(model: nn.Module, reg: Regularizer | None, x: Tensor, y: Tensor, steps: int) -> None:
    """The tutorial's loop: full batch, the penalty added to the loss, the optimizer doing the rest."""
    if reg is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    else:
        optimizer = torch.optim.Adam(reg.param_groups(), lr=LR)  # W: weight_decay=l2; biases: 0
        reg.attach(optimizer)  # the proximal step after each update (nothing to install in loss mode)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        if reg is not None:
            loss = loss + reg.penalty()  # + l1 * sum|w| in loss mode; a constant 0 in proximal mode
        loss.backward()
        optimizer.step()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="150 steps instead of 600")
    args = parser.parse_args(argv)
    steps = 150 if args.quick else 600

    generator = torch.Generator().manual_seed(0)
    x_train, y_train = make_data(200, generator)
    x_val, y_val = make_data(2000, generator)
    initial = make_model()

    print(
        f"{FEATURES} features, the first {INFORMATIVE} informative; 200 training samples; {steps} Adam steps"
    )
    print(f"{'run':<22}  {'l1':>6}  {'l2':>6}  {'val mse':>8}  {'sparsity':>8}  {'near-zero':>9}")
    runs: list[tuple[str, dict[str, Any] | None]] = [
        ("none", None),
        ("elastic net (loss)", {"l1": L1, "l2": L2}),
        ("elastic net (proximal)", {"l1": L1, "l2": L2, "l1_mode": "proximal"}),
    ]
    for name, options in runs:
        model = copy.deepcopy(initial)
        reg = None if options is None else Regularizer(model, **options)
        train(model, reg, x_train, y_train, steps)
        with torch.no_grad():
            val_mse = float(nn.functional.mse_loss(model(x_val), y_val))
        stats = Regularizer(model).statistics().summary()  # the weight matrices' norms and zero counts
        l1, l2 = (0.0, 0.0) if options is None else (L1, L2)
        print(
            f"{name:<22}  {l1:>6g}  {l2:>6g}  {val_mse:>8.4f}  {stats['sparsity']:>8.3f}  "
            f"{stats['near_zero']:>9.3f}"
        )


if __name__ == "__main__":
    main()
