"""Train one nonparametric (or parametric) network: python train.py dataset=poker lambda=1e-6

Hydra: python train.py --help lists the config groups; -m runs sweeps. The work is in npnn.train.
"""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from npnn.train import main as train

    return train(cfg)["val_error"]  # the value a sweeper minimises


if __name__ == "__main__":
    main()
