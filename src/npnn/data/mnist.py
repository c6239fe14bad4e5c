"""MNIST from its four IDX files (no torchvision): 50,000 / 10,000 split per seed, official test set."""
from __future__ import annotations

import errno
import gzip
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from npnn.data.download import ChecksumError, DataUnavailableError, checksum, fetch
from npnn.data.loaders import Splits, scale_pixels

__all__ = ["load_mnist", "read_idx", "MNIST_FILES", "MNIST_MIRRORS"]

log = logging.getLogger(__name__)

MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
# name: (md5 of the .gz a download fetches, md5 of the extracted file)
MNIST_FILES = {
    "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (big-endian header: 0, 0, type 0x08 = ubyte, number of dimensions, sizes)."""
    data = Path(path).read_bytes()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4]!r})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, {body.size} bytes follow")
    return body.reshape(shape)


def mnist_file(name: str, raw_dir: Path, mirrors: list[str]) -> Path:
    """The extracted IDX file ``name`` in ``raw_dir``, md5-verified; fetched (.gz) and extracted if it is
    missing or corrupt. A corrupt file is never used and never moved; if no good copy can be had, the
    error names it, its md5 and the expected one."""
    gz_md5, md5 = MNIST_FILES[name]
    path = raw_dir / name
    corrupt = None
    if path.exists():
        found = checksum(path, "md5")
        if found == md5:
            return path
        corrupt = f"{path} has md5 {found}, not {md5}: it is truncated or corrupt and is not used"
        log.warning("%s; fetching %s.gz to replace it", corrupt, name)
    gz = raw_dir / (name + ".gz")
    try:
        gz = fetch([m + name + ".gz" for m in mirrors], gz, "md5", gz_md5)
        part = path.with_name(name + ".part")
        try:
            with gzip.open(gz, "rb") as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            found = checksum(part, "md5")
            if found != md5:
                raise ChecksumError(f"{gz} extracts to md5 {found}, not {md5}: delete it and download it again")
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
    except OSError as err:  # offline, a read-only data dir, a bad archive (DataUnavailableError is one too)
        if corrupt is None and isinstance(err, DataUnavailableError):
            raise
        if isinstance(err, DataUnavailableError):
            cause = str(err)
        else:
            cause = f"{type(err).__name__}: {err}"
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC):
                cause += f" (is {raw_dir} writable?)"
        raise (ChecksumError if corrupt else DataUnavailableError)(
            f"{corrupt + '; ' if corrupt else ''}{cause}\nPut a good copy of {name} (md5 {md5}) at {path}, "
            f"or point data_dir at a writable folder that has it") from None
    return path


def load_mnist(data_dir: str | Path = "data", seed: int = 0, n_val: int = 10_000, pixels: str = "unit",
               mirrors: list[str] | None = None) -> Splits:
    """MNIST: the 60,000 training images split at random (per ``seed``) into 50,000 / 10,000, and
    the official 10,000 test images (Table 3).

    Files live in ``<data_dir>/MNIST/raw/`` (torchvision's layout): the extracted IDX files, or
    they are downloaded from ``mirrors`` and verified. ``pixels``: ``"unit"`` scales to [0, 1]
    (x / 255), ``"standardize"`` also subtracts the training mean and divides by its std (paper
    silent; default ``"unit"``).
    """
    raw = Path(data_dir) / "MNIST" / "raw"
    mirrors = list(mirrors or MNIST_MIRRORS)
    arrays = {name: read_idx(mnist_file(name, raw, mirrors)) for name in MNIST_FILES}
    x = torch.from_numpy(arrays["train-images-idx3-ubyte"].reshape(60_000, -1).astype(np.float32))
    y = torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64))
    x_test = torch.from_numpy(arrays["t10k-images-idx3-ubyte"].reshape(10_000, -1).astype(np.float32))
    y_test = torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    perm = torch.randperm(60_000, generator=torch.Generator().manual_seed(int(seed)))
    train, val = perm[n_val:], perm[:n_val]
    splits = Splits(x[train], y[train], x[val], y[val], x_test, y_test, num_classes=10, name="mnist")
    return scale_pixels(splits, pixels)
