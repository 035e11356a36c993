"""A Hugging Face transformer fine-tuned with weight decay on its weight matrices only.

    python examples/transformer_decay_groups.py          # 300 optimizer steps
    python examples/transformer_decay_groups.py --quick  # 20 steps

Fine-tuning recipes for BERT and its kin decay the weight matrices but not the biases, the LayerNorm
parameters or, often, the embeddings, and every script writes its own ``no_decay = ["bias",
"LayerNorm.weight"]`` list to build the optimizer's groups. Here the Lightning module builds a plain
``AdamW(self.parameters())`` and knows nothing of decay; ``RegularizedModule`` splits the optimizer into

- ``decay`` (``weight_decay=l2``): the parameters with ``dim() > 1`` (the weight matrices), less those
  matching ``exclude`` (the embeddings here);
- ``no_decay`` (``weight_decay=0``): everything else: biases, LayerNorm scales and shifts, embeddings.

``exclude`` is one way to choose; ``rules={"*.embeddings.*": {"l2": 0.0}}`` gives the same groups, a rule
such as ``{"*.classifier.weight": {"l2": 0.1}}`` adds a group ``decay/0.1`` with its own decay, and a
model that defines ``no_weight_decay()`` (the timm convention) has those names left out too.

The network is a small ``BertForSequenceClassification`` built from a ``BertConfig`` with random
weights: nothing is downloaded, and a real fine-tune would load ``from_pretrained`` instead, with the same
groups. The task is synthetic: does the token sequence contain a marker token? The script prints the
optimizer's groups (decay, size), the names in the ``decay`` group, and the validation accuracy before
and after training.
"""

from __future__ import annotations

import argparse
import warnings
from collections import Counter
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertConfig, BertForSequenceClassification

from lightning_reg import RegularizedModule

#: A small BERT: 2 layers, hidden size 32, 4 heads; 64 tokens, sequences of up to 32.
CONFIG: dict[str, Any] = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
    "num_labels": 2,
}
LENGTH, CLS, MARKER = 16, 1, 2  # sequence length; the [CLS] token id; the token the task looks for
L2, LR = 0.01, 1e-3
EXCLUDE = ["*.embeddings.*"]  # glob patterns of parameter names: no weight decay for the embeddings


def make_data(n: int, seed: int) -> TensorDataset:
    """``n`` sequences ``[CLS] t1 ... t15``; label 1 for the half in which ``MARKER`` appears somewhere."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(MARKER + 1, CONFIG["vocab_size"], (n, LENGTH), generator=generator)
    ids[:, 0] = CLS
    labels = torch.randint(0, 2, (n,), generator=generator)
    positions = torch.randint(1, LENGTH, (n,), generator=generator)
    ids[labels == 1, positions[labels == 1]] = MARKER
    return TensorDataset(ids, labels)


class SequenceClassifier(L.LightningModule):
    """An ordinary Lightning module around the Hugging Face model: AdamW on every parameter, no decay."""

    def __init__(self, lr: float = LR) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = BertForSequenceClassification(BertConfig(**CONFIG))

    def forward(self, input_ids: Tensor) -> Tensor:
        logits: Tensor = self.model(input_ids=input_ids).logits
        return logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        input_ids, labels = batch
        loss: Tensor = self.model(input_ids=input_ids, labels=labels).loss
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"], weight_decay=0.0)


class RegularizedClassifier(RegularizedModule, SequenceClassifier):
    """The same module with the mixin in front: the optimizer it returns is split into decay groups."""


@torch.no_grad()
def accuracy(model: L.LightningModule, data: TensorDataset) -> float:
    training = model.training
    model.eval()
    input_ids, labels = data.tensors
    result = float((model(input_ids).argmax(1) == labels).float().mean())
    model.train(training)
    return result


def kind(name: str) -> str:
    """What a parameter is, by its Hugging Face name."""
    if "LayerNorm" in name:
        return "LayerNorm parameters"
    if name.endswith("_embeddings.weight"):
        return "embeddings"
    return "biases" if name.endswith(".bias") else "weight matrices"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20 optimizer steps instead of 300")
    args = parser.parse_args(argv)
    steps = 20 if args.quick else 300
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    train_data, val_data = make_data(1024, seed=1), make_data(512, seed=2)
    torch.manual_seed(0)
    model = RegularizedClassifier(l2=L2, exclude=EXCLUDE)
    before = accuracy(model, val_data)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(train_data, batch_size=32, shuffle=True))
    after = accuracy(model, val_data)

    (optimizer,) = trainer.optimizers
    names = {id(param): name for name, param in model.named_parameters()}
    total = sum(param.numel() for param in model.parameters())
    shape = "{num_hidden_layers} layers, hidden size {hidden_size}, {num_attention_heads} heads".format(
        **CONFIG
    )
    print(f"BertForSequenceClassification ({shape}): {total:,} parameters, random initial weights")
    print(f"{type(optimizer).__name__}, lr {LR}; l2 {L2}, exclude {EXCLUDE}; param groups:")
    for group in optimizer.param_groups:
        params = group["params"]
        kinds = Counter(kind(names[id(param)]) for param in params)
        held = ", ".join(f"{count} {name}" for name, count in sorted(kinds.items()))
        entries = sum(param.numel() for param in params)
        print(
            f"  {group['name']:<8}  weight_decay={group['weight_decay']:<5g}  {len(params):>2} tensors  "
            f"{entries:>6,} entries  ({held})"
        )
    decay = next(group for group in optimizer.param_groups if group["name"] == "decay")
    print("the decay group:")
    for param in decay["params"]:
        print(f"  {names[id(param)]}  {tuple(param.shape)}")
    print(f"validation accuracy: {before:.3f} before, {after:.3f} after {steps} steps")


if __name__ == "__main__":
    main()
