"""Export a run's final network as a plain ``nn.Sequential`` of ``Linear`` and ``ReLU``.

    python -m npnn.export RUN_DIR [--format torchscript|onnx|state_dict] [--output PATH]

The feature standardisation and every norm's evaluation map are folded into the ``Linear`` layers
(:func:`npnn.trained.to_sequential`): the exported net takes raw features and returns the logits of
the trained network. ``torchscript`` and ``onnx`` files carry the class labels and feature names
(TorchScript: the extra file ``npnn.json``; ONNX: metadata ``npnn.classes`` and ``npnn.features``); a
``state_dict`` is a ``torch.save`` of tensors only, loadable with ``weights_only=True``, and its labels
are in the run's ``model.json``. Once written, the command loads the file back (onnxruntime for ONNX), checks
it against the trained net on random rows and prints the largest difference. ONNX needs torch >= 2.5 (its
``torch.export``-based exporter) and ``pip install 'npnn[onnx]'``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path

import torch

from npnn.trained import ModelFileError, TrainedNetwork, load, to_sequential

__all__ = ["export", "main", "FORMATS"]

FORMATS = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx", "state_dict": "model.state_dict.pt"}


def _labels(model: TrainedNetwork) -> dict[str, str]:
    return {"npnn.classes": json.dumps(model.classes.tolist()), "npnn.features": json.dumps(model.feature_names),
            "npnn.input": "raw features, one row each; output: logits, one column per class"}


def largest_difference(model: TrainedNetwork, sequential: torch.nn.Module, rows: int = 256, seed: int = 0) -> float:
    """``max |a - b| / max |a|`` of the two nets' logits ``a``, ``b`` on random rows at the data's scale."""
    generator = torch.Generator().manual_seed(seed)
    x = model.mean + model.std * torch.randn(rows, model.net.in_features, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        a, b = model(x).double(), sequential(x.float()).double()
    return float((a - b).abs().max() / a.abs().max())


def export(run: str | Path, fmt: str = "torchscript", output: str | Path | None = None) -> Path:
    """Write the run's network in ``fmt`` (default path: ``RUN_DIR/export/<FORMATS[fmt]>``); returns the path."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model = load(run)
    sequential = to_sequential(model)
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    path = Path(output) if output is not None else run_dir / "export" / FORMATS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, model.net.in_features)  # 2 rows: a dynamic row count (1 would be specialised)
    if fmt == "torchscript":
        torch.jit.save(torch.jit.script(sequential), str(path),
                       _extra_files={"npnn.json": json.dumps(_labels(model))})
    elif fmt == "onnx":
        try:
            import onnx
        except ImportError:
            raise ImportError("--format onnx needs the onnx packages: pip install 'npnn[onnx]' "
                              "(onnx, onnxscript and onnxruntime)") from None
        with warnings.catch_warnings(), _quiet("torch.onnx"):  # torch.export's notes on what it skipped
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(sequential, (example,), input_names=["features"], output_names=["logits"],
                                        dynamic_shapes=({0: torch.export.Dim("rows")},), verbose=False, dynamo=True)
        proto = program.model_proto
        for key, value in _labels(model).items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(path))
    else:
        torch.save(sequential.state_dict(), path)
    return path


@contextlib.contextmanager
def _quiet(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="npnn-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory (or its model.safetensors)")
    parser.add_argument("--format", default="torchscript", choices=list(FORMATS))
    parser.add_argument("--output", default=None, help="the file to write (default: RUN_DIR/export/...)")
    args = parser.parse_args(argv)
    try:
        path = export(args.run, args.format, args.output)
    except (ModelFileError, ValueError, ImportError) as err:
        raise SystemExit(f"npnn-export: error: {err}") from None
    model = load(args.run)
    written = _reload(path, args.format, to_sequential(model))
    check = "not checked: onnxruntime is not installed (pip install 'npnn[onnx]')" if written is None else \
        f"largest difference to the trained network's logits on 256 random rows: " \
        f"{largest_difference(model, written):.2g} of the largest logit"
    print(f"wrote {path} ({args.format}: {'-'.join(map(str, model.hidden_sizes))}, {len(model.classes)} classes); "
          f"{check}")


def _reload(path: Path, fmt: str, like: torch.nn.Sequential):
    """The written file as a callable on float32 tensors."""
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    if fmt == "state_dict":
        like.load_state_dict(torch.load(path, weights_only=True))
        return like
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"features": x.numpy()})[0])


if __name__ == "__main__":
    sys.exit(main())
