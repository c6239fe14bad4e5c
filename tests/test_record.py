"""npnn.record owns the run record; the analysis tools read runs without the training stack; no import cycles."""
import ast
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from npnn import record
from npnn.config import CONF_DIR

SRC = Path(record.__file__).resolve().parents[1]
ANALYSIS = ("npnn.plot", "npnn.sweeps", "npnn.figures", "npnn.units", "npnn.mistakes", "npnn.record")


@pytest.mark.parametrize("module", ANALYSIS)
def test_analysis_tools_import_no_lightning(module):
    code = (f"import sys, {module}; print(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'lightning_fabric')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{module} loads {out.stdout.strip()}"


def test_record_imports_only_the_standard_library():
    tree = ast.parse(Path(record.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported - set(sys.stdlib_module_names)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the npnn modules it imports anywhere in its code (function-local imports too)."""
    modules = {}
    for path in (SRC / "npnn").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:  # a submodule (from npnn import fused), else the module itself
                    target = f"{node.module}.{a.name}"
                    found.add(target if target in modules else node.module)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle_inside_npnn():
    graph = _import_graph()
    assert "npnn.record" in graph and graph["npnn.runs"] >= {"npnn.record", "npnn.callbacks"}  # the walk sees edges
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # and finds a cycle


def test_hydra_leaves_out_exactly_the_keys_that_do_not_define_a_run():
    hydra_keys = OmegaConf.load(CONF_DIR / "config.yaml").hydra.job.config.override_dirname.exclude_keys
    assert list(hydra_keys) == [*record.RUN_INDEPENDENT_KEYS, "hparams_search"]  # the sweep's config: one per sweep
    assert record.is_run_independent("logger=wandb") and record.is_run_independent("hydra.sweep.dir=x")
    assert record.is_run_independent("+trainer.max_time.hours=1")
    assert not record.is_run_independent("lambda=1e-3") and not record.is_run_independent("seed=1")
    assert not record.is_run_independent("hparams_search=p_grid")  # it sets run keys: seeds group by it


def _write_run(run_dir: Path) -> None:
    (run_dir / "logs" / "version_0").mkdir(parents=True)
    (run_dir / "logs" / "version_1").mkdir()
    (run_dir / "logs" / "version_0" / "metrics.csv").write_text("step,val/error,train/ce\n10,0.5,\n20,0.25,0.7\n")
    (run_dir / "logs" / "version_1" / "metrics.csv").write_text("step,val/error\n20,0.2\n30,0.1\n")  # a resume
    (run_dir / "unit_lengths.csv").write_text("step,epoch,layer,id,fan_in,fan_out\n10,1.0000,1,0,1.5,0.25\n"
                                              "20,2.0000,1,0,1.25,0.5\n")
    (run_dir / "units.csv").write_text("id,layer,birth,death\n0,1,0,\n1,1,10,20\n")
    (run_dir / "hparams.yaml").write_text("a: 1\n")
    (run_dir / "summary.json").write_text(json.dumps({"stopped_by": "protocol"}))


def test_readers_read_the_compressed_record_as_the_plain_one(tmp_path, capsys):
    run = tmp_path / "sweep" / "run"
    _write_run(run)
    plain = (record.read_metrics(run), record.read_unit_lengths(run), record.read_units(run),
             record.steps_per_epoch(run))
    assert plain[0] == [{"step": 10.0, "val/error": 0.5}, {"step": 20.0, "val/error": 0.2, "train/ce": 0.7},
                        {"step": 30.0, "val/error": 0.1}]
    assert plain[1] == {(1, 0): [(1.0, 1.5, 0.25), (2.0, 1.25, 0.5)]} and plain[3] == 10.0
    unended = tmp_path / "sweep" / "unended"
    _write_run(unended)
    (unended / "summary.json").write_text(json.dumps({"stopped_by": "signal"}))  # it resumes: still writing
    record.main(["compress", str(tmp_path / "sweep"), "--remove", "hparams.yaml"])
    assert "3 logs compressed" in capsys.readouterr().out
    assert sorted(p.name for p in run.rglob("*") if p.is_file()) == \
        ["metrics.csv.xz", "metrics.csv.xz", "summary.json", "unit_lengths.csv.xz", "units.csv"]
    assert lzma.decompress((run / "unit_lengths.csv.xz").read_bytes()).startswith(b"step,epoch,layer")
    assert (record.read_metrics(run), record.read_unit_lengths(run), record.read_units(run),
            record.steps_per_epoch(run)) == plain
    assert (unended / "unit_lengths.csv").is_file() and (unended / "hparams.yaml").is_file()


def test_summary_schema_and_states(tmp_path):
    with pytest.raises(ValueError, match=r"not in npnn.record.SUMMARY_FIELDS \['sizes'\], missing \[.*'dataset'"):
        record.write_summary(tmp_path, {"sizes": [1]})
    assert not (tmp_path / "summary.json").exists()
    (tmp_path / "summary.json").write_text("{")
    with pytest.raises(record.RecordError, match="summary.json is damaged"):
        record.read_summary(tmp_path)
    assert record.read_summary(tmp_path / "none") is None
    assert [record.run_state(s) for s in (None, {"stopped_by": "protocol"}, {"stopped_by": "time"},
                                          {"stopped_by": "diverged"})] == ["running", "finished", "running", "failed"]


def test_a_resumed_compressed_record_goes_on_writing_its_unit_lengths(tmp_path):
    from npnn.callbacks import UnitLogger

    rows = b"step,epoch,layer,id,fan_in,fan_out\r\n10,1.0000,1,0,1.5,0.25\r\n20,2.0000,1,0,1.25,0.5\r\n"
    (tmp_path / "unit_lengths.csv.xz").write_bytes(lzma.compress(rows))
    logger = UnitLogger(tmp_path)
    logger.load_state_dict({"validations": 2, "rows": 1})  # the checkpoint had written one row
    logger.on_fit_start(None, None)
    assert not (tmp_path / "unit_lengths.csv.xz").exists()
    assert (tmp_path / "unit_lengths.csv").read_bytes() == rows[:rows.index(b"20,")]  # the rows after it dropped


SPEED = Path(__file__).resolve().parents[1] / "runs" / "full" / "poker" / "speed"


def test_compare_finds_the_same_network_and_the_first_difference(tmp_path, capsys):
    """The committed default run before and after the evaluation changes: the same network (and a CLI exit status
    of 0); a copy with one validation error changed is found out at its step (status 1)."""
    same, lines = record.compare(SPEED / "default_before", SPEED / "default_after")
    assert same and lines[0].startswith("units.csv: the same") and "b / a = 0.594" in lines[-3]
    with pytest.raises(SystemExit) as status:
        record.main(["compare", str(SPEED / "default_before"), str(SPEED / "default_after")])
    assert status.value.code == 0 and capsys.readouterr().out.strip().endswith("the same network")
    changed = tmp_path / "changed"
    for name in ("summary.json", "units.csv"):
        (changed / name).parent.mkdir(parents=True, exist_ok=True)
        (changed / name).write_bytes((SPEED / "default_after" / name).read_bytes())
    metrics = lzma.decompress((SPEED / "default_after" / "logs/version_0/metrics.csv.xz").read_bytes()).decode()
    head, *rows = metrics.splitlines()
    column = head.split(",").index("val/error")
    at = next(i for i, row in enumerate(rows) if i > 100 and row.split(",")[column])
    cells = rows[at].split(",")
    cells[column] = "0.5"
    rows[at] = ",".join(cells)
    (changed / "logs/version_0").mkdir(parents=True)
    (changed / "logs/version_0/metrics.csv").write_text("\n".join([head, *rows]) + "\n")
    same, lines = record.compare(SPEED / "default_before", changed)
    step = float(cells[head.split(",").index("step")])
    assert not same and f"first at step {step:.0f}" in " ".join(lines)
    with pytest.raises(SystemExit) as status:
        record.main(["compare", str(SPEED / "default_before"), str(changed)])
    assert status.value.code == 1
    with pytest.raises(SystemExit) as status:  # a folder that is not a run: a one-line error, no traceback
        record.main(["compare", str(SPEED / "default_before"), str(tmp_path)])
    assert status.value.code == 2 and "units.csv is missing" in capsys.readouterr().err
