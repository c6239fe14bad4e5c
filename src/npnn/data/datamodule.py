"""The Lightning data module of a run: a :class:`npnn.data.Splits` in memory."""
from __future__ import annotations

import pytorch_lightning as pl

from npnn.data.loaders import PermutationBatches, SequentialBatches, Splits, _check_batch_size

__all__ = ["InMemoryDataModule"]


class InMemoryDataModule(pl.LightningDataModule):
    """Serves a :class:`Splits`: training batches by permutation, validation and test in order.

    ``val_dataloader`` returns ``[validation, test]`` so that test error is logged at every
    validation, as the paper's figures need.
    """

    def __init__(self, splits: Splits, batch_size: int = 1000, eval_batch_size: int = 10_000, seed: int = 0) -> None:
        super().__init__()
        _check_batch_size("dataset.eval_batch_size", eval_batch_size)
        self.splits = splits
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_batches = PermutationBatches(splits.x_train, splits.y_train, batch_size, seed)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        """The in-memory CPU batches as they are on a CPU run (Lightning's walk of each list moves nothing)."""
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> PermutationBatches:
        return self.train_batches

    def state_dict(self) -> dict:
        """The data order, in every checkpoint: Lightning restores the loader's own state only mid-epoch, and
        a checkpoint written at an epoch's end would otherwise start the next epoch from the seed's order."""
        return {"train_batches": self.train_batches.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "train_batches" in state:
            self.train_batches.load_state_dict(state["train_batches"])

    def val_dataloader(self) -> list[SequentialBatches]:
        s = self.splits
        return [SequentialBatches(s.x_val, s.y_val, self.eval_batch_size),
                SequentialBatches(s.x_test, s.y_test, self.eval_batch_size)]

    def test_dataloader(self) -> SequentialBatches:
        return SequentialBatches(self.splits.x_test, self.splits.y_test, self.eval_batch_size)
