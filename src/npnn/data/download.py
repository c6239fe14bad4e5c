"""Downloads that a user can trust: canonical URLs, checksums, a cache folder, no half files."""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["fetch", "checksum", "DataUnavailableError", "ChecksumError"]


class DataUnavailableError(FileNotFoundError):
    """A data file is missing and could not be downloaded; the message says where to put it."""


class ChecksumError(DataUnavailableError):
    """A data file does not have its published checksum; it is not used."""


def checksum(path: str | Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, target: Path, timeout: float) -> None:
    """``url`` -> ``target`` through ``target.part``: an interrupted download leaves no file that looks whole."""
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def fetch(urls: list[str], path: str | Path, algorithm: str, expected: str, timeout: float = 60.0) -> Path:
    """Return ``path``, downloading it from the first of ``urls`` that works if it is not there.

    The file is used only if its ``algorithm`` digest is ``expected``: a cached file that does
    not match is replaced by a fresh download; a download that does not match is deleted.
    Offline, the error names the URLs, the checksum and the exact path to put the file at.
    """
    path = Path(path)
    problems, mismatch = [], False
    if path.exists():
        found = checksum(path, algorithm)
        if found == expected:
            return path
        problems.append(f"the file at {path} has {algorithm} {found}, not {expected}: it is not used")
        mismatch = True
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(path.name + ".download")
    for url in urls:
        try:
            _download(url, fresh, timeout)
        except (urllib.error.URLError, OSError, ValueError) as err:
            problems.append(f"{url}: {getattr(err, 'reason', err)}")
            continue
        found = checksum(fresh, algorithm)
        if found != expected:
            fresh.unlink()
            problems.append(f"{url}: downloaded file has {algorithm} {found}, not {expected}: discarded")
            mismatch = True
            continue
        os.replace(fresh, path)
        return path
    detail = "\n  ".join(problems)
    raise (ChecksumError if mismatch else DataUnavailableError)(f"{path.name} is not available:\n  {detail}\n"
                f"Download it from {urls[0]} on a machine with a "
                f"network and put it at {path} ({algorithm} {expected}), or point data_dir at a folder that has it.")
