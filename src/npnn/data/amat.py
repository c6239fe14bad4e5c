"""rectangles-images and convex (Larochelle et al. 2007): LISA zips of ASCII ``.amat`` files."""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import torch

from npnn.data.download import fetch
from npnn.data.loaders import Splits, scale_pixels

log = logging.getLogger(__name__)

__all__ = ["AMAT_SETS", "LISA_URL", "read_amat", "load_amat"]

LISA_URL = "http://www.iro.umontreal.ca/~lisa/icml2007data/"
# name: (archive, sha1, train member, test member, training rows kept for training; the rest validate)
AMAT_SETS = {
    "rectangles_images": ("rectangles_images.zip", "2700ba92129ae195e93070d8b27f830323573a57",
                          "rectangles_im_train.amat", "rectangles_im_test.amat", 10_000),
    "convex": ("convex.zip", "61eab3c60e0e1caeaa0b82abf827f1809cfd2ef9",
               "convex_train.amat", "50k/convex_test.amat", 7_000),
}


def read_amat(text: bytes | str, name: str = "amat") -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of 784 pixel values in [0, 1] followed by the label: ``(x float32 (n, 784), y long (n,))``."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{name} is empty")
    width = len(lines[0].split())
    values = np.array(" ".join(lines).split(), dtype=np.float32)
    if values.size != width * len(lines) or width < 2:
        raise ValueError(f"{name}: rows of unequal length (first row has {width} values)")
    values = values.reshape(len(lines), width)
    return torch.from_numpy(values[:, :-1].copy()), torch.from_numpy(values[:, -1].astype(np.int64))


def _member(archive: zipfile.ZipFile, wanted: str) -> str:
    names = archive.namelist()
    for n in names:  # archives may nest the files in a folder
        if n == wanted or n.endswith("/" + wanted):
            return n
    raise ValueError(f"{archive.filename} has no member {wanted} (it has {names[:10]})")


def load_amat(name: str, data_dir: str | Path = "data", seed: int = 0, pixels: str = "unit",
              base_url: str = LISA_URL, n_train: int | None = None) -> Splits:
    """``name`` in ``AMAT_SETS``: the archive from ``<data_dir>/<name>/`` (downloaded from ``base_url``
    and SHA1-verified if missing), training rows split at random per ``seed`` (rectangles-images
    10,000 / 2,000, convex 7,000 / 1,000; Table 3), the official 50,000-row test set. Parsed arrays
    are cached next to the archive."""
    if name not in AMAT_SETS:
        raise ValueError(f"dataset must be one of {sorted(AMAT_SETS)}, got {name!r}")
    archive_name, sha1, train_member, test_member, default_n_train = AMAT_SETS[name]
    n_train = default_n_train if n_train is None else int(n_train)
    folder = Path(data_dir) / name
    archive = fetch([base_url + archive_name], folder / archive_name, "sha1", sha1)
    cache = folder / f"{name}-{sha1[:8]}.pt"
    cached = None
    if cache.exists():
        try:
            cached = torch.load(cache, weights_only=True)
        except Exception as err:  # a derived file: rebuilt from the verified archive
            log.warning("%s cannot be read (%s: %s); parsing %s again", cache, type(err).__name__, err, archive)
    if cached is not None:
        x, y, x_test, y_test = cached
    else:
        with zipfile.ZipFile(archive) as z:
            x, y = read_amat(z.read(_member(z, train_member)), train_member)
            x_test, y_test = read_amat(z.read(_member(z, test_member)), test_member)
        part = cache.with_name(cache.name + ".part")
        torch.save((x, y, x_test, y_test), part)
        part.replace(cache)
    if not 0 < n_train < len(y):
        raise ValueError(f"{name}: {train_member} has {len(y)} rows, too few for {n_train} training rows "
                         "and a validation split")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(int(seed)))
    train, val = perm[:n_train], perm[n_train:]
    splits = Splits(x[train], y[train], x[val], y[val], x_test, y_test, num_classes=2, name=name)
    return scale_pixels(splits, pixels, max_value=1.0)
