"""README.md stays true: its Python examples run, its set-up commands are the CI's, every command in its ```bash
blocks is run or composed here, and every error message it quotes is the real one.

Each command line is classified (``KINDS``); a line of no known kind fails the test, so a new README command needs a
check here. ``python train.py ...`` is composed with the app's config (each job of a ``-m`` sweep); ``python -m
npnn.<tool> ...`` runs for real on the digits run where that is cheap (predict, export, plot), otherwise its
arguments are parsed by the tool's own parser; ``bash reproduce.sh ...`` is checked against the script's parser."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(text: str = README) -> list[tuple[str, str]]:
    """The fenced blocks of the README, in order: (language, body)."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)


def commands() -> list[str]:
    """Every command line of the README's bash blocks: comments dropped, continuation lines joined."""
    out = []
    for lang, body in blocks():
        if lang != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment (none of the commands quotes a #)
            if line and not line.startswith("#"):
                out.append(line)
    return out


def words(command: str) -> list[str]:
    return shlex.split(command)


KINDS = {
    "ci": lambda w: w[:2] == ["pip", "install"] or w[:3] == ["python", "-m", "pytest"],
    "train": lambda w: w[:2] == ["python", "train.py"] or w[:1] == ["npnn-train"],
    "tool": lambda w: w[:2] == ["python", "-m"] and w[2].startswith("npnn.") and len(w) > 2,
    "python -c": lambda w: w[:2] == ["python", "-c"],
    "reproduce": lambda w: w[:2] == ["bash", "reproduce.sh"],
}


def kind(command: str) -> str | None:
    if command.startswith("RUN="):  # a shell assignment: the run directory the next commands take
        return "RUN="
    w = words(command)
    return next((name for name, test in KINDS.items() if test(w)), None)


def test_every_readme_command_is_of_a_kind_this_module_checks():
    cmds = commands()
    assert len(cmds) >= 20
    assert [c for c in cmds if kind(c) is None] == []


# ---------------------------------------------------------------- python blocks and the CI


def test_readme_python_example_runs(digits_run, monkeypatch):
    code_blocks = [body for lang, body in blocks() if lang == "python"]
    assert code_blocks
    scopes = []
    for code in code_blocks:
        scope: dict = {}
        if "npnn.load(RUN)" in code:  # Use a trained network: the digits run, where digits.csv is
            scope["RUN"] = str(digits_run.run_dir)
            monkeypatch.chdir(digits_run.folder)
        exec(compile(code, "README.md", "exec"), scope)
        scopes.append(scope)
    loaded = next(scope["model"] for scope in scopes if "model" in scope)
    assert loaded.hidden_sizes == digits_run.summary["hidden_sizes"]
    net = next(scope["net"] for scope in scopes if "net" in scope)  # The library
    assert len(net.unit_records()) >= 20 + 2 * 3  # 20 starting units, one added per layer per epoch
    fitted = next(scope for scope in scopes if "clf" in scope)  # Your own data: scikit-learn
    assert fitted["clf"].score(fitted["X_test"], fitted["y_test"]) > 0.95


def test_ci_runs_the_readme_commands():
    setup = re.search(r"## Set-up and tests.*?```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == setup
    assert [c for c in commands() if kind(c) == "ci"] == setup  # no other pip or pytest line in the README


# ---------------------------------------------------------------- python train.py: composed


def jobs(overrides: list[str], limit: int = 8) -> list[list[str]]:
    """The override sets of a sweep's jobs (comma lists and range() expanded; at most ``limit``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for o in parsed:
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices.append([f"{key}={v}" for v in values])
    return [list(job) for job in itertools.islice(itertools.product(*choices), limit)]


def compose_job(overrides: list[str]):
    from npnn.config import compose

    cfg = compose(*overrides, return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    if params and "optuna" not in str(cfg.hydra.sweeper.get("_target_", "")):  # the basic sweeper's grid: its first job
        first = [f"{k}={str(v).split(',')[0].strip()}" for k, v in params.items()]
        compose(*first, *overrides, return_hydra_config=True)
    return cfg


def train_commands() -> list[list[str]]:
    out = []
    for c in commands():
        if kind(c) == "train":
            w = words(c)
            out.append(w[2:] if w[0] == "python" else w[1:])
    return out


def test_every_train_command_composes():
    checked = 0
    for args in train_commands():
        if args in (["--help"], ["lambda=-1"]):  # run for real below
            continue
        sweep = args[:1] == ["-m"]
        overrides = args[1:] if sweep else args
        assert not any(a.startswith("-") for a in overrides), args
        sets = jobs(overrides)
        assert sweep or len(sets) == 1, f"a comma list without -m: {args}"
        for job in sets:
            cfg = compose_job(job)
            assert cfg.dataset and cfg.model and cfg.optimizer
            checked += 1
    assert checked >= 9


def test_the_readme_digits_command_is_the_digits_run(digits_run):
    from npnn.config import compose

    readme = next(a for a in train_commands() if a[:1] == ["dataset=csv"])
    assert readme == ["dataset=csv", "dataset.path=digits.csv", "dataset.target=label"]
    cfg = compose(*readme)
    run_cfg = digits_run.summary["config"]
    assert cfg.dataset.target == run_cfg["dataset"]["target"] and cfg["lambda"] == run_cfg["lambda"]


def test_train_help_runs(tmp_path):
    assert ["--help"] in train_commands()
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "dataset" in out.stdout and "hparams_search" in out.stdout


def quoted_errors() -> list[tuple[str, str]]:
    """(command, quoted line) for every ``npnn: error:`` line the README quotes in an output block, with the last
    command of the bash block before it."""
    found, last = [], None
    for lang, body in blocks():
        if lang == "bash":
            last = [c for c in body.splitlines() if c.strip() and not c.startswith("#")][-1]
        elif lang == "":
            found += [(last, line.strip()) for line in body.splitlines() if line.startswith("npnn: error:")]
    return found


def test_every_quoted_error_message_is_the_real_one(tmp_path):
    quoted = quoted_errors()
    assert quoted and len(quoted) == README.count("npnn: error:")  # none quoted outside an output block
    for command, line in quoted:
        assert kind(command) == "train", command
        args = words(command)[2:]
        out = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 1, (command, out.stderr)
        assert line in out.stderr.splitlines(), (line, out.stderr)
        assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("summary.json"))


# ---------------------------------------------------------------- python -m npnn.<tool>: run or parsed


class _Parsed(Exception):
    pass


def parse_only(module: str, argv: list[str]) -> argparse.Namespace:
    """``argv`` through the tool's own parser (argparse exits 2 on a flag or choice it does not know)."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    mod = importlib.import_module(module)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", parse_args)
        try:
            mod.main(argv)
        except _Parsed as parsed:
            return parsed.args[0]
    raise AssertionError(f"{module}.main did not parse its arguments")


RUN_FOR_REAL = {"npnn.predict", "npnn.export", "npnn.plot"}  # cheap on the digits run


def test_every_tool_command_runs_or_parses(digits_run, monkeypatch):
    monkeypatch.chdir(digits_run.folder)  # where digits.csv is
    assigned = [c for c in commands() if kind(c) == "RUN="]
    assert assigned == ["RUN=$(ls -d outputs/*/* | tail -1)"]  # the digits run's directory: digits_run.run_dir
    outputs = {}
    tools = [c for c in commands() if kind(c) == "tool"]
    assert {words(c)[2] for c in tools} >= RUN_FOR_REAL | {"npnn.sweeps"}
    for command in tools:
        w = [str(digits_run.run_dir) if a == "$RUN" else a for a in words(command)]
        module, argv = w[2], w[3:]
        if module in RUN_FOR_REAL:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                importlib.import_module(module).main(argv)
            outputs[module] = buf.getvalue()
        else:
            parse_only(module, argv)
    assert (digits_run.folder / "predictions.csv").exists()
    assert (digits_run.run_dir / "export" / "model.onnx").exists()
    assert (digits_run.run_dir / "plots" / "run.png").exists()
    # the quoted output of npnn.predict: the same line up to the numbers, which depend on the CPU
    quoted = next(line for lang, body in blocks() if lang == ""
                  for line in body.splitlines() if line.startswith("wrote 1797"))
    head = quoted.split(": ")[0] + ": "
    assert outputs["npnn.predict"].startswith(head), outputs["npnn.predict"]


def test_every_tool_named_in_the_prose_parses():
    """``python -m npnn.figures fig2|fig3|table2|claim`` and ``python -m npnn.bench table1``, named in the text."""
    assert "`python -m npnn.figures fig2|fig3|table2|claim`" in README and "`python -m npnn.bench table1`" in README
    for artefact in ("fig2", "table2", "claim"):
        parse_only("npnn.figures", [artefact, "--np", "DIR"] + (["--random", "DIR"] if artefact == "claim" else []))
    parse_only("npnn.figures", ["fig3", "RUN"])
    parse_only("npnn.bench", ["table1", "--rounds", "30", "--steps", "5"])


# ---------------------------------------------------------------- python -c, bash reproduce.sh


def test_python_c_commands_run(digits_run, tmp_path):
    snippets = [words(c)[2] for c in commands() if kind(c) == "python -c"]
    assert snippets
    for code in snippets:
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    assert (tmp_path / "digits.csv").read_text() == (digits_run.folder / "digits.csv").read_text()


def test_every_reproduce_command_passes_the_scripts_checks():
    script = (ROOT / "reproduce.sh").read_text()
    stages = re.search(r'^STAGES="(.*)"', script, re.M).group(1).split()
    launchers = re.findall(r"^  (\w+)\) JOBS=", script, re.M)
    assert launchers == ["local", "slurm"]
    cmds = [c for c in commands() if kind(c) == "reproduce"]
    assert len(cmds) >= 4
    for command in cmds:
        args = words(command)[2:]
        own, extra = (args[: args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
        out = subprocess.run(["bash", str(ROOT / "reproduce.sh"), *own, "--help"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, (command, out.stderr)  # every flag before --help was accepted
        values = dict(zip(own, own[1:]))
        assert set(values.get("--only", stages[0]).split(",")) <= set(stages), command
        assert values.get("--launcher", "local") in launchers, command
        if extra:  # the overrides go to every train.py call, on the launcher named
            launcher = "slurm" if values.get("--launcher") == "slurm" else "joblib"
            compose_job([f"hydra/launcher={launcher}", *extra])
