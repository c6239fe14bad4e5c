"""What the figure and table modules share: saving a figure, reading a run's summary and config."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from npnn.record import read_summary

__all__ = ["save", "summary", "hydra_config", "pct", "test_examples"]


def save(fig, stem: Path) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.pdf``."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(suffix) for suffix in (".png", ".pdf")]
    for path in paths:
        fig.savefig(path, dpi=110)
    return paths


def summary(run_dir: Path) -> dict[str, Any]:
    """The run's ``summary.json``, or ``{}`` where it has none."""
    return read_summary(run_dir) or {}


def hydra_config(run_dir: Path):
    """The run's ``.hydra/config.yaml``, or None."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def test_examples(run_dir: Path | str) -> int | None:
    """How many test examples a run's test error counts, from its ``.hydra/config.yaml``: a loader's ``split``
    (poker: 100,000), MNIST's fixed 10,000; None where the config does not say."""
    config = hydra_config(Path(run_dir))
    loader = config.get("dataset", {}).get("loader", {}) if config is not None else {}
    split = loader.get("split")
    if split is not None and len(split) == 3:
        return int(split[2])
    if str(loader.get("_target_", "")).endswith("load_mnist"):
        return 10_000
    return None


def pct(x: float) -> str:
    """A fraction as a percentage of 3 significant digits."""
    return f"{100 * x:.3g}%"
