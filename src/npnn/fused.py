"""Fused CPU kernels (``csrc/fused.cpp``), compiled on first use: the one seam between them and npnn.

``npnn.nn`` and ``npnn.optim`` are the eager reference code; where a kernel can do the same
work, they call a function below, which runs the kernel or returns ``None`` to say that it does
not apply (a GPU tensor, another dtype, kernels switched off or not built). No other module
calls ``torch.ops.npnn``.

AdaRad in eager PyTorch needs three row reductions and two passes per weight plus ~30
small ops on per-row vectors, CapNorm about eight ops each way; on CPU that per-call
overhead, not arithmetic, dominates. ``torch.ops.npnn.adarad_step_`` does the whole
AdaRad step in two passes over memory; ``capnorm_train`` does CapNorm (with its
running-statistics update) as one autograd op, its forward and its backward in two or three.

The kernels are built with ``torch.utils.cpp_extension`` (a C++ compiler and ninja; the
``ninja`` package is a dependency) into torch's extension cache (``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``): about half a minute once per machine and torch
version, then a load of a few milliseconds. Where the build fails (no compiler), npnn says
so once and uses the eager implementation, which is the reference and gives the same result
to rounding. ``NPNN_FUSED=0`` switches the kernels off.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["DTYPES", "active", "disabled_by_env", "load", "use", "adarad_step_", "capnorm_train", "count_zero_rows",
           "parallel_threads"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "fused.cpp"
_lock = threading.Lock()
_state: dict[str, object] = {}  # "ok": bool, "error": str
_switch = {"on": True}


def disabled_by_env() -> bool:
    return os.environ.get("NPNN_FUSED", "1").strip().lower() in ("0", "false", "no", "off")


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH. Put the pip package's binary first, whether or not the
    environment is activated: two ninja versions alternating on one build directory rebuild it each time."""
    try:
        import ninja
    except ImportError:
        return
    if Path(shutil.which("ninja") or "").parent != Path(ninja.BIN_DIR):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build(verbose: bool) -> None:
    from torch.utils.cpp_extension import load as build

    # -fopenmp: at::parallel_for runs on torch's threads only where _OPENMP is defined (serially otherwise).
    # It is not linked with -fopenmp: its OpenMP calls resolve through libtorch_cpu to the runtime torch
    # loaded (one thread pool, torch.set_num_threads governs it; tests/test_fused.py checks). A compiler
    # without OpenMP gets the serial build. No -march=native, so a build cache shared by the nodes of a
    # cluster runs on all of them
    with _build_lock():
        try:
            build(name="npnn_fused", sources=[str(_SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                  is_python_module=False, verbose=verbose)
        except Exception as exc:  # e.g. Apple's clang: no -fopenmp
            log.warning("npnn: the kernels did not build with OpenMP (%s); building them to run on one thread",
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            build(name="npnn_fused", sources=[str(_SOURCE)], extra_cflags=["-O3", "-fopenmp-simd"],
                  is_python_module=False, verbose=verbose)


def wait_limit() -> float:
    """Seconds to wait for another process's build of the kernels (``NPNN_FUSED_WAIT``, default 600)."""
    try:
        return float(os.environ.get("NPNN_FUSED_WAIT", "600"))
    except ValueError:
        return 600.0


@contextmanager
def _build_lock():
    """An ``flock`` on the build directory's ``npnn.flock`` around the build: the OS releases it when its
    holder dies, unlike torch's own ``lock`` file, which a killed build leaves behind and every later build
    then waits on for ever. Holding it, that file can only be stale: it is removed. The wait for another
    build is bounded (``NPNN_FUSED_WAIT``); past it, :func:`load` falls back to the eager path."""
    import time

    from torch.utils.cpp_extension import _get_build_directory

    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock alone
        yield
        return
    folder = Path(_get_build_directory("npnn_fused", False))
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "npnn.flock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, said, locked = time.monotonic() + wait_limit(), False, True
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process has been building the kernels in {folder} for over "
                                       f"{wait_limit():.0f} s (NPNN_FUSED_WAIT)") from None
                if not said:
                    log.info("npnn: waiting for another process's build of the fused kernels in %s", folder)
                    said = True
                time.sleep(0.5)
            except OSError:  # a filesystem without flock (some network mounts): torch's own lock file alone
                locked = False
                break
        stale = folder / "lock"
        if locked and stale.exists():  # torch's baton, left by a build that was killed: no live build holds it now
            log.warning("npnn: removing %s, left by a kernel build that did not finish", stale)
            stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the flock


def load() -> bool:
    """Build (once) and load the kernels; True if ``torch.ops.npnn`` has them. Never raises."""
    if "ok" in _state:
        return bool(_state["ok"])
    with _lock:
        if "ok" not in _state:
            if disabled_by_env():
                _state.update(ok=False, error="NPNN_FUSED=0")
            else:
                try:
                    _ninja_on_path()
                    log.info("npnn: loading the fused CPU kernels (the first time on a machine: a build of about 30 s)")
                    _build(verbose=False)
                    _state.update(ok=hasattr(torch.ops.npnn, "adarad_step_"), error="")
                except Exception as exc:  # no compiler, no ninja, a read-only cache...
                    _state.update(ok=False, error=f"{type(exc).__name__}: {exc}")
                    warnings.warn("npnn: the fused CPU kernels could not be built "
                                  f"({_state['error'].splitlines()[0]}); "
                                  f"using the eager implementation (same results, slower). `python -m npnn.fused` "
                                  f"shows the compiler's output; a C++ compiler and ninja enable the kernels; "
                                  f"NPNN_FUSED=0 silences this.", stacklevel=2)
        return bool(_state["ok"])


DTYPES = (torch.float32, torch.float64)  # what the kernels are built for


def active(t: torch.Tensor) -> bool:
    """Whether code that has a fused path should take it for ``t``: switched on (see :func:`use`),
    a float32 / float64 CPU tensor, and the kernels are available."""
    return _switch["on"] and t.device.type == "cpu" and t.dtype in DTYPES and load()


@contextmanager
def use(on: bool):
    """``with npnn.fused.use(False):`` runs CapNorm and ``AdaRad(fused=None)`` on the eager reference path."""
    before, _switch["on"] = _switch["on"], bool(on)
    try:
        yield
    finally:
        _switch["on"] = before


# -------------------------------------------------------------------- the seam
def adarad_step_(weights: list[torch.Tensor], grads: list[torch.Tensor], phibar: list[torch.Tensor],
                 c: list[torch.Tensor], phi_max: torch.Tensor, c_max: torch.Tensor, alpha_r: float, alpha_phi: float,
                 beta: float, eps: float, tau: float) -> None:
    """Algorithm 1 lines 11-17 for every row of ``weights``, in place, in two passes over memory.
    The caller (``AdaRad``) has checked that it applies."""
    torch.ops.npnn.adarad_step_(weights, grads, phibar, c, phi_max, c_max, float(alpha_r), float(alpha_phi),
                                float(beta), float(eps), float(tau))


def capnorm_train(z: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                  fan_in_norm: torch.Tensor | None, momentum: float, relu: bool) -> torch.Tensor | None:
    """CapNorm of a training batch (and the ReLU if ``relu``), updating the running statistics, as one
    autograd op whose forward and backward are one kernel each; None where the kernel does not apply."""
    if not active(z):
        return None
    return torch.ops.npnn.capnorm_train(z, running_mean, running_var, fan_in_norm, momentum, relu)


def count_zero_rows(weights: list[torch.Tensor]) -> list[int] | None:
    """The number of all-zero rows of each weight, or None where the kernel does not apply."""
    if not weights or not active(weights[0]):
        return None
    return torch.ops.npnn.count_zero_rows([w.detach() for w in weights])


def parallel_threads() -> int:
    """How many threads the kernels' parallel loops run on (``torch.get_num_threads()`` where the build has
    OpenMP); 0 where the kernels are not available."""
    return int(torch.ops.npnn.parallel_threads()) if load() else 0


def main(argv: list[str] | None = None) -> None:
    """``python -m npnn.fused``: build the kernels verbosely and say whether they work."""
    import argparse

    argparse.ArgumentParser(
        prog="python -m npnn.fused",
        description="Build the fused CPU kernels of npnn (csrc/fused.cpp) with the compiler's output shown, and say "
                    "whether they load. The build is cached in TORCH_EXTENSIONS_DIR; NPNN_FUSED=0 switches the "
                    "kernels off.").parse_args(argv)
    if disabled_by_env():
        raise SystemExit("NPNN_FUSED=0 is set: the fused kernels are switched off")
    _ninja_on_path()
    _build(verbose=True)
    if load():
        print(f"npnn fused kernels: ready, on {parallel_threads()} of torch's {torch.get_num_threads()} threads")
    else:
        print(f"npnn fused kernels: NOT available: {_state['error']}")


if __name__ == "__main__":
    main()
