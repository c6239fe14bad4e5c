"""Reading npnn's checkpoints (torch and the standard library only): tensors and plain data, never code."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "CheckpointError", "read_checkpoint", "check_format"]

FORMAT = 3  # lambda and the step size only in the optimizer's param_groups; growth and steps_per_call in "npnn"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this run; the message names the file."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, or fail naming the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={str(path)!r}: no such file. Point ckpt_path at a run's "
                              f"checkpoints/last.ckpt, or leave it null to start afresh")
    try:  # tensors and plain data only: an untrusted file's pickle can never run code here
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} holds objects other than tensors and plain data, which npnn never writes "
                              f"({str(err).splitlines()[0][:200]}): it is not an npnn checkpoint, and loading it "
                              f"could run code, so it is refused. Resume from the run's own checkpoints/last.ckpt, "
                              f"or start afresh") from None
    except Exception as err:  # truncated (EOFError, RuntimeError from the zip reader), empty, not a checkpoint
        raise CheckpointError(f"cannot read the checkpoint {path} ({path.stat().st_size} bytes): "
                              f"{type(err).__name__}: {err}. It is truncated or not a checkpoint; resume from "
                              f"another copy, or start afresh without ckpt_path") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def check_format(checkpoint: dict[str, Any], path: str | Path | None = None) -> None:
    """Refuse a checkpoint that npnn did not write, or that an older npnn wrote (another :data:`FORMAT`)."""
    name = str(path) if path is not None else "this checkpoint"
    if "model_config" not in checkpoint:
        raise CheckpointError(f"{name} has no 'model_config': it was not written by npnn")
    found = checkpoint.get("npnn", {}).get("format", 1)
    if found != FORMAT:
        raise CheckpointError(f"{name} was written by an older npnn (checkpoint format {found}; this version reads "
                              f"{FORMAT}): resume it with the npnn version that wrote it, or start afresh without "
                              f"ckpt_path")
