"""python -m npnn.figures: Fig. 2, Figs. 3-4 and Table 2 from small hand-made run outputs."""
import json
import math

import pytest

from npnn.figures import (
    fig2,
    fig2_figure,
    fig2_points,
    fig3,
    fig3_figures,
    lifetimes,
    main,
    table2,
    tracked_units,
    tracking_marks,
)
from npnn.figures.fig2 import FIG2_STYLE
from npnn.figures.table2 import seed_lines
from npnn.sweeps import gather

SUMMARY = {"dataset": "mnist", "model": "nonparametric", "norm": "capnorm", "optimizer": "AdaRad", "step_size": 10,
           "lambda": 3e-4, "seed": 0, "epochs": 4.0, "steps_per_epoch": 10, "wall_time_s": 5.0, "stopped_by": "budget"}


def make_run(path, overrides=(), config="", metrics="", units="", lengths="", **summary):
    """A run directory as train.py leaves it: summary.json, .hydra/ and, if given, the CSV files."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides) or "[]\n")
    if config:
        (path / ".hydra" / "config.yaml").write_text(config)
    sizes = summary.get("hidden_sizes", [1, 1])
    (path / "summary.json").write_text(json.dumps({**SUMMARY, "hidden_sizes": sizes, **summary}))
    if metrics:
        (path / "logs" / "version_0").mkdir(parents=True)
        (path / "logs" / "version_0" / "metrics.csv").write_text(metrics)
    for name, text in (("units.csv", units), ("unit_lengths.csv", lengths)):
        if text:
            (path / name).write_text(text)
    return path


def np_and_p_sweeps(tmp_path):
    """NP: one setting, 3 seeds; P at the representative's size: setting A has the better TCE, B the better VCE;
    the random search: three settings of other sizes."""
    for seed, (w, tce, sizes) in enumerate([(1000, 0.020, [60, 10]), (1100, 0.025, [66, 11]), (1300, 0.030, [70, 12])]):
        make_run(tmp_path / "np" / f"seed={seed}", ["experiment=fig2_np_mnist_lambda3e-4", f"seed={seed}"],
                 seed=seed, weights=w, test_error=tce, val_error=tce, hidden_sizes=sizes)
    p = dict(model="parametric", norm="batchnorm", optimizer="sgd", step_size=100, hidden_sizes=[66, 11], weights=1100)
    for seed, (a_vce, a_tce, b_vce, b_tce) in enumerate([(0.05, 0.010, 0.03, 0.060), (0.06, 0.012, 0.04, 0.070)]):
        make_run(tmp_path / "p" / f"A,seed={seed}", ["+pick=top01", f"seed={seed}"], seed=seed, val_error=a_vce,
                 test_error=a_tce, **p)
        make_run(tmp_path / "p" / f"B,seed={seed}", ["+pick=top02", f"seed={seed}"], seed=seed, val_error=b_vce,
                 test_error=b_tce, **p)
    make_run(tmp_path / "p" / "C,seed=0", ["+pick=top03", "seed=0"], stopped_by="diverged", val_error=0.9,
             test_error=0.9, **p)  # a failed run: VCE 1, never the winner
    for name, vce, w, sizes in [("r1", 0.02, 5000, [300, 40]), ("r2", 0.01, 9000, [500, 90]),
                                ("r3", 0.05, 2000, [90, 30])]:
        make_run(tmp_path / "random" / name, [f"+pick={name}", "seed=0"], val_error=vce, test_error=vce + 0.001,
                 **{**p, "hidden_sizes": sizes, "weights": w})
    return tmp_path


def test_fig2_points_are_chosen_by_vce_and_plotted_as_given(tmp_path):
    np_and_p_sweeps(tmp_path)
    points = fig2_points(gather([tmp_path / "np"]), gather([tmp_path / "p"]), gather([tmp_path / "random"]), 2)
    np_point, p_point, *random_points = points
    assert np_point["kind"] == "nonparametric" and np_point["hidden_sizes"] == "66-11"  # the median run
    assert (np_point["weights"], np_point["test_error"]) == (1100, 0.025)
    assert (np_point["tce_min"], np_point["tce_max"], np_point["weights_min"], np_point["weights_max"]) == \
        (0.020, 0.030, 1000, 1300)
    assert p_point["setting"] == "+pick=top02"  # the lower median VCE, though A's TCE is lower
    assert p_point["test_error"] == pytest.approx(0.065) and (p_point["tce_min"], p_point["tce_max"]) == (0.06, 0.07)
    assert [r["setting"] for r in random_points] == ["+pick=r1", "+pick=r2"]  # the 2 best VCEs, by size
    fig = fig2_figure(points, "mnist")
    ax = fig.axes[0]
    series = {c.get_label(): c.lines[0] for c in ax.containers}
    black, red, blue = (series[FIG2_STYLE[kind][1]] for kind in ("nonparametric", "parametric", "random"))
    assert list(black.get_xdata()) == [1100] and list(black.get_ydata()) == [2.5]
    assert list(red.get_ydata()) == pytest.approx([6.5])
    assert list(blue.get_xdata()) == [5000, 9000] and list(blue.get_ydata()) == pytest.approx([2.1, 1.1])
    assert sorted(t.get_text() for t in ax.texts) == ["[300-40]", "[500-90]", "[66-11]", "[66-11]"]
    assert ax.get_xlabel() == "network size (weights)" and ax.get_ylabel() == "test classification error (%)"
    written = fig2([tmp_path / "np"], [tmp_path / "p"], [tmp_path / "random"], tmp_path / "out", random_top=2)
    assert {p.name for p in written} == {"fig2_mnist.png", "fig2_mnist.pdf", "fig2_mnist.md"}
    assert all(p.stat().st_size > 0 for p in written)
    table = (tmp_path / "out" / "fig2_mnist.md").read_text()
    assert "| nonparametric | lambda = 0.0003 | 66-11 | 1100 | 2.5% | 2% - 3% | 2.5% | 3 | " \
        f"`{tmp_path / 'np' / 'seed=1'}` |" \
        in table
    assert "| parametric | sgd, alpha = 100, batchnorm | 66-11 | 1100 | 6.5% | 6% - 7% | 3.5% | 2 | - |" in table
    assert "144 first-layer units against 694" in table  # the paper's words beside ours


CONFIG = "model:\n  start_units: 10\n  hidden_layers: 2\n  growth:\n    until: 40\n"
METRICS = ("epoch_float,size/layer1,size/layer2,step,train/ce,val/error\n"
           "1.0,11,11,10,0.5,0.30\n2.0,12,11,20,0.3,0.20\n3.0,12,10,30,0.2,0.15\n4.0,11,10,40,0.1,0.10\n")


def fig3_runs(tmp_path):
    """An NP run of 4 epochs (10 steps each): layer 1 starts with units 0-3 and gains 10-14, layer 2 starts with
    20-23; units 1, 10 and 11 die."""
    units = "id,layer,birth,death\n" + "".join(f"{i},1,0,{'15' if i == 1 else ''}\n" for i in range(4)) + \
        "10,1,5,25\n11,1,12,30\n12,1,20,\n13,1,31,\n14,1,35,\n" + "".join(f"{i},2,0,\n" for i in range(20, 24))
    lengths = "step,epoch,layer,id,fan_in,fan_out\n" + "".join(
        f"{s},{s / 10:.4f},{layer},{uid},{0.1 * uid + s / 100:.4f},{0.2 * uid:.4f}\n"
        for s in (10, 20, 30, 40) for layer, uid in [(1, 0), (1, 2), (1, 3), (1, 10),
                                                     (1, 12), (1, 13), (1, 14), (2, 20)])
    np_run = make_run(tmp_path / "np", config=CONFIG, metrics=METRICS, units=units, lengths=lengths,
                      hidden_sizes=[11, 10])
    p_metrics = "epoch_float,step,train/ce,val/error\n1.0,10,0.4,0.12\n2.0,20,0.01,0.08\n"
    sgd = make_run(tmp_path / "sgd", metrics=p_metrics, model="parametric", optimizer="sgd", hidden_sizes=[11, 10])
    rms = make_run(tmp_path / "rms", metrics=p_metrics.replace("0.08", "0.05"), model="parametric",
                   optimizer="rmsprop", step_size=300, **{"lambda": 0.0}, hidden_sizes=[11, 10])
    return np_run, sgd, rms


def test_fig3_and_fig4_plot_the_runs_units_and_lengths(tmp_path):
    np_run, sgd, rms = fig3_runs(tmp_path)
    assert tracking_marks(1000) == [0, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    assert sorted(lifetimes(np_run, 1)) == sorted([(0.0, 4.0, True), (0.0, 1.5, False), (0.0, 4.0, True),
                                                  (0.0, 4.0, True),
                                                  (0.5, 2.0, False), (1.2, 1.8, False), (2.0, 2.0, True),
                                                  (3.1, 0.9, True), (3.5, 0.5, True)])
    dark, light = tracked_units(np_run, 1, until=40)
    assert len(dark) == 3 + 4 and set(dark[:3]) <= {0, 1, 2, 3}  # 3 initial units, then the one added nearest
    assert dark[3:] == [10, 11, 12, 14] and light == [13]      # epochs 0, 1, 2, 4 (8, 12, ...: none within an epoch)
    fig, fig4 = fig3_figures(np_run, sgd, rms, paper_sizes=(193, 36))
    a, b, c, d, e, f = fig.axes
    assert [list(line.get_ydata()) for line in a.lines] == [[30.0, 20.0, 15.0, 10.0], [12.0, 8.0], [12.0, 5.0]]
    assert list(b.lines[0].get_ydata()) == [0.5, 0.3, 0.2, 0.1] and b.get_yscale() == "log"
    assert [list(line.get_ydata()) for line in c.lines[:2]] == [[11, 12, 12, 11], [11, 11, 10, 10]]
    assert [line.get_ydata()[0] for line in c.lines[2:]] == [193, 36]  # the paper's final sizes, dashed
    segments = {label: sorted((seg[0][0], seg[1][1]) for seg in coll.get_segments())
                for coll in d.collections for label in [coll.get_label()]}
    assert segments["eliminated (3)"] == [(0.0, 1.5), (0.5, 2.0), (1.2, 1.8)]
    assert segments["survived to the end (6)"] == [(0.0, 4.0)] * 3 + [(2.0, 2.0), (3.1, 0.9), (3.5, 0.5)]
    unit12_fan_in = [round(0.1 * 12 + s / 100, 4) for s in (10, 20, 30, 40)]
    assert unit12_fan_in in [list(line.get_ydata()) for line in e.lines]
    dark2, _ = tracked_units(np_run, 2, until=40)  # 3 of layer 2's 4 initial units; only unit 20 has lengths
    assert [list(line.get_ydata()) for line in f.lines] == ([[2.1, 2.2, 2.3, 2.4], [4.0] * 4] if 20 in dark2 else [])
    for ax in fig.axes + fig4.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
    fig4_segments = sorted((s[0][0], s[1][1]) for coll in fig4.axes[0].collections for s in coll.get_segments())
    assert fig4_segments == [(0.0, 4.0)] * 4
    written = fig3(np_run, sgd, rms, tmp_path / "out")
    assert {p.name for p in written} == {"fig3.png", "fig3.pdf", "fig4.png", "fig4.pdf", "fig3.md", "fig4.md"}
    assert all(p.stat().st_size > 0 for p in written)
    md = (tmp_path / "out" / "fig3.md").read_text()
    assert "| final hidden sizes | 193-36 | 11-10 |" in md and \
        "| units ever / alive at the end | - | layer 1: 9 / 6," in md


def test_table2_puts_the_lowest_vce_p_run_of_each_size_beside_the_papers_row(tmp_path):
    make_run(tmp_path / "np" / "b", ["experiment=table2_np_lambda1e-7"], dataset="poker", **{"lambda": 1e-7},
             hidden_sizes=[90, 80, 70, 60], weights=9e4, test_error=0.5, val_error=0.5, epochs=3.0, wall_time_s=40,
             time_complete=False, stopped_by="chance_level")  # a failed row stays; resumed, its earlier time unknown
    make_run(tmp_path / "np" / "a", ["experiment=table2_np_lambda1e-3"], config=CONFIG.replace("2\n", "4\n"),
             dataset="poker", **{"lambda": 1e-3}, hidden_sizes=[30, 20, 15, 5], weights=900, test_error=0.0062,
             val_error=0.006, epochs=60.4, wall_time_s=300, stopped_by="protocol")
    for alpha, vce, tce in [(300, 0.002, 0.003), (1000, 0.001, 0.004), (3000, 0.5, 0.5)]:
        make_run(tmp_path / "p" / f"alpha={alpha}", [f"optimizer.alpha={alpha}"], dataset="poker",
                 **{"model": "parametric", "optimizer": "rmsprop", "step_size": alpha, "lambda": 0.0},
                 hidden_sizes=[30, 20, 15, 5], weights=900, val_error=vce, test_error=tce, epochs=30.0)
    (tmp_path / "baselines.json").write_text(json.dumps({"poker": {"logistic_regression": 0.488,
                                                                   "decision_tree": 0.27}}))
    text = table2([tmp_path / "np"], [tmp_path / "p"], tmp_path / "baselines.json", tmp_path / "out")
    assert (tmp_path / "out" / "table2.md").read_text() == text
    assert "| logistic regression | | | | 48.8% | | | 49.9% (the paper's) |" in text
    assert "| decision tree | | | | 27% | | | 26.8% (OpenML) |" in text
    assert "| nonparametric | 0.001 | 10-10-10-10 | 30-20-15-5 | 0.62% | 60.4 | 300 s | 23-24-15-4, 0.62% |" in text
    assert "| nonparametric: failed (chance_level) | 1e-07 | | 90-80-70-60 | - | 3.0 | " \
        "40 s (the last fit only: resumed) | " \
        "299-258-259-129, 0% |" in text
    # alpha = 1000 has the lowest VCE (its TCE is not the lowest); the paper's P row of the lambda = 1e-3 size
    assert "| parametric, RMSprop alpha = 1000 (lowest VCE of 3) | | 30-20-15-5 | unchanged | " \
        "0.4% | 30.0 | 5 s | 0.20% |" in text
    # every step size, in order; the lowest VCE inside the grid, a run that has not ended said so
    make_run(tmp_path / "p" / "alpha=10000", ["optimizer.alpha=10000"], dataset="poker", stopped_by="signal",
             **{"model": "parametric", "optimizer": "rmsprop", "step_size": 10000, "lambda": 0.0, "cpu_time_s": 7.0},
             hidden_sizes=[30, 20, 15, 5], weights=900, val_error=0.4, test_error=0.4, epochs=2.0)
    make_run(tmp_path / "np" / "c", ["experiment=table2_np_lambda1e-6"], dataset="poker", **{"lambda": 1e-6},
             hidden_sizes=[50, 50, 50, 50], weights=8e3, test_error=0.3, val_error=0.3, epochs=5.0, stopped_by="signal")
    grid = table2([tmp_path / "np"], [tmp_path / "p"], None, tmp_path / "out").split("step sizes")[1].splitlines()
    assert [line.split(" | ")[1] for line in grid if line.startswith("| 30-")] == ["300", "1000", "3000", "10000"]
    # stopped from outside: it resumes, it has not failed
    assert "| nonparametric: not ended (signal) | 1e-06 | | 50-50-50-50 | - | 5.0 |" in \
        table2([tmp_path / "np"], out=tmp_path / "out")
    assert "| 30-20-15-5 | 1000 | 0.1% | 0.4% | 30.0 | - | lowest VCE |" in grid
    assert "| 30-20-15-5 | 10000 | - | - | 2.0 | 7 s | not ended (signal) |" in grid
    (tmp_path / "p" / "alpha=300" / "summary.json").write_text((tmp_path / "p" / "alpha=300" / "summary.json")
                                                                .read_text().replace('"val_error": 0.002',
                                                                                     '"val_error": 0.0005'))
    assert "| 30-20-15-5 | 300 | 0.05% | 0.3% | 30.0 | - | lowest VCE: on the grid's edge, widen it |" in \
        table2([tmp_path / "np"], [tmp_path / "p"], None, tmp_path / "out")
    (tmp_path / "p" / "alpha=300" / "summary.json").write_text((tmp_path / "p" / "alpha=300" / "summary.json")
                                                                .read_text().replace('"val_error": 0.0005',
                                                                                     '"val_error": 0.0'))
    assert "| 30-20-15-5 | 300 | 0% | 0.3% | 30.0 | - | lowest VCE: on the grid's edge, but no validation error |" in \
        table2([tmp_path / "np"], [tmp_path / "p"], None, tmp_path / "out")
    (tmp_path / "p" / "alpha=300" / "summary.json").write_text((tmp_path / "p" / "alpha=300" / "summary.json")
                                                                .read_text().replace('"val_error": 0.0',
                                                                                     '"val_error": 0.0005'))
    # a tie in VCE is said so; it goes to the first run directory by name ("alpha=1000" before "alpha=300")
    (tmp_path / "p" / "alpha=1000" / "summary.json").write_text((tmp_path / "p" / "alpha=1000" / "summary.json")
                                                                 .read_text().replace('"val_error": 0.001',
                                                                                      '"val_error": 0.0005'))
    text = table2([tmp_path / "np"], [tmp_path / "p"], None, tmp_path / "out")
    assert "| 30-20-15-5 | 1000 | 0.05% | 0.4% | 30.0 | - | lowest VCE |" in text
    assert "| 30-20-15-5 | 300 | 0.05% | 0.3% | 30.0 | - | " \
        "ties the lowest VCE (a tie goes to the first run directory " \
        "by name) |" in text


def test_table2_seeds_pair_each_np_run_with_the_p_pick_of_its_sizes_and_test_the_difference(tmp_path):
    poker = dict(dataset="poker", stopped_by="protocol", **{"lambda": 1e-6})
    for seed, (sizes, errors) in enumerate([([20, 20, 20, 20], 17), ([18, 22, 22, 10], 20), ([22, 26, 27, 11], 4),
                                            ([21, 25, 28, 12], 8), ([30, 30, 30, 30], 13)]):
        make_run(tmp_path / "np" / f"seed={seed}", ["lambda=1e-6", f"seed={seed}"], seed=seed, hidden_sizes=sizes,
                 weights=1e3, val_error=errors * 1e-5, test_error=errors * 1e-5, config=POKER_CONFIG, **poker)
    make_run(tmp_path / "np" / "seed=5", ["lambda=1e-6", "seed=5"], seed=5, hidden_sizes=[9, 9, 9, 9],
             config=POKER_CONFIG, **{**poker, "stopped_by": "signal"})  # not ended: not a seed of the comparison
    make_run(tmp_path / "np" / "twin_seed=1", ["lambda=1e-6", "seed=1"], seed=1, hidden_sizes=[9, 9, 9, 9],
             val_error=0.0, test_error=0.0, config=POKER_CONFIG, **poker)  # seed 1 again: counted once
    rmsprop = dict(dataset="poker", model="parametric", optimizer="rmsprop", **{"lambda": 0.0})
    for sizes, picks in [([20, 20, 20, 20], [(300, 0.0, 5), (100, 1e-5, 1)]), ([18, 22, 22, 10], [(100, 0.0, 3)]),
                         ([22, 26, 27, 11], [(30, 0.0, 6)]), ([21, 25, 28, 12], [(100, 1e-5, 2)])]:
        for alpha, vce, errors in picks:  # the lowest VCE picks, not the lowest test error
            make_run(tmp_path / "p" / f"{sizes[0]}-{alpha}", [f"optimizer.alpha={alpha}"], step_size=alpha,
                     hidden_sizes=sizes, weights=1e3, val_error=vce, test_error=errors * 1e-5, config=POKER_CONFIG,
                     **rmsprop)
    text = table2([tmp_path / "np" / "seed=0"], [tmp_path / "p"], None, tmp_path / "out", [tmp_path / "np"])
    seeds = text.split("## lambda = 1e-06: 5 NP runs (seeds)")[1]
    assert "| 0 | 20-20-20-20 | 0.017% | 17 | 300 (2) | 0% | 5 | " in seeds
    assert "| 4 | 30-30-30-30 | 0.013% | 13 | - | - | - | " in seeds
    assert "NP test errors over the 5 runs: 4, 8, 13, 17, 20 (median 13; of 100,000 test hands); " \
        "the paper's one run: 0.001%." in seeds
    assert "P at the same sizes (4 of the 5): 2, 3, 5, 6 (median 4)." in seeds
    # NP 17-5, 20-3, 4-6, 8-2: more in 3, fewer in 1; p = 2 * P(Binomial(4, 1/2) <= 1) = 2 * 5/16
    assert "NP makes more errors than P in 3, fewer in 1, as many in 0; exact two-sided p = 0.625." in seeds
    # pooled: 49 of 65 errors are NP's; 2 * P(Binomial(65, 1/2) >= 49), the rate ratio 49/16
    tail = sum(math.comb(65, i) for i in range(49, 66)) / 2 ** 65
    assert f"Pooled: NP 49 and P 16 errors; at one error rate NP's share of the 65 would be Binomial(65, 1/2): " \
        f"exact two-sided p = {2 * tail:.3g}; the rate ratio NP / P is 3.06, exact 95% interval 1.71 to 5.77." in seeds
    assert f"Left out, a second run of a seed: `{tmp_path / 'np' / 'twin_seed=1'}`." in seeds
    assert "## lambda" not in text.split("## lambda = 1e-06")[0]  # one setting of several seeds
    assert seed_lines([], []) == []


def test_the_figures_command_names_a_missing_directory_and_an_empty_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fig2", "--np", str(tmp_path / "nowhere")])
    assert stop.value.code == 2 and "no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["fig2", "--np", str(tmp_path)])
    assert stop.value.code == 1 and "no finished nonparametric run" in capsys.readouterr().err


def test_representative_sizes_are_printed_for_scripts_by_weight_count(tmp_path, capsys):
    from npnn.sweeps import main as sweeps_main

    for seed, w in enumerate([900, 1000, 1100]):  # lambda = 3e-4: the median run is seed 1
        make_run(tmp_path / f"a{seed}", ["lambda=3e-4", f"seed={seed}"], seed=seed, weights=w, test_error=0.02,
                 val_error=0.02, hidden_sizes=[60 + seed, 10])
    make_run(tmp_path / "b", ["lambda=3e-3"], weights=400, test_error=0.03, val_error=0.03, hidden_sizes=[25, 8])
    make_run(tmp_path / "c", ["lambda=1e-2"], weights=100, stopped_by="diverged", hidden_sizes=[5, 5])
    sweeps_main([str(tmp_path), "--representative-sizes"])
    assert capsys.readouterr().out == "25,8\n61,10\n"  # the diverged run has no representative


def test_baselines_write_their_test_errors_for_table2(tmp_path, capsys):
    from npnn.baselines import main as baselines_main

    out = tmp_path / "results" / "baselines.json"
    baselines_main(["--datasets", "synthetic", "--models", "naive_bayes", "decision_tree", "--data-dir",
                    str(tmp_path), "--out", str(out)])
    errors = json.loads(out.read_text())["synthetic"]
    assert set(errors) == {"naive_bayes", "decision_tree"} and all(0.0 <= e < 0.5 for e in errors.values())
    printed = capsys.readouterr().out
    assert f"{100 * errors['decision_tree']:.2f}%" in printed and f"wrote {out}" in printed


@pytest.mark.parametrize("args, message", [(["--launcher", "pbs"], "--launcher must be local or slurm, got pbs"),
                                           (["--fast"], "unknown argument --fast")])
def test_reproduce_sh_refuses_bad_arguments_before_it_runs_anything(tmp_path, args, message):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "reproduce.sh"
    run = subprocess.run(["bash", str(script), *args, "--runs", str(tmp_path / "runs")], capture_output=True, text=True)
    assert run.returncode == 2 and message in run.stderr and not (tmp_path / "runs").exists()
    usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "bash reproduce.sh [--quick]" in usage.stdout


MNIST_CONFIG = "dataset:\n  loader:\n    _target_: npnn.data.mnist.load_mnist\n"
POKER_CONFIG = CONFIG + "dataset:\n  loader:\n    _target_: npnn.data.poker.load_poker\n    split: [800, 100, 100000]\n"


def test_within_noise_is_the_exact_test_of_two_error_counts():
    from npnn.figures.claim import within_noise

    assert within_noise(4e-5, 1e-5, 100_000)  # 4 hands against 1: p = 2 * (1 + 5) / 32 = 0.375
    assert within_noise(0.0006, 0.0005, 100_000) and within_noise(0.0001, 0.0005, 100_000)  # fewer: always
    assert not within_noise(0.0010, 0.0004, 100_000)  # 100 against 40
    assert within_noise(7e-5, 1e-5, 100_000)  # 7 against 1: p = 2 * (1 + 8) / 256 = 0.070
    assert not within_noise(8e-5, 1e-5, 100_000)  # 8 against 1: p = 2 * (1 + 9) / 512 = 0.039
    assert not within_noise(float("nan"), 0.01, 10_000)  # a failed pick matches nothing


def random_search(tmp_path, trials):
    """A random search's run directories: (job number, VCE, TCE, CPU seconds, stopped_by) per trial."""
    p = dict(model="parametric", norm="batchnorm", optimizer="sgd", step_size=100, hidden_sizes=[90, 20])
    for num, vce, tce, cpu, how in trials:
        run = make_run(tmp_path / "random" / f"run{9 - num}", [f"optimizer.alpha={num}"], val_error=vce,
                       test_error=tce, cpu_time_s=cpu, stopped_by=how, **p)
        (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
    return tmp_path / "random"


def test_the_claim_follows_the_search_in_draw_order_and_picks_by_vce(tmp_path):
    # the directory names sort against the draw order (run9 is job 0); job 2 has the best TCE but not a better VCE
    search = random_search(tmp_path, [(0, 0.05, 0.050, 3600, "budget"), (3, 0.01, 0.012, 7200, "budget"),
                                      (1, 0.90, 0.900, 1800, "diverged"), (2, 0.06, 0.010, 3600, "protocol")])
    from npnn.figures import claim, search_curve

    curve = search_curve(gather([search]))
    assert [c["cpu_s"] for c in curve] == [3600, 5400, 9000, 16200]
    assert [c["pick_tce"] for c in curve] == [0.050, 0.050, 0.050, 0.012]  # by VCE
    assert [c["oracle_tce"] for c in curve] == [0.050, 0.050, 0.010, 0.010]
    make_run(tmp_path / "np" / "a", ["lambda=1e-3"], test_error=0.011, cpu_time_s=1800, weights=500,
             hidden_sizes=[40, 10], stopped_by="protocol", config=MNIST_CONFIG, **{"lambda": 1e-3})
    make_run(tmp_path / "np" / "b", ["lambda=1e-4"], test_error=0.013, cpu_time_s=900, stopped_by="protocol")
    written = claim([tmp_path / "np"], [search], tmp_path / "out")
    assert {p.name for p in written} == {"claim_mnist.png", "claim_mnist.pdf", "claim_mnist.md"}
    table = (tmp_path / "out" / "claim_mnist.md").read_text()
    assert "4 trials, 4.50 CPU hours in all" in table and "TCE 1.2%" in table
    # 1.1%: the pick never (1.2% at the end), the oracle at trial 3; 1.3%: the pick at trial 4
    assert "| 1.1% | 0.50 h | not reached (4 trials) | 2.50 h (trial 3) |" in table
    assert "| 1.3% | 0.25 h | 4.50 h (trial 4) | 2.50 h (trial 3) | - |" in table  # no config: not counted
    # within noise (of mnist's 10,000 test images): 120 errors against 110 cannot be told apart, 500 can
    assert "| 1.1% | 0.50 h | not reached (4 trials) | 2.50 h (trial 3) | 4.50 h (trial 4) |" in table
    assert table.index("| 1.3% |") < table.index("| 1.1% |")  # NP runs by CPU time
    # every trial in draw order: job 2 (run7) is the third, its pick still job 0's TCE, the oracle its own
    assert "| 3 | run7 | sgd | 100 | batchnorm | 90-20 | 6% | 1% | protocol | 3600 s | 2.50 h | 5% | 1% |" in table
    assert "| 2 | run8 | sgd | 100 | batchnorm | 90-20 | 90% | 90% | diverged | 1800 s | 1.50 h | 5% | 5% |" in table
    # NP runs without a whole CPU time (no cpu_time_s, or time_complete false) are left out, and named
    make_run(tmp_path / "np" / "c", ["lambda=1e-5"], test_error=0.001, cpu_time_s=None, stopped_by="protocol")
    make_run(tmp_path / "np" / "d", ["lambda=1e-6"], test_error=0.001, cpu_time_s=60, time_complete=False,
             stopped_by="protocol")
    claim([tmp_path / "np"], [search], tmp_path / "out")
    table = (tmp_path / "out" / "claim_mnist.md").read_text()
    assert table.count("| lambda = ") == 2 and f"`{tmp_path / 'np' / 'c'}`, `{tmp_path / 'np' / 'd'}`." in table
    with pytest.raises(ValueError, match="no NP run on mnist records its whole CPU time"):
        claim([tmp_path / "np" / "c"], [search], tmp_path / "out")
    # a trial stopped from outside (it resumes), or one under way (no summary yet), ends the curve there
    assert len(search_curve(gather([random_search(tmp_path / "s2", [(0, 0.05, 0.05, 60, "budget"),
                                                                    (1, 0.01, 0.01, 60, "signal"),
                                                                    (2, 0.01, 0.01, 60, "budget")])]))) == 1
    gapped = random_search(tmp_path / "s3", [(0, 0.05, 0.05, 60, "budget"), (2, 0.01, 0.01, 60, "budget")])
    assert len(search_curve(gather([gapped]))) == 1
    claim([tmp_path / "np"], [gapped], tmp_path / "out")
    table = (tmp_path / "out" / "claim_mnist.md").read_text()
    assert "1 trials, 0.02 CPU hours" in table and "Left out: every trial from trial 1 on (1 with a summary)" in table
    # a trial run as a plain run without hydra.job.num (its hydra.yaml: num: ???) is trial <k> of its trial<k>
    plain = random_search(tmp_path / "s5", [(0, 0.05, 0.05, 60, "budget"), (1, 0.01, 0.01, 60, "budget")])
    (plain / "run8").rename(plain / "trial1")
    (plain / "trial1" / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    num: ???\n")
    assert [c["pick_tce"] for c in search_curve(gather([plain]))] == [0.05, 0.01]
    with pytest.raises(ValueError, match="no trial of the random search on mnist ended"):
        claim([tmp_path / "np"], [random_search(tmp_path / "s4", [(0, 0.05, 0.05, 60, "signal")])], tmp_path / "out")
    with pytest.raises(ValueError, match="the same trial number"):
        claim([tmp_path / "np"], [search, search], tmp_path / "out")
    with pytest.raises(ValueError, match="no random-search run on mnist"):
        claim([tmp_path / "np"], [tmp_path / "np"], tmp_path / "out")
