"""python -m npnn.mistakes: a poker run's test errors by hand kind."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from npnn.config import compose
from npnn.mistakes import hand_kinds, mistakes
from npnn.mistakes import main as mistakes_main
from npnn.train import main

QUIET = ["trainer.enable_progress_bar=false", "logger=none"]


def test_hand_kinds_split_the_ace_high_straight_from_the_other_straights():
    hands = torch.tensor([
        [1, 1, 2, 10, 3, 11, 4, 12, 1, 13],  # A-10-J-Q-K, mixed suits
        [1, 1, 2, 2, 3, 3, 4, 4, 1, 5],      # the wheel, A-2-3-4-5
        [3, 9, 2, 10, 3, 11, 4, 12, 1, 13],  # 9-K
        [2, 2, 2, 5, 2, 7, 2, 9, 2, 12],     # a flush
        [1, 1, 1, 10, 1, 11, 1, 12, 1, 13],  # the royal flush is not a straight here
        [1, 2, 2, 2, 3, 7, 4, 9, 1, 12]])    # one pair
    assert hand_kinds(hands) == ["straight, ace-high", "straight", "straight", "flush", "royal flush", "one pair"]


def run(tmp_path, *overrides):
    cfg = compose("dataset=poker", "dataset.loader.split=[4000,1000,1000]", *QUIET, *overrides)
    summary = main(cfg, tmp_path)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    return summary


@pytest.mark.parametrize("protocol", ["rewind", "none"])  # the protocol's best state, or the checkpoint's net
def test_mistakes_are_the_run_s_test_errors_by_kind(tmp_path, capsys, protocol):
    summary = run(tmp_path, f"protocol={protocol}", "trainer.max_epochs=3")
    r = mistakes(tmp_path)
    assert r["test_size"] == 1000 and sum(r["totals"].values()) == 1000
    assert r["errors"] == round(summary["test_error"] * 1000) > 0  # the final network of summary.json
    assert sum(r["kinds"].values()) == r["errors"]
    assert all(0 < n <= r["totals"][kind] for kind, n in r["kinds"].items())
    mistakes_main([str(tmp_path)])
    table = capsys.readouterr().out
    assert f"| {r['errors']} of 1,000 |" in table and "(the test set)" in table


def test_mistakes_refuse_a_run_on_other_data(tmp_path):
    cfg = compose("dataset=synthetic", *QUIET, "trainer.max_epochs=1")
    main(cfg, tmp_path)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    with pytest.raises(ValueError, match="not on the generated poker data"):
        mistakes(tmp_path)


def test_split_errors_count_the_final_network_s_errors_on_every_split_of_any_data(tmp_path, capsys):
    from npnn.mistakes import split_errors

    cfg = compose("dataset=synthetic", *QUIET, "trainer.max_epochs=2")
    summary = main(cfg, tmp_path)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    counts = split_errors(tmp_path)
    assert list(counts) == ["training", "validation", "test"]
    (val, n_val), (test, n_test) = counts["validation"], counts["test"]
    assert val == round(summary["val_error"] * n_val) and test == round(summary["test_error"] * n_test)
    assert 0 <= counts["training"][0] <= counts["training"][1]
    mistakes_main(["--splits", str(tmp_path)])
    assert f"| {test:,} of {n_test:,} |" in capsys.readouterr().out


def test_the_command_names_a_folder_that_is_not_a_run_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        mistakes_main(["--splits", str(tmp_path)])
    assert stop.value.code == 1 and "config.yaml" in capsys.readouterr().err
