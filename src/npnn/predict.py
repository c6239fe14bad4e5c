"""Predict with a run's final network: a table in, the user's labels and class probabilities out.

    python -m npnn.predict RUN_DIR --input x.csv --output predictions.csv

The input is read as ``dataset=csv`` reads its tables (CSV, TSV or Parquet, a header row). Its columns
must be the run's features, by name (any order); the run's target column may be there too, and then
the error rate is printed. For a data set without column names (the paper's, ``dataset=tensors``), the
input holds exactly the features, in order. The output has the column ``prediction`` (the user's
labels) and one probability column ``p(<label>)`` per class, a row per input row.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from npnn.data.tabular import DataError, _check_finite, _numeric, read_table
from npnn.trained import ModelFileError, TrainedNetwork, load

__all__ = ["predict_table", "main"]


def predict_table(model: TrainedNetwork, path: str | Path, ignore_extra: bool = False):
    """``(predictions, labels)``: a DataFrame of ``prediction`` and ``p(<label>)`` columns for the rows of
    the table at ``path``, and its target column (None where it has none)."""
    import pandas as pd

    frame = read_table(path, "--input")
    frame.columns = [str(c) for c in frame.columns]
    columns, names, target = list(frame.columns), model.feature_names, model.info.get("target")
    labels = frame[target] if target is not None and target in columns else None
    if names is None:
        features = [c for c in columns if c != target]
        if len(features) != model.net.in_features:
            raise DataError(f"--input: {path} has {len(features)} feature columns; the network takes "
                            f"{model.net.in_features}, in the order it was trained on")
    else:
        missing = [c for c in names if c not in columns]
        extra = [c for c in columns if c not in names and c != target]
        if missing:
            raise DataError(f"--input: {path} has no column(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}: "
                            f"the network needs its {len(names)} features by name")
        if extra and not ignore_extra:
            raise DataError(f"--input: {path} has column(s) {extra[:8]}{' ...' if len(extra) > 8 else ''} that the "
                            f"network was not trained on: drop them, or pass --ignore-extra")
        features = names
    x = _numeric(frame[features], Path(path), "--input")
    _check_finite(x, features, f"--input {path}")
    proba = model.predict_proba(x)
    out = pd.DataFrame({"prediction": model.classes[np.argmax(proba, axis=1)]})
    for j, label in enumerate(model.classes):
        out[f"p({label})"] = proba[:, j]
    return out, labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="npnn-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory (or its model.safetensors)")
    parser.add_argument("--input", required=True, help="a table of feature columns (CSV, TSV or Parquet)")
    parser.add_argument("--output", default="-", help="where to write the predictions as CSV (default: stdout)")
    parser.add_argument("--ignore-extra", action="store_true", help="leave out columns the network does not take")
    args = parser.parse_args(argv)
    try:
        model = load(args.run)
        out, labels = predict_table(model, args.input, ignore_extra=args.ignore_extra)
    except (ModelFileError, DataError) as err:
        raise SystemExit(f"npnn-predict: error: {err}") from None
    if args.output == "-":
        out.to_csv(sys.stdout, index=False)
        return
    out.to_csv(args.output, index=False)
    line = f"wrote {len(out)} predictions to {args.output}"
    if labels is not None:
        wrong = int((out["prediction"].to_numpy() != labels.to_numpy()).sum())
        line += f"; against its column {labels.name!r}: {wrong} wrong, error {100 * wrong / max(len(out), 1):.2f}%"
    print(line)


if __name__ == "__main__":
    main()
