"""The run configs: ``conf/`` (installed with the package as ``npnn.conf``) and the resolvers they use.

``${npnn.alpha_r:alpha_r_lambda,lambda}`` is AdaRad's radial step size ``alpha_r_lambda / lambda``
(Table 3: ``1 / (50 lambda)``; poker ``1 / (5 lambda)``): ``conf/optimizer/adarad.yaml`` derives it
there, and only there. ``${npnn.widths:base,w1,w2,...}`` is the random search's hidden sizes
(``conf/hparams_search/p_random.yaml``). ``${npnn.hydra_subdir:...}`` is ``hydra.output_subdir`` and
``${npnn.log_file:...}`` the log file's name (``conf/config.yaml``). Importing :mod:`npnn` registers them all.
"""
from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

__all__ = ["CONF_DIR", "alpha_r", "widths", "hydra_subdir", "log_file", "compose"]

CONF_DIR = Path(str(files("npnn.conf")))  # the repository's conf/ (editable install) or the installed copy


def alpha_r(alpha_r_lambda: float, lam: float) -> float:
    """``alpha_r = alpha_r_lambda / lambda``; lambda = 0 leaves it undefined; ``auto`` until the data is loaded
    (``dataset=csv``: :func:`npnn.train.resolve_auto`)."""
    if "auto" in (alpha_r_lambda, lam):
        return "auto"
    if not lam > 0:
        raise ValueError(f"optimizer.alpha_r = dataset.alpha_r_lambda / lambda needs lambda > 0, got lambda={lam}: "
                         f"set optimizer.alpha_r to a number")
    return alpha_r_lambda / lam


def widths(base, *factors: float) -> list[int]:
    """``round(factor_l * base_l)`` per hidden layer: the random search's sizes (``hparams_search=p_random``)."""
    if len(factors) != len(base):
        raise ValueError(f"random_search.base has {len(base)} hidden sizes ({list(base)}) but the search draws "
                         f"{len(factors)} widths: give one size per hidden layer of the search")
    return [max(1, round(float(f) * int(b))) for b, f in zip(base, factors)]


def _relaunch_of_ended_run(output_dir, resume_existing, overwrite, ckpt_path) -> bool:
    """Whether this launch (``resume_existing=true``) finds a run in ``output_dir`` that ended, which it skips
    or refuses: that run's record keeps its own ``.hydra`` files and log."""
    from npnn.runs import existing_run, is_relaunch

    return (output_dir is not None and is_relaunch(resume_existing, overwrite, ckpt_path)
            and isinstance(existing_run(output_dir), dict))


def hydra_subdir(output_dir, resume_existing, overwrite, ckpt_path) -> str | None:
    """``hydra.output_subdir``: ``.hydra``, or None (Hydra writes no ``.hydra`` files) over a run that ended."""
    return None if _relaunch_of_ended_run(output_dir, resume_existing, overwrite, ckpt_path) else ".hydra"


def log_file(output_dir, job_name, resume_existing, overwrite, ckpt_path) -> str:
    """``hydra.job_logging.handlers.file.filename``: ``<run dir>/<job name>.log``, or ``os.devnull`` over a run
    that ended (the relaunch's line goes to the console only)."""
    if _relaunch_of_ended_run(output_dir, resume_existing, overwrite, ckpt_path):
        return os.devnull
    return os.path.join(output_dir, f"{job_name}.log")


OmegaConf.register_new_resolver("npnn.alpha_r", alpha_r, replace=True)
OmegaConf.register_new_resolver("npnn.widths", widths, replace=True)
OmegaConf.register_new_resolver("npnn.hydra_subdir", hydra_subdir, replace=True)
OmegaConf.register_new_resolver("npnn.log_file", log_file, replace=True)


def compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """The run config for ``overrides``, as ``python train.py <overrides>`` composes it (with its ``hydra``
    node: ``return_hydra_config=True``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
