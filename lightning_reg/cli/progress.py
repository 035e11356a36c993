"""``ProgressLine``: the progress output of ``lightning-reg``, in place of Lightning's progress bar."""

from __future__ import annotations

from typing import TextIO

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = [
    "ProgressLine",
]


class ProgressLine(Callback):
    """Our own progress output: one updating line on a terminal, one line per variant otherwise.

    Args:
        label: the text before the epoch counter, e.g. ``"[2/4] L2"``.
        stream: where to write; the line is updated in place only if it is a TTY.
    """

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.interactive = stream.isatty()
        self._width = 0

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interactive:
            self._write(f"{self.label}  epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", end="")

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._width:  # end the updating line where it stopped
            self.stream.write("\n")
            self._width = 0

    def finish(self, text: str) -> None:
        """End the variant's line with ``text``."""
        self._write(f"{self.label}  {text}", end="\n")

    def _write(self, text: str, end: str) -> None:
        if self.interactive:
            text = "\r" + text.ljust(self._width)
            self._width = len(text) - 1 if end == "" else 0
        self.stream.write(text + end)
        self.stream.flush()
