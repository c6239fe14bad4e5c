"""Where NP nets stand against what a tabular user would pick instead.

    python -m npnn.tabular [--datasets digits breast_cancer wine poker] [--seeds 5] [--out docs/tabular]

For each data set and seed, one stratified 80 / 20 train / test split (``random_state=seed``), and on it:

- ``NP (defaults)``: :class:`npnn.sklearn.NonparametricClassifier` with its defaults (``random_state=seed``),
  validated on the grid's validation rows (``eval_set``);
- ``MLP (defaults)``: scikit-learn's ``MLPClassifier`` with its defaults, behind a ``StandardScaler``;
- ``MLP (width grid)``: ``MLPClassifier`` with 1 or 2 hidden layers of 16, 32, 64, 128, 256 or 512 units
  (12 fits), trained on 80% of the training rows and picked by the accuracy on the other 20%, NP's validation rows;
  its CPU time is the whole grid's;
- ``LogisticRegression`` and ``HistGradientBoostingClassifier`` with their defaults.

Everything runs on one core (torch and the BLAS / OpenMP pools limited to one thread). The test accuracy
is reported as mean and standard deviation over the seeds, with the final width and the fit's CPU
seconds (``time.process_time``). ``poker`` is npnn's generated poker data set (``dataset=poker``), its
first 100,000 rows. ``--out`` writes ``<out>.md`` (the table) and ``<out>.json`` (every fit's record, after
every split: launched again, the command keeps the splits ``<out>.json`` holds and runs the others).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load", "compare", "main", "WIDTHS"]

DATASETS = ("digits", "breast_cancer", "wine", "poker")
WIDTHS = (16, 32, 64, 128, 256, 512)
VALIDATION_FRACTION = 0.2  # NonparametricClassifier's default: the grid picks on the same share


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of a data set that ships with an installed package."""
    if name == "poker":
        from npnn.data.poker import load_poker

        splits = load_poker(standardize_features=False, split=(100_000, 1, 1))  # the first 100,000 hands
        return splits.x_train.double().numpy(), splits.y_train.numpy()
    import sklearn.datasets

    loaders = {"digits": sklearn.datasets.load_digits, "breast_cancer": sklearn.datasets.load_breast_cancer,
               "wine": sklearn.datasets.load_wine}
    if name not in loaders:
        raise SystemExit(f"npnn.tabular: unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    return loaders[name](return_X_y=True)


def _timed(fit: Callable[[], Any]) -> tuple[Any, float]:
    start = time.process_time()
    model = fit()
    return model, time.process_time() - start


def _mlp(hidden: tuple[int, ...] | None, seed: int):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    mlp = MLPClassifier(random_state=seed) if hidden is None else MLPClassifier(hidden, random_state=seed)
    return make_pipeline(StandardScaler(), mlp)


def compare(name: str, seed: int) -> list[dict[str, Any]]:
    """Every method's record on one split of ``name``."""
    import warnings

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from npnn.sklearn import NonparametricClassifier

    X, y = load(name)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    records = []

    def record(method: str, model, cpu: float, width: str) -> None:
        records.append({"dataset": name, "seed": seed, "method": method, "test_accuracy": model.score(X_test, y_test),
                        "width": width, "cpu_s": round(cpu, 3), "train_rows": len(y_train)})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # MLPClassifier's max_iter=200, as a user gets it
        X_fit, X_val, y_fit, y_val = train_test_split(X_train, y_train, test_size=VALIDATION_FRACTION,
                                                      random_state=seed, stratify=y_train)
        np_model, cpu = _timed(lambda: NonparametricClassifier(random_state=seed).fit(X_fit, y_fit,
                                                                                      eval_set=(X_val, y_val)))
        record("NP (defaults)", np_model, cpu, "-".join(map(str, np_model.hidden_sizes_)))
        mlp, cpu = _timed(lambda: _mlp(None, seed).fit(X_train, y_train))
        record("MLP (defaults)", mlp, cpu, "100")
        grid, total = [], 0.0
        for hidden in [(w,) for w in WIDTHS] + [(w, w) for w in WIDTHS]:
            model, cpu = _timed(lambda: _mlp(hidden, seed).fit(X_fit, y_fit))
            total += cpu
            grid.append((model.score(X_val, y_val), -sum(hidden), hidden, model))  # ties: the smaller net
        _, _, hidden, best = max(grid, key=lambda g: g[:2])
        record("MLP (width grid)", best, total, "-".join(map(str, hidden)))
        logistic, cpu = _timed(lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
                               .fit(X_train, y_train))
        record("LogisticRegression", logistic, cpu, "")
        boosted, cpu = _timed(lambda: HistGradientBoostingClassifier(random_state=seed).fit(X_train, y_train))
        record("HistGradientBoosting", boosted, cpu, f"{boosted.n_iter_} iterations")
    return records


def table(records: list[dict[str, Any]]) -> str:
    """One markdown table: a row per data set and method."""
    lines = ["| data set | method | test accuracy (mean ± sd) | final width (per seed) | fit CPU s (mean) |",
             "|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["dataset"], r["method"]) for r in records))
    for dataset, method in keys:
        rows = [r for r in records if (r["dataset"], r["method"]) == (dataset, method)]
        acc = [100 * r["test_accuracy"] for r in rows]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        widths = ", ".join(r["width"] for r in rows) if rows[0]["width"] else ""
        lines.append(f"| {dataset} ({rows[0]['train_rows']:,} rows, {len(rows)} seeds) | {method} | "
                     f"{statistics.mean(acc):.2f}% ± {spread:.2f} | {widths} | "
                     f"{statistics.mean(r['cpu_s'] for r in rows):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m npnn.tabular", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=None, help="write <out>.md and <out>.json (e.g. docs/tabular)")
    args = parser.parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    out = Path(args.out) if args.out else None
    done = json.loads(out.with_suffix(".json").read_text()) if out and out.with_suffix(".json").is_file() else []
    records: list[dict[str, Any]] = []
    with threadpool_limits(1):
        for name in args.datasets:
            for seed in range(args.seeds):
                earlier = [r for r in done if (r["dataset"], r["seed"]) == (name, seed)]
                records += earlier or compare(name, seed)  # a relaunch keeps the splits it has (<out>.json)
                print(f"{name} seed {seed}{' (from ' + str(out.with_suffix('.json')) + ')' if earlier else ''}: "
                      + ", ".join(f"{r['method']} {100 * r['test_accuracy']:.2f}% ({r['cpu_s']:.1f} s)"
                                  for r in records[-5:]), flush=True)
                if out:  # after every split: a long comparison can stop and go on
                    out.parent.mkdir(parents=True, exist_ok=True)
                    ran = {(r["dataset"], r["seed"]) for r in records}
                    rest = [r for r in done if (r["dataset"], r["seed"]) not in ran]  # not lost if this one stops
                    out.with_suffix(".json").write_text(json.dumps(records + rest, indent=1))
    text = table(records)
    print(text)
    if out:
        command = "python -m npnn.tabular " + " ".join(argv if argv is not None else sys.argv[1:])
        out.with_suffix(".md").write_text(f"Written by `{command.strip()}` (one core).\n\n{text}\n")


if __name__ == "__main__":
    main()
