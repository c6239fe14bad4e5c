"""``python -m npnn ...``: the training app, as ``python train.py ...`` and ``npnn-train ...``."""
from npnn.app import main

main()
