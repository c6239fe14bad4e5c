"""README.md stays true: its Python examples run and its set-up commands are the CI's."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(digits_run, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    scopes = []
    for code in blocks:
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
    readme = (ROOT / "README.md").read_text()
    setup = re.search(r"## Set-up and tests.*?```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == setup
