"""Fixtures shared by test modules."""
from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """README's digits run (`python train.py dataset=csv dataset.path=digits.csv dataset.target=label`, every
    setting derived) to its protocol's end, once a session: ``folder`` (holding ``digits.csv``), ``run_dir``,
    ``summary`` and the trained ``module``. No checkpoint at every validation: the same run, a third faster."""
    from sklearn.datasets import load_digits

    from npnn.config import compose
    from npnn.sklearn import NO_CHECKPOINTS
    from npnn.train import run

    folder = tmp_path_factory.mktemp("digits")
    load_digits(as_frame=True).frame.rename(columns={"target": "label"}).to_csv(folder / "digits.csv", index=False)
    cfg = compose("dataset=csv", f"dataset.path={folder / 'digits.csv'}", "dataset.target=label",
                  "trainer.enable_progress_bar=false", f"checkpoint_every_steps={NO_CHECKPOINTS}")
    summary, module = run(cfg, folder / "run")
    return SimpleNamespace(folder=folder, run_dir=folder / "run", summary=summary, module=module.cpu().eval())
