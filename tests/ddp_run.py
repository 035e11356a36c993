"""Run by tests/test_ddp.py as its own program: Lightning's "ddp" strategy starts rank 1 by running it again.

Usage: python tests/ddp_run.py OUT_DIR. Trains each configuration in CONFIGS on 2 CPU processes (gloo),
each rank on its own half of the data, and has rank 0 save the final weights and the monitor's CSV log.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from helpers import LitRegression, regression_data

from lightning_reg import RegularizationMonitor, RegularizedModule

WORLD_SIZE, BATCH_SIZE, EPOCHS = 2, 4, 2
CONFIGS: dict[str, dict[str, Any]] = {
    "loss": {"l1": 3e-3, "l2": 2e-2},
    "proximal": {"l1": 0.5, "l2": 2e-2, "l1_mode": "proximal", "l2_mode": "decoupled"},
}


class HalfTheData(RegularizedModule, LitRegression):
    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        x, y = regression_data().tensors
        rank = self.trainer.global_rank
        return DataLoader(TensorDataset(x[rank::WORLD_SIZE], y[rank::WORLD_SIZE]), batch_size=BATCH_SIZE)


def main(out: Path) -> None:
    for name, options in CONFIGS.items():
        model = HalfTheData(**options)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=WORLD_SIZE,
            strategy="ddp",
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
        if trainer.is_global_zero:
            torch.save(model.net.state_dict(), out / f"{name}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
