"""python -m npnn.plot: a plot of one run, from its metrics.csv files."""
import json

import pytest

from npnn.plot import main, phases, plot_run, read_metrics

HEADER = "epoch_float,lambda,protocol/phase,size/layer1,size/layer2,step,step_size,test/error,train/ce,val/error\n"


def write_run(run_dir):
    """Two versions (a resume): the second repeats step 200, whose later row counts."""
    (run_dir / "logs" / "version_0").mkdir(parents=True)
    (run_dir / "logs" / "version_1").mkdir()
    (run_dir / "logs" / "version_0" / "metrics.csv").write_text(
        HEADER + "1.0,0.001,,11,11,100,30.0,0.40,0.69,0.50\n,,0.0,,,100,,,,\n"
        "2.0,0.001,,12,12,200,30.0,0.30,0.60,0.99\n,,1.0,,,200,,,,\n")
    (run_dir / "logs" / "version_1" / "metrics.csv").write_text(
        HEADER + "2.0,0.001,,12,12,200,30.0,0.30,0.60,0.35\n,,1.0,,,200,,,,\n"
        "3.0,0.0,,12,10,300,10.0,0.20,0.40,0.25\n,,2.0,,,300,,,,\n"
        "4.0,0.0,,12,10,400,10.0,0.10,0.30,0.15\n,,3.0,,,400,,,,\n")
    (run_dir / "summary.json").write_text(json.dumps({"model": "nonparametric"}))


def test_the_plot_shows_the_runs_data_and_its_phases(tmp_path):
    write_run(tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [100, 200, 300, 400] and rows[1]["val/error"] == 0.35  # the resume's row
    assert phases(rows, "nonparametric") == [("grow", 100, 200), ("prune", 200, 300), ("fit", 300, 400),
                                            ("anneal", 400, 400)]
    fig = plot_run(tmp_path)
    assert (tmp_path / "plots" / "run.png").stat().st_size > 0 and (tmp_path / "plots" / "run.pdf").stat().st_size > 0
    error, ce, sizes, step_size, lam = fig.axes
    assert list(error.lines[0].get_xdata()) == [100, 200, 300, 400]
    assert list(error.lines[0].get_ydata()) == pytest.approx([50.0, 35.0, 25.0, 15.0])  # validation, in %
    assert list(error.lines[1].get_ydata()) == pytest.approx([40.0, 30.0, 20.0, 10.0])  # test
    assert list(ce.lines[0].get_ydata()) == pytest.approx([0.69, 0.60, 0.40, 0.30])
    assert [list(line.get_ydata()) for line in sizes.lines] == [[11, 12, 12, 12], [11, 12, 10, 10]]
    assert list(step_size.lines[0].get_ydata()) == [30.0, 30.0, 10.0, 10.0]
    assert list(lam.lines[0].get_ydata()) == [0.001, 0.001, 0.0, 0.0] and lam.get_yscale() == "symlog"
    assert [p.get_label() for p in error.patches] == ["phase: grow", "phase: prune", "phase: fit", "phase: anneal"]
    for ax in fig.axes:
        assert ax.get_ylabel()
    assert fig.axes[-1].get_xlabel() == "optimizer steps (training time)"


def test_the_plot_command_names_a_directory_without_metrics(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 1 and "has no logs/version_*/metrics.csv" in capsys.readouterr().err
    write_run(tmp_path / "run")
    main([str(tmp_path / "run"), "--out", str(tmp_path / "out" / "fig")])
    assert (tmp_path / "out" / "fig.png").is_file() and "wrote" in capsys.readouterr().out


def test_table1_shows_the_measured_cost_per_weight_beside_the_papers_counts(tmp_path, monkeypatch):
    import npnn.bench
    from npnn.bench import PAPER_TABLE1, table1

    timings = {"mnist": {"SGD": 1e-3, "AdaRad": 2e-3, "RMSprop": 4e-3},  # seconds per step, as the bench returns
               "poker": {"SGD": 1e-4, "AdaRad": 1e-4, "RMSprop": 5e-4}}
    monkeypatch.setattr(npnn.bench, "bench_optimizer", lambda shapes, rounds, steps: timings)
    text = table1(tmp_path, rounds=2, steps=1)
    assert (tmp_path / "table1.md").read_text() == text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ") and
            not line.startswith("| algorithm")}
    mnist_weights, poker_weights = 784 * 1000 + 1000 * 1000 + 1000 * 10, \
        10 * 300 + 300 * 260 + 260 * 260 + 260 * 130 + 130 * 2
    assert f"{2e-3 / mnist_weights * 1e9:.3f} (0.50)" in rows["AdaRad"]
    assert f"{1e-4 / poker_weights * 1e9:.3f} (0.20)" in rows["AdaRad"]
    assert PAPER_TABLE1["RMSprop"] in rows["RMSprop"] and set(rows) == {"SGD", "AdaRad", "RMSprop"}
