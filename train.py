"""Train one nonparametric (or parametric) network: python train.py dataset=poker lambda=1e-6

The same app as npnn-train and python -m npnn (npnn.app): --help lists the config groups, -m runs sweeps.
"""
from npnn.app import main

if __name__ == "__main__":
    main()
