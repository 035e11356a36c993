"""Prepared checks for a machine with one CUDA GPU: ``python tests/gpu/check_gpu.py`` (about a minute).

Not part of the test suite (CI has no GPU). Each check trains through ``Trainer.fit`` on the GPU and
compares with the tutorial's recipe run by hand on the same GPU, or expects a documented refusal:

1. ``precision="16-mixed"`` with Lightning's CUDA ``GradScaler``: the penalty is not lost nor scaled twice.
2. manual optimization with a fused Adam under ``16-mixed``: the scaler leaves the gradients scaled and the
   optimizer unscales them itself, so the added penalty gradient must be scaled too.
3. ``l2_mode="decoupled"`` with fused Adam is fused AdamW, step for step.
4. Lightning's ``FSDPStrategy`` (FSDP1) flattens the parameters: the package must refuse it clearly.
5. the optimizer-aware proximal step with capturable and fused Adam (step counts on the GPU): no host
   synchronisation inside ``optimizer.step()``, and the weights of a loop that writes Adam's threshold out.
6. the group engine on crossing channel units (``tests/test_group_prox.py``'s MLP) with capturable Adam:
   no host synchronisation inside ``optimizer.step()`` (a fixed count of Newton steps there), and the
   fixed point is the minimiser the tests solve on the CPU.
7. checks 5 and 6 again with ``fused=True``: the package's work as Triton kernels, no host
   synchronisation once compiled, the same weights and zeros.

Prints one line per check and exits non-zero if any fails.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import (
    LitRegression,
    ManualOptimization,
    loader,
    make_net,
    quiet_trainer,
    regression_data,
    seed_l1_penalty,
)

from lightning_reg import RegularizedModule, Regularizer

L1, L2, LR = 3e-3, 2e-2, 0.01


class Adam(RegularizedModule, LitRegression):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=LR, fused=self.fused)

    fused = False


class FusedAdam(Adam):
    fused = True


class FusedManual(ManualOptimization, FusedAdam):
    pass


def reference(l1: float, optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> nn.Module:
    net = make_net().cuda()
    opt = optimizer(net)
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(2):
        for x, y in loader(regression_data()):
            x, y = x.cuda(), y.cuda()
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                total = nn.functional.mse_loss(net(x), y) + l1 * seed_l1_penalty(net)
            scaler.scale(total).backward()
            scaler.step(opt)
            scaler.update()
    return net


TOLERANCE = 1e-5  # the same kernels run in both; anything larger is a wrong penalty, not rounding


def max_difference(model: Any, expected: nn.Module) -> float:
    pairs = zip(model.net.parameters(), expected.parameters(), strict=True)
    difference = max((a - b).abs().max().item() for a, b in pairs)
    assert difference <= TOLERANCE, f"max |diff| {difference:.2e} > {TOLERANCE}"
    return difference


def fit(model: Any, **kwargs: Any) -> None:
    quiet_trainer(max_epochs=2, accelerator="gpu", precision="16-mixed", **kwargs).fit(
        model, loader(regression_data())
    )


def check_automatic_amp() -> str:
    model = Adam(l1=L1)
    fit(model)
    expected = reference(L1, lambda n: torch.optim.Adam(n.parameters(), lr=LR))
    return f"max |diff| {max_difference(model, expected):.2e}"


def check_manual_fused() -> str:
    model = FusedManual(l1=L1)
    fit(model)
    expected = reference(L1, lambda n: torch.optim.Adam(n.parameters(), lr=LR, fused=True))
    return f"max |diff| {max_difference(model, expected):.2e}"


def check_decoupled_fused() -> str:
    model = FusedAdam(l2=L2, l2_mode="decoupled")
    fit(model)

    def adamw(net: nn.Module) -> torch.optim.Optimizer:
        decay = [p for p in net.parameters() if p.dim() > 1]
        rest = [p for p in net.parameters() if p.dim() <= 1]
        groups = [{"params": decay, "weight_decay": L2}, {"params": rest, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=LR, fused=True)

    return f"max |diff| {max_difference(model, reference(0.0, adamw)):.2e}"


def check_fsdp1_refused() -> str:
    from lightning.pytorch.strategies import FSDPStrategy

    try:
        fit(Adam(l1=L1), strategy=FSDPStrategy(use_orig_params=True), devices=1)
    except ValueError as error:
        if "flattened by FSDP1" in str(error):
            return "refused: " + str(error)[:80] + "..."
        raise
    raise AssertionError("FSDPStrategy was not refused")


def check_proximal_capturable_and_fused() -> str:
    differences = []
    cases = [(flags, False) for flags in ({"capturable": True}, {"fused": True}, {"foreach": True})]
    cases += [({"capturable": True}, True), ({"fused": True}, True)]  # the package's Triton kernels too
    for flags, kernels in cases:
        net, expected = make_net().cuda(), make_net().cuda()
        reg = Regularizer(net, l1=L1, l1_mode="proximal", fused=kernels)
        optimizer = torch.optim.Adam(reg.param_groups(), lr=LR, **flags)
        reg.attach(optimizer)
        reference = torch.optim.Adam(expected.parameters(), lr=LR)
        weights = [p for p in expected.parameters() if p.dim() > 1]
        for index, (x, y) in enumerate(loader(regression_data())):
            x, y = x.cuda(), y.cuda()
            optimizer.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            # any host synchronisation in the step raises, once the fused kernels have compiled
            torch.cuda.set_sync_debug_mode("error" if index > 0 else "default")
            try:
                optimizer.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            reference.zero_grad()
            nn.functional.mse_loss(expected(x), y).backward()
            reference.step()
            # Adam's step per unit gradient: lr / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)
            with torch.no_grad():
                for w in weights:
                    state = reference.state[w]
                    t = float(state["step"])
                    step = LR / (1 - 0.9**t) / ((state["exp_avg_sq"] / (1 - 0.999**t)).sqrt() + 1e-8)
                    w.copy_(torch.sign(w) * torch.clamp(w.abs() - L1 * step, min=0))
        pairs = zip(net.parameters(), expected.parameters(), strict=True)
        difference = max((a - b).abs().max().item() for a, b in pairs)
        assert difference <= TOLERANCE, f"{flags}: max |diff| {difference:.2e} > {TOLERANCE}"
        assert any((w == 0).any() for w in weights), "the check needs exact zeros"
        differences.append(f"{next(iter(flags))}{' + fused kernels' if kernels else ''} {difference:.1e}")
    return "max |diff| " + ", ".join(differences)


def check_group_engine_on_crossing_units(device: str = "cuda", kernels: bool = False) -> str:
    import test_group_prox as crossing  # the crossing MLP, its quadratic and the reference minimiser

    g, l1 = crossing.CASES[0]
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        on_cpu = crossing.start(crossing.mlp, g, l1, "adam", 3e-2)
        quadratic = crossing.Quadratic.of(on_cpu.model)
        expected = crossing.solve(on_cpu, quadratic, g, l1)
        model, inputs = crossing.mlp()
        model, inputs = model.to(device), inputs.to(device)
        reg = Regularizer(
            model,
            group_l1=g,
            l1=l1,
            group_by="channels",
            example_inputs=inputs,
            l1_mode="proximal",
            fused=kernels,
        )
        optimizer = torch.optim.Adam(
            model.parameters(), lr=3e-2, betas=(0.9, 0.99), capturable=device == "cuda"
        )
        reg.attach(optimizer)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, crossing.decay)
        on_device = crossing.Quadratic(
            {n: h.to(device) for n, h in quadratic.h.items()},
            {n: b.to(device) for n, b in quadratic.b.items()},
        )
        for index in range(3000):
            on_device.set_grads(model)
            if device == "cuda" and index > 1:  # after the fused kernels' compiles (first and second step)
                torch.cuda.set_sync_debug_mode("error")  # any host synchronisation in the step raises
            try:
                optimizer.step()
            finally:
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
            schedule.step()
        got = {n: p.detach().cpu() for n, p in model.named_parameters()}
    finally:
        torch.set_default_dtype(saved)
    difference = crossing.gap(got, expected)
    assert difference < 1e-9, f"max |w - w*| {difference:.2e}"
    same_zeros = crossing.zeros(got, exact=True), crossing.zeros(expected, exact=False)
    assert all(torch.equal(a, same_zeros[1][n]) for n, a in same_zeros[0].items()), "the same exact zeros"
    return f"max |w - w*| {difference:.1e}, the same zeros"


def check_group_engine_fused() -> str:
    return check_group_engine_on_crossing_units(kernels=True)


def main() -> int:
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    failed = 0
    checks = (
        check_automatic_amp,
        check_manual_fused,
        check_decoupled_fused,
        check_fsdp1_refused,
        check_proximal_capturable_and_fused,
        check_group_engine_on_crossing_units,
        check_group_engine_fused,
    )
    for check in checks:
        try:
            print(f"PASS {check.__name__}: {check()}")
        except Exception:
            failed += 1
            print(f"FAIL {check.__name__}:\n{traceback.format_exc()}")
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
