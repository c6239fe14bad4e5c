"""The training app: ``npnn-train``, ``python -m npnn`` and ``python train.py`` (one run, or ``-m``: a sweep).

Hydra: ``--help`` lists the config groups; ``-m`` runs sweeps. The work is in :mod:`npnn.train`.
Exit codes: 0 done, 1 an error (a bad value, file or directory; a run that diverged or learned
nothing), 3 a relaunched sweep found another setting's run in its directory (the sweep stops),
128 + N stopped by signal N (SIGTERM: 143, SIGINT: 130) after writing a checkpoint.
"""
import logging

import hydra
from omegaconf import DictConfig

from npnn.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from npnn.data.download import DataUnavailableError
    from npnn.data.tabular import DataError
    from npnn.module import TrainingError
    from npnn.runs import CheckpointError, RunDirError, RunInterrupted, SettingConflictError
    from npnn.train import ConfigError
    from npnn.train import main as train

    try:
        return train(cfg)["val_error"]  # the value a sweeper minimises
    except RunInterrupted as err:  # the scheduler wants the process gone: the whole sweep stops too
        raise SystemExit(128 + err.signum) from None
    except SettingConflictError as err:  # a sweep into another sweep's directory: stop it all, touch nothing
        logging.getLogger("npnn.train").error("%s", err)
        raise SystemExit(3) from None
    except (ConfigError, CheckpointError, RunDirError, DataUnavailableError, DataError, TrainingError) as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            if cfg.get("sweep_failure_value") is not None and isinstance(err, TrainingError):
                logging.getLogger("npnn.train").error("%s; the sweeper gets %s", err, cfg.sweep_failure_value)
                return float(cfg.sweep_failure_value)  # summary.json says how it failed; the sweep goes on
            raise  # Hydra records the failed job and goes on with the others
        raise SystemExit(f"npnn: error: {err}") from None  # the message is the whole story: no traceback


if __name__ == "__main__":
    main()
