"""Datasets as in-memory tensors, served by random permutation (Table 3: batches without replacement)."""
from npnn.data.loaders import InMemoryDataModule, PermutationBatches, SequentialBatches, Splits

__all__ = ["InMemoryDataModule", "PermutationBatches", "SequentialBatches", "Splits"]
