"""The evaluation path: blocks of rows give the same logits, and the test set is evaluated only where a result
needs it, which changes nothing that training reads."""
import csv
import json

import pytest
import torch

from npnn.config import compose
from npnn.module import EVAL_BLOCK_ELEMENTS, NonparametricModule, eval_rows
from npnn.nn import NonparametricMLP
from npnn.train import ConfigError, run, validate_config


@pytest.mark.parametrize("d_in, sizes", [(10, [231, 283, 274, 111]), (784, [218, 17]), (10, [3, 5]), (64, [1000])])
def test_blocks_of_rows_give_the_logits_of_one_call(d_in, sizes):
    torch.manual_seed(0)
    net = NonparametricMLP(d_in, sizes, 10).eval()
    for norm in net.norms:
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    module = NonparametricModule(net=net.config())
    module.net.load_state_dict(net.state_dict())
    module.eval()
    rows = eval_rows(module.net)
    assert rows >= 512 and rows & (rows - 1) == 0
    assert rows * max(d_in, *sizes) <= 2 * EVAL_BLOCK_ELEMENTS or rows == 512
    x = torch.randn(3 * rows + 17, d_in)
    with torch.inference_mode():
        assert torch.equal(module.evaluate(x), module.net(x))  # the same floats, row by row



@pytest.mark.parametrize("norm, eval_stats", [("capnorm", "batch"), ("batchnorm", "running"), ("none", "running")])
def test_blocks_give_the_logits_of_one_call_with_every_norm(norm, eval_stats):
    """A CapNorm with batch statistics in evaluation (its output depends on the rows beside a row) is evaluated in
    one call; BatchNorm's inference and no norm go in blocks."""
    torch.manual_seed(0)
    net = NonparametricMLP(10, [300, 40], 10, norm=norm, capnorm_eval_stats=eval_stats).eval()
    x = torch.randn(3 * 512 + 17, 10) * 5
    with torch.inference_mode():
        assert torch.equal(net.evaluate(x, 512), net(x))


def test_a_layer_without_units_evaluates_in_blocks():
    torch.manual_seed(0)
    net = NonparametricMLP(10, [30, 0, 20], 3).eval()
    x = torch.randn(1500, 10)
    with torch.inference_mode():
        assert torch.equal(net.evaluate(x, 512), net(x))

def _run(tmp_path, name, *overrides):
    cfg = compose("dataset=synthetic", "lambda=1e-3", "trainer.enable_progress_bar=false", "dataset.patience=2",
                  "dataset.anneal_patience=1", "trainer.max_epochs=30", *overrides)
    summary, _ = run(cfg, tmp_path / name)
    with open(tmp_path / name / "logs" / "version_0" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["val/error"]]
    return summary, rows, (tmp_path / name / "units.csv").read_text()


def test_the_test_set_only_where_a_result_needs_it_and_nothing_training_reads_changes(tmp_path):
    every, rows_every, units_every = _run(tmp_path, "every", "test_every=1")
    needed, rows_needed, units_needed = _run(tmp_path, "needed")  # test_every=0, the default
    assert units_needed == units_every and len(rows_needed) == len(rows_every) > 5
    for key in ("hidden_sizes", "val_error", "test_error", "best_val_error", "test_error_at_best", "best_epoch",
                "epochs", "steps_trained", "protocol"):
        assert needed[key] == every[key], key
    assert [r["val/error"] for r in rows_needed] == [r["val/error"] for r in rows_every]
    assert [r["size/layer1"] for r in rows_needed] == [r["size/layer1"] for r in rows_every]
    best, tested = float("inf"), []
    for r_needed, r_every in zip(rows_needed, rows_every):
        new_best = float(r_needed["val/error"]) < best
        best = min(best, float(r_needed["val/error"]))
        assert bool(r_needed["test/error"]) == new_best  # evaluated exactly at the new lowest validation errors
        if new_best:
            assert r_needed["test/error"] == r_every["test/error"]
            tested.append(r_needed)
    assert 0 < len(tested) < len(rows_needed)
    _, rows_third, _ = _run(tmp_path, "third", "test_every=3")
    assert all(r["test/error"] for i, r in enumerate(rows_third) if i % 3 == 0)
    summary = json.loads((tmp_path / "needed" / "summary.json").read_text())
    assert summary["test_error_at_best"] == every["test_error_at_best"]


@pytest.mark.parametrize("value", [-1, 1.5, True, "sometimes"])
def test_test_every_takes_a_count_of_validations(value):
    with pytest.raises(ConfigError, match=r"test_every must be an integer >= 0"):
        validate_config(compose("dataset=synthetic", f"test_every={value}"))
