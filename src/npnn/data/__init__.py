"""Datasets as in-memory tensors, served by random permutation (Table 3: batches without replacement)."""
from __future__ import annotations

import importlib
from typing import Any

from npnn.data.loaders import PermutationBatches, SequentialBatches, Splits

__all__ = ["InMemoryDataModule", "PermutationBatches", "SequentialBatches", "Splits", "LOADERS", "load_recorded"]

# npnn's own loaders: the only code an analysis of a run directory calls for its data
LOADERS = ("npnn.data.poker.load_poker", "npnn.data.mnist.load_mnist", "npnn.data.amat.load_amat",
           "npnn.data.synthetic.load_synthetic", "npnn.data.tabular.load_csv", "npnn.data.tabular.load_tensors")


def __getattr__(name: str) -> Any:
    if name == "InMemoryDataModule":  # Lightning's: imported only where a run is built
        from npnn.data.datamodule import InMemoryDataModule

        return InMemoryDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_recorded(loader: dict[str, Any], where: str = "the run's dataset.loader") -> Splits:
    """The data of a run's recorded ``dataset.loader`` (plain values, interpolations resolved), calling one of
    npnn's own ``LOADERS`` and nothing else: a run directory's files are data, never code to instantiate."""
    target = loader.get("_target_")
    if target not in LOADERS:
        raise ValueError(f"{where} names {target!r}, not one of npnn's loaders ({', '.join(LOADERS)}): an analysis "
                         f"of a run directory calls nothing its files name")
    args = {k: v for k, v in loader.items() if k not in ("_target_", "_partial_", "_recursive_", "_convert_")}
    nested = [k for k, v in args.items() if isinstance(v, dict)]
    if nested:
        raise ValueError(f"{where}: {target} takes plain values, got nested settings for {nested}")
    module, name = target.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**args)
