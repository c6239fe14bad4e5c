"""Data loaders: real MNIST files, fixture archives over file:// URLs, checksums, offline errors."""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from npnn.data import PermutationBatches, download
from npnn.data.amat import AMAT_SETS, load_amat, read_amat
from npnn.data.download import ChecksumError, DataUnavailableError, fetch
from npnn.data.mnist import MNIST_FILES, load_mnist, mnist_file
from npnn.data.poker import HAND_NAMES, POKER_SPLIT, deal, hand_class, load_poker

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_mnist = pytest.mark.skipif(not (SHARED / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists(),
                                 reason="../shared/data/MNIST/raw is not on this machine")
OFFLINE = ["file:///nonexistent-mirror/"]


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# -------------------------------------------------------------------- MNIST
@needs_mnist
def test_mnist_real_files_load_with_published_statistics():
    s = load_mnist(SHARED, seed=0, mirrors=OFFLINE)
    assert s.sizes == (50_000, 10_000, 10_000) and s.num_features == 784 and s.num_classes == 10
    x = torch.cat([s.x_train, s.x_val])
    assert abs(x.mean().item() - 0.1307) < 1e-4 and abs(x.std().item() - 0.3081) < 1e-4
    y = torch.cat([s.y_train, s.y_val])
    assert torch.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(s.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    other = load_mnist(SHARED, seed=1, mirrors=OFFLINE)  # the train-valid split is drawn per seed
    assert not torch.equal(other.y_val, s.y_val) and torch.equal(other.y_test, s.y_test)


@needs_mnist
def test_mnist_downloads_from_a_file_url_and_verifies(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    patched = {}
    for name, (_, extracted_md5) in MNIST_FILES.items():
        with open(SHARED / "MNIST" / "raw" / name, "rb") as src, gzip.open(mirror / f"{name}.gz", "wb") as out:
            shutil.copyfileobj(src, out)
        patched[name] = (md5(mirror / f"{name}.gz"), extracted_md5)  # our gzip differs from the canonical one
    monkeypatch.setattr("npnn.data.mnist.MNIST_FILES", patched)
    s = load_mnist(tmp_path / "cache", mirrors=["file:///nonexistent/", mirror.as_uri() + "/"])
    assert s.sizes == (50_000, 10_000, 10_000)
    raw = tmp_path / "cache" / "MNIST" / "raw"
    assert all(md5(raw / name) == MNIST_FILES[name][1] for name in MNIST_FILES)
    assert not list(raw.glob("*.part"))


def test_missing_file_offline_names_url_checksum_and_path(tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        mnist_file("t10k-labels-idx1-ubyte", tmp_path / "MNIST" / "raw", OFFLINE)
    msg = str(err.value)
    assert "file:///nonexistent-mirror/t10k-labels-idx1-ubyte.gz" in msg
    assert MNIST_FILES["t10k-labels-idx1-ubyte"][0] in msg
    assert str(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz") in msg


def test_file_with_wrong_checksum_is_never_used(tmp_path):
    good = tmp_path / "good.bin"
    good.write_bytes(b"the real content")
    target = tmp_path / "cache" / "data.bin"
    target.parent.mkdir()
    target.write_bytes(b"a corrupt copy")
    with pytest.raises(ChecksumError, match=r"not used"):
        fetch([OFFLINE[0] + "data.bin"], target, "md5", md5(good))
    path = fetch([OFFLINE[0] + "data.bin", good.as_uri()], target, "md5", md5(good))  # replaced by a good download
    assert path.read_bytes() == b"the real content"
    with pytest.raises(ChecksumError, match=r"discarded"):  # a download that does not match is not kept
        fetch([good.as_uri()], tmp_path / "other.bin", "md5", "0" * 32)
    assert not (tmp_path / "other.bin").exists()


def test_interrupted_download_leaves_no_file(tmp_path, monkeypatch):
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * 100_000)

    def broken_copy(response, out, length):
        out.write(response.read(1000))
        raise ConnectionResetError("connection reset")

    monkeypatch.setattr(download.shutil, "copyfileobj", broken_copy)
    with pytest.raises(DataUnavailableError, match="connection reset"):
        fetch([src.as_uri()], tmp_path / "cache" / "big.bin", "md5", md5(src))
    assert list((tmp_path / "cache").iterdir()) == []


# ------------------------------------------------------ rectangles / convex
def amat_rows(n, label_of, seed):
    g = np.random.default_rng(seed)
    x = g.random((n, 784)).round(4)
    return x, np.array([label_of(i) for i in range(n)])


def write_amat_zip(path: Path, members: dict[str, tuple[np.ndarray, np.ndarray]]):
    with zipfile.ZipFile(path, "w") as z:
        for name, (x, y) in members.items():
            text = "\n".join(" ".join(f"{v:g}" for v in row) + f" {lab}" for row, lab in zip(x, y))
            z.writestr(name, text + "\n")


@pytest.mark.parametrize("name", ["rectangles_images", "convex"])
def test_amat_sets_from_fixture_zips_over_file_urls(name, tmp_path, monkeypatch):
    archive, _, train_member, test_member, _ = AMAT_SETS[name]
    server = tmp_path / "server"
    server.mkdir()
    train = amat_rows(30, lambda i: i % 2, 0)
    test = amat_rows(12, lambda i: (i // 3) % 2, 1)
    write_amat_zip(server / archive, {train_member: train, test_member: test})
    sha1 = hashlib.sha1((server / archive).read_bytes()).hexdigest()
    monkeypatch.setitem(AMAT_SETS, name, (archive, sha1, train_member, test_member, 24))
    s = load_amat(name, tmp_path / "data", seed=3, base_url=server.as_uri() + "/")
    assert s.sizes == (24, 6, 12) and s.num_features == 784 and s.num_classes == 2
    torch.testing.assert_close(s.x_test, torch.tensor(test[0], dtype=torch.float32))
    assert s.y_test.tolist() == test[1].tolist()
    rows = torch.cat([s.x_train, s.x_val])  # every training row exactly once
    assert sorted(map(tuple, rows[:, :3].tolist())) == \
        sorted(map(tuple, torch.tensor(train[0][:, :3], dtype=torch.float32).tolist()))
    again = load_amat(name, tmp_path / "data", seed=3, base_url=OFFLINE[0])  # cached: no download
    assert torch.equal(again.x_train, s.x_train)
    other = load_amat(name, tmp_path / "data", seed=4, base_url=OFFLINE[0])
    assert not torch.equal(other.y_val, s.y_val) or not torch.equal(other.x_val, s.x_val)


def test_amat_offline_error_names_the_archive(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"convex.zip.*sha1 61eab3c60e0e1caeaa0b82abf827f1809cfd2ef9"):
        load_amat("convex", tmp_path, base_url=OFFLINE[0])


def test_read_amat_rejects_ragged_rows():
    x, y = read_amat(b"0.5 0.25 1\n0 1 0\n")
    assert x.tolist() == [[0.5, 0.25], [0.0, 1.0]] and y.tolist() == [1, 0]
    with pytest.raises(ValueError, match="unequal"):
        read_amat(b"0.5 0.25 1\n0 1\n")


# -------------------------------------------------------------------- poker
EXACT = {  # probabilities of the 5-card hands, in percent
    "nothing": 50.1177, "one pair": 42.2569, "two pairs": 4.7539, "three of a kind": 2.1128, "straight": 0.3925,
    "flush": 0.1965, "full house": 0.1441, "four of a kind": 0.0240, "straight flush": 0.00139, "royal flush": 0.000154,
}


def test_generated_poker_hands_have_the_exact_class_frequencies():
    n = sum(POKER_SPLIT)
    counts = torch.bincount(hand_class(deal(n, torch.Generator().manual_seed(354))), minlength=10)
    for name, count in zip(HAND_NAMES, counts.tolist()):
        p = EXACT[name] / 100
        z = (count - n * p) / math.sqrt(n * p * (1 - p))
        assert abs(z) < 4.5, (name, count, n * p)


def test_hand_classes_of_known_hands():
    hands = torch.tensor([
        [1, 1, 1, 10, 1, 11, 1, 12, 1, 13],  # royal flush
        [2, 9, 2, 10, 2, 11, 2, 12, 2, 13],  # straight flush
        [1, 1, 2, 2, 3, 3, 4, 4, 1, 5],  # ace-low straight
        [1, 10, 2, 11, 3, 12, 4, 13, 1, 1],  # ace-high straight
        [1, 2, 2, 2, 3, 2, 4, 2, 1, 9],  # four of a kind
        [1, 3, 2, 3, 3, 3, 4, 7, 1, 7],  # full house
        [3, 1, 3, 4, 3, 6, 3, 9, 3, 11],  # flush
        [1, 5, 2, 5, 3, 5, 4, 8, 1, 9],  # three of a kind
        [1, 5, 2, 5, 3, 8, 4, 8, 1, 9],  # two pairs
        [1, 5, 2, 5, 3, 8, 4, 10, 1, 9],  # one pair
        [1, 2, 2, 5, 3, 8, 4, 10, 1, 12],  # nothing
        [1, 11, 2, 12, 3, 13, 4, 1, 1, 2],  # K-A-2 wrap is not a straight
    ])
    assert hand_class(hands).tolist() == [9, 8, 4, 4, 7, 6, 5, 3, 2, 1, 0, 0]


def test_dealt_cards_are_distinct_and_valid():
    hands = deal(20_000, torch.Generator().manual_seed(0))
    suits, ranks = hands[:, 0::2], hands[:, 1::2]
    assert suits.min() == 1 and suits.max() == 4 and ranks.min() == 1 and ranks.max() == 13
    cards = (suits - 1) * 13 + ranks - 1
    assert all(len(set(row)) == 5 for row in cards.tolist())


def test_poker_split_and_standardisation():
    s = load_poker(split=(8000, 1000, 1000))
    assert s.sizes == (8000, 1000, 1000) and s.num_features == 10 and s.num_classes == 2
    torch.testing.assert_close(s.x_train.mean(0), torch.zeros(10), atol=1e-4, rtol=0)
    torch.testing.assert_close(s.x_train.std(0), torch.ones(10), atol=1e-4, rtol=0)
    assert 0.45 < s.y_train.float().mean() < 0.55
    raw = load_poker(split=(8000, 1000, 1000), standardize_features=False)
    assert torch.equal(torch.unique(raw.x_train[:, 0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert load_poker(split=(8000, 1000, 1000), binary=False).num_classes == 10


def test_poker_from_openml_fixture(tmp_path):
    header = "@relation poker\n" + "".join(f"@attribute f{i} numeric\n" for i in range(14)) + \
        "@attribute class {N,P}\n@data\n"
    rows = [",".join(str((i * 7 + j) % 13) for j in range(14)) + ("," + ("P" if i % 3 else "N")) for i in range(60)]
    arff = tmp_path / "server" / "354.arff"
    arff.parent.mkdir()
    arff.write_text(header + "\n".join(rows) + "\n")
    meta = {"data_set_description": {"url": arff.as_uri(), "md5_checksum": md5(arff),
                                     "default_target_attribute": "class"}}
    (tmp_path / "server" / "354").write_text(json.dumps(meta))
    s = load_poker(source="openml", split=(40, 10, 10), data_dir=tmp_path / "data",
                   api_url=(tmp_path / "server").as_uri() + "/")
    assert s.sizes == (40, 10, 10) and s.num_features == 14
    assert sorted(torch.cat([s.y_train, s.y_val, s.y_test]).tolist()) == sorted(1 if i % 3 else 0 for i in range(60))
    with pytest.raises(FileNotFoundError, match="dataset.source=generated"):
        load_poker(source="openml", data_dir=tmp_path / "elsewhere", api_url=OFFLINE[0])


@pytest.mark.slow
def test_logistic_regression_baseline_on_generated_poker():
    from npnn.baselines import baseline_errors

    err = baseline_errors(load_poker(), ["logistic_regression"])["logistic_regression"]
    assert 0.48 < err < 0.505  # about chance (the paper: 49.9%)


# -------------------------------------------------------- batch iteration
def test_permutation_batches_cover_every_row_once_per_epoch():
    x, y = torch.arange(25.0).unsqueeze(1), torch.arange(25)
    batches = PermutationBatches(x, y, batch_size=10, seed=0)
    assert len(batches) == batches.num_batches == 3
    epoch1 = torch.cat([b[1] for [b] in batches])  # lists of steps_per_call = 1 batch
    epoch2 = torch.cat([b[1] for [b] in batches])
    assert sorted(epoch1.tolist()) == list(range(25)) == sorted(epoch2.tolist())
    assert not torch.equal(epoch1, epoch2)  # a fresh permutation every epoch
    lists = PermutationBatches(x, y, batch_size=10, seed=0, steps_per_call=2)
    first = list(lists)
    assert len(lists) == 2 and [len(batch) for batch in first] == [2, 1]  # the same batches, two per list
    assert torch.equal(torch.cat([b[1] for batch in first for b in batch]), epoch1)


def test_permutation_batches_resume_mid_epoch():
    x, y = torch.arange(50.0).unsqueeze(1), torch.arange(50)
    a = PermutationBatches(x, y, batch_size=10, seed=1)
    it = iter(a)
    first = [next(it)[0][1] for _ in range(2)]
    state = a.state_dict()
    rest = [b[1] for [b] in it] + [b[1] for [b] in a]
    b = PermutationBatches(x, y, batch_size=10, seed=99)
    b.load_state_dict(state)
    resumed = [bb[1] for [bb] in b] + [bb[1] for [bb] in b]
    assert all(torch.equal(p, q) for p, q in zip(rest, resumed)) and len(rest) == len(resumed) == 8
    assert len(first) == 2
