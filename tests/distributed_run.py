"""Run by tests/test_distributed.py as its own program: Lightning starts rank 1 by running it again.

Usage: python tests/distributed_run.py OUT_DIR {ddp,fsdp2}. Trains each configuration in CONFIGS on 2 CPU
processes (gloo), each rank on its own half of the data, with DDP (replicated weights) or FSDP2
(``fully_shard`` under ``ModelParallelStrategy``: DTensor weights, each rank holding half of each), and
saves the final full weights and the monitor's CSV log; with DDP also each of CHANNEL_CONFIGS.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from architectures import bn_mlp
from helpers import LitRegression, regression_data

from lightning_reg import RegularizationMonitor, RegularizedModule

WORLD_SIZE, BATCH_SIZE, EPOCHS = 2, 4, 2
CONFIGS: dict[str, dict[str, Any]] = {
    "loss": {"l1": 3e-3, "l2": 2e-2},
    "proximal": {"l1": 0.5, "l2": 2e-2, "l1_mode": "proximal", "l2_mode": "decoupled"},
    "group_loss": {"group_l1": 0.05, "group_by": "columns", "l2": 2e-2, "l2_mode": "loss"},
    "group_proximal": {"group_l1": 2.0, "group_by": "columns", "l1_mode": "proximal"},
    # Adam's per-entry threshold: FSDP2 shards the weights and Adam's exp_avg_sq alike (DTensors)
    "adam_proximal": {"adam": True, "l1": 0.1, "l1_mode": "proximal"},
    # the group step in Adam's metric on FSDP2's pieces: each column's sums added up over the ranks
    "adam_group_proximal": {"adam": True, "group_l1": 1.0, "group_by": "columns", "l1_mode": "proximal"},
}
#: group_by="channels", DDP only (FSDP2's DTensor shards are refused: coupled groups need whole tensors),
#: on architectures.bn_mlp: one unit of 16 channels, each a Linear row and bias, a BatchNorm scale and
#: shift, and the next Linear's column. Per-rank BatchNorm: each rank normalizes its own batch.
CHANNEL_CONFIGS: dict[str, dict[str, Any]] = {
    "channels_loss": {"group_l1": 0.05, "group_by": "channels"},
    "channels_adam_proximal": {"adam": True, "group_l1": 0.3, "group_by": "channels", "l1_mode": "proximal"},
}


class HalfTheData(RegularizedModule, LitRegression):
    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        x, y = regression_data().tensors
        rank = self.trainer.global_rank
        return DataLoader(TensorDataset(x[rank::WORLD_SIZE], y[rank::WORLD_SIZE]), batch_size=BATCH_SIZE)


class Channels(HalfTheData):
    """HalfTheData on architectures.bn_mlp, traced on example_input_array."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.net = bn_mlp()
        self.example_input_array = torch.zeros(2, 5)


class Sharded(HalfTheData):
    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(self.net, mesh=self.device_mesh["data_parallel"])


def full_weights(model: L.LightningModule) -> dict[str, torch.Tensor]:
    """Every process calls this: gathering sharded weights is a collective."""
    return {
        name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().clone()
        for name, value in model.net.state_dict().items()
    }


def leave_process_group() -> None:
    """Every process calls this last: gloo's threads abort an interpreter that exits in the group.

    The abort ("terminate called without an active exception", exit -6) came after a finished fit in CI.
    """
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main(out: Path, kind: str) -> None:
    configs = CONFIGS if kind == "fsdp2" else CONFIGS | CHANNEL_CONFIGS
    for name, options in configs.items():
        kinds = {"fsdp2": Sharded, "ddp": Channels if name in CHANNEL_CONFIGS else HalfTheData}
        model = kinds[kind](**options)
        strategy: str | Strategy = (
            ModelParallelStrategy(data_parallel_size=WORLD_SIZE, tensor_parallel_size=1)
            if kind == "fsdp2"
            else "ddp"
        )
        trainer = L.Trainer(
            accelerator="cpu",
            devices=WORLD_SIZE,
            strategy=strategy,
            max_epochs=EPOCHS,
            use_distributed_sampler=False,
            logger=CSVLogger(out, name=name, version=0),
            callbacks=[RegularizationMonitor(log_every_n_steps=1)],
            log_every_n_steps=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        trainer.fit(model)
        weights = full_weights(model)
        if trainer.is_global_zero:
            torch.save(weights, out / f"{name}.pt")
    leave_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
