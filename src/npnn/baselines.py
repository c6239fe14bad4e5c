"""Table 2's baselines: logistic regression, naive Bayes and a decision tree (scikit-learn).

    python -m npnn.baselines [--datasets poker mnist ...] [--data-dir data] [--out baselines.json]

Trained on the training split with scikit-learn's defaults (logistic regression: more
iterations), scored on the test split; prints the test error of each.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from npnn.config import CONF_DIR, compose

__all__ = ["MODELS", "baseline_errors"]

MODELS = ("logistic_regression", "naive_bayes", "decision_tree")


def make_model(name: str, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.tree import DecisionTreeClassifier

    return {"logistic_regression": lambda: LogisticRegression(max_iter=1000),
            "naive_bayes": GaussianNB,
            "decision_tree": lambda: DecisionTreeClassifier(random_state=seed)}[name]()


def load_dataset(name: str, data_dir: str, seed: int = 0):
    from hydra.utils import instantiate

    return instantiate(compose(f"dataset={name}", f"data_dir={data_dir}", f"seed={seed}").dataset.loader)


def baseline_errors(splits, models=MODELS, seed: int = 0) -> dict[str, float]:
    """Test error of each model trained on the training split."""
    x, y = splits.x_train.numpy(), splits.y_train.numpy()
    xt, yt = splits.x_test.numpy(), splits.y_test.numpy()
    return {m: float(np.mean(make_model(m, seed).fit(x, y).predict(xt) != yt)) for m in models}


def main(argv: list[str] | None = None) -> None:
    from npnn.data.download import DataUnavailableError

    datasets = sorted(p.stem for p in CONF_DIR.joinpath("dataset").glob("*.yaml"))
    parser = argparse.ArgumentParser(prog="python -m npnn.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=datasets, default=["poker"], metavar="NAME",
                        help=f"one or more of {', '.join(datasets)} (default: poker)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default=None, metavar="JSON",
                        help="also write {dataset: {model: test error}} here "
                             "(python -m npnn.figures table2 --baselines)")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    print(f"{'dataset':<20}{'model':<22}{'test error':>11}{'seconds':>9}")
    for name in args.datasets:
        try:
            splits = load_dataset(name, args.data_dir)
        except Exception as err:  # Hydra wraps the loader's error: show the cause, not the traceback
            cause = err.__cause__ if err.__cause__ is not None else err
            if not isinstance(cause, (DataUnavailableError, ValueError)):
                raise
            parser.exit(1, f"{parser.prog}: error: {name}: {cause}\n")
        for model in args.models:
            start = time.time()
            err = baseline_errors(splits, [model])[model]
            results.setdefault(name, {})[model] = err
            print(f"{name:<20}{model:<22}{100 * err:>10.2f}%{time.time() - start:>9.1f}", flush=True)

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
