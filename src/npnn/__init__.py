"""npnn: Nonparametric Neural Networks (Philipp & Carbonell, ICLR 2017)."""
import npnn.config  # noqa: F401  (registers the configs' ${npnn.alpha_r:...} resolver)
from npnn.nn import CapNorm, NonparametricMLP
from npnn.optim import AdaRad, AdaRadM
from npnn.regularizers import omega_in, omega_out
from npnn.trained import TrainedNetwork, load

__all__ = ["CapNorm", "NonparametricMLP", "AdaRad", "AdaRadM", "omega_in", "omega_out", "NonparametricClassifier",
           "TrainedNetwork", "load"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "NonparametricClassifier":  # scikit-learn, Hydra and Lightning load only when it is used
        from npnn.sklearn import NonparametricClassifier

        return NonparametricClassifier
    raise AttributeError(f"module 'npnn' has no attribute {name!r}")
